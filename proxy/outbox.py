"""What the engine hands the proxy (Send, Close, Wakeup, Emit, EmitRecords) and the
outgoing queue.

An :class:`Outbox` holds the bytes and closes toward one side while a delay or
a paced write keeps them back, and asks for one timer at a time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from tlsinspector.proxy.history import Side

Json = dict[str, Any]


@dataclass(slots=True)
class Send:
    to: Side
    data: bytes


@dataclass(slots=True)
class Close:
    """End the stream toward ``to``: "fin" half-closes, "rst" aborts the connection."""

    to: Side
    how: Literal["fin", "rst"] = "fin"


@dataclass(slots=True)
class Wakeup:
    at: float


@dataclass(slots=True)
class Emit:
    event: Json


@dataclass(slots=True)
class EmitRecords:
    """The ``record`` events of a run of bulk application_data records, packed: each
    is ``template`` with its ``index`` (from ``first`` on) and its ``length`` (from
    ``lengths``) set. Only for a caller that asked for them
    (:meth:`~proxy.engine.Connection.pack_records`, the hot relay): one output per
    read's worth of a download instead of an Emit per 16 KiB record (issue 19)."""

    template: Json
    first: int
    lengths: list[int]

    def events(self) -> list[Json]:
        """The events, as the Emits of an unpacked connection carry them (copies of
        the template: the same keys in the same order)."""
        copy = self.template.copy
        out: list[Json] = []
        append = out.append
        for index, length in enumerate(self.lengths, self.first):
            ev = copy()
            ev["index"] = index
            ev["length"] = length
            append(ev)
        return out


Output = Send | Close | Wakeup | Emit | EmitRecords
# Outputs are plain (not frozen) dataclasses: they are made per record on the
# fast path, and a frozen __init__ costs three times as much.


def events(outputs: list[Output]) -> list[Json]:
    """The events among ``outputs``, in order, packed ones unpacked."""
    out: list[Json] = []
    for o in outputs:
        if type(o) is Emit:  # (neither is subclassed)
            out.append(o.event)
        elif type(o) is EmitRecords:
            out += o.events()
    return out


def packed_events(outputs: list[Output]) -> list[Json | EmitRecords]:
    """The events among ``outputs``, in order, packed ones left packed: for a sink
    that can write a run's lines from its template (addons/logfile.py) and a filter
    that passes runs through whole (proxy/coalesce.py)."""
    out: list[Json | EmitRecords] = []
    for o in outputs:
        if type(o) is Emit:
            out.append(o.event)
        elif type(o) is EmitRecords:
            out.append(o)
    return out


def unpacked(items: list[Json | EmitRecords]) -> list[Json]:
    """:func:`packed_events`' items as plain events."""
    out: list[Json] = []
    for item in items:
        if type(item) is EmitRecords:
            out += item.events()
        else:
            out.append(item)  # type: ignore[arg-type]
    return out


class Outbox:
    """Bytes and closes toward one side, with the delay queue and its one timer.

    Without a delay pending, a send goes out at once; with one, it waits behind it
    (order is never changed). One Wakeup is asked for at a time: asking again for
    each read or wakeup would pile up timers (one per chunk of a long delay).
    """

    __slots__ = ("to", "items", "queued", "wake_at", "closed", "closed_after", "closed_why")

    def __init__(self, to: Side) -> None:
        self.to: Side = to
        # Made on first use: most connections never delay a byte, and an empty
        # deque costs 600 bytes (issue 19: 10,000 idle connections).
        self.items: deque[tuple[float, bytes | Close]] | None = None
        self.queued = 0                    # bytes in ``items``
        self.wake_at: float | None = None  # the Wakeup asked for and not yet answered
        self.closed = False                # a fault closed the stream toward this side
        # Then: the last record index of the sender (the other side) before the close,
        # and which fault closed it (records after it are logged as undelivered).
        self.closed_after = 0
        self.closed_why = ""

    def send(self, data: bytes, now: float, out: list[Output]) -> None:
        if not data or self.closed:
            return
        if self.items:
            self.items.append((now, data))
            self.queued += len(data)
            self.flush(now, out)
        else:
            out.append(Send(self.to, data))

    def queue(self, data: bytes, when: float, now: float, out: list[Output]) -> None:
        if self.closed:
            return
        self._queue().append((when, data))
        self.queued += len(data)
        self.flush(now, out)

    def close(self, how: Literal["fin", "rst"], now: float, out: list[Output],
              when: float | None = None) -> None:
        if not self.items and (when is None or when <= now):
            out.append(Close(self.to, how))
            return
        self._queue().append((now if when is None else when, Close(self.to, how)))
        self.flush(now, out)

    def _queue(self) -> deque[tuple[float, bytes | Close]]:
        if self.items is None:
            self.items = deque()
        return self.items

    def flush(self, now: float, out: list[Output]) -> None:
        q = self.items
        while q:
            when, item = q[0]
            if when > now:
                if self.wake_at is None or when < self.wake_at:
                    self.wake_at = when
                    out.append(Wakeup(when))
                return
            q.popleft()
            if isinstance(item, Close):
                out.append(item)
            else:
                self.queued -= len(item)
                out.append(Send(self.to, item))


