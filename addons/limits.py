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

    Counting the open descriptors (reading /proc/self/fd) costs time in proportion
    to how many are open: 33 ms with 19,000, a stall of the event loop. Done on
    every connection past half the limit, it cost 40 ms of proxy CPU per handshake
    with 6,000 connections held. So the count is read at most every ``probe_every``
    seconds, and less often the longer a read takes: at most ``BUDGET`` of the time
    goes to it. In between, each call adds ``opened`` descriptors to the last count
    (a client accepted, an upstream connected: one each). That estimate only errs
    high, since closes are not counted. When it reaches the warning's threshold the
    count is read again at once (at most every ``probe_every``), so a burst that fills
    the table is seen in time, and a high estimate never warns by itself."""

    BUDGET = 0.01  # the share of the time reading the count may take

    def __init__(self, clock: Callable[[], float] = time.monotonic, interval: float = 10.0,
                 probe_every: float = 0.25,
                 usage: Callable[[], tuple[int, int]] | None = None,
                 timer: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._timer = timer  # what a read of the count costs is measured with it
        self.interval = interval
        self.probe_every = probe_every
        if usage is not None:
            self.usage = usage  # type: ignore[method-assign]
        self._probed = float("-inf")
        self._every = probe_every  # the current spacing of reads (grows with their cost)
        self._warned = float("-inf")
        self._n = 0        # descriptors open at the last read
        self._since = 0    # descriptors opened since, by the calls
        self._soft = resource.RLIM_INFINITY
        self.skipped = False  # the last call did not read: the next read is due later
        self._near = False    # the estimate reached the warning's threshold

    @staticmethod
    def usage() -> tuple[int, int]:
        """(descriptors open, soft limit)."""
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        try:
            with os.scandir("/proc/self/fd") as it:
                n = sum(1 for _ in it)
        except OSError:
            n = 0
        return n, soft

    @staticmethod
    def _near_limit(n: int, soft: int) -> bool:
        """``n`` descriptors are at the warning's threshold of ``soft``."""
        return soft != resource.RLIM_INFINITY and n >= soft - max(8, soft // 20)

    def next_read_in(self) -> float:
        """Seconds until a read is due (soon when the estimate is near the limit)."""
        every = self.probe_every if self._near else self._every
        return max(0.0, self._probed + every - self._clock())

    def check(self, force: bool = False, opened: int = 1) -> str | None:
        """A warning to give now, or None. Cheap: reads the count when due (see the
        class), or when ``force``d; ``opened``: descriptors this call stands for."""
        now = self._clock()
        since = now - self._probed
        near = self._near = self._near_limit(self._n + self._since + opened, self._soft)
        if not (force or since >= self._every
                or (near and since >= self.probe_every and now - self._warned >= self.interval)):
            self.skipped = True
            self._since += opened
            return None  # only a count just read warns
        self.skipped = False
        t0 = self._timer()
        self._n, self._soft = self.usage()
        spent = self._timer() - t0
        self._probed, self._since = now, 0
        self._every = max(self.probe_every, spent / self.BUDGET)
        self._near = self._near_limit(self._n, self._soft)
        if not (force or self._near) or now - self._warned < self.interval:
            return None
        self._warned = now
        return (f"near the open-file limit ({self._n} of {self._soft} descriptors in use): new "
                "clients get an immediate EOF and upstream connections fail; raise the limit "
                "(ulimit -n) or lower the load")

    @staticmethod
    def is_fd_error(exc: Any) -> bool:
        return isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)
