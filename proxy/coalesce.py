"""Bounding the log relative to the traffic: runs of tiny fragments become one event.

RFC 8446 5.1 lets a peer split a handshake message into records of one byte.
Logged one ``record`` event per record, a 6-byte record costs ~180 bytes of
log: a 384 KB hello in 1-byte records made a 13 MB log (issue 12). The
engine still reports every record; this filter, applied per connection on its
way to the log, replaces each run of two or more consecutive plaintext handshake records of
at most :data:`TINY` bytes that complete no message (they carry part of one,
or follow a limit past which the handshake is not parsed) with one
``fragments`` event:

    {"event": "fragments", "ts", "conn", "from", "first_index", "last_index",
     "count", "bytes", "content_type": "handshake", "held", "have", "want"}

``bytes`` is the sum of the records' payload lengths, ``have``/``want`` the
state of the message being assembled after the last record of the run, and
``held`` whether a fault held the records back (``have``/``want`` are absent
when the handshake is no longer parsed). A run ends at any other event
of the connection, so the order of events is kept and the log grows by at
most one event per non-tiny record or notable tiny one (a message, an alert,
a fault, a note). A lone tiny record is logged as itself.

Runs of two or more consecutive tiny records that are identical but for their
index and time (a flood of ChangeCipherSpec, alerts, heartbeats, tiny
messages, or application data records shorter than any AEAD tag) become one
``repeated`` event:

    {"event": "repeated", "ts", "conn", "from", "first_index", "last_index",
     "count", "bytes", "record": <the first record's event>}

Records a fault touched are always logged as themselves.

Sans-io and pure: events in, events out.
"""

from __future__ import annotations

from typing import Any

from tlsinspector.proxy.outbox import EmitRecords

Json = dict[str, Any]

# Records with a payload of at most this many bytes count as tiny. Real stacks
# fragment at a few hundred bytes or more (a path MTU, a max_fragment_length of
# 512, RFC 6066 4); 64 keeps every ordinary record logged as itself.
TINY = 64

# Keys whose presence makes a record notable (it is logged as itself).
_NOTABLE = ("messages", "fault", "note", "alert", "oversized", "unparsed", "undelivered")


# Application data records this short cannot come from an AEAD cipher (a 16-byte
# tag, RFC 8446 5.2; RFC 5288 3): only a flood sends them.
TINY_APP = 16

# What two records must share to be "identical" (all but where and when).
_VARYING = ("ts", "index")


def _repeatable(ev: Json) -> bool:
    """A tiny record that may fold into a run of identical ones (a flood of CCS,
    alerts, heartbeats, empty or tiny messages, 1-byte application data)."""
    if ev.get("event") != "record" or "fault" in ev or "fragment" in ev or "unparsed" in ev:
        return False
    limit = TINY_APP if ev.get("content_type") == "application_data" else TINY
    return int(ev.get("length", limit + 1)) <= limit


def _same(a: Json, b: Json) -> bool:
    return len(a) == len(b) and all(a[k] == b.get(k, a) for k in a if k not in _VARYING)


def _tiny_fragment(ev: Json) -> bool:
    # No "fragment" is needed: past a limit (proxy/handshake.py) the records of
    # a message are no longer parsed, and they must not flood the log either.
    return (ev.get("event") == "record" and ev.get("content_type") == "handshake"
            and ev.get("encrypted") is False and ev.get("length", TINY + 1) <= TINY
            and not any(k in ev for k in _NOTABLE))


class Coalescer:
    """One per connection: feed it the connection's events in order."""

    __slots__ = ("_first", "_last", "_count", "_bytes", "_kind")

    def __init__(self) -> None:
        self._first: Json | None = None
        self._last: Json | None = None
        self._count = 0
        self._bytes = 0
        self._kind = ""  # "fragments" or "repeated"

    def feed(self, evs: list[Json]) -> list[Json]:
        """The events to log now; a run still going on is kept for later."""
        out: list[Json] = []
        self._feed(evs, out)
        return out

    def feed_packed(self, items: list[Json | EmitRecords]) -> list[Json | EmitRecords]:
        """:meth:`feed` for events among which runs of bulk records stay packed
        (outbox.packed_events): a run passes whole, as each of its records would
        (every one is longer than :data:`TINY`: records.RecordFramer.skim packs only
        those), after the pending run of tiny records it ends."""
        out: list[Json | EmitRecords] = []
        plain: list[Json] = []
        for item in items:
            if type(item) is EmitRecords:
                if plain:
                    self._feed(plain, out)  # type: ignore[arg-type]
                    plain = []
                if self._first is not None:
                    self._flush(out)  # type: ignore[arg-type]
                out.append(item)
            else:
                plain.append(item)  # type: ignore[arg-type]
        if plain:
            self._feed(plain, out)  # type: ignore[arg-type]
        return out

    def _feed(self, evs: list[Json], out: list[Json]) -> None:
        append = out.append
        for ev in evs:
            length = ev.get("length")
            if length is not None and length > TINY:
                # Not tiny (every bulk record): neither rule applies, so skip their
                # checks (issue 19: this runs once per 16 KiB of a download).
                if self._first is not None:
                    self._flush(out)
                append(ev)
                continue
            kind = ("fragments" if _tiny_fragment(ev)
                    else "repeated" if _repeatable(ev) else "")
            if kind and self._extends(ev, kind):
                self._last = ev
                self._count += 1
                self._bytes += int(ev["length"])
                continue
            self._flush(out)
            if kind:
                self._first = self._last = ev
                self._count, self._bytes, self._kind = 1, int(ev["length"]), kind
            else:
                out.append(ev)

    def flush(self) -> list[Json]:
        """The run still pending, if any (at the end of the connection)."""
        out: list[Json] = []
        self._flush(out)
        return out

    def _extends(self, ev: Json, kind: str) -> bool:
        last, first = self._last, self._first
        if last is None or first is None or kind != self._kind:
            return False
        if last["from"] != ev["from"] or last["index"] + 1 != ev["index"]:
            return False
        if kind == "repeated":
            return _same(first, ev)
        return bool(last.get("held", False) == ev.get("held", False))

    def _flush(self, out: list[Json]) -> None:
        first, last = self._first, self._last
        if first is None or last is None:
            return
        if self._count == 1:
            out.append(first)
        elif self._kind == "repeated":
            out.append({
                "event": "repeated", "ts": first["ts"], "conn": first["conn"],
                "from": first["from"], "first_index": first["index"],
                "last_index": last["index"], "count": self._count, "bytes": self._bytes,
                "record": first,
            })
        else:
            out.append({
                "event": "fragments", "ts": first["ts"], "conn": first["conn"],
                "from": first["from"], "first_index": first["index"],
                "last_index": last["index"], "count": self._count, "bytes": self._bytes,
                "content_type": "handshake", "held": bool(last.get("held", False)),
            })
            if "fragment" in last:
                out[-1]["have"] = last["fragment"]["have"]
                out[-1]["want"] = last["fragment"]["want"]
        self._first = self._last = None
        self._count = self._bytes = 0
