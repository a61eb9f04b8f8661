"""``tlsinspector analyze`` and ``tlsinspector replay``: what customers send, through the
same engine and diagnosis as the live proxy (DESIGN.md "One engine, live and offline").

A hex dump (proxy/hexdump.py) or a capture (proxy/capfile.py reads the file,
proxy/tcpstream.py rebuilds each connection's two byte streams) becomes a sequence
of (side, bytes, time, source) pieces; :class:`Feed` hands them to
:class:`tlsinspector.proxy.engine.Connection` exactly as the addon hands it network
reads, prints the same terminal view (render.line) and writes the same JSON Lines
events, each record event with a ``source`` (hex lines, or packet numbers and
capture time) saying where in the customer's evidence it came from. With keys
(``--keylog`` files, or a pcapng's own Decryption Secrets Blocks, used from where
they are in the file on) each connection's engine gets the shared KeyLog, as
``run --keylog`` does, and decrypts through the same Decryptor.

Exit codes: 0 done, 1 (replay) no answer from the server, 2 bad input or usage.
"""

from __future__ import annotations

import argparse
import bisect
import fnmatch
import operator
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import orjson

from tlsinspector.proxy import capfile, engine, hexdump, render, tcpstream
from tlsinspector.proxy.handshake import CLIENT_HELLO, HandshakeReassembler
from tlsinspector.proxy.history import Side
from tlsinspector.proxy.keylog import KeyLog
from tlsinspector.proxy.records import HANDSHAKE, Record, RecordFramer
from tlsinspector.proxy.scenario_yaml import terminal_safe

Json = dict[str, Any]


class InputError(Exception):
    """Bad input (a file that is not what it should be): message, exit 2."""


def _safe(text: object) -> str:
    """Peer-controlled text for a terminal: no control characters, no escapes."""
    s = str(text)
    return s if s.isprintable() else s.encode("unicode_escape", "backslashreplace").decode()


def hello_details(ev: Json) -> list[str]:
    """The hello fields a support engineer reads first, one per line (the one-line
    view shows only counts): every cipher suite by name, every extension, the
    signature algorithms, groups and server name."""
    out: list[str] = []
    for m in ev.get("messages", ()):
        if m.get("type") not in ("client_hello", "server_hello") or "unparsed" in m:
            continue
        if m["type"] == "client_hello":
            out.append(f"cipher_suites ({len(m['cipher_suites'])}): "
                       + ", ".join(map(_safe, m["cipher_suites"])))
        else:
            out.append(f"cipher_suite: {_safe(m.get('cipher_suite'))}")
        exts = m.get("extensions")
        out.append("extensions: " + ("none (no extensions block)" if exts is None else
                                     ", ".join(_safe(e["type"]) for e in exts) or "empty"))
        for key in ("signature_algorithms", "supported_groups", "supported_versions", "alpn"):
            if key in m:
                v = m[key]
                if key == "supported_versions":
                    v = render.version_text(v) if isinstance(v, str) else [
                        render.version_text(x) for x in v]
                out.append(f"{key}: {_safe(v) if isinstance(v, str) else ', '.join(map(_safe, v))}")
            elif m["type"] == "client_hello" and key != "alpn":
                out.append(f"{key}: absent")
        if m["type"] == "client_hello":
            out.append(f"server_name: {_safe(m['sni']) if 'sni' in m else 'absent'}")
    return out


class EventSink(Protocol):
    quiet: bool

    def say(self, text: str) -> None: ...

    def emit(self, evs: list[Json]) -> None: ...


class Sink:
    """Where events go: the terminal view and, with --log, JSON Lines (one write per batch)."""

    def __init__(self, log: str | None, quiet: bool, details: bool = True,
                 out: IO[str] | None = None) -> None:
        self.quiet = quiet
        self.details = details
        self.out = out or sys.stdout
        self._log = None
        if log:  # as run --log: no symlink followed, no FIFO's hang, 0600
            from tlsinspector.addons.logfile import open_log

            self._log = os.fdopen(open_log(log), "ab")
        self.events = 0
        # Whether anything reads application_data record events: with --quiet and no
        # --log only the diagnosis is shown, and the engine need not make them (as
        # `run --no-app-records`; the close event's counts are the same).
        self.app_records = not quiet or log is not None

    def say(self, text: str) -> None:
        if not self.quiet:
            self.out.write(text + "\n")

    def emit(self, evs: list[Json]) -> None:
        if not evs:
            return
        self.events += len(evs)
        if self._log is not None:
            self._log.write(b"".join(orjson.dumps(e) + b"\n" for e in evs))
            self._log.flush()
        if self.quiet:
            return
        lines = []
        for ev in evs:
            lines.append(render.line(ev))
            if self.details and ev.get("event") == "record":
                lines += [f"[{ev['conn']}]       {d}" for d in hello_details(ev)]
        self.out.write("\n".join(lines) + "\n")

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
        self.out.flush()


class Feed:
    """One connection through the engine: pieces in, events (with their source) out."""

    def __init__(self, sink: EventSink, conn_id: str, client: str, server: str, mode: str,
                 now: float, keylog: KeyLog | None = None, app_records: bool = True) -> None:
        self.sink = sink
        self.conn = engine.Connection(conn_id, client, server, mode,
                                      log_app_data=app_records, keylog=keylog)
        self.last: Side | None = None
        self._emit(self.conn.start(now), None)

    def _emit(self, outputs: Iterable[engine.Output], source: Json | None) -> list[Json]:
        evs = [o.event for o in outputs if isinstance(o, engine.Emit)]
        if source is not None:
            for ev in evs:
                if ev["event"] in ("record", "non_tls"):
                    ev["source"] = source
        self.sink.emit(evs)
        return evs

    def data(self, side: Side, data: bytes, now: float, source: Json | None) -> list[Json]:
        self.last = side
        return self._emit(self.conn.receive(side, data, now), source)

    def event(self, ev: Json) -> None:
        self.sink.emit([ev])

    def end(self, now: float, first: Side | None = None, by: str | None = None) -> Json:
        """Both sides end (``first`` first: who closed); returns the close event."""
        a: Side = first or self.last or "client"
        b: Side = "server" if a == "client" else "client"
        self._emit(self.conn.eof(a, now), None)
        self._emit(self.conn.eof(b, now), None)
        evs = self._emit(self.conn.finish(now, by=by), None)
        return evs[-1] if evs else {}


# -- analyze --hex ------------------------------------------------------------------


def read_text(path: str) -> str:
    try:
        if path == "-":
            raw = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                raw = f.read(hexdump.MAX_HEX_CHARS + 1)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from e
    if b"\0" in raw[:4096]:
        raise InputError(f"{path} is a binary file, not a hex dump (a capture? "
                         "use `tlsinspector analyze FILE` without --hex)")
    return raw.decode("utf-8", errors="replace")


def hex_blocks(path: str) -> list[hexdump.Block]:
    try:
        blocks, skipped = hexdump.parse(read_text(path))
    except hexdump.HexError as e:
        raise InputError(f"{path}: {e}") from e
    for s in skipped:
        print(terminal_safe(f"tlsinspector: {path}: {s}"), file=sys.stderr)
    return blocks


def analyze_hex(path: str, sink: Sink, now: float, keylog: KeyLog | None = None) -> Json:
    blocks = hex_blocks(path)
    name = "stdin" if path == "-" else path
    feed = Feed(sink, "1", f"client ({name})", f"server ({name})", "hex", now, keylog)
    for b in blocks:
        notes = "".join(f"; {n}" for n in b.notes)
        sink.say(f"[1] {b.lines}: {len(b.data)} bytes from the {b.side} ({b.how}{notes})")
        feed.data(b.side, b.data, now, {"lines": [b.first_line, b.last_line]})
    return feed.end(now)


# -- analyze CAPTURE -------------------------------------------------------------------


@dataclass
class Filters:
    conn: set[int] | None = None
    port: int | None = None
    sni: str | None = None


_OFFSET = operator.itemgetter(0)


class _Shown:
    """One captured connection: its engine feed, where its bytes came from, and whether
    it is shown (TLS, and through the filters) -- decided once the bytes tell."""

    UNDECIDED_LIMIT = 64 << 10   # bytes with no TLS record before a connection is not TLS

    def __init__(self, sink: Sink, ev: tcpstream.Opened, ts: float, filters: Filters,
                 keylog: KeyLog | None = None) -> None:
        self.number, self.filters, self.out = ev.conn, filters, sink
        self.quiet = False
        self.held: list[Json] | None = []    # events until decided; None: decided, shown
        self.hidden: str | None = None
        self.tls = False
        self.fed = 0
        self.first: Side | None = None
        self.first_ts: float | None = None  # when self.first closed
        # The FINs of sides whose stream has a gap (they get no eof, see ended): the
        # capture still shows who closed first.
        self.gap_fins: dict[Side, float] = {}
        # Per side, (stream offset, packet number, time) of every packet's bytes, in
        # stream order, and the index of the one the next record starts in.
        self.chunks: dict[str, list[tuple[int, int, float]]] = {"client": [], "server": []}
        self.offsets: dict[str, list[int]] = {"client": [], "server": []}   # theirs, to bisect
        self.first_chunk = {"client": 0, "server": 0}
        self.consumed = {"client": 0, "server": 0}
        self.delivered = {"client": 0, "server": 0}
        self.desc = f"{ev.client} -> {ev.server}"
        self.gaps: list[tcpstream.Gap] = []
        self.open_at_end: set[Side] = set()   # sides with no FIN or RST in the capture
        self.feed = Feed(self, str(ev.conn), ev.client, ev.server, "capture", ts, keylog,
                         sink.app_records)
        if ev.how != "SYN":
            self.feed.event({"event": "note", "ts": round(ts, 6), "conn": str(ev.conn),
                             "note": f"client and server {ev.how}"})

    # EventSink for Feed: hold events until the connection is decided.
    def say(self, text: str) -> None:
        pass

    def emit(self, evs: list[Json]) -> None:
        if self.hidden is not None:
            return
        if not self.tls and any(e["event"] == "record" for e in evs):
            self.tls = True
        if self.held is None:
            self.out.emit(evs)
            return
        self.held.extend(evs)
        self._decide(final=False)

    def _decide(self, final: bool) -> None:
        if self.held is None or self.hidden is not None:
            return
        if not self.tls:
            if final or self.fed > self.UNDECIDED_LIMIT:
                self.hidden, self.held = "no TLS records", None
            return
        if self.filters.sni is not None:
            hello = any(m.get("type") == "client_hello" for e in self.held
                        for m in e.get("messages", ()))
            if not (final or hello):
                return   # the server name is not known yet
            sni = self.feed.conn.sni
            if not fnmatch.fnmatchcase(sni or "", self.filters.sni):
                self.hidden = (f"server name {sni!r} does not match --sni" if sni is not None
                               else "no server name (SNI) in its ClientHello, which "
                                    "does not match --sni")
                self.held = None
                return
        held, self.held = self.held, None
        self.out.emit(held)

    def data(self, ev: tcpstream.Data) -> None:
        if self.hidden:
            return
        if ev.packets:   # (none when nothing shows where records came from)
            self.chunks[ev.side].extend(ev.packets)
            self.offsets[ev.side].extend(map(_OFFSET, ev.packets))
        self.delivered[ev.side] = ev.offset + len(ev.data)
        self.fed += len(ev.data)
        outputs = self.feed.conn.receive(ev.side, ev.data, ev.ts)
        evs = [o.event for o in outputs if isinstance(o, engine.Emit)]
        for e in evs:
            if e["event"] in ("record", "non_tls") and e.get("from") == ev.side:
                e["source"] = self._source(ev.side, e)
        self.emit(evs)

    def keys_arrived(self, ts: float) -> None:
        """Secrets further on in the capture: the records that waited are decrypted."""
        if self.feed.conn.needs_keys:
            self.emit([o.event for o in self.feed.conn.keys_arrived(ts)
                       if isinstance(o, engine.Emit)])

    def _source(self, side: str, e: Json) -> Json:
        """The packets that carried this record: its first and last byte's (found by
        bisection: a record's cost does not grow with the packets it spans)."""
        start = self.consumed[side]
        n = e.get("length", 0)
        end = start + (n if e["event"] == "non_tls" or "unparsed" in e else 5 + n)
        self.consumed[side] = end
        q, offs, lo = self.chunks[side], self.offsets[side], self.first_chunk[side]
        if not q:
            return {"packets": [0, 0], "time": 0.0}
        # The last packet starting at or before the record's first byte, and the last
        # one starting before its end.
        i = max(lo, bisect.bisect_right(offs, start, lo) - 1)
        j = max(i, bisect.bisect_left(offs, end, i) - 1)
        first, last = q[i], q[j]
        if i > 4096:   # bounded memory: the packets of records already placed go
            del q[:i], offs[:i]
            i = 0
        self.first_chunk[side] = i
        return {"packets": [first[1], last[1]], "time": round(first[2], 6)}

    def gap(self, ev: tcpstream.Gap) -> None:
        self.gaps.append(ev)
        if ev.fin_ts is not None:
            self.gap_fins.setdefault(ev.side, ev.fin_ts)
        self.emit([{"event": "gap", "ts": round(ev.ts, 6), "conn": str(self.number),
                    "from": ev.side, "offset": ev.offset, "missing": ev.missing,
                    "after_packet": ev.after_packet, "before_packet": ev.before_packet,
                    "undecoded": ev.undecoded,
                    "note": "bytes missing from the capture: this side is not decoded "
                            "past this point (never spliced)"}])

    def ended(self, side: Side, ts: float, how: str = "fin") -> None:
        if how in ("gap", "capture end"):
            # No eof for the engine: the peer did not stop mid-record, the capture
            # lost bytes; a partial-record finding would blame the wrong party. A
            # connection still open when the capture ends was not closed by either
            # side (no FIN or RST in it): it closes as at a proxy's stop, by "proxy",
            # and no finding says a side gave up or cut a record.
            if how == "capture end":
                self.open_at_end.add(side)
            return
        if how == "fin after gap":
            self.gap_fins.setdefault(side, ts)
            return
        if self.first is None:
            self.first, self.first_ts = side, ts
        self.emit([o.event for o in self.feed.conn.eof(side, ts)
                   if isinstance(o, engine.Emit)])

    def closed(self, ts: float) -> Json | None:
        gapped = {g.side for g in self.gaps}
        for side in ("client", "server"):
            if side not in gapped and side not in self.open_at_end:
                self.ended(side, ts)
        if self.gap_fins:
            side, at = min(self.gap_fins.items(), key=lambda x: x[1])
            if self.first_ts is None or at < self.first_ts:
                # A side whose stream lost bytes sent the first FIN: it closed first
                # (the close event's "by" and the diagnosis's closed_by say so).
                self.first = side
                self.feed.conn.history.closed_by = side
        # (keys the key logs never had: the engine's close says so in a note)
        evs = [o.event for o in self.feed.conn.finish(ts, by=self.first)
               if isinstance(o, engine.Emit)]
        if evs and self.open_at_end and self.first is None:
            evs[-1]["reason"] = ("the capture ended with the connection still open: no "
                                 "FIN or RST from either side in it")
        if evs and self.gaps:
            if "server" in gapped:
                # The server did send bytes: the capture lost them (a ServerHello may be
                # among them), so "no ServerHello, the client gave up" is not what the
                # capture shows; capture-gap says what it does show.
                evs[-1]["diagnosis"] = [d for d in evs[-1]["diagnosis"]
                                        if d.get("code") != "no-server-hello"]
            evs[-1]["diagnosis"].append(self._gap_finding())
        self.emit(evs)
        self._decide(final=True)
        return evs[-1] if evs and self.hidden is None else None

    def _gap_finding(self) -> Json:
        evidence = []
        for g in self.gaps:
            missing = "an unknown number of" if g.missing is None else str(g.missing)
            where = _gap_place(g.after_packet, g.before_packet)
            evidence.append(f"{g.side} stream: {missing} bytes missing at offset {g.offset} "
                            f"({where}); {g.undecoded} captured bytes after it not decoded")
        return {"code": "capture-gap",
                "summary": "the capture lost bytes of this connection (the capturing host "
                           "dropped packets, or a snap length or filter cut them): the "
                           "findings cover only the bytes before the gap",
                "evidence": evidence,
                "reference": "RFC 9293 3.4 (sequence numbers), 3.10.7.4"}


def _gap_place(after: int | None, before: int | None) -> str:
    """Where a gap is, by the packets around it; either may be unknown (a gap at the
    stream's start has no packet before it, one at its end none after it)."""
    if after is None and before is None:
        return "at an unknown packet"
    if after is None:
        return f"before packet {before}"
    if before is None:
        return f"after packet {after}"
    return f"between packets {after} and {before}"


CHUNK = 4 << 20   # bytes of capture read at a time
BATCH = 256 << 10  # in-order bytes of a direction handed to the engine in one call


def _frames(path: str, parser: capfile.CaptureParser
            ) -> Iterator[list[Any]]:
    """The packets and secrets of a capture file, a chunk's worth at a time."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from e
    with f:
        while True:
            try:
                chunk = f.read(CHUNK)
            except OSError as e:
                raise InputError(f"cannot read {path}: {e.strerror}") from e
            if not chunk:
                break
            yield parser.feed(chunk)


def read_keylogs(paths: list[str]) -> KeyLog:
    """Every --keylog file, whole (an offline analysis sees the finished files)."""
    log = KeyLog()
    for p in paths:
        try:
            with open(p, "rb") as f:
                text = f.read()
        except OSError as e:
            raise InputError(f"cannot read the key log {p}: {e.strerror}") from e
        if b"\0" in text[:4096]:
            raise InputError(f"{p} is a binary file, not an NSS key log")
        log.feed(text.decode("ascii", "replace"))
        log.close()
    log.complete = True
    if paths and not len(log):
        raise InputError(f"no keys in {', '.join(paths)} (NSS key log lines look like "
                         "'CLIENT_RANDOM <64 hex digits> <96 hex digits>')")
    return log


@dataclass
class _Run:
    """The state of one capture's analysis."""

    sink: Sink
    filters: Filters
    keylog: KeyLog | None
    conns: dict[int, _Shown] = field(default_factory=dict)
    closes: list[Json] = field(default_factory=list)
    secrets: int = 0


def analyze_capture(path: str, sink: Sink, filters: Filters,
                    keylog: KeyLog | None = None) -> list[Json]:
    """Every TLS connection in a pcap/pcapng file through the engine; the close events.

    Secrets come from ``keylog`` (--keylog files) and from the capture's own
    Decryption Secrets Blocks, in the order they appear in the file."""
    # Which packets carried a record (its "source") matters only where events are
    # seen: with --quiet and no --log only the diagnosis is (no tuple per packet then).
    reasm = tcpstream.Reassembler(batch=BATCH, sources=sink.app_records)
    # The reassembler's lane takes the common packets inside the reader's loop; the
    # list then holds the stream events it made, among the packets it declined.
    parser = capfile.CaptureParser(lane=reasm.lane)
    run = _Run(sink, filters, keylog)
    broken: str | None = None
    feed = reasm.feed_frame
    try:
        for items in _frames(path, parser):
            for item in items:
                if type(item) is tuple:
                    ts, link, buf, start, end, number = item
                    if link not in tcpstream.LINKTYPES:
                        continue   # said once at the end (parser.links)
                    for ev in feed(link, buf, start, end, number, ts):
                        _dispatch(ev, run)
                elif type(item) is capfile.Secrets:
                    _secrets(item, run, item.ts)
                else:
                    _dispatch(item, run)
        parser.end()
    except capfile.CaptureError as e:
        if parser.kind is None:
            raise InputError(f"{path} is {e}") from e
        broken = str(e)
    ts = parser.last_ts
    for ev in reasm.finish(ts):
        _dispatch(ev, run)
    unknown = [str(x) for x in parser.links if x not in tcpstream.LINKTYPES]
    if unknown:
        what = (f"{path}: link type {', '.join(unknown)} is not supported (supported: "
                f"{', '.join(sorted(set(tcpstream.LINKTYPES.values())))})")
        if not reasm.segments and broken is None:
            raise InputError(what)
        print(terminal_safe(f"tlsinspector: {what}; those packets were skipped"),
              file=sys.stderr)
    return _summary(path, parser, reasm, run, broken)


def _secrets(item: capfile.Secrets, run: _Run, ts: float) -> None:
    """Key log lines from the capture: decrypt what waited for them."""
    if run.keylog is None:
        # Connections from here on are followed by a decryptor; one opened before the
        # file's first secrets was not (a decryptor must see its hellos), which
        # neither editcap --inject-secrets (secrets first) nor run --pcap-keys (each
        # connection's secrets before its packets) produces.
        run.keylog = KeyLog()
    run.secrets += 1
    run.keylog.feed(item.data.decode("ascii", "replace"))
    run.keylog.close()
    for c in list(run.conns.values()):
        if not c.hidden:
            c.keys_arrived(ts)


def _summary(path: str, parser: capfile.CaptureParser, reasm: tcpstream.Reassembler,
             run: _Run, broken: str | None) -> list[Json]:
    sink = run.sink
    skipped = [c for c in run.conns.values() if c.hidden]
    for c in skipped:
        if c.hidden != "filtered":
            print(terminal_safe(f"tlsinspector: {path}: conn {c.number} ({c.desc}) not "
                                f"shown: {c.hidden}"), file=sys.stderr)
    if broken is not None:
        for close in run.closes:
            _diagnosis(close, sink, f"[{close['conn']}] ")
        raise InputError(f"{path}: the capture is {broken}; what is shown covers the "
                         "packets before that point")
    packets = render.counted(parser.packets, "packet")
    if not reasm.segments:
        raise InputError(f"{path}: no TCP segments in the capture ({packets})")
    if not run.closes and not sink.quiet:
        # Only a connection a filter (--conn, --port, --sni) hid was kept out by the
        # filters; one with no TLS record is named on stderr above.
        filtered = any(c.hidden != "no TLS records" for c in skipped)
        sink.say(f"no TLS connection in {path} ({packets}, "
                 f"{render.counted(len(run.conns), 'TCP connection')}"
                 + (", none through the filters)" if filtered else ")"))
    return run.closes


def capture_client_bytes(path: str, conn: int, limit: int = 1 << 20) -> bytes:
    """What the client of connection ``conn`` sent, reassembled (the first ``limit`` bytes)."""
    parser, reasm, out = capfile.CaptureParser(), tcpstream.Reassembler(), bytearray()
    try:
        for item in (x for items in _frames(path, parser) for x in items):
            if type(item) is not tuple:
                continue
            if item[1] not in tcpstream.LINKTYPES:
                continue
            for ev in reasm.feed_frame(item[1], item[2], item[3], item[4], item[5], item[0]):
                if isinstance(ev, tcpstream.Data) and ev.conn == conn and \
                        ev.side == "client":
                    out += ev.data
            if len(out) >= limit:
                break
    except capfile.CaptureError as e:
        if parser.kind is None:
            raise InputError(f"{path} is {e}") from e
        # a damaged tail: use what came before it
    if not out:
        raise InputError(f"{path}: connection {conn} has no client data")
    return bytes(out)


def _dispatch(ev: tcpstream.StreamEvent, run: _Run) -> None:
    conns, filters = run.conns, run.filters
    if isinstance(ev, tcpstream.Opened):
        shown = _Shown(run.sink, ev, ev.ts, filters, run.keylog)
        ports = {int(a.rsplit(":", 1)[1]) for a in (ev.client, ev.server)}
        if (filters.conn is not None and ev.conn not in filters.conn) or (
                filters.port is not None and filters.port not in ports):
            shown.hidden, shown.held = "filtered", None
        conns[ev.conn] = shown
        return
    c = conns.get(ev.conn)
    if c is None or c.hidden:
        return
    if isinstance(ev, tcpstream.Data):
        c.data(ev)
    elif isinstance(ev, tcpstream.Gap):
        c.gap(ev)
    elif isinstance(ev, tcpstream.Ended):
        c.ended(ev.side, ev.ts, ev.how)
    else:
        close = c.closed(ev.ts)
        if close is not None:
            run.closes.append(close)
        if not c.hidden:
            del conns[ev.conn]   # bounded memory: a long capture has many connections


# -- replay ---------------------------------------------------------------------------


def client_hello_bytes(blocks: list[hexdump.Block]) -> bytes:
    """The records that carry the first ClientHello, byte for byte as captured."""
    for b in blocks:
        if b.side != "client":
            continue
        framer, hs, used = RecordFramer(), HandshakeReassembler(), 0
        for item in framer.feed(b.data):
            used += len(item.raw)
            if not isinstance(item, Record) or item.content_type != HANDSHAKE:
                break
            if any(m.msg_type == CLIENT_HELLO for m in hs.feed(item.payload, 1)):
                return b.data[:used]
    raise InputError("no complete ClientHello from the client in the input")


def _answer_done(evs: list[Json]) -> bool:
    """The server has said what it will say to a hello alone: a fatal alert, the end
    of its TLS 1.2 flight, a HelloRetryRequest, or encrypted TLS 1.3 records."""
    for ev in evs:
        if ev.get("event") != "record" or ev.get("from") != "server":
            continue
        alert = ev.get("alert")
        if isinstance(alert, dict) and alert.get("level") == "fatal":
            return True
        if ev.get("encrypted") or "unparsed" in ev:
            return True
        for m in ev.get("messages", ()):
            if m.get("type") in ("server_hello_done", "hello_retry_request"):
                return True
    return False


def replay(hello: bytes, host: str, port: int, sink: Sink, timeout: float) -> tuple[Json, bytes]:
    """Send ``hello`` to host:port, feed the answer through the engine, stop once the
    server has answered (we hold no keys for a hello we did not make)."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise InputError(f"cannot connect to {host}:{port}: {e}") from e
    answer = bytearray()
    with sock:
        local = sock.getsockname()
        feed = Feed(sink, "1", f"{local[0]}:{local[1]}", f"{host}:{port}", "replay",
                    time.time())
        feed.data("client", hello, time.time(), {"replayed": len(hello)})
        sock.sendall(hello)
        first: Side = "client"
        deadline = time.monotonic() + timeout
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                sink.say(f"[1] no more from the server within {timeout:g}s; stopping")
                break
            except OSError as e:
                sink.say(f"[1] connection error: {e}")
                first = "server"
                break
            if not data:
                first = "server"
                break
            answer += data
            if _answer_done(feed.data("server", data, time.time(), None)):
                break
    return feed.end(time.time(), first), bytes(answer)


# -- entry points from cli.py ------------------------------------------------------------


def add_arguments(sub: Any) -> None:
    """The analyze and replay subcommands (called from cli._parser)."""
    a = sub.add_parser(
        "analyze", help="decode and diagnose a capture (pcap/pcapng) or a pasted hex dump",
        description="Feed a customer's capture or hex dump through the same engine and "
                    "diagnosis as the live proxy.")
    a.add_argument("capture", nargs="?", help="pcap or pcapng file")
    a.add_argument("--hex", metavar="FILE|-",
                   help="a hex dump as pasted (spaced bytes, xxd, hexdump -C, Wireshark's "
                        "'Copy as Hex Dump'); blocks marked client:/server: or guessed")
    a.add_argument("--keylog", action="append", metavar="FILE",
                   help="NSS key log (SSLKEYLOGFILE) of a peer: encrypted handshake "
                        "messages and alerts are decrypted, as `run --keylog` does; "
                        "repeatable. A pcapng's own Decryption Secrets Blocks are used "
                        "too, with no option")
    a.add_argument("--log", metavar="FILE.jsonl", help="also write the JSON Lines events here")
    a.add_argument("--quiet", action="store_true", help="only the diagnosis, no record view")
    a.add_argument("--conn", type=int, action="append", metavar="N",
                   help="only connection N (numbered in order of first packet); repeatable")
    a.add_argument("--port", type=int, metavar="P", help="only connections with this port")
    a.add_argument("--sni", metavar="GLOB", help="only connections whose ClientHello names a "
                                                 "matching server (fnmatch glob)")
    r = sub.add_parser(
        "replay", help="send a captured ClientHello to a server, diagnose its answer",
        description="Send the ClientHello from a hex dump byte for byte to --server, log "
                    "and diagnose what comes back, and stop there.")
    r.add_argument("capture", nargs="?",
                   help="pcap or pcapng file (with --conn), e.g. a `run --pcap` file (a "
                        "JSON Lines log holds no hello bytes: replay the run's --pcap)")
    r.add_argument("--conn", type=int, metavar="N",
                   help="the connection in CAPTURE whose ClientHello to send "
                        "(numbers as `analyze` prints them)")
    r.add_argument("--hex", metavar="FILE|-", help="hex dump holding the ClientHello")
    r.add_argument("--server", required=True, metavar="HOST:PORT",
                   help="the server to send the captured ClientHello to")
    r.add_argument("--log", metavar="FILE.jsonl", help="also write the JSON Lines events here")
    r.add_argument("--timeout", type=float, default=5.0,
                   help="seconds to wait for the server's answer (default 5)")
    r.add_argument("--quiet", action="store_true", help="only the diagnosis, no record view")


OWN_KEYS = "(the inspector's own)"   # --pcap-keys with no KEYLOG (--intercept)


def add_run_arguments(r: Any) -> None:
    """run's capture options (called from cli._parser)."""
    r.add_argument("--pcap", metavar="FILE.pcapng",
                   help="write both legs (client<->proxy, proxy<->server) of every "
                        "connection to this pcapng, faults as packet comments")
    r.add_argument("--pcap-max-mb", type=int, default=0, metavar="MB",
                   help="stop writing the pcapng at this size, with a warning")
    r.add_argument("--pcap-headers-only", action="store_true",
                   help="zero application data in the pcapng (record headers stay)")
    r.add_argument("--pcap-keys", metavar="KEYLOG", nargs="?", const=OWN_KEYS,
                   help="embed this NSS key log's secrets in the pcapng (Decryption "
                        "Secrets Blocks): whoever gets the file can decrypt the traffic. "
                        "With --intercept, the inspector's own secrets of both legs too "
                        "(it terminates both); there KEYLOG may be left out")


def check_run_pcap(args: argparse.Namespace) -> str | None:
    """run's --pcap options, checked before the proxy starts: the problem, or None."""
    if not args.pcap:
        return None if not (args.pcap_keys or args.pcap_headers_only or args.pcap_max_mb) \
            else "--pcap-keys, --pcap-headers-only and --pcap-max-mb need --pcap FILE"
    if args.pcap_max_mb < 0:
        return "--pcap-max-mb must be 0 (no bound) or more"
    from tlsinspector.addons.logfile import LogFileError, open_regular

    try:  # not truncated here: the addon does that when the proxy starts
        os.close(open_regular(args.pcap, 0, "the pcapng"))
    except LogFileError as e:
        return str(e)
    if args.pcap_keys == OWN_KEYS and not getattr(args, "intercept", False):
        return ("--pcap-keys needs a KEYLOG file (only with --intercept does the "
                "inspector hold keys of its own)")
    if args.pcap_keys and args.pcap_keys != OWN_KEYS and not os.path.isfile(args.pcap_keys):
        return f"--pcap-keys {args.pcap_keys}: no such key log file"
    return None


def pcap_options(args: argparse.Namespace) -> dict[str, Any] | None:
    if not args.pcap:
        return None
    own = args.pcap_keys is not None and getattr(args, "intercept", False)
    return {"tlsinspector_pcap": args.pcap, "tlsinspector_pcap_max_mb": args.pcap_max_mb,
            "tlsinspector_pcap_headers_only": args.pcap_headers_only,
            "tlsinspector_pcap_keys": "" if args.pcap_keys in (None, OWN_KEYS)
            else args.pcap_keys, "tlsinspector_pcap_own_keys": own}


def _diagnosis(close: Json, sink: Sink, prefix: str = "") -> None:
    if sink.quiet:
        for d in close.get("diagnosis", []):
            print(f"{prefix}diagnosis {d['code']}: {d['summary']} ({d['reference']})")


def run(args: argparse.Namespace) -> int:
    from tlsinspector.addons.logfile import LogFileError

    prog = f"tlsinspector {args.command}"
    try:
        sink = Sink(args.log, args.quiet)
    except OSError as e:  # the path is the user's, or a customer's file name
        why = str(e) if isinstance(e, LogFileError) else \
            f"cannot write the log {terminal_safe(args.log)}: {e.strerror}"
        print(f"{prog}: {why}", file=sys.stderr)
        return 2
    try:
        if args.command == "replay":
            return _replay(args, sink)
        if bool(args.hex) == bool(args.capture):
            print(f"{prog}: give a CAPTURE file or --hex FILE (one of them)", file=sys.stderr)
            return 2
        keylog = read_keylogs(args.keylog) if args.keylog else None
        if args.hex:
            _diagnosis(analyze_hex(args.hex, sink, time.time(), keylog), sink)
            return 0
        filters = Filters(set(args.conn) if args.conn else None, args.port, args.sni)
        for close in analyze_capture(args.capture, sink, filters, keylog):
            _diagnosis(close, sink, f"[{close['conn']}] ")
        return 0
    except InputError as e:
        print(f"{prog}: {terminal_safe(str(e))}", file=sys.stderr)
        return 2
    finally:
        sink.close()


def _not_a_log(path: str) -> None:
    """A JSON Lines log cannot be replayed: it keeps each hello's decoded fields, not
    its bytes (extension bodies, GREASE values and their order would have to be
    guessed), and byte for byte is the point of a replay. The run's --pcap has them."""
    try:
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from e
    if head.startswith(b'{"event"'):
        raise InputError(
            f"{path} is a JSON Lines log: it holds each ClientHello's decoded fields, not "
            "its bytes, so it cannot be replayed byte for byte. Replay from a capture of "
            "the same run instead (`tlsinspector run ... --pcap both-legs.pcapng`, then "
            "`tlsinspector replay both-legs.pcapng --conn N --server HOST:PORT`, N as "
            "`tlsinspector analyze both-legs.pcapng` numbers the connections)")


def _replay(args: argparse.Namespace, sink: Sink) -> int:
    from tlsinspector.cli import parse_hostport

    try:
        host, port = parse_hostport(args.server, "--server")
    except argparse.ArgumentTypeError as e:
        raise InputError(str(e)) from e
    if args.capture and not args.hex:
        _not_a_log(args.capture)  # a JSONL log says why it cannot be replayed, --conn or not
    if bool(args.hex) == bool(args.capture) or (args.capture and args.conn is None):
        raise InputError("give --hex FILE, or CAPTURE with --conn N")
    if args.hex:
        blocks = hex_blocks(args.hex)
    else:
        data = capture_client_bytes(args.capture, args.conn)
        blocks = [hexdump.Block("client", data, 0, 0, f"connection {args.conn}")]
    hello = client_hello_bytes(blocks)
    sink.say(f"[1] replaying {len(hello)} bytes of ClientHello to {host}:{port}")
    close, answer = replay(hello, host, port, sink, args.timeout)
    print(f"server answered {len(answer)} bytes"
          + (f": {answer[:64].hex(' ')}{' ...' if len(answer) > 64 else ''}" if answer else ""))
    _diagnosis(close, sink)
    return 0 if answer else 1
