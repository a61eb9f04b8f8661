"""Process-wide resource bounds for the inspector addon (issue 12): bytes held across
all connections, and the open-file limit.

Not an addon itself: addons/inspector.py owns one :class:`HeldBudget` and one
:class:`FdWatch` (options ``tlsinspector_max_held``, ``tlsinspector_idle_timeout``;
``tlsinspector run --max-held``, ``--idle-timeout``).

Each connection's engine knows what it holds (``engine.Connection.held_bytes``:
partial records, handshake messages being assembled, records held for a hello
fault, bytes queued for a delay). The budget sums it across connections. When
the sum passes the bound, it first lets go of what costs nothing on the wire:
the largest holders stop assembling handshake messages whose bytes were
already forwarded (logged as ``held_limit`` with action "unparsed"). If the sum
is still above the bound, the connection that grew it stops being read
(backpressure, ``held_limit`` with action "paused") until the sum is back under
half the bound.
"""

from __future__ import annotations

import errno
import os
import resource
import time
from collections.abc import Callable
from typing import Any, Protocol

DEFAULT_MAX_HELD = 64 << 20


class Holder(Protocol):
    """A connection as the budget sees it (addons.inspector.RecordLayer)."""

    def shed(self, now: float, why: str) -> int: ...

    def pause_for_budget(self, pause: bool) -> None: ...


class HeldBudget:
    """Bytes held across all connections, bounded by ``limit`` (0: unbounded)."""

    def __init__(self, limit: int = DEFAULT_MAX_HELD) -> None:
        self.limit = limit
        self.total = 0
        self._held: dict[Holder, int] = {}
        self._paused: set[Holder] = set()
        self.bites = 0  # times the bound made us shed or pause

    def update(self, who: Holder, held: int, now: float) -> bool:
        """Record what ``who`` holds now; returns True if ``who`` must stop reading."""
        old = self._held.pop(who, 0)
        if held:
            self._held[who] = held
        self.total += held - old
        if self.limit and self.total > self.limit:
            self.bites += 1
            self._shed(now)
            if self.total > self.limit and self._held.get(who, 0) and who not in self._paused:
                self._paused.add(who)
                return True
        if self._paused and self.total <= self.limit // 2:
            self._resume()
        return False

    def forget(self, who: Holder) -> None:
        """``who`` is done: it holds nothing, and it is no longer paused."""
        self.total -= self._held.pop(who, 0)
        self._paused.discard(who)
        if self._paused and self.total <= self.limit // 2:
            self._resume()

    def _shed(self, now: float) -> None:
        why = (f"the proxy holds {self.total} bytes across connections, over --max-held "
               f"{self.limit}: message assembly given up on the largest holders")
        for who in sorted(self._held, key=self._held.__getitem__, reverse=True):
            if self.total <= self.limit:
                return
            freed = who.shed(now, why)
            if freed:
                self.total -= freed
                self._held[who] -= freed
                if self._held[who] <= 0:
                    del self._held[who]

    def _resume(self) -> None:
        paused, self._paused = self._paused, set()
        for who in paused:
            who.pause_for_budget(False)


class FdWatch:
    """One warning (at most every ``interval`` seconds) when the process nears its
    open-file limit: beyond it new clients get an immediate EOF from the event
    loop (uvloop accepts and closes them) and nothing else would say so.

    Counting the open descriptors (a listing of /proc/self/fd) costs time in
    proportion to how many are open: about 10 ms with 12,000, which a probe on every
    connection paid twice (40 ms of proxy CPU per handshake with 6,000 connections
    held, against 5 ms with none). So the count is probed at most every
    ``probe_every`` seconds, and in between each call (a client accepted, an
    upstream connected: about one descriptor each) adds one to the last count.
    The estimate only errs high (closes in between are not counted), so a burst
    that fills the table within one probe interval is still seen in time."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, interval: float = 10.0,
                 probe_every: float = 0.25,
                 usage: Callable[[], tuple[int, int]] | None = None) -> None:
        self._clock = clock
        self.interval = interval
        self.probe_every = probe_every
        if usage is not None:
            self.usage = usage  # type: ignore[method-assign]
        self._probed = float("-inf")
        self._warned = float("-inf")
        self._n = 0        # descriptors open at the last probe
        self._since = 0    # calls since it
        self._soft = resource.RLIM_INFINITY
        self.skipped = False  # the last call did not probe: probe again after probe_every

    @staticmethod
    def usage() -> tuple[int, int]:
        """(descriptors open, soft limit)."""
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        try:
            n = len(os.listdir("/proc/self/fd"))
        except OSError:
            n = 0
        return n, soft

    def check(self, force: bool = False) -> str | None:
        """A warning to give now, or None. Cheap: probes at most every ``probe_every``
        (``force``: now), and estimates in between."""
        now = self._clock()
        self.skipped = not force and now - self._probed < self.probe_every
        if self.skipped:
            self._since += 1
        else:
            self._probed = now
            self._n, self._soft = self.usage()
            self._since = 0
        n, soft = self._n + self._since, self._soft
        margin = max(8, soft // 20)
        if not force and (soft == resource.RLIM_INFINITY or n < soft - margin):
            return None
        if now - self._warned < self.interval:
            return None
        self._warned = now
        about = "about " if self._since else ""
        return (f"near the open-file limit ({about}{n} of {soft} descriptors in use): new "
                "clients get an immediate EOF and upstream connections fail; raise the limit "
                "(ulimit -n) or lower the load")

    @staticmethod
    def is_fd_error(exc: Any) -> bool:
        return isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)
