"""The per-connection inspection engine, sans-io (DESIGN.md "Architecture").

Bytes from either side go in through :meth:`Connection.receive`; out come
:class:`Send`/:class:`Close` commands for the proxy, :class:`Emit` log events
and :class:`Wakeup` requests for timed faults. Nothing here touches a socket, a
clock or a random source: ``now`` is passed in and the fault plan owns a seeded
generator.

Transparency: a direction with no fault that may still apply is forwarded
chunk by chunk as it arrives (the framer parses a copy for the log). Only while
a fault may need them are bytes held back, and then only up to a record
boundary; once no fault can apply any more, the direction falls back to
forwarding chunks at once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from tlsinspector.proxy import messages, names
from tlsinspector.proxy.handshake import (
    CLIENT_HELLO,
    FINISHED,
    HELLO_REQUEST,
    SERVER_HELLO,
    HandshakeMessage,
    HandshakeReassembler,
)
from tlsinspector.proxy.hello import ClientHello, ServerHello
from tlsinspector.proxy.history import (
    AlertSeen,
    Anomaly,
    FaultSeen,
    HelloSeen,
    History,
    Side,
    other,
)
from tlsinspector.proxy.records import (
    ALERT,
    APPLICATION_DATA,
    CHANGE_CIPHER_SPEC,
    HANDSHAKE,
    Opaque,
    Record,
    RecordFramer,
    preview,
)

TLS13 = 0x0304
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


Output = Send | Close | Wakeup | Emit
# Outputs are plain (not frozen) dataclasses: they are made per record on the
# fast path, and a frozen __init__ costs three times as much.


@dataclass(frozen=True, slots=True)
class RecordView:
    """What a fault may match on: the record plus what the engine knows of it."""

    side: Side
    index: int
    record: Record
    encrypted: bool
    handshake_types: tuple[int, ...]   # types of messages starting in this record
    connection: int
    sni: str | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """A fault's verdict on one record (produced by :mod:`proxy.faults`)."""

    to_receiver: bytes | None            # None: forward the record unchanged
    to_sender: bytes = b""
    close: tuple[Literal["fin", "rst"], Literal["client", "server", "both"]] | None = None
    delay: float = 0.0                   # seconds to hold this and later bytes
    split: tuple[int, float] | None = None   # (write size, pause seconds)
    faults: tuple[FaultSeen, ...] = ()   # the faults that matched, logged on the record


class FaultPlan(Protocol):
    def may_apply(self, side: Side, records_seen: int) -> bool: ...

    def on_record(self, view: RecordView) -> Outcome | None: ...

    def wants_whole_hello(self, side: Side) -> bool: ...

    def unapplied(self) -> list[str]: ...


class _Direction:
    __slots__ = ("side", "framer", "hs", "index", "protected", "passthrough", "bytes",
                 "eof", "finished", "out", "queued", "wake_at", "held", "closed", "fast")

    def __init__(self, side: Side, passthrough: bool) -> None:
        self.side: Side = side
        self.framer = RecordFramer()
        self.hs = HandshakeReassembler()
        self.index = 0               # records seen from this side
        self.protected = False       # records from here are encrypted (CCS / TLS 1.3 keys)
        self.passthrough = passthrough
        self.bytes = 0
        self.eof = False
        self.finished = False        # sent its Finished (encrypted handshake after CCS)
        self.held: list[Record] = []  # records of a hello a fault is waiting to see whole
        self.closed = False           # a fault closed the stream toward this side
        self.fast = False             # after the handshake: boundaries only (RecordFramer.skim)
        # Bytes and closes *toward* this side that wait for a delay to pass.
        self.out: deque[tuple[float, bytes | Close]] = deque()
        self.queued = 0               # bytes in ``out``
        self.wake_at: float | None = None  # the Wakeup asked for and not yet answered


class Connection:
    """One proxied TCP connection: the client side and the server side."""

    def __init__(
        self,
        conn_id: str,
        client: str,
        server: str,
        mode: str = "reverse",
        *,
        number: int = 1,
        faults: FaultPlan | None = None,
        log_app_data: bool = True,
    ) -> None:
        self.conn_id = conn_id
        self.client_addr = client
        self.server_addr = server
        self.mode = mode
        self.number = number
        self.faults = faults
        self.log_app_data = log_app_data
        self.history = History()
        self.sni: str | None = None
        self._dirs = {
            "client": _Direction("client", not self._may_fault("client", 0)),
            "server": _Direction("server", not self._may_fault("server", 0)),
        }
        self._closed = False

    # -- public API ---------------------------------------------------------

    def start(self, now: float) -> list[Output]:
        return [Emit(self._event("connect", now, client=self.client_addr,
                                 server=self.server_addr, mode=self.mode))]

    def receive(self, side: Side, data: bytes, now: float) -> list[Output]:
        d = self._dirs[side]
        d.bytes += len(data)
        out: list[Output] = []
        if d.fast:
            self._skim(d, data, now, out)
            self._send(other(side), data, now, out)
            return out
        was_passthrough = d.passthrough
        items = d.framer.feed(data)
        for item in items:
            if isinstance(item, Record):
                self._on_record(d, item, now, out, deliver=not was_passthrough)
            else:
                self._on_opaque(d, item, now, out, forward=not was_passthrough)
        if was_passthrough:
            self._send(other(side), data, now, out)
        elif d.passthrough:
            # A fault plan just ran out: release the partial record we held.
            held = d.framer.held_bytes()
            if held:
                self._send(other(side), held, now, out)
        if self._may_go_fast(d):
            d.fast = True
        return out

    def _may_go_fast(self, d: _Direction) -> bool:
        """After the handshake, with no fault left, a direction only needs record
        boundaries: no parsing or payload copies (and no events unless asked)."""
        h = self.history
        done = d.protected and (h.negotiated_version == TLS13 or d.finished)
        return (d.passthrough and done and d.framer.buffered == 0 and not d.framer.opaque
                and (self.faults is None or not self.faults.may_apply(d.side, d.index)))

    def _skim(self, d: _Direction, data: bytes, now: float, out: list[Output]) -> None:
        h = self.history
        log, ts, side, conn = self.log_app_data, round(now, 6), d.side, self.conn_id
        for item in d.framer.skim(data):
            if isinstance(item, Opaque):
                self._on_opaque(d, item, now, out, forward=False)
                continue
            d.index += 1
            if item.content_type == APPLICATION_DATA:
                h.app_records[side] += 1
                if log:
                    out.append(Emit({"event": "record", "ts": ts, "conn": conn, "from": side,
                                     "index": d.index, "content_type": "application_data",
                                     "version": names.hex4(item.version), "length": item.length,
                                     "encrypted": True}))
                continue
            # Rare after the handshake (an encrypted alert, a renegotiation): log the header.
            ev: Json = {"from": d.side, "index": d.index,
                        "content_type": names.content_type_name(item.content_type),
                        "version": names.hex4(item.version), "length": item.length,
                        "encrypted": item.content_type != CHANGE_CIPHER_SPEC}
            if item.content_type == HANDSHAKE and self._established():
                ev["note"] = "encrypted handshake record after the handshake"
                h.add(h.anomalies, Anomaly(d.side, d.index, "encrypted_renegotiation",
                                           ev["note"]))
            out.append(Emit(self._event("record", now, **ev)))

    def eof(self, side: Side, now: float) -> list[Output]:
        """``side`` closed its sending half (FIN, or the connection went away)."""
        d = self._dirs[side]
        if d.eof:
            return []
        d.eof = True
        if self.history.closed_by is None:
            self.history.closed_by = side
        out: list[Output] = []
        if d.held:
            # The stream ended inside a hello a fault was waiting for: let it go as it was.
            self._send(other(side), b"".join(r.raw for r in d.held), now, out)
            d.held = []
        if d.fast and d.framer.in_record:
            h = self.history
            why = f"partial record at close ({d.framer.missing} bytes missing)"
            h.add(h.anomalies, Anomaly(side, d.index, "partial_record", why))
            out.append(Emit(self._event("record", now, **{"from": side}, index=d.index,
                                        unparsed=why, length=d.framer.missing)))
        rest = None if d.fast else d.framer.close()
        if rest is not None:
            self._on_opaque(d, rest, now, out, forward=not d.passthrough)
        self._queue_close(other(side), Close(other(side), "fin"), now, out)
        return out

    def wakeup(self, now: float) -> list[Output]:
        out: list[Output] = []
        for side in ("client", "server"):
            d = self._dirs[side]
            # A timer fired (possibly a little early: timers and clocks round):
            # flush what is due and ask again for whatever is still ahead.
            d.wake_at = None
            self._flush(d, now, out)
        return out

    def finish(self, now: float, by: str | None = None) -> list[Output]:
        """The proxy is done with the connection: emit the close event once."""
        if self._closed:
            return []
        self._closed = True
        from tlsinspector.proxy import diagnosis  # local: diagnosis is optional at import time

        h = self.history
        if self.faults is not None:
            h.unapplied_faults.extend(self.faults.unapplied())
        h.records = {s: self._dirs[s].index for s in ("client", "server")}
        findings = [f.to_json() for f in diagnosis.diagnose(h)]
        return [Emit(self._event(
            "close", now,
            by=by or h.closed_by or "proxy",
            sni=self.sni,
            bytes={"client": self._dirs["client"].bytes, "server": self._dirs["server"].bytes},
            records=dict(h.records),
            diagnosis=findings,
        ))]

    @property
    def pending_timers(self) -> bool:
        return any(d.out for d in self._dirs.values())

    def backlog(self, to: Side) -> int:
        """Bytes toward ``to`` that wait for a delay or a paced write: the proxy
        stops reading from the other side while this is above its bound."""
        return self._dirs[to].queued

    # -- internals ----------------------------------------------------------

    def _may_fault(self, side: Side, seen: int) -> bool:
        return self.faults is not None and self.faults.may_apply(side, seen)

    def _event(self, name: str, now: float, **fields: Any) -> Json:
        return {"event": name, "ts": round(now, 6), "conn": self.conn_id, **fields}

    def _on_opaque(self, d: _Direction, item: Opaque, now: float, out: list[Output],
                   forward: bool) -> None:
        h = self.history
        if item.reason.startswith("partial record"):
            h.add(h.anomalies, Anomaly(d.side, d.index + 1, "partial_record", item.reason))
            out.append(Emit(self._event(
                "record", now, **{"from": d.side}, index=d.index + 1, unparsed=item.reason,
                length=len(item.raw))))
        else:
            kind = "sslv2_client_hello" if item.reason.startswith("SSLv2") else "non_tls"
            h.add(h.anomalies, Anomaly(d.side, None, kind, item.reason, preview(item.raw)))
            out.append(Emit(self._event(
                "non_tls", now, **{"from": d.side}, length=len(item.raw), reason=item.reason,
                preview=preview(item.raw))))
        if forward:
            self._send(other(d.side), item.raw, now, out)

    def _encrypted(self, d: _Direction, rec: Record) -> bool:
        ct = rec.content_type
        if ct == APPLICATION_DATA:
            return True
        if ct == CHANGE_CIPHER_SPEC:
            return False
        if ct == ALERT:
            # A plaintext alert is exactly 2 bytes; a protected one carries a MAC
            # or AEAD tag (RFC 5246 6.2.3, RFC 8446 5.2), so length tells.
            return len(rec.payload) != 2
        return d.protected

    def _on_record(self, d: _Direction, rec: Record, now: float, out: list[Output],
                   deliver: bool) -> None:
        d.index += 1
        h = self.history
        encrypted = self._encrypted(d, rec)
        ev: Json = {
            "from": d.side,
            "index": d.index,
            "content_type": names.content_type_name(rec.content_type),
            "version": names.hex4(rec.version),
            "length": rec.length,
            "encrypted": encrypted,
        }
        if not 0x0300 <= rec.version <= 0x0304:
            h.add(h.anomalies, Anomaly(d.side, d.index, "record_version",
                                       f"record version {names.hex4(rec.version)}", rec.version))
        if rec.oversized:
            ev["oversized"] = True
            h.add(h.anomalies, Anomaly(d.side, d.index, "oversized",
                                       f"record of {len(rec.payload)} bytes"))
        hs_types: list[int] = []
        if rec.content_type == HANDSHAKE and not encrypted:
            msgs = d.hs.feed(rec.payload, d.index)
            described = []
            for msg in msgs:
                hs_types.append(msg.msg_type)
                described.append(self._on_message(d, rec, msg))
            frag = d.hs.fragment()
            if described:
                ev["messages"] = described
            if frag is not None:
                ev["fragment"] = {"have": frag.have, "want": frag.want}
                start_type = d.hs.pending_type()
                if start_type is not None and start_type not in hs_types:
                    hs_types.append(start_type)
        elif rec.content_type == HANDSHAKE and encrypted and self._established():
            note = ("encrypted handshake record after the handshake: a renegotiation "
                    "(ClientHello or HelloRequest, RFC 5746)"
                    if (self.history.negotiated_version or 0) < TLS13
                    else "post-handshake message")
            ev["note"] = note
            if (self.history.negotiated_version or 0) < TLS13:
                h.add(h.anomalies, Anomaly(d.side, d.index, "encrypted_renegotiation", note))
        elif rec.content_type == ALERT and not encrypted:
            alert = messages.describe_alert(rec.payload)
            if alert is not None:
                ev["alert"] = alert
                h.add(h.alerts, AlertSeen(d.side, d.index, rec.payload[0], rec.payload[1],
                                          rec.version, h.negotiated_version))
        elif rec.content_type == ALERT:
            ev["alert"] = "encrypted"
        elif rec.content_type == CHANGE_CIPHER_SPEC:
            if d.side == "server" and not h.server_hellos:
                h.add(h.anomalies, Anomaly(d.side, d.index, "early_ccs",
                                           "ChangeCipherSpec before the ServerHello"))
            if (h.negotiated_version or 0) < TLS13 and rec.payload == b"\x01":
                d.protected = True
                d.hs.reset()
        if encrypted and rec.content_type == HANDSHAKE and d.protected and not d.finished:
            d.finished = True
            h.handshake_done[d.side] = True
        if rec.content_type == APPLICATION_DATA:
            h.app_records[d.side] += 1

        outcome = None
        original = rec.raw
        if deliver and self.faults is not None:
            target, first = rec, d.index
            if rec.content_type == HANDSHAKE and not encrypted:
                if (d.hs.pending_type() in (CLIENT_HELLO, SERVER_HELLO)
                        and self.faults.wants_whole_hello(d.side)):
                    # A hello fault needs the whole message: hold this record
                    # until the one that completes the hello arrives.
                    d.held.append(rec)
                    ev["held"] = True
                    out.append(Emit(self._event("record", now, **ev)))
                    return
                if d.held:
                    held, d.held = [*d.held, rec], []
                    first = d.index - len(held) + 1
                    original = b"".join(r.raw for r in held)
                    target = Record(rec.content_type, held[0].version,
                                    b"".join(r.payload for r in held))
            view = RecordView(d.side, first, target, encrypted, tuple(hs_types), self.number,
                              self.sni)
            outcome = self.faults.on_record(view)
            if not self.faults.may_apply(d.side, d.index):
                d.passthrough = True
        if outcome is not None and outcome.faults:
            logged = [f.to_json() for f in outcome.faults]
            ev["fault"] = logged[0] if len(logged) == 1 else logged
            for f in outcome.faults:
                h.add(h.faults, replace(f, side=d.side, index=d.index))
            if hs_types and outcome.to_receiver:
                self._hello_as_delivered(d.side, outcome.to_receiver)
        if self.log_app_data or rec.content_type != APPLICATION_DATA or outcome is not None:
            out.append(Emit(self._event("record", now, **ev)))
        if deliver:
            self._deliver(d, original, outcome, now, out)

    def _deliver(self, d: _Direction, original: bytes, outcome: Outcome | None, now: float,
                 out: list[Output]) -> None:
        to = other(d.side)
        if outcome is None:
            self._send(to, original, now, out)
            return
        if outcome.to_sender:
            self._send(d.side, outcome.to_sender, now, out)
        data = original if outcome.to_receiver is None else outcome.to_receiver
        when = now + outcome.delay
        if outcome.split is not None and data:
            size, pause = outcome.split
            for i in range(0, len(data), size):
                self._queue(to, data[i : i + size], when, now, out)
                when += pause
        elif data:
            self._queue(to, data, when, now, out)
        if outcome.close is not None:
            if self.history.closed_by is None:
                self.history.closed_by = "proxy"
            how, toward = outcome.close
            targets: tuple[Side, ...] = ("client", "server") if toward == "both" else (toward,)
            for t in targets:
                self._queue_close(t, Close(t, how), now, out, when)
                # Nothing reaches a side after the fault closed the stream toward it.
                self._dirs[t].closed = True
            for t in ("client", "server"):
                self._dirs[t].passthrough = True

    def _on_message(self, d: _Direction, rec: Record, msg: HandshakeMessage) -> Json:
        desc, hello = messages.describe(msg)
        h = self.history
        start = msg.records[0] if msg.records else d.index
        if isinstance(hello, ClientHello):
            reneg = self._established()
            if reneg:
                desc["renegotiation"] = True
            h.add(h.client_hellos, HelloSeen(d.side, start, rec.version, hello, reneg))
            if self.sni is None and "sni" in desc:
                self.sni = str(desc["sni"])
        elif isinstance(hello, ServerHello):
            h.add(h.server_hellos, HelloSeen(d.side, start, rec.version, hello))
            if not hello.is_hrr:
                h.negotiated_version = hello.selected_version
                if hello.selected_version == TLS13:
                    # RFC 8446 2: everything after the ServerHello is protected,
                    # both ways (the client switches once it has processed it).
                    for x in self._dirs.values():
                        x.protected = True
                        x.hs.reset()
        elif msg.msg_type == FINISHED:
            d.finished = True
            h.handshake_done[d.side] = True
        elif msg.msg_type == HELLO_REQUEST and self._established():
            desc["renegotiation"] = True
        return desc

    def _hello_as_delivered(self, side: Side, data: bytes) -> None:
        """Diagnosis judges the hello the peer received, so a rewritten one replaces it."""
        hs = HandshakeReassembler()
        for item in RecordFramer().feed(data):
            if not isinstance(item, Record) or item.content_type != HANDSHAKE:
                continue
            for msg in hs.feed(item.payload, 0):
                _, hello = messages.describe(msg)
                seen = (self.history.client_hellos if isinstance(hello, ClientHello)
                        else self.history.server_hellos)
                if hello is not None and seen and seen[-1].side == side:
                    seen[-1] = replace(seen[-1], hello=hello)

    def _established(self) -> bool:
        done = self.history.handshake_done
        return done["client"] and done["server"]

    # -- outbound queues ------------------------------------------------------

    def _send(self, to: Side, data: bytes, now: float, out: list[Output]) -> None:
        if not data or self._dirs[to].closed:
            return
        d = self._dirs[to]
        if d.out:
            d.out.append((now, data))
            d.queued += len(data)
            self._flush(d, now, out)
        else:
            out.append(Send(to, data))

    def _queue(self, to: Side, data: bytes, when: float, now: float, out: list[Output]) -> None:
        d = self._dirs[to]
        if d.closed:
            return
        d.out.append((when, data))
        d.queued += len(data)
        self._flush(d, now, out)

    def _queue_close(self, to: Side, close: Close, now: float, out: list[Output],
                     when: float | None = None) -> None:
        q = self._dirs[to].out
        if not q and (when is None or when <= now):
            out.append(close)
            return
        q.append((now if when is None else when, close))
        self._flush(self._dirs[to], now, out)

    def _flush(self, d: _Direction, now: float, out: list[Output]) -> None:
        q = d.out
        while q:
            when, item = q[0]
            if when > now:
                # One pending Wakeup per direction: asking again for each read
                # or wakeup would pile up timers (one per chunk of a long delay).
                if d.wake_at is None or when < d.wake_at:
                    d.wake_at = when
                    out.append(Wakeup(when))
                return
            q.popleft()
            if isinstance(item, Close):
                out.append(item)
            else:
                d.queued -= len(item)
                out.append(Send(d.side, item))
