"""The per-connection inspection engine, sans-io (DESIGN.md "Architecture").

Bytes from either side go in through :meth:`Connection.receive`; out come
:class:`Send`/:class:`Close` commands for the proxy, :class:`Emit` log events
(:class:`EmitRecords` for a run of bulk records, when asked: :meth:`Connection.pack_records`)
and :class:`Wakeup` requests for timed faults. Nothing here touches a socket, a
clock or a random source: ``now`` is passed in and the fault plan owns a seeded
generator.

Each direction is in one :class:`~proxy.phases.Phase`, changed only through
the transition table :data:`~proxy.phases.TRANSITIONS` by
:func:`~proxy.phases.step` (the model is h11's ``_state.py``). Bytes toward
each side leave through its :class:`~proxy.outbox.Outbox`, which owns the
delay queue and its timer.

Transparency: a direction with no fault that may still apply is forwarded
chunk by chunk as it arrives (the framer parses a copy for the log). Only while
a fault may need them are bytes held back, and then only up to a record
boundary; once no fault can apply any more, the direction falls back to
forwarding chunks at once.

One error boundary per connection (the model is h11's ``_connection.py``): an
unexpected exception inside the engine is a bug, not the peers' fault, so it
never escapes into the proxy. The connection logs an ``internal_error`` event,
switches both directions to plain passthrough and forwards every byte not yet
delivered, in order; the peers see no difference from an unfaulted run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Literal, Protocol, cast

from tlsinspector.proxy import messages, names, plaintext, protected_messages
from tlsinspector.proxy.actions import ACTIONS, merge_records
from tlsinspector.proxy.certificate import printable
from tlsinspector.proxy.decrypt import ENCRYPT_THEN_MAC, Decrypted, Decryptor
from tlsinspector.proxy.handshake import (
    CERTIFICATE,
    CERTIFICATE_REQUEST,
    CLIENT_HELLO,
    FINISHED,
    HELLO_REQUEST,
    NEW_SESSION_TICKET,
    SERVER_HELLO,
    HandshakeMessage,
    HandshakeReassembler,
)
from tlsinspector.proxy.hello import ClientHello, ServerHello, parse_client_hello
from tlsinspector.proxy.history import (
    AlertSeen,
    Anomaly,
    DecryptedSeen,
    EncryptedSeen,
    FaultSeen,
    HelloSeen,
    History,
    Side,
    other,
)
from tlsinspector.proxy.keylog import KeyLog
from tlsinspector.proxy.outbox import (
    Close,
    Emit,
    EmitRecords,
    Outbox,
    Output,
    Send,
    Wakeup,
    events,
)
from tlsinspector.proxy.phases import (
    FINISHED_PHASES,
    PROTECTED_PHASES,
    TRANSITIONS,
    EngineError,
    Phase,
    Step,
    step,
)
from tlsinspector.proxy.records import (
    ALERT,
    APPLICATION_DATA,
    CHANGE_CIPHER_SPEC,
    HANDSHAKE,
    HEADER_LEN,
    HEARTBEAT,
    MAX_CIPHERTEXT,
    MAX_PLAINTEXT,
    Header,
    Opaque,
    Record,
    RecordFramer,
    Run,
    preview,
)
from tlsinspector.proxy.reseal import Resealer, ResealError
from tlsinspector.proxy.wire import DecodeError

TLS13 = names.TLS1_3
Json = dict[str, Any]
# With keys, application_data records above this many bytes after the handshake
# are bulk: counted (their sequence number) but never opened. Alerts,
# NewSessionTicket and KeyUpdate records are far smaller (RFC 8446 4.6, 6).
SMALL_RECORD = 512
KEEP_ALL = 1 << 15
# Keyless, an encrypted record of at most this many bytes may be an alert (the
# diagnosis keeps the last one, _count_encrypted); longer application_data
# records are bulk, counted and logged in runs (_skim_run).
ALERT_SIZED = 64
# A hello longer than this is refused by common stacks before it completes: Go caps
# a handshake message at 65536 bytes, OpenSSL a ClientHello at 131396.
HELLO_CAP = 1 << 16
# RFC 8446 5.1, RFC 5246 6.2.1: record types that are never zero-length.
EMPTY_FORBIDDEN = frozenset({CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE})
# The types _content_anomalies looks at (one set test per record on the lean path).
CHECKED_TYPES = EMPTY_FORBIDDEN | {HEARTBEAT}
# split-writes with pause_ms 0: the gap between writes (one turn of the event loop).
SPLIT_TURN = 0.0001
# Records queued per side while its keys are missing (a handshake flight is far
# fewer): at most 32 x 16 KiB held per direction; beyond, the side gives up.
MAX_PENDING = 32  # skim while a side is in its handshake epoch: keep every payload
# How long a fault that needs keys may hold a record whose keys have not arrived
# (seconds; --key-wait-ms). Then the fault is reported as not applied and the
# record goes on unchanged.
KEY_WAIT = 2.0
_LEVELS = {"warning": 1, "fatal": 2}
# Re-exported: the proxy side and the tests read them from here.
__all__ = ["TRANSITIONS", "Close", "Connection", "Emit", "EmitRecords", "EngineError",
           "FaultPlan", "Outbox", "Outcome", "Output", "Phase", "RecordView", "Send", "Step",
           "TimerOutcome", "Wakeup", "events", "step"]


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
    # With keys: the decrypted content as a plaintext record (inner type, outer
    # version, plaintext) and the handshake types starting in it, for faults that
    # match and change inside the encryption (match ``encrypted: true``).
    inner: Record | None = None
    inner_handshake_types: tuple[int, ...] = ()
    # For the content match keys (proxy/match_keys.py): the ClientHello/ServerHello
    # completed in this record, the (version, cipher suite) the ServerHello chose,
    # and the bytes passed both ways so far, this record included.
    hello: ClientHello | ServerHello | None = None
    negotiated: tuple[int, int] | None = None
    bytes_total: int = 0
    # The n-th record of its (header) content type from this side, 1-based (type_index).
    type_index: int = 0


@dataclass(frozen=True, slots=True)
class Outcome:
    """A fault's verdict on one record (produced by :mod:`proxy.faults`)."""

    to_receiver: bytes | None            # None: forward the record unchanged
    to_sender: bytes = b""
    close: tuple[Literal["fin", "rst"], Literal["client", "server", "both"]] | None = None
    delay: float = 0.0                   # seconds to hold this and later bytes
    split: tuple[int, float] | None = None   # (write size, pause seconds)
    faults: tuple[FaultSeen, ...] = ()   # the faults that matched, logged on the record
    # Inside encryption: plaintext records to seal in place of the record, and
    # plaintext records to seal toward the sender (reply-alert); the engine seals.
    inner: tuple[Record, ...] | None = None
    inner_to_sender: tuple[Record, ...] = ()
    # coalesce: (records, "record" | "write", wait seconds) gathered toward the receiver.
    gather: tuple[int, Literal["record", "write"], float] | None = None


@dataclass(frozen=True, slots=True)
class TimerOutcome:
    """What timer faults (after_ms, idle_ms) do when their time comes: bytes toward
    each side (alerts), then a close; no record is involved."""

    to_client: bytes = b""
    to_server: bytes = b""
    close: tuple[Literal["fin", "rst"], Literal["client", "server", "both"]] | None = None
    faults: tuple[FaultSeen, ...] = ()


@dataclass(frozen=True, slots=True)
class PlainOutcome:
    """A fault's verdict on one plaintext unit (proxy/faults.py, ``plaintext`` match)."""

    to_receiver: bytes                   # b"": the unit is dropped
    to_sender: bytes = b""               # an answer in the proxy's name (an error reply)
    faults: tuple[FaultSeen, ...] = ()


# Handshake messages a TLS 1.2 peer sends in the clear that the log decodes beyond
# their type and length, as it decodes them when decrypted (protected_messages).
IN_THE_CLEAR_DECODED = frozenset({CERTIFICATE, CERTIFICATE_REQUEST, NEW_SESSION_TICKET})


def _fault_names(faults: tuple[FaultSeen, ...], where: str) -> str:
    """``scenario: action`` of each fault and ``where`` it acted, for the log's
    ``undelivered``."""
    return (", ".join(f"{f.scenario}: {f.action}" for f in faults) or "?") + " " + where


def _wants_plaintext(faults: FaultPlan) -> bool:
    wants = getattr(faults, "wants_plaintext", None)
    return bool(wants()) if callable(wants) else False


class FaultPlan(Protocol):
    def next_timer(self, started: float, last: float) -> float | None: ...

    def on_timer(self, now: float, started: float, last: float) -> TimerOutcome | None: ...

    def may_apply(self, side: Side, records_seen: int) -> bool: ...

    def on_record(self, view: RecordView) -> Outcome | None: ...

    def wants_whole_hello(self, side: Side) -> bool: ...

    def wants_inside(self, side: Side) -> bool: ...

    def may_need_keys(self, side: Side, index: int, outer: int | None = None) -> bool: ...

    def give_up_keys(self, side: Side, index: int, reason: str,
                     outer: int | None = None) -> tuple[FaultSeen, ...]: ...

    def unapplied(self, records: Mapping[str, int] | None = None) -> list[str]: ...

    def on_plaintext(self, unit: plaintext.Unit, number: int) -> PlainOutcome | None: ...


@dataclass(slots=True)
class _KeyHeld:
    """A record (or non-TLS bytes: ``rec`` None) held while a fault waits for keys."""

    raw: bytes
    index: int
    since: float
    rec: Record | None = None
    encrypted: bool = False
    hs_types: tuple[int, ...] = ()
    res: Decrypted | None = None   # updated when late keys open it


# -- one direction's inbound state ----------------------------------------------------


class _Direction:
    __slots__ = ("side", "framer", "hs", "index", "by_type", "phase", "passthrough", "bytes",
                 "held",
                 "outbox", "committed", "chunk_sent", "framed", "gather", "gather_left",
                 "gather_into", "gather_due", "key_hold", "eof_held", "wake_for")

    def __init__(self, side: Side, passthrough: bool) -> None:
        self.side: Side = side
        self.framer = RecordFramer()
        self.hs = HandshakeReassembler()
        self.index = 0               # records seen from this side
        # Records seen per header content type, when a fault has type_index (else
        # None). Counted on the record path only: a side takes the lean paths once no
        # fault may apply to it.
        self.by_type: dict[int, int] | None = None
        self.phase = Phase.HANDSHAKE
        # No fault may apply any more: chunks are forwarded as they come (a copy
        # is parsed for the log) instead of record by record.
        self.passthrough = passthrough
        self.bytes = 0
        self.framed = 0               # bytes of the records seen (after_bytes counts them)
        # coalesce: bytes gathered toward the other side, records still to gather,
        # how to join them, and when to send what came anyway.
        self.gather: list[bytes] = []
        self.gather_left = 0
        self.gather_into: Literal["record", "write"] = "record"
        self.gather_due: float | None = None
        self.held: list[Record] = []  # records of a hello a fault is waiting to see whole
        # Records held while a fault that needs keys waits for them (bounded by
        # Connection.key_wait per record), in order; the side's EOF waits behind them.
        self.key_hold: list[_KeyHeld] = []
        self.eof_held = False
        self.wake_for: float | None = None  # the hold deadline a Wakeup was asked for
        self.outbox = Outbox(other(side))  # bytes toward the *other* side
        # For the error boundary: how far the current chunk got.
        self.committed = 0            # its items handled (delivered, or held in ``held``)
        self.chunk_sent = False       # its bytes (passthrough) or held tail went out

    def to(self, event: Step) -> None:
        self.phase = step(self.phase, event)

    @property
    def protected(self) -> bool:
        return self.phase in PROTECTED_PHASES

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED_PHASES

    @property
    def fast(self) -> bool:
        return self.phase is Phase.SKIM


NO_SIDES: frozenset[Side] = frozenset()
NO_COUNTS = cast(dict[str, int], MappingProxyType({"client": 0, "server": 0}))


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
        log_preview: bool = False,
        keylog: KeyLog | None = None,
        key_wait: float = KEY_WAIT,
        protocol: str | None = None,
        key_owner: Any = None,
    ) -> None:
        """``key_owner``: with ``keylog``, pinned in it beside this connection's client
        randoms (KeyLog.owners): the proxy side's handle to call :meth:`keys_arrived`
        on when the shared key log gains one of them (held weakly there)."""
        self.conn_id = conn_id
        self.client_addr = client
        self.server_addr = server
        self.mode = mode
        self.number = number
        self.faults = faults
        self.log_app_data = log_app_data
        # Non-TLS bytes are application data (a plaintext request with its
        # credentials): logged as length and reason only unless asked.
        self.log_preview = log_preview
        self.history = History()
        # Per record logged pending: whether its sender's peer had left by then
        # (_note_decrypted; made on first use, emptied as late results come).
        self._left_when: dict[tuple[Side, int], bool] | None = None
        # Key log decryption (issue 14): the shared KeyLog is only read, through
        # Decryptor.keys_from; the proxy side feeds it and calls keys_arrived().
        self.keylog = keylog
        self.key_wait = key_wait
        # key_wait bounds decryption's wait as well as a fault's (Decryptor.key_wait):
        # a connection whose keys never come falls back to the bulk path after it.
        self._dec = (Decryptor(MAX_PENDING, hellos_from_caller=True, key_wait=key_wait,
                               owner=key_owner)
                     if keylog is not None else None)
        self.history.keys = keylog is not None
        if keylog is None:
            # Counted only with keys, and ``records`` is set by finish(): every keyless
            # connection shares these zeros, read-only (issue 19's RSS row: three
            # dicts per idle connection). A write would raise, never count silently.
            h = self.history
            h.undecryptable = h.inner_app = h.records = NO_COUNTS
        # Faults inside encryption: per direction, the sequence-number shift of
        # what the proxy inserted or dropped (proxy/reseal.py).
        # Made on first use (_resealer): only a fault inside the encryption needs one, and
        # 10,000 idle connections would each hold two (issue 19's RSS row).
        self._reseal: dict[Side, Resealer] = {}
        self.sni: str | None = None
        self._dirs = {
            "client": _Direction("client", not self._may_fault("client", 0)),
            "server": _Direction("server", not self._may_fault("server", 0)),
        }
        if getattr(faults, "counts_types", False):
            # A fault with type_index: count records per content type (only then:
            # issue 19's RSS row counts every dict of an idle connection).
            for d in self._dirs.values():
                d.by_type = {}
        self._closed = False
        self._broken = False
        # Timer faults (after_ms, idle_ms): when the connection opened, when the last
        # byte passed either way, and the Wakeup asked for (one at a time).
        self._started: float | None = None
        self._last = 0.0
        self._timer_at: float | None = None
        self._hello_now: ClientHello | ServerHello | None = None  # completed in this record
        # Sides that receive paced writes (split-writes): the proxy turns off Nagle's
        # algorithm toward them, or the kernel merges the small writes again.
        # Replaced when a side is added: every connection shares the empty one.
        self.split_toward: frozenset[Side] = NO_SIDES
        # The plaintext phase (issue 17): STARTTLS protocols, detected from the bytes
        # unless ``protocol`` names one. A connection whose client starts with TLS
        # leaves it at its first byte. Whole lines are held only for plaintext faults.
        hold = faults is not None and _wants_plaintext(faults)
        self._plain: plaintext.Session | None = plaintext.Session(protocol, hold)
        self.history.plain = self._plain
        self._packed = False  # see pack_records

    # -- public API: each call is an error boundary ------------------------------------

    def start(self, now: float) -> list[Output]:
        out: list[Output] = [Emit(self._event("connect", now, client=self.client_addr,
                                              server=self.server_addr, mode=self.mode))]
        self.history.started_at = now
        self._started = self._last = now
        self._timers(now, out)
        return out

    def upstream_unreachable(self, now: float, error: str) -> list[Output]:
        """Opening the upstream connection failed (``error``: the OS error as the
        proxy got it, e.g. "[Errno 111] Connection refused"): the error event, and
        the fact for the close event's diagnosis (upstream-unreachable)."""
        text = printable(error, 200)
        self.history.upstream_error = (self.server_addr, text)
        self.history.closed_by = self.history.closed_by or "proxy"
        return [Emit(self._event("error", now,
                                 message=f"upstream {self.server_addr} unreachable: {text}"))]

    def pack_records(self) -> None:
        """From now on, the events of a run of bulk application_data records come as
        one :class:`EmitRecords` instead of an :class:`Emit` each: for a caller that
        unpacks them (:func:`events`), as the hot relay does (issue 19)."""
        self._packed = True

    def forwards_unchanged(self, side: Side, data: bytes) -> bool:
        """Whether ``data``, the next chunk from ``side``, goes on exactly as it comes,
        at once: no fault can still apply, nothing of that direction waits (a held
        hello, records held for keys, a gather, a delay queue), no plaintext protocol
        holds it (a client's first bytes pass when they start TLS, see
        plaintext.Session.passes). The proxy may then write the chunk *before*
        :meth:`receive` looks at it (``forwarded=True``): the parsing, the decryption
        and the log no longer delay the peer. With a key log that is most of what a
        TLS 1.3 handshake costs the proxy (opening the server's flight, decoding the
        certificate chain), off each handshake's round trips (issue 14)."""
        d = self._dirs[side]
        box = self._outbox(other(side))
        plain = self._plain
        return (d.passthrough and not d.held and not d.key_hold and not d.gather
                and not box.items and not box.closed and d.phase is not Phase.CLOSED
                and (plain is None or plain.passes(side, data))
                and not self.fault_may_apply())

    def receive(self, side: Side, data: bytes, now: float,
                forwarded: bool = False) -> list[Output]:
        """``side`` sent ``data``. ``forwarded``: the caller already wrote it toward the
        other side, as :meth:`forwards_unchanged` allowed just before; the outputs
        then have no Send of it."""
        self.history.last_from[side] = now
        box = self._outbox(other(side))
        closed_before = box.closed
        out = self._receive_chunk(side, data, now)
        if box.closed:
            out = self._undelivered(side, box, closed_before, out)
        if forwarded:
            # The one Send of this chunk toward the other side (a passthrough chunk
            # goes on as it came, whole: see _receive and _skim). Almost always the
            # very object: ``is`` first, since == on a memoryview (the hot relay's
            # read buffer) compares item by item, not with memcmp (it was 54% of the
            # proxy's CPU in a bulk download before this test came first).
            # From the end: it comes after the chunk's record events (one per record
            # of a download, issue 19), and the chunk has one (see forwards_unchanged).
            to = other(side)
            for i in range(len(out) - 1, -1, -1):
                o = out[i]
                if type(o) is Send and o.to == to and (o.data is data or o.data == data):
                    del out[i]
                    break
        if self._dec is not None:
            if self._dec.needs_keys():
                self._dec.expire(now)  # a side that sends nothing more stops waiting too
            note = self._dec.take_note()
            if note:  # once per connection: its keys never arrived (Decryptor._wait_over)
                out.append(Emit(self._event("note", now, note=note)))
        return self._sent(out, now)

    def _undelivered(self, side: Side, box: Outbox, closed_before: bool,
                     out: list[Output]) -> list[Output]:
        """A fault closed the stream toward the receiver of ``side``'s bytes: the records
        (and non-TLS bytes) ``side`` sent after that are logged as they came, with
        ``undelivered`` saying that the receiver never got them. A record a fault
        touched says what happened to it in its ``fault``."""
        why = f"the stream toward the {other(side)} was closed by fault {box.closed_why}"
        marked: list[Output] = []
        for o in out:
            if type(o) is EmitRecords:  # a run after the close: rare, unpacked to mark
                marked += [Emit(ev) for ev in o.events()]
            else:
                marked.append(o)
        for o in marked:
            if type(o) is not Emit or o.event.get("from") != side or "fault" in o.event:
                continue
            ev = o.event
            if (ev.get("event") == "record" and ev.get("index", 0) > box.closed_after) or (
                    ev.get("event") == "non_tls" and closed_before):
                ev["undelivered"] = why
        return marked

    def _sent(self, out: list[Output], now: float) -> list[Output]:
        """Note when bytes last went toward each side (a timeout names the silence)."""
        h = self.history
        for o in out:
            if type(o) is Send and o.to not in h.eof_at:  # what it got before it left
                h.last_to[o.to] = now
        return out

    def _receive_chunk(self, side: Side, data: bytes, now: float) -> list[Output]:
        d = self._dirs[side]
        d.bytes += len(data)
        self._last = now
        out: list[Output] = []
        if self._broken:
            self._outbox(other(side)).send(data, now, out)
            return out
        plain = self._plain
        if plain is not None and not plain.done[side]:
            try:
                data = self._plaintext(d, plain, data, now, out)
            except Exception as err:  # the boundary: what the session held goes on raw
                self._plain = None
                held = plain.unforwarded(side)
                return self._fail(err, d, held + data, [], True, now, out)
            if not plain.active and self._plain is not None:
                self._plain = None
                if not plain.lines and not plain.unasked and plain.protocol is None:
                    # A TLS-first connection: nothing for the diagnosis to read, and
                    # its buffers would stay for the connection's life (issue 19).
                    self.history.plain = None
                # The other side's first bytes were held while undetected: on now.
                held = plain.release(other(side))
                if held:
                    out += self.receive(other(side), held, now)
                    self._dirs[other(side)].bytes -= len(held)
            if not data:
                return out
        was_passthrough = d.passthrough
        items: list[Record | Opaque] = []
        d.committed, d.chunk_sent = 0, False
        try:
            if d.fast:
                self._skim(d, data, now, out)
                self._send(other(side), data, now, out)
                d.chunk_sent = True
                return out
            items = d.framer.feed(data)
            self._receive(d, items, data, was_passthrough, now, out)
            if self._dirs["client"].key_hold or self._dirs["server"].key_hold:
                self._release(now, out)
        except Exception as err:  # the boundary: a bug here must not cost a byte
            return self._fail(err, d, data, items, was_passthrough, now, out)
        return out

    def eof(self, side: Side, now: float) -> list[Output]:
        """``side`` closed its sending half (FIN, or the connection went away)."""
        d = self._dirs[side]
        if d.phase is Phase.CLOSED:
            return []
        self.history.eof_at.setdefault(side, now)
        out: list[Output] = []
        plain = self._plain
        if plain is not None and not plain.done[side] and not self._broken:
            undetected = plain.dialect is None
            held = plain.end(side)
            if held and undetected:
                out = self.receive(side, held, now)  # the record path says what it was
                d.bytes -= len(held)
            elif held:
                self._send(other(side), held, now, out)
        d.committed, d.chunk_sent = 0, False
        try:
            self._eof(d, now, out)
        except Exception as err:
            out = self._fail(err, d, b"", [], d.passthrough, now, out)
            if (d.phase, Step.EOF) in TRANSITIONS:  # not when _eof got that far
                d.to(Step.EOF)
            self._outbox(other(side)).close("fin", now, out)
        return self._sent(out, now)

    def wakeup(self, now: float) -> list[Output]:
        out: list[Output] = []
        for side in ("client", "server"):
            box = self._outbox(side)
            # A timer fired (possibly a little early: timers and clocks round):
            # flush what is due and ask again for whatever is still ahead.
            box.wake_at = None
            box.flush(now, out)
        for d in self._dirs.values():
            if d.gather_due is not None and now >= d.gather_due - 0.001:
                # Fewer records came than asked for.
                self._flush_gather(d, now, out, between_chunks=True)
        if self._timer_at is not None and now >= self._timer_at - 0.001:
            self._timer_at = None
            try:
                self._timers(now, out)
            except Exception as err:  # the boundary, as for bytes
                out.append(Emit(messages.internal_error_event(now, self.conn_id, None, err)))
        if self._broken or not self.holding_keys:
            return self._sent(out, now)
        for d in self._dirs.values():
            d.wake_for = None  # fired (maybe early): ask again for what is still ahead
        try:
            self._release(now, out)
        except Exception as err:  # the boundary, as in receive
            d = next(x for x in self._dirs.values() if x.key_hold)
            self._fail(err, d, b"", [], d.passthrough, now, out)
        return self._sent(out, now)

    def _timers(self, now: float, out: list[Output]) -> None:
        """Fire the timer faults that are due; ask for a Wakeup at the next one. An
        idle deadline that moved (bytes passed) is simply asked for again."""
        if (self.faults is None or self._started is None or self._closed or self._broken
                or self.history.closed_by == "proxy"):
            return
        outcome = self.faults.on_timer(now, self._started, self._last)
        if outcome is not None:
            self._timer_fired(outcome, now, out)
            self._last = now  # the proxy's own bytes count as activity
        due = self.faults.next_timer(self._started, self._last)
        if due is not None and due > now and (self._timer_at is None or due < self._timer_at):
            self._timer_at = due
            out.append(Wakeup(due))

    def _timer_fired(self, outcome: TimerOutcome, now: float, out: list[Output]) -> None:
        h = self.history
        for f in outcome.faults:
            # Its alert enters the stream of the side it speaks for: encrypted once that
            # side's records are (injected-plaintext-alert judges it as a record's).
            d = self._dirs[f.side]
            h.add(h.faults, replace(f, alert_encrypted=self._alert_encrypted(
                d, f, d.protected)))
        out.append(Emit(self._event("timer", now,
                                    fault=[f.to_json() for f in outcome.faults])))
        self._send("client", outcome.to_client, now, out)
        self._send("server", outcome.to_server, now, out)
        if outcome.close is not None:
            self._fault_close(outcome.close, now, now, out,
                              _fault_names(outcome.faults, "(a timer)"))

    def finish(self, now: float, by: str | None = None) -> list[Output]:
        """The proxy is done with the connection: emit the close event once."""
        if self._closed:
            return []
        # Keys the peers logged since the last poll (the key log timer runs every 50 ms;
        # a short connection often ends first): their records are completed before the
        # close event, so the diagnosis sees a decrypted alert and the close stays the
        # connection's last event unless a key is written after the connection ended.
        out: list[Output] = self.keys_arrived(now) if self.needs_keys else []
        if self._dec is not None and not self._broken:
            note = self._dec.close_note()
            if note:  # keys still missing at the close: said once, as a give-up is
                out.append(Emit(self._event("note", now, note=note)))
        self._closed = True
        if self._dec is not None:
            self._dec.release()  # its key log entries may be evicted from now on
        from tlsinspector.proxy import diagnosis  # local: diagnosis is optional at import time

        h = self.history
        try:
            h.records = {s: self._dirs[s].index for s in ("client", "server")}
            if self.faults is not None:
                # The engine's counts: the plan stops seeing records once no fault
                # can apply, so its own would disagree with the close event's.
                h.unapplied_faults.extend(self.faults.unapplied(h.records))
            h.finished_at = now
            findings = [f.to_json() for f in diagnosis.diagnose(h)]
        except Exception as err:  # a diagnosis bug still closes the connection's log
            out.append(Emit(messages.internal_error_event(now, self.conn_id, None, err)))
            findings = []
        close = self._event(
            "close", now,
            by=by or h.closed_by or "proxy",
            sni=self.sni,
            bytes={"client": self._dirs["client"].bytes, "server": self._dirs["server"].bytes},
            records=dict(h.records),
            diagnosis=findings,
        )
        # Bytes a side sent that a delay (or a paced write) still holds: counted in
        # "bytes" (the proxy read them) but not yet delivered when the connection ended.
        held = {s: self._outbox(other(s)).queued for s in ("client", "server")}
        if any(held.values()):
            close["held"] = held
        out.append(Emit(close))
        return out

    @property
    def closed(self) -> bool:
        """The close event went out: nothing more will be logged for this connection."""
        return self._closed

    @property
    def decryptor(self) -> Decryptor | None:
        """This connection's decryptor (None without --keylog): fed every record."""
        return self._dec

    @property
    def needs_keys(self) -> bool:
        """The decryptor waits for a secret: the proxy side should read the key log now."""
        return self._dec is not None and not self._broken and self._dec.needs_keys()

    @property
    def expects_keys(self) -> bool:
        """Keys for this connection are due (its handshake is under way): the proxy
        side reads the key log before calling :meth:`receive`."""
        return self._dec is not None and not self._broken and self._dec.expects_keys()

    def keys_arrived(self, now: float) -> list[Output]:
        """The key log grew: decrypt the records that waited for these keys and emit
        one ``decrypted`` event per record whose record event went out without it.

        Only events: records a fault holds for these keys go on at the next
        :meth:`wakeup` (or :meth:`receive`), which the proxy side calls while
        :attr:`holding_keys`."""
        if self._dec is None or self.keylog is None or self._broken:
            return []  # (after close too: late events are never dropped)
        out: list[Output] = []
        try:
            self._late(self._dec.keys_from(self.keylog), now, out)
        except Exception as err:  # the boundary: never lose the connection over a key
            out.append(Emit(messages.internal_error_event(now, self.conn_id, None, err)))
            self._dec = None
        return out

    def fault_may_apply(self) -> bool:
        """Can any configured fault still apply to this connection? False once every
        fault is spent, out of index range or for the other SNI; True while one with
        times left, a probability, an open index or an inside-encryption match may
        still fire (FaultPlan.may_apply is monotonic: once False for a side at its
        record count, it stays False)."""
        return self.faults is not None and any(
            self.faults.may_apply(d.side, d.index) for d in self._dirs.values())

    @property
    def relayable(self) -> bool:
        """Issue 19: the rest of this connection only needs its record headers
        skimmed. Both directions are past the handshake on the fast path (or the
        connection is :attr:`faultless`, handshake included), no fault can still
        apply, nothing is held or timed. The proxy may then relay on a
        leaner path, still handing every chunk to :meth:`receive` (the log, the
        counts and the diagnosis stay the same).

        With keys, the decryptor may still be opening the handshake's last records
        (:meth:`_skim` opens them as the full path does): the lean path then reads
        the key log around each chunk while :attr:`expects_keys` / :attr:`needs_keys`
        say so, as the full path does, until :attr:`settled`. Waiting for that on the
        full path kept a short connection (one request, one response) there for its
        whole life when a server logs the client's application secret only after
        reading the client's Finished (OpenSSL), about 0.4 ms of proxy CPU more per
        TLS 1.3 handshake (issue 14's handshakes/s row)."""
        dirs = self._dirs
        return (not self._broken and not self._closed
                and (self.faultless or self.handshakes_over)
                and not self.pending_timers and self._timer_at is None
                and not dirs["client"].held
                and not dirs["server"].held and not self.fault_may_apply())

    @property
    def faultless(self) -> bool:
        """No fault plan and no plaintext protocol (STARTTLS): nothing of this
        connection, its handshake included, needs more than :meth:`receive` on each
        chunk in order, so it is :attr:`relayable` from its first chunk on (issue 19:
        the handshake's later flights then skip mitmproxy's per-chunk layer too, about
        a tenth of the proxy's CPU per TLS 1.3 handshake). With keys the relay reads the
        key log around each chunk while they are due, as the full path does. With a
        fault plan or a plaintext protocol the handshake stays on the full path: a
        fault may hold or change a record, and plaintext commands have their timers."""
        return self.faults is None and self._plain is None

    @property
    def handshakes_over(self) -> bool:
        """Both directions are past their handshake, on the fast path."""
        return self._dirs["client"].fast and self._dirs["server"].fast

    @property
    def settled(self) -> bool:
        """:attr:`relayable`, and with keys the decryptor waits for nothing from the
        key log (:meth:`Decryptor.settled`: small records still open in
        :meth:`_skim`, bulk ones are counted): the chunks need no key log reads and
        no copies of their own any more."""
        return (self._dec is None or self._dec.settled()) and self.relayable

    @property
    def pending_timers(self) -> bool:
        """Something waits for a timer: a delay, a coalesce deadline, or records held
        for keys."""
        return (any(self._outbox(s).items for s in ("client", "server"))
                or any(d.gather for d in self._dirs.values()) or self.holding_keys)

    @property
    def only_delayed(self) -> bool:
        """What waits for a timer is only bytes (and closes) a delay or a paced write
        holds toward a side: nothing more to read or decide, just to deliver."""
        return (any(self._outbox(s).items for s in ("client", "server"))
                and not any(d.gather for d in self._dirs.values()) and not self.holding_keys)

    @property
    def holding_keys(self) -> bool:
        """A fault that needs keys holds records of a side until they arrive (or
        ``key_wait`` passes): the proxy should read the key log and call
        :meth:`keys_arrived` and :meth:`wakeup` every little while."""
        return bool(self._dirs["client"].key_hold or self._dirs["server"].key_hold)

    def backlog(self, to: Side) -> int:
        """Bytes toward ``to`` that wait for a delay or a paced write: the proxy
        stops reading from the other side while this is above its bound."""
        return self._outbox(to).queued

    # Python object overhead of one record held for a hello fault, beyond its bytes
    # (which the reassembler also holds): counts a 1-byte-record hello fairly.
    HELD_RECORD_COST = 128

    def held_bytes(self) -> int:
        """Bytes this connection keeps in memory (O(1)): partial records, messages
        being assembled, records held for a hello fault, bytes queued for a delay.
        The proxy sums this across connections for its global bound (--max-held)."""
        return sum(d.framer.buffered + d.hs.pending + self._outbox(d.side).queued
                   + len(d.held) * self.HELD_RECORD_COST
                   + sum(len(e.raw) + self.HELD_RECORD_COST for e in d.key_hold)
                   for d in self._dirs.values())

    def shed(self, now: float, why: str) -> list[Output]:
        """Under the global memory bound: give up assembling handshake messages on
        sides where that frees memory and loses nothing on the wire (their bytes
        went on already; nothing is held for a fault). Logs what was let go."""
        out: list[Output] = []
        for d in self._dirs.values():
            if d.held or not d.hs.pending:
                continue
            freed = d.hs.abandon(why)
            self.history.add(self.history.anomalies, Anomaly(d.side, d.index, "unparsed", why))
            out.append(Emit(self._event("held_limit", now, **{"from": d.side},
                                        action="unparsed", freed=freed, note=why)))
        return out

    # -- the error boundary -------------------------------------------------------------

    def _fail(self, err: Exception, d: _Direction, data: bytes, items: list[Record | Opaque],
              was_passthrough: bool, now: float, out: list[Output]) -> list[Output]:
        """Log ``internal_error``, then forward raw everything not yet forwarded, in order:
        held hello records, the chunk's records not yet delivered, a partial record.

        A record counts as delivered once _on_record returns. The one window this
        does not cover is a failure inside _deliver after part of a split or delayed
        record was queued: that record would go out again whole. _deliver only
        queues bytes the fault plan already produced, so nothing there parses.
        """
        self._broken = True
        out.append(Emit(messages.internal_error_event(now, self.conn_id, d.side, err)))
        for x in self._dirs.values():
            rest = self._unforwarded(x, x is d, data, items, was_passthrough)
            x.held = []
            x.key_hold = []
            x.passthrough = True
            x.to(Step.FAIL)
            self._send(other(x.side), rest, now, out)
            if x.eof_held:  # the side closed while a fault held its records for keys
                x.eof_held = False
                self._outbox(other(x.side)).close("fin", now, out)
        return out

    @staticmethod
    def _unforwarded(x: _Direction, failed: bool, data: bytes, items: list[Record | Opaque],
                     was_passthrough: bool) -> bytes:
        """The bytes from ``x`` the engine took in and has not passed on yet."""
        parts = [*x.gather, *(r.raw for r in x.held), *(e.raw for e in x.key_hold)]
        x.gather, x.gather_left, x.gather_due = [], 0, None
        if failed and was_passthrough:
            # A passthrough chunk goes out whole once parsed; its tail went with it.
            if not x.chunk_sent:
                parts.append(data)
            return b"".join(parts)
        if failed:
            parts += [i.raw for i in items[x.committed:]]
            if x.chunk_sent and x.passthrough:
                return b"".join(parts)  # the partial record went out when the plan ran out
        elif x.passthrough:
            return b"".join(parts)      # chunks went out as they came
        parts.append(x.framer.held_bytes())
        return b"".join(parts)

    # -- inbound ------------------------------------------------------------------------

    def _receive(self, d: _Direction, items: list[Record | Opaque], data: bytes,
                 was_passthrough: bool, now: float, out: list[Output]) -> None:
        d.committed = 0
        for item in items:
            if isinstance(item, Record):
                self._on_record(d, item, now, out, deliver=not was_passthrough)
            else:
                self._on_opaque(d, item, now, out, forward=not was_passthrough)
            d.committed += 1
        go_fast = self._may_go_fast(d)
        if was_passthrough:
            self._send(other(d.side), data, now, out)
        elif d.passthrough:
            # A fault plan just ran out: release the partial record we held.
            held = d.framer.held_bytes()
            if held:
                self._send(other(d.side), held, now, out)
        d.chunk_sent = True
        if go_fast:
            d.to(Step.SKIM)

    def _eof(self, d: _Direction, now: float, out: list[Output]) -> None:
        side = d.side
        was_fast = d.fast
        d.to(Step.EOF)
        if self.history.closed_by is None:
            self.history.closed_by = side
        if self._broken:
            self._outbox(other(side)).close("fin", now, out)
            return
        self._flush_gather(d, now, out, between_chunks=True)
        if d.key_hold:
            d.eof_held = True  # after the records a fault holds for keys
            return
        self._eof_rest(d, was_fast, now, out)

    def _eof_rest(self, d: _Direction, was_fast: bool, now: float, out: list[Output]) -> None:
        side = d.side
        if d.held:
            # The stream ended inside a hello a fault was waiting for: let it go as it was.
            self._send(other(side), b"".join(r.raw for r in d.held), now, out)
            d.held = []
        if was_fast and d.framer.in_record:
            h = self.history
            why = f"partial record at close ({d.framer.missing} bytes missing)"
            # A record whose header went out is d.index, logged already; one cut in its
            # header (or in a payload kept whole for the decryptor) was never counted.
            index = d.index if d.framer.header_out else d.index + 1
            h.add(h.anomalies, Anomaly(side, index, "partial_record", why,
                                       after_peer_left=self._peer_left(side)))
            out.append(Emit(self._event("record", now, **{"from": side}, index=index,
                                        unparsed=why, length=d.framer.missing)))
        rest = None if was_fast else d.framer.close()
        if rest is not None:
            self._on_opaque(d, rest, now, out, forward=not d.passthrough)
        self._outbox(other(side)).close("fin", now, out)

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
        dec = self._dec
        keep = 0 if dec is None else SMALL_RECORD if dec.bulk(side) else KEEP_ALL
        app_records = h.app_records
        # A download's records come packed in runs (_skim_run): keyless, every record
        # longer than an alert; with keys, those a bulk side would only count
        # (Decryptor.skip_run: their sequence numbers in one step), while smaller ones
        # and every record of a side still in its handshake go past the decryptor
        # (_skim_decrypt).
        for item in d.framer.skim(data, keep, ALERT_SIZED):
            if isinstance(item, Run):
                if dec is not None:
                    h.inner_app[side] += dec.skip_run(side, d.index + 1, item.version,
                                                      item.lengths, now)
                self._skim_run(d, item, ts, out)
                continue
            if isinstance(item, Opaque):
                self._on_opaque(d, item, now, out, forward=False)
                continue
            d.index += 1
            d.framed += 5 + item.length
            # As _on_record does: the diagnosis must not depend on segmentation.
            self._version_anomalies(side, item.version, d.index, 1, item.content_type)
            ctype, length = item.content_type, item.length
            over = length > MAX_CIPHERTEXT  # (never in a Run: records.py keeps it out)
            if over:
                h.add(h.anomalies, Anomaly(side, d.index, "oversized",
                                           f"record of {length} bytes"))
            if ctype in CHECKED_TYPES:
                self._content_anomalies(side, d.index, ctype, length, item.payload, True)
            if ctype != CHANGE_CIPHER_SPEC:
                self._count_encrypted(side, d.index, ctype, length)
            if dec is not None and self._skim_decrypt(d, item, now, out):
                continue
            if ctype == APPLICATION_DATA:
                app_records[side] += 1
                if log:
                    ev = messages.app_data_event(ts, conn, side, d.index, item.version, length)
                    if over:
                        ev["oversized"] = True
                    out.append(Emit(ev))
                continue
            # Rare after the handshake (an encrypted alert, a renegotiation): log the header.
            ev = {"from": d.side, "index": d.index,
                  "content_type": names.content_type_name(item.content_type),
                  "version": names.hex4(item.version), "length": item.length,
                  "encrypted": item.content_type != CHANGE_CIPHER_SPEC}
            if over:
                ev["oversized"] = True
            if item.content_type == HANDSHAKE and self._established():
                ev["note"] = "encrypted handshake record after the handshake"
                h.add(h.anomalies, Anomaly(d.side, d.index, "encrypted_renegotiation",
                                           ev["note"]))
            out.append(Emit(self._event("record", now, **ev)))

    def _skim_run(self, d: _Direction, run: Run, ts: float, out: list[Output]) -> None:
        """A run of keyless bulk application_data records (issue 19: ~65,000 per GB of a
        download): what _skim's loop does for each of them (the version check,
        _count_encrypted, the count, the event), with the counts added once per run.
        Exact: within a run only this side's counts move, so the peer's
        ``encrypted`` count that ``encrypted_after_peer`` depends on is constant."""
        side, lengths, version = d.side, run.lengths, run.version
        n = len(lengths)
        first = d.index + 1
        d.index += n
        d.framed += HEADER_LEN * n + sum(lengths)
        h = self.history
        self._version_anomalies(side, version, first, n)
        h.encrypted[side] += n
        if h.encrypted[other(side)]:
            h.encrypted_after_peer[side] += n
        h.app_records[side] += n
        if not self.log_app_data:
            return
        # Each record's event is a copy of one template with its index and length set:
        # the same keys in the same order as app_data_event's (the log is unchanged).
        packed = EmitRecords(messages.app_data_event(ts, self.conn_id, side, 0, version, 0),
                             first, lengths)
        if self._packed:
            out.append(packed)
        else:
            out.extend(map(Emit, packed.events()))

    def _skim_decrypt(self, d: _Direction, item: Header, now: float,
                      out: list[Output]) -> bool:
        """Fast path with keys: open what is not bulk. True when the record's event
        went out here (it carried a decrypted handshake message or alert)."""
        dec = self._dec
        assert dec is not None
        if item.payload is None or (item.content_type == APPLICATION_DATA
                                    and item.length > SMALL_RECORD and dec.bulk(d.side)):
            dec.skip(d.side, d.index, item.header(), now)
            # (a side that gave up on its keys: the inner type is unknown, not counted)
            self.history.inner_app[d.side] += (item.content_type == APPLICATION_DATA
                                               and not dec.gave_up(d.side))
            return False
        res = dec.record(d.side, d.index, item.header(), item.payload, now)
        late: list[Output] = []
        if self.keylog is not None and dec.wants_log():
            self._late(dec.keys_from(self.keylog), now, late)
        if res.status == "plaintext":
            out.extend(late)
            return False  # logged (or counted) as the fast path does
        if res.inner_type == APPLICATION_DATA and res.status == "decrypted":
            # A small record opened only for its inner type: its event says what it
            # held (type and length), as the record path's does.
            self.history.app_records[d.side] += 1
            if self.log_app_data:
                app = messages.app_data_event(round(now, 6), self.conn_id, d.side, d.index,
                                              item.version, item.length)
                self._note_decrypted(res, app)
                out.append(Emit(app))
            else:
                self._note_decrypted(res, None)
            out.extend(late)
            return True
        if item.content_type == APPLICATION_DATA:
            self.history.app_records[d.side] += 1
        ev: Json = {"from": d.side, "index": d.index,
                    "content_type": names.content_type_name(item.content_type),
                    "version": names.hex4(item.version), "length": item.length,
                    "encrypted": item.content_type != CHANGE_CIPHER_SPEC}
        self._note_decrypted(res, ev)
        out.append(Emit(self._event("record", now, **ev)))
        out.extend(late)
        return True

    def _count_encrypted(self, side: Side, index: int, content_type: int, length: int) -> None:
        """For the keyless diagnosis (an encrypted alert is recognised by its size)."""
        h = self.history
        h.encrypted[side] += 1
        if h.encrypted[other(side)]:
            h.encrypted_after_peer[side] += 1
        if length <= ALERT_SIZED:
            h.last_encrypted[side] = EncryptedSeen(side, index, content_type, length,
                                                   self._peer_left(side))

    def _note_decrypted(self, res: Decrypted, ev: Json | None) -> None:
        """Put a decrypted result on its record event and into the history."""
        if res.status == "plaintext":
            return
        if ev is not None:
            ev["decrypted"] = res.event_json()
        h = self.history
        # Did not open with the logged keys: not a record given up on because its
        # keys never arrived (a key log without this connection is no mismatch).
        if res.status == "undecryptable" and not (
                self._dec is not None and res.reason == self._dec.gave_up(res.side)):
            h.undecryptable[res.side] += 1
        if res.status == "decrypted" and res.inner_type == APPLICATION_DATA:
            h.inner_app[res.side] += 1
        if res.status == "pending":
            # Whether its sender had seen its peer go, as the record passed: an alert in
            # it that is decrypted later (keys logged after the peer's FIN) was sent
            # before that FIN, and answers no close.
            if self._left_when is None:
                self._left_when = {}
            self._left_when[(res.side, res.index)] = self._peer_left(res.side)
            return
        left_then = (self._left_when.pop((res.side, res.index), None)
                     if res.late and self._left_when else None)
        if res.status == "decrypted" and res.inner_type == APPLICATION_DATA:
            return
        alert = None
        if res.alert is not None:
            name = str(res.alert["level"])  # a name, or the number of an unnamed level
            level = _LEVELS.get(name) or (int(name) if name.isdigit() else 0)
            code = int(res.alert["code"])
            alert = (level, code)
            h.add(h.alerts, AlertSeen(res.side, res.index, level, code, names.TLS1_2,
                                      h.negotiated_version,
                                      self._peer_left(res.side) if left_then is None
                                      else left_then))
        h.add(h.decrypted, DecryptedSeen(res.side, res.index, res.status, res.inner_type,
                                         tuple(m.fields for m in res.messages), alert,
                                         res.reason))
        if res.status == "decrypted" and self._established():
            self._renegotiation_hello(res, ev)

    def _renegotiation_hello(self, res: Decrypted, ev: Json | None) -> None:
        """A ClientHello inside the encryption is a renegotiation (RFC 5746 3.5, RFC
        5246 7.4.1.1): diagnosis judges it as sent, as it judges a plaintext one (a
        fault that changes it adds the changed one too, see _hello_inside). The record
        version is known when the record's event is at hand (not for late keys)."""
        h = self.history
        version = int(ev["version"], 16) if ev is not None else h.negotiated_version or 0
        for m in res.messages:
            if m.msg_type != CLIENT_HELLO or m.unparsed is not None:
                continue
            try:
                hello = parse_client_hello(m.raw[4:])
            except DecodeError:
                continue
            h.add(h.client_hellos, HelloSeen(res.side, res.index, version, hello, True))

    def _late(self, results: list[Decrypted], now: float, out: list[Output]) -> None:
        """Late results: ``decrypted`` events naming their record (DESIGN.md schema)."""
        for res in results:
            # Every late result is logged, application data too (its inner type and
            # length only): the record's event said "pending", and is completed here.
            self._note_decrypted(res, None)
            for held in self._dirs[res.side].key_hold:
                if held.index == res.index and held.rec is not None:
                    held.res = res  # a fault waits for it: it goes on at the next release
            out.append(Emit(self._event(
                "decrypted", now, **{"from": res.side}, index=res.index,
                decrypted=res.event_json())))

    def _decrypt(self, d: _Direction, rec: Record, encrypted: bool, ev: Json,
                 now: float) -> tuple[list[Output], Decrypted | None]:
        """Feed one record to the decryptor (record path); its late results and its own."""
        dec = self._dec
        late: list[Output] = []
        if encrypted:
            self._count_encrypted(d.side, d.index, rec.content_type, rec.length)
        if dec is None:
            return late, None
        header = rec.header()
        if (rec.content_type == APPLICATION_DATA and len(rec.payload) > SMALL_RECORD
                and dec.bulk(d.side) and not self._opens_all(d.side)):
            dec.skip(d.side, d.index, header, now)
            self.history.inner_app[d.side] += not dec.gave_up(d.side)
            return late, None
        res = dec.record(d.side, d.index, header, rec.payload, now)
        self._note_decrypted(res, ev)
        if self.keylog is not None and dec.wants_log():
            results = dec.keys_from(self.keylog)
            self._late(results, now, late)
            if res.status == "pending":  # its keys came with it: a late result follows
                res = next((r for r in results if r.side == d.side and r.index == d.index), res)
        return late, res

    def _resealer(self, side: Side) -> Resealer:
        rs = self._reseal.get(side)
        if rs is None:
            rs = self._reseal[side] = Resealer()
        return rs

    def _shifted(self, side: Side) -> bool:
        rs = self._reseal.get(side)
        return rs is not None and rs.ever_shifted

    def _opens_all(self, side: Side) -> bool:
        """Bulk records of ``side`` must be opened too: a fault may change them inside
        the encryption, or an insert/drop shifted the sequence numbers (re-seal each)."""
        return self._shifted(side) or (
            self.faults is not None and self.faults.wants_inside(side))

    # -- the plaintext phase (proxy/plaintext.py) -----------------------------------------

    def _plaintext(self, d: _Direction, plain: plaintext.Session, data: bytes, now: float,
                   out: list[Output]) -> bytes:
        """Log and forward the plaintext part of ``data``; the rest, for the record path."""
        fed = plain.feed(d.side, data)
        h = self.history
        if plain.protocol is not None:
            h.plain_protocol = plain.protocol
        forward = fed.forward
        if plain.hold and self.faults is not None and fed.units:
            forward = self._plain_faults(d, fed.units, forward, now, out)
        else:
            for unit in fed.units:
                if unit.line is not None:
                    out.append(Emit(self._event("plaintext", now, **unit.line.to_json())))
        if forward:
            self._send(other(d.side), forward, now, out)
        if fed.tls_at is not None:
            h.tls_at[d.side] = fed.tls_at
        return fed.rest or b""

    def _plain_faults(self, d: _Direction, units: list[plaintext.Unit], forward: bytes,
                      now: float, out: list[Output]) -> bytes:
        """Held whole units: each one the plan matches is rewritten, dropped or answered."""
        assert self.faults is not None
        parts: list[bytes] = []
        rest = forward
        for unit in units:
            at = rest.find(unit.raw)
            if at < 0:                 # not whole here (cannot happen): pass as it is
                continue
            parts.append(rest[:at])
            rest = rest[at + len(unit.raw):]
            ev = unit.line.to_json() if unit.line is not None else None
            verdict = self.faults.on_plaintext(unit, self.number) if unit.line else None
            if verdict is None:
                parts.append(unit.raw)
            else:
                parts.append(verdict.to_receiver)
                if not verdict.to_receiver and self._plain is not None:
                    self._plain.withheld(unit)  # the peer never saw it
                if verdict.to_sender:
                    self._send(d.side, verdict.to_sender, now, out)
                logged = [f.to_json() for f in verdict.faults]
                if ev is not None:
                    ev["fault"] = logged
                for f in verdict.faults:
                    self.history.add(self.history.faults, f)
            if ev is not None:
                out.append(Emit(self._event("plaintext", now, **ev)))
        parts.append(rest)
        return b"".join(parts)

    def _may_fault(self, side: Side, seen: int) -> bool:
        return self.faults is not None and self.faults.may_apply(side, seen)

    def _event(self, name: str, now: float, **fields: Any) -> Json:
        return messages.event(name, now, self.conn_id, **fields)

    def _on_opaque(self, d: _Direction, item: Opaque, now: float, out: list[Output],
                   forward: bool) -> None:
        h = self.history
        if item.reason.startswith("partial record"):
            # The length its header announced (value): one past what TLS allows is a
            # record_overflow for the receiver, whether or not the rest ever came.
            declared = int.from_bytes(item.raw[3:5], "big") if len(item.raw) >= 5 else None
            h.add(h.anomalies, Anomaly(d.side, d.index + 1, "partial_record", item.reason,
                                       declared, self._peer_left(d.side)))
            out.append(Emit(self._event(
                "record", now, **{"from": d.side}, index=d.index + 1, unparsed=item.reason,
                length=len(item.raw))))
        else:
            kind = "sslv2_client_hello" if item.reason.startswith("SSLv2") else "non_tls"
            # Without the opt-in, diagnosis sees only the 5 bytes a TLS peer reads
            # as a record header (enough to tell HTTP or SSH and the "version").
            shown = preview(item.raw) if self.log_preview else preview(item.raw[:5], 5)
            h.add(h.anomalies, Anomaly(d.side, None, kind, item.reason, shown))
            extra = {"preview": shown} if self.log_preview else {}
            out.append(Emit(self._event(
                "non_tls", now, **{"from": d.side}, length=len(item.raw), reason=item.reason,
                **extra)))
        if forward and d.key_hold:
            d.key_hold.append(_KeyHeld(item.raw, d.index, now))  # order is kept
        elif forward:
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

    # -- one record: inspect, log, let the faults decide, deliver ----------------------

    def _on_record(self, d: _Direction, rec: Record, now: float, out: list[Output],
                   deliver: bool) -> None:
        d.index += 1
        if d.by_type is not None:
            d.by_type[rec.content_type] = d.by_type.get(rec.content_type, 0) + 1
        d.framed += len(rec.raw)
        self._hello_now = None
        encrypted = self._encrypted(d, rec)
        was_protected = d.protected  # before this record (a ChangeCipherSpec turns it on)
        ev = messages.record_fields(d.side, d.index, rec, encrypted)
        if d.index == 1 and d.side in self.history.tls_at:
            ev["after_plaintext"] = self.history.tls_at[d.side]  # where its TLS began
        self._header_anomalies(d, rec, encrypted, ev)
        hs_types = self._inspect(d, rec, encrypted, ev)
        late, res = self._decrypt(d, rec, encrypted, ev, now)
        if encrypted and rec.content_type == HANDSHAKE and d.protected and not d.finished:
            d.to(Step.FINISHED)
            self.history.handshake_done[d.side] = True
        if rec.content_type == APPLICATION_DATA:
            self.history.app_records[d.side] += 1
        outcome, original, merged = None, rec.raw, False
        if deliver and self.faults is not None:
            if self._hold_for_keys(d, rec, encrypted, hs_types, res, now):
                ev["held"] = True
                out.append(Emit(self._event("record", now, **ev)))
                out.extend(late)
                return
            if self._hold_for_hello(d, rec, encrypted):
                ev["held"] = True
                out.append(Emit(self._event("record", now, **ev)))
                out.extend(late)
                return
            outcome, original, merged = self._apply_faults(d, rec, encrypted, hs_types, res,
                                                           d.index)
            outcome, original = self._seal(d, rec, res, outcome, original)
            if self._shifted(d.side):
                d.passthrough = False  # every later record of this side is re-sealed
        if outcome is not None and outcome.faults:
            self._log_faults(d, outcome, hs_types, ev, d.index, now, was_protected)
        if (self.log_app_data or rec.content_type != APPLICATION_DATA or outcome is not None
                or self._shows_inside(ev)):
            out.append(Emit(self._event("record", now, **ev)))
        out.extend(late)
        if deliver:
            if merged:
                d.held = []  # the held records go out merged with this one
            self._deliver(d, original, outcome, now, out)

    @staticmethod
    def _shows_inside(ev: Json) -> bool:
        """An application_data record that decrypted to something else (a TLS 1.3
        alert or post-handshake message) is logged even without app records."""
        dj = ev.get("decrypted")
        return dj is not None and dj.get("inner_type") != "application_data"

    def _version_anomalies(self, side: Side, version: int, first: int, n: int = 1,
                           content_type: int = APPLICATION_DATA) -> None:
        """Records ``first`` .. ``first + n - 1`` of ``side`` carry this header version:
        one anomaly each when it is outside SSL 3.0 .. TLS 1.3, or when it is a TLS
        version other than the one the connection's records carry after the ServerHello
        (every path notes them alike: the diagnosis must not depend on segmentation or
        the path taken)."""
        h = self.history
        if not names.SSL3 <= version <= names.TLS1_3:
            for index in range(first, first + n):
                h.add(h.anomalies, Anomaly(side, index, "record_version",
                                           f"record version {names.hex4(version)}", version))
            return
        neg = h.negotiated_version
        expected = None if neg is None else names.record_version(neg)
        if expected is None or version == expected:
            return
        # After the ServerHello every record carries the negotiated version (RFC 5246
        # 6.2.1, E.1; TLS 1.3: 0x0303, RFC 8446 5.1). This runs before the record's
        # content is read, so the ServerHello's own record is never judged. A client's
        # handshake and alert records are left out: a renegotiation ClientHello may
        # carry any {03,XX} (E.1), and a client refusing the server's version answers
        # in its own (protocol-version judges that).
        if side == "client" and content_type in (HANDSHAKE, ALERT):
            return
        for index in range(first, first + n):
            h.add(h.anomalies, Anomaly(
                side, index, "record_version_mismatch",
                f"record version {names.hex4(version)} after the ServerHello "
                f"(the connection's records carry {names.hex4(expected)})", version))

    def _header_anomalies(self, d: _Direction, rec: Record, encrypted: bool,
                          ev: Json) -> None:
        h = self.history
        self._version_anomalies(d.side, rec.version, d.index, 1, rec.content_type)
        # A record sent in the clear is a TLSPlaintext, whose fragment may hold at most
        # 2^14 bytes (RFC 8446 5.1, RFC 5246 6.2.1); only protected records get the
        # ciphertext allowance (Record.oversized, RFC 5246 6.2.3).
        clear_over = not encrypted and len(rec.payload) > MAX_PLAINTEXT
        if rec.content_type in CHECKED_TYPES:
            self._content_anomalies(d.side, d.index, rec.content_type, len(rec.payload),
                                    rec.payload, encrypted)
        if rec.oversized or clear_over:
            ev["oversized"] = True
            h.add(h.anomalies, Anomaly(d.side, d.index, "oversized",
                                       f"record of {len(rec.payload)} bytes"
                                       + (" in the clear (at most 2^14)" if clear_over
                                          and not rec.oversized else "")))

    def _content_anomalies(self, side: Side, index: int, content_type: int, length: int,
                           payload: bytes | None, encrypted: bool) -> None:
        """What a record's type and size alone say (both paths, :data:`CHECKED_TYPES`):
        RFC 8446 5.1, RFC 5246 6.2.1: no zero-length handshake, alert or
        ChangeCipherSpec record (in the clear or protected: a protected one holds at
        least its tag); a heartbeat record (:meth:`_heartbeat`)."""
        if not length and content_type in EMPTY_FORBIDDEN:
            self.history.add(self.history.anomalies, Anomaly(
                side, index, "empty_record",
                f"zero-length {names.content_type_name(content_type)} record"))
        elif content_type == HEARTBEAT:
            self._heartbeat(side, index, payload, encrypted)

    def _heartbeat(self, side: Side, index: int, payload: bytes | None,
                   encrypted: bool) -> None:
        """A heartbeat record (RFC 6520): in the clear, its message's type and announced
        payload_length against the record's own size (a request that announces more
        than it holds is the Heartbleed probe, CVE-2014-0160); ``value``: (type,
        payload_length, record length) for the diagnosis."""
        detail, value = "encrypted heartbeat record", None
        if payload is not None and not encrypted and len(payload) >= 3:
            kind = {1: "request", 2: "response"}.get(payload[0], f"of type {payload[0]}")
            claimed = int.from_bytes(payload[1:3], "big")
            detail = (f"heartbeat {kind} announcing {claimed} payload bytes in a record of "
                      f"{len(payload)} bytes")
            value = (payload[0], claimed, len(payload))
        elif payload is not None and not encrypted:
            detail = f"heartbeat record of {len(payload)} bytes (no heartbeat message fits)"
        self.history.add(self.history.anomalies,
                         Anomaly(side, index, "heartbeat", detail, value))

    def _inspect(self, d: _Direction, rec: Record, encrypted: bool, ev: Json) -> list[int]:
        """Decode what the record shows in the clear; the handshake types starting in it."""
        ct = rec.content_type
        if ct == HANDSHAKE and not encrypted:
            return self._on_handshake(d, rec, ev)
        if ct == HANDSHAKE and self._established():
            self._on_post_handshake(d, ev)
        elif ct == ALERT and not encrypted:
            self._on_alert(d, rec, ev)
        elif ct == ALERT:
            ev["alert"] = "encrypted"
        elif ct == CHANGE_CIPHER_SPEC:
            self._on_ccs(d, rec)
        return []

    def _on_handshake(self, d: _Direction, rec: Record, ev: Json) -> list[int]:
        hs_types: list[int] = []
        described = []
        parsing = d.hs.overflowed is None
        msgs = d.hs.feed(rec.payload, d.index)
        if parsing and d.hs.overflowed is not None:
            # A limit in proxy/handshake.py: the rest of this direction's
            # handshake is forwarded as it comes, unparsed.
            ev["note"] = f"unparsed from here: {d.hs.overflowed}"
            self.history.add(self.history.anomalies,
                             Anomaly(d.side, d.index, "unparsed", d.hs.overflowed))
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
            if (start_type in (CLIENT_HELLO, SERVER_HELLO) and frag.want is not None
                    and frag.want - 4 > HELLO_CAP and frag.have - len(rec.payload) < 4):
                # Once, by the record that completed its 4-byte header (the first one,
                # or the fourth of 1-byte records: the diagnosis must not depend on
                # the fragmentation), logged where it begins: a hello announcing more
                # than stacks accept.
                name = names.handshake_type_name(start_type)
                self.history.add(self.history.anomalies, Anomaly(
                    d.side, frag.first_record or d.index, "hello_length",
                    f"{name} header announces {frag.want - 4} bytes", frag.want - 4))
        return hs_types

    def _on_post_handshake(self, d: _Direction, ev: Json) -> None:
        """An encrypted handshake record after both Finished."""
        h = self.history
        tls12 = (h.negotiated_version or 0) < TLS13
        ev["note"] = ("encrypted handshake record after the handshake: a renegotiation "
                      "(ClientHello or HelloRequest, RFC 5746)" if tls12
                      else "post-handshake message")
        if tls12:
            h.add(h.anomalies, Anomaly(d.side, d.index, "encrypted_renegotiation", ev["note"]))

    def _on_alert(self, d: _Direction, rec: Record, ev: Json) -> None:
        h = self.history
        alert = messages.describe_alert(rec.payload)
        if alert is not None:
            ev["alert"] = alert
            h.add(h.alerts, AlertSeen(d.side, d.index, rec.payload[0], rec.payload[1],
                                      rec.version, h.negotiated_version,
                                      self._peer_left(d.side)))

    def _on_ccs(self, d: _Direction, rec: Record) -> None:
        h = self.history
        if d.side == "server" and not h.server_hellos:
            h.add(h.anomalies, Anomaly(d.side, d.index, "early_ccs",
                                       "ChangeCipherSpec before the ServerHello"))
        hrr = any(isinstance(s.hello, ServerHello) and s.hello.is_hrr for s in h.server_hellos)
        if (h.negotiated_version or 0) < TLS13 and not hrr and rec.payload == b"\x01":
            # RFC 5246 7.1: records after it are protected. Not after a
            # HelloRetryRequest: that is TLS 1.3 (RFC 8446 4.1.4), and the CCS either side
            # sends around it is the compatibility one (D.4); the second ClientHello and
            # the ServerHello still come in the clear.
            d.to(Step.KEYS)
            d.hs.reset()

    # -- holding records for keys (issue 14): bounded, only for a fault that needs them --

    def _hold_for_keys(self, d: _Direction, rec: Record, encrypted: bool, hs_types: list[int],
                       res: Decrypted | None, now: float) -> bool:
        """Hold ``rec`` (not forwarded yet) when a fault inside encryption may match it
        and its keys have not arrived, or when the side already holds records (order
        is kept). :meth:`_release` lets them go once the keys are there or
        ``key_wait`` has passed."""
        assert self.faults is not None
        if not d.key_hold and (res is None or res.status != "pending" or d.held
                               or not self.faults.may_need_keys(d.side, d.index,
                                                                self._outer(rec))):
            return False
        d.key_hold.append(_KeyHeld(rec.raw, d.index, now, rec, encrypted, tuple(hs_types), res))
        d.passthrough = False  # the bytes after it come record by record, behind it
        return True

    def _outer(self, rec: Record | None) -> int | None:
        """The record's content type when it is the real one: TLS 1.2 protects the
        payload only (RFC 5246 6.2.3), TLS 1.3 hides it (RFC 8446 5.2)."""
        if rec is None or self.history.negotiated_version == TLS13:
            return None
        return rec.content_type

    def _release(self, now: float, out: list[Output]) -> None:
        for d in self._dirs.values():
            if d.key_hold:
                self._release_side(d, now, out)

    def _release_side(self, d: _Direction, now: float, out: list[Output]) -> None:
        """Send the held records whose wait is over, in order: the head waits while a
        fault may need its keys and its deadline has not passed; then that fault is
        given up (not applied, with the reason) and the record goes on unchanged."""
        assert self.faults is not None
        while d.key_hold:
            e = d.key_hold[0]
            given_up: tuple[FaultSeen, ...] = ()
            if (e.res is not None and e.res.status == "pending"
                    and self.faults.may_need_keys(d.side, e.index, self._outer(e.rec))):
                due = e.since + self.key_wait
                stuck = self._dec.gave_up(d.side) if self._dec is not None else "no key log"
                if not stuck and now < due:
                    if d.wake_for != due:
                        d.wake_for = due
                        out.append(Wakeup(due))
                    return
                waited = round((now - e.since) * 1000)
                why = f"{e.res.reason}; {stuck}" if stuck else e.res.reason
                given_up = self.faults.give_up_keys(
                    d.side, e.index,
                    f"no keys for {d.side} record {e.index} after {waited} ms ({why})",
                    self._outer(e.rec))
            self._release_one(d, e, given_up, now, out)
            d.key_hold.pop(0)
        d.wake_for = None
        if d.passthrough:
            held = d.framer.held_bytes()  # as _receive does when a plan runs out
            if held:
                self._send(other(d.side), held, now, out)
        if d.eof_held:
            d.eof_held = False
            self._eof_rest(d, False, now, out)

    def _release_one(self, d: _Direction, e: _KeyHeld, given_up: tuple[FaultSeen, ...],
                     now: float, out: list[Output]) -> None:
        if e.rec is None:  # non-TLS bytes held behind a record
            self._send(other(d.side), e.raw, now, out)
            return
        outcome, original, _ = self._apply_faults(d, e.rec, e.encrypted, list(e.hs_types),
                                                  e.res, e.index)
        outcome, original = self._seal(d, e.rec, e.res, outcome, original)
        if self._shifted(d.side):
            d.passthrough = False
        ev = self._event("released", now, **{"from": d.side}, index=e.index,
                         waited_ms=round((now - e.since) * 1000))
        faults = given_up + (outcome.faults if outcome is not None else ())
        if faults:
            self._note_faults(d, e.index, faults, ev, now, d.protected,
                              outcome is not None and outcome.inner is not None)
        if outcome is not None and e.hs_types and outcome.to_receiver:
            self._hello_as_delivered(d.side, outcome.to_receiver)
        out.append(Emit(ev))
        self._deliver(d, original, outcome, now, out)

    def _hold_for_hello(self, d: _Direction, rec: Record, encrypted: bool) -> bool:
        """A hello fault needs the whole message: hold this record until the one
        that completes the hello arrives."""
        assert self.faults is not None
        if (rec.content_type == HANDSHAKE and not encrypted
                and d.hs.pending_type() in (CLIENT_HELLO, SERVER_HELLO)
                and self.faults.wants_whole_hello(d.side)):
            d.held.append(rec)  # not forwarded: the error boundary would release it
            return True
        return False

    def _apply_faults(self, d: _Direction, rec: Record, encrypted: bool,
                      hs_types: list[int], res: Decrypted | None, index: int
                      ) -> tuple[Outcome | None, bytes, bool]:
        """The fault plan's verdict on record ``index`` (merged with any held records
        before it: then True, and ``d.held`` is cleared once they are delivered)."""
        assert self.faults is not None
        target, first, original = rec, index, rec.raw
        merged = rec.content_type == HANDSHAKE and not encrypted and bool(d.held)
        if merged:
            held = [*d.held, rec]
            first = index - len(held) + 1
            original = b"".join(r.raw for r in held)
            target = Record(rec.content_type, held[0].version, b"".join(r.payload for r in held))
        inner, inner_types = self._inner(d, rec, res)
        # Held records of a hello are all handshake records: the view is the first's.
        nth = 0 if d.by_type is None else d.by_type.get(rec.content_type, 0) - (index - first)
        view = RecordView(d.side, first, target, encrypted, tuple(hs_types), self.number,
                          self.sni, inner, inner_types, self._hello_now, self._negotiated(),
                          self._bytes_through(d), nth)
        outcome = self.faults.on_record(view)
        if not self.faults.may_apply(d.side, index) and not d.gather_left:
            d.passthrough = True  # (undone by _on_record while the side is re-sealed)
        return outcome, original, merged

    def _negotiated(self) -> tuple[int, int] | None:
        """(version, cipher suite) of the last real ServerHello (not a HelloRetryRequest)."""
        for seen in reversed(self.history.server_hellos):
            sh = seen.hello
            if isinstance(sh, ServerHello) and not sh.is_hrr:
                return (sh.selected_version, sh.cipher_suite)
        return None

    def _bytes_through(self, d: _Direction) -> int:
        """Record bytes both ways up to the end of the current record."""
        return sum(x.framed for x in self._dirs.values())

    def _inner(self, d: _Direction, rec: Record, res: Decrypted | None
               ) -> tuple[Record | None, tuple[int, ...]]:
        """The decrypted content for faults inside encryption (only when one may apply)."""
        assert self.faults is not None
        if res is None or res.status != "decrypted" or not self.faults.wants_inside(d.side):
            return None, ()
        inner = self._resealer(d.side).open(res, rec)
        types = tuple(m.msg_type for m in res.messages) if inner.content_type == HANDSHAKE \
            else ()
        return inner, types

    def _seal(self, d: _Direction, rec: Record, res: Decrypted | None,
              outcome: Outcome | None, original: bytes) -> tuple[Outcome | None, bytes]:
        """Seal what a fault changed inside the encryption, and re-seal an unchanged
        record whose direction is shifted (RFC 8446 5.3, RFC 5246 6.1: the receiver
        counts records, so every later one carries its number plus the shift)."""
        rs = self._resealer(d.side)
        if res is None or res.status != "decrypted":
            if outcome is not None and outcome.inner is not None:
                # Cannot happen: inner is only offered for decrypted records.
                outcome = replace(outcome, inner=None)
            return outcome, original
        if outcome is None or (outcome.inner is None and outcome.to_receiver is None):
            if rs.shifted(res):
                original = b"".join(r.raw for r in rs.forward(res, rec))
            return outcome, original
        if outcome.inner is None:
            return outcome, original
        sealed = self._seal_inner(d.side, rs, res, rec, outcome.inner)
        to_sender = outcome.to_sender
        if outcome.inner_to_sender and self._dec is not None:
            back = other(d.side)
            try:
                to_sender += b"".join(r.raw for r in self._resealer(back).inject(
                    self._dec.protection(back), self._dec.epoch(back),
                    outcome.inner_to_sender))
            except ResealError:
                to_sender += b"".join(r.raw for r in outcome.inner_to_sender)
        if any(r.content_type == HANDSHAKE for r in outcome.inner):
            # (a handshake record inserted after the matched one counts too)
            self._hello_inside(d, res, outcome.inner)
        return replace(outcome, to_receiver=sealed, to_sender=to_sender), original

    def _seal_inner(self, side: Side, rs: Resealer, res: Decrypted, rec: Record,
                    inner: tuple[Record, ...]) -> bytes:
        """Seal the records a fault made of ``rec``. Under TLS 1.3 a sender switches to
        its application traffic keys right after its Finished (RFC 8446 4.4.4, 7.1):
        records a fault puts after the one carrying the Finished are sealed with those
        keys, from that epoch's first sequence number, and shift it (they were sealed
        in the handshake epoch before: every peer then failed with bad_record_mac)."""
        cut = self._epoch_cut(res, inner)
        dec = self._dec
        if cut < len(inner) and dec is not None:
            prot, epoch = dec.protection(side), dec.epoch(side)
            if prot is not None and epoch != res.epoch:
                head = rs.replace(res, rec, inner[:cut])
                return b"".join(r.raw for r in head + rs.inject(prot, epoch, inner[cut:]))
        return b"".join(r.raw for r in rs.replace(res, rec, inner))

    def _epoch_cut(self, res: Decrypted, inner: tuple[Record, ...]) -> int:
        """How many of ``inner`` belong to ``res``'s epoch: all, except under TLS 1.3
        where the record carrying the sender's Finished ends its handshake epoch."""
        if self.history.negotiated_version != TLS13 or res.epoch != "handshake":
            return len(inner)
        fin = next((m.raw for m in res.messages if m.msg_type == FINISHED), None)
        if fin is None:
            return len(inner)
        for i, r in enumerate(inner):
            if r.content_type == HANDSHAKE and fin in r.payload:
                return i + 1
        return len(inner)

    def _hello_inside(self, d: _Direction, res: Decrypted, inner: tuple[Record, ...]) -> None:
        """A hello changed inside the encryption (a renegotiation): diagnosis judges
        the one the peer received, with the record version it was sealed under."""
        hs = HandshakeReassembler()
        for r in inner:
            if r.content_type != HANDSHAKE:
                continue  # an alert or application data the fault put beside it
            for msg in hs.feed(r.payload, res.index):
                _, hello = messages.describe(msg)
                if isinstance(hello, ClientHello):
                    h = self.history
                    h.add(h.client_hellos, HelloSeen(d.side, res.index, r.version, hello,
                                                     self._established()))

    def _peer_left(self, side: Side) -> bool:
        """``side`` has seen its peer go: the peer closed, or a fault closed the stream
        toward ``side`` (its close delivered, nothing queued before it) - what
        ``side`` sends then answers that end (OpenSSL answers an EOF mid-handshake
        with decode_error)."""
        box = self._outbox(side)
        return self._dirs[other(side)].phase is Phase.CLOSED or (box.closed and not box.items)

    def _log_faults(self, d: _Direction, outcome: Outcome, hs_types: list[int],
                    ev: Json, index: int, now: float, was_protected: bool) -> None:
        # After _seal, ``inner`` is kept only when the replacement was sealed.
        self._note_faults(d, index, outcome.faults, ev, now, was_protected,
                          outcome.inner is not None)
        if hs_types and outcome.to_receiver:
            self._hello_as_delivered(d.side, outcome.to_receiver)

    def _note_faults(self, d: _Direction, index: int, faults: tuple[FaultSeen, ...],
                     ev: Json, now: float, was_protected: bool, sealed: bool) -> None:
        """The faults that touched (or could not touch) record ``index``: on its event
        and in the history."""
        h = self.history
        # Always a list, one entry per fault (one shape for readers of the log).
        ev["fault"] = [f.to_json() for f in faults]
        for f in faults:
            h.add(h.faults, replace(f, side=d.side, index=index, protected=was_protected,
                                    alert_encrypted=self._alert_encrypted(d, f, was_protected),
                                    sealed=sealed, at=now))

    def _alert_encrypted(self, d: _Direction, f: FaultSeen, was_protected: bool) -> bool:
        """Whether an alert ``f`` sent entered an encrypted stream: toward the record's
        sender (reply-alert) that is the other direction; after the record, the state
        the record left (a ChangeCipherSpec starts protection, RFC 5246 7.1); before
        it or in its place, the state before it."""
        spec = ACTIONS.get(f.action)
        if spec is None or spec.sends_alert is None:
            return False
        if spec.sends_alert == "sender":
            return self._dirs[other(d.side)].protected
        return d.protected if f.params.get("position") == "after" else was_protected

    def _deliver(self, d: _Direction, original: bytes, outcome: Outcome | None, now: float,
                 out: list[Output]) -> None:
        to = other(d.side)
        if d.gather_left:
            self._gathered(d, original if outcome is None or outcome.to_receiver is None
                           else outcome.to_receiver, now, out)
            if outcome is not None and outcome.close is not None:
                self._record_fault_close(d, outcome, now, now, out)
            return
        if outcome is not None and outcome.gather is not None:
            self._start_gather(d, outcome, original, now, out)
            return
        if outcome is None:
            self._send(to, original, now, out)
            return
        if outcome.to_sender:
            self._send(d.side, outcome.to_sender, now, out)
        data = original if outcome.to_receiver is None else outcome.to_receiver
        when = now + outcome.delay
        box = self._outbox(to)
        if outcome.split is not None and data:
            self.split_toward |= {to}
            size, pause = outcome.split
            for i in range(0, len(data), size):
                box.queue(data[i : i + size], when, now, out)
                # pause_ms 0: still one write per turn of the proxy's loop, so the
                # kernel sends each as a segment instead of merging a burst of them.
                when += pause or SPLIT_TURN
        elif data:
            box.queue(data, when, now, out)
        if outcome.close is not None:
            self._record_fault_close(d, outcome, when, now, out)

    def _start_gather(self, d: _Direction, outcome: Outcome, original: bytes, now: float,
                      out: list[Output]) -> None:
        assert outcome.gather is not None
        records, into, wait = outcome.gather
        if outcome.to_sender:
            self._send(d.side, outcome.to_sender, now, out)
        d.gather = [original if outcome.to_receiver is None else outcome.to_receiver]
        d.gather_left, d.gather_into = records - 1, into
        d.gather_due = now + wait
        d.passthrough = False  # later records come through _deliver until the flush
        out.append(Wakeup(d.gather_due))

    def _gathered(self, d: _Direction, data: bytes, now: float, out: list[Output]) -> None:
        d.gather.append(data)
        d.gather_left -= 1
        if not d.gather_left:
            self._flush_gather(d, now, out)

    def _flush_gather(self, d: _Direction, now: float, out: list[Output],
                      between_chunks: bool = False) -> None:
        """Send what coalesce gathered: merged into one record per content type, or
        as it came, in one write."""
        if not d.gather:
            return
        data = b"".join(d.gather)
        if d.gather_into == "record":
            data = merge_records(data)
        d.gather, d.gather_left, d.gather_due = [], 0, None
        d.passthrough = not self._may_fault(d.side, d.index)
        if between_chunks and d.passthrough:
            # (At the wait's end or the close.) A partial record behind the gathered
            # ones was never sent; passthrough sends only whole chunks from now on, so
            # it goes now, as _receive releases it when a plan runs out mid-chunk.
            data += d.framer.held_bytes()
        self._send(other(d.side), data, now, out)

    def _record_fault_close(self, d: _Direction, outcome: Outcome, when: float, now: float,
                            out: list[Output]) -> None:
        """The faults on ``d``'s current record close the connection."""
        assert outcome.close is not None
        self._fault_close(outcome.close, when, now, out,
                          _fault_names(outcome.faults, f"on {d.side} record {d.index}"))

    def _fault_close(self, close: tuple[Literal["fin", "rst"],
                                        Literal["client", "server", "both"]],
                     when: float, now: float, out: list[Output], why: str) -> None:
        """End the stream toward one side or both (``why``: the fault, for the log's
        ``undelivered`` on what the sender sends after it, see :meth:`_undelivered`)."""
        if self.history.closed_by is None:
            self.history.closed_by = "proxy"
        how, toward = close
        targets: tuple[Side, ...] = ("client", "server") if toward == "both" else (toward,)
        for t in targets:
            box = self._outbox(t)
            box.close(how, now, out, when)
            # Nothing reaches a side after the fault closed the stream toward it.
            if not box.closed:
                box.closed_after, box.closed_why = self._dirs[other(t)].index, why
            box.closed = True
        for x in self._dirs.values():
            x.passthrough = True

    def _on_message(self, d: _Direction, rec: Record, msg: HandshakeMessage) -> Json:
        desc, hello = messages.describe(msg)
        h = self.history
        start = msg.records[0] if msg.records else d.index
        if hello is not None:
            self._hello_now = hello
            if hello.trailing:
                # Bytes after the last field (RFC 8446 4.1.2, RFC 5246 7.4.1.2: the
                # extensions fill the message): kept for the wire, malformed all the same.
                h.add(h.anomalies, Anomaly(
                    d.side, start, "malformed_hello",
                    f"{desc['type']} with {len(hello.trailing)} bytes after its last field"))
        if isinstance(hello, ClientHello):
            reneg = self._established()
            if reneg:
                desc["renegotiation"] = True
            h.add(h.client_hellos, HelloSeen(d.side, start, rec.version, hello, reneg))
            if self._dec is not None:
                self._dec.client_hello(hello.random)
            if self.sni is None and isinstance(desc.get("sni"), str):
                self.sni = desc["sni"]
        elif isinstance(hello, ServerHello):
            self._on_server_hello(d, start, rec, hello)
        elif "unparsed" in desc and msg.msg_type in (CLIENT_HELLO, SERVER_HELLO):
            # A hello the codec cannot read is malformed as sent (a scanner's probe, a
            # broken stack): the peer's decode_error is about it, not about transit.
            h.add(h.anomalies, Anomaly(d.side, start, "malformed_hello",
                                       f"{desc['type']} unparsed: {desc['unparsed']}"))
        elif msg.msg_type == FINISHED:
            d.to(Step.FINISHED)
            h.handshake_done[d.side] = True
        elif msg.msg_type in IN_THE_CLEAR_DECODED:
            # TLS 1.2 sends them in the clear: logged decoded as a decrypted one is (the
            # certificate chain, the client certificate request, the ticket), and the
            # diagnosis reads the chain as it reads a decrypted one (certificate fields
            # as evidence).
            decoded = protected_messages.decode(msg, h.negotiated_version or names.TLS1_2)
            for k, v in decoded.fields.items():
                desc.setdefault(k, v)
            desc["summary"] = decoded.summary
            if msg.msg_type != NEW_SESSION_TICKET:
                h.add(h.decrypted, DecryptedSeen(d.side, start, "plaintext", HANDSHAKE,
                                                 (decoded.fields,)))
        elif msg.msg_type == HELLO_REQUEST and self._established():
            desc["renegotiation"] = True
        return desc

    def _on_server_hello(self, d: _Direction, start: int, rec: Record,
                         hello: ServerHello) -> None:
        h = self.history
        h.add(h.server_hellos, HelloSeen(d.side, start, rec.version, hello))
        if hello.is_hrr:
            return
        if self._dec is not None:
            self._dec.server_hello(hello.selected_version, hello.cipher_suite, hello.random,
                                   hello.extension(ENCRYPT_THEN_MAC) is not None)
        h.negotiated_version = hello.selected_version
        if hello.selected_version == TLS13:
            # RFC 8446 2: everything after the ServerHello is protected,
            # both ways (the client switches once it has processed it).
            for x in self._dirs.values():
                x.to(Step.KEYS)
                x.hs.reset()

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

    # -- outbound -----------------------------------------------------------------------

    def _outbox(self, to: Side) -> Outbox:
        """The bytes toward ``to``: the other direction's outbox."""
        return self._dirs[other(to)].outbox

    def _send(self, to: Side, data: bytes, now: float, out: list[Output]) -> None:
        self._outbox(to).send(data, now, out)
