"""The lean hot path (issue 19): a settled connection's bytes on the loop's transports.

Not an addon: addons/inspector.py's RecordLayer calls :func:`maybe_take_over`
after each chunk, and ``mitmdump -s "$(tlsinspector addon-path)"`` gets it too.

Once the engine says a connection is ``relayable`` (both directions past the
handshake, no configured fault can still apply, nothing held or timed; with
``--keylog`` the key log is read around each chunk until both sides are past
their handshake keys, see Connection.relayable and Decryptor.settled), its
bytes no longer need mitmproxy's per-chunk machinery: the handler's read task
and StreamReader (two copies of every byte), the DataReceived event through
the layer stack, the SendData command, drain_writers.
:class:`HotRelay` takes both sockets' asyncio transports over (see
``mitm_internals.take_transport``) and relays on them directly:

- every chunk still goes through ``engine.receive``: the record headers are
  skimmed in place, each application record is logged (or counted with
  --no-app-records), with keys the small ones are opened as on the full path
  (alerts, tickets, KeyUpdate: keys still missing come from the inspector's
  key log timer, as late events), the close event's byte and record counts
  are unchanged;
  the very bytes object read is the one written (no copies);
- backpressure both ways: a transport whose write buffer passes its high-water
  mark stops reading from the other side until it drains (RFC 9293 3.8.6's
  flow control then reaches the sender);
- half-closes: a FIN from one side is a FIN toward the other (write_eof), the
  other direction goes on; a reset or a lost socket ends its direction as
  mitmproxy's handler does (the engine sees an end of stream);
- fairness: a read that costs the engine more than TURN_BUDGET is handed over
  in slices, one per loop turn, with reading paused meanwhile (issue 12);
- the idle timeout and the shutdown close the connection as the layer does.

When both directions are over, the close event is logged and mitmproxy's
handler is told to close both connections, which ends its tasks as usual.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from time import perf_counter
from typing import Any, cast

from tlsinspector.addons import mitm_internals
from tlsinspector.proxy import engine
from tlsinspector.proxy.history import Side, other

SIDES: tuple[Side, Side] = ("client", "server")
# A transport's write buffer: stop reading from the other side above HIGH, read
# again below LOW. Larger than asyncio's 64 KiB default so that a 256 KiB read
# does not pause the sender at once; far below the layer's 4 MiB backlog bound.
HIGH_WATER = 512 << 10
LOW_WATER = 128 << 10
READ_SIZE = 1 << 20   # bytes per read (the loop's own reads are 256 KiB)
TURN_BUDGET = 0.002   # seconds of engine work per loop turn (as the layer's slicing)
SLICE_MIN = 1024
# bench/quick.py's inspector-full-path row: the same inspector with the hand-over
# refused, for a ratio measured in the same run (not a user setting).
DISABLED = bool(os.environ.get("TLSINSPECTOR_NO_HOTPATH"))
# A record logged "pending" (its keys not yet in the key log) holds the connection's
# later events back for at most this long, or this many outputs (see _Hold).
HOLD_MAX = 0.25
HOLD_OUTPUTS = 512


# Why a side's reading is paused (bits of _Half.paused): its peer's write buffer
# is full, a slice of its read waits for the next loop turn, or the proxy's global
# bound on what connections hold (--max-held) stopped it during a handshake.
PEER, SLICE, BUDGET = 1, 2, 4


class _Half:
    """One socket's state in the relay. Slotted, and one object per side rather than
    a dict per field: 10,000 idle connections each hold two (issue 19's RSS row)."""

    __slots__ = ("transport", "read_open", "write_open", "paused", "slice", "waiting",
                 "eof_waiting", "lost")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.read_open = True
        self.write_open = True
        self.paused = 0           # PEER | SLICE bits
        self.slice = 1 << 20      # bytes the engine may take in one turn
        self.waiting = b""        # bytes read but not yet handed over (only while sliced)
        self.eof_waiting = False  # its end came while bytes waited
        self.lost = False         # the socket is gone (connection_lost)


class _ReadBuffer:
    """The one buffer every hot connection on the loop reads into (BufferedProtocol).

    A plain Protocol gets each read as a new bytes object, which the loop fills by
    copying from its own read buffer: one more copy of every byte relayed. Reading
    into this buffer and writing a view of it on saves that copy and the allocation.
    One buffer serves all connections of an event loop, since a read is handed
    over and relayed before the next begins; when the write toward the peer could
    not finish at once, the transport still holds the view, so the next read goes
    to another buffer: a spare one that no view holds any more, else a new one.
    (A new 1 MiB buffer costs its zeroing, its page faults and, once the view is
    gone, its unmapping: about 5% of the relay's CPU per GB under perf when each
    lent buffer was replaced by a new one.) One per thread: an event loop runs in
    one thread, and two loops in two threads (the tests run proxies so) read with
    the GIL released."""

    __slots__ = ("buf", "view", "spare")

    def __init__(self) -> None:
        self.buf = bytearray(READ_SIZE)
        self.view = memoryview(self.buf)
        self.spare: list[bytearray] = []  # lent buffers, oldest first (at most SPARES)

    def lent(self) -> None:
        # (self.view is not released here: the loop still holds the buffer it read
        # into while buffer_updated runs; the view goes with its last reference.)
        spare = self.spare
        for i, buf in enumerate(spare):
            if _unshared(buf):
                del spare[i]
                break
        else:
            buf = bytearray(READ_SIZE)
        spare.append(self.buf)
        if len(spare) > SPARES:
            del spare[0]  # freed when its last view goes
        self.buf = buf
        self.view = memoryview(buf)


SPARES = 4


def _unshared(buf: bytearray) -> bool:
    """No view of ``buf`` is alive (a bytearray with exported views cannot be resized:
    the one check that covers every holder, uvloop's write queue included)."""
    try:
        buf.append(0)
    except BufferError:
        return False
    del buf[-1]
    return True


_THREAD = threading.local()


def _read_buffer() -> _ReadBuffer:
    buf: _ReadBuffer | None = getattr(_THREAD, "read", None)
    if buf is None:
        buf = _THREAD.read = _ReadBuffer()
    return buf


class _SideProtocol(asyncio.BufferedProtocol):
    """The protocol of one socket while the relay has it; the StreamReaderProtocol
    it replaced still learns of write flow control and of the end, so mitmproxy's
    handler and StreamWriter stay consistent."""

    __slots__ = ("relay", "side", "old", "read")

    def __init__(self, relay: HotRelay, side: Side, old: Any) -> None:
        self.relay, self.side, self.old = relay, side, old
        self.read = _read_buffer()  # this loop's (thread's)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.read.view

    def buffer_updated(self, nbytes: int) -> None:
        relay, read = self.relay, self.read
        # The engine's fast path only indexes the chunk, steps over it and hands the
        # very object on to be written (HotRelay._receive gives a view to a settled
        # engine only): a memoryview serves as bytes there.
        relay.data(self.side, cast(bytes, read.view[:nbytes]))
        if relay.holds_reads():
            read.lent()

    def eof_received(self) -> bool:
        self.relay.eof(self.side)
        return True  # keep the transport open: the other direction may go on

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.lost(self.side, exc)
        if self.old is not None:  # (None: detached, mitmproxy's side is gone)
            mitm_internals.hand_back_lost(self.old, exc)

    def pause_writing(self) -> None:
        self.relay.writing_paused(self.side, True)
        if self.old is not None:
            mitm_internals.hand_back_flow(self.old, True)

    def resume_writing(self) -> None:
        self.relay.writing_paused(self.side, False)
        if self.old is not None:
            mitm_internals.hand_back_flow(self.old, False)


class _Hold:
    """A connection's events held back while a record of it waits for its keys.

    A peer often writes a secret just after the record that needs it has passed the
    proxy: with a server's key log, a TLS 1.2 client's Finished comes before the
    server has read the ClientKeyExchange in the same flight and logged the master
    secret, and a TLS 1.3 client's first request before the server has logged its
    application secret. Logged at once, such a record reads "pending" and a second
    event (``decrypted``, naming it) completes it when the key log has the secret,
    typically the peer's next flight later. The relay instead keeps that record's
    event, and every later one of the connection in order, for up to HOLD_MAX: when
    the keys arrive meanwhile, the record's own event gets its ``decrypted`` field
    (as if the keys had been there) and no second event is written; otherwise the
    events go out as they were (pending, then the late event). Forwarding never
    waits: only the log does."""

    __slots__ = ("outputs", "pending", "handle")

    def __init__(self, handle: asyncio.TimerHandle) -> None:
        self.outputs: list[engine.Output] = []
        self.pending: dict[tuple[str, int], dict[str, Any]] = {}  # record events
        self.handle = handle

    def add(self, outputs: list[engine.Output]) -> None:
        self.outputs += outputs
        for o in outputs:
            if _is_pending(o):
                ev = cast(engine.Emit, o).event
                self.pending[(ev["from"], ev["index"])] = ev

    def complete(self, evs: list[dict[str, Any]]) -> None:
        """Late results: each one for a held record completes that record's event;
        any other event is held after what is already held."""
        for ev in evs:
            held = (self.pending.pop((ev.get("from", ""), ev.get("index", 0)), None)
                    if ev.get("event") == "decrypted" else None)
            if held is None:
                self.outputs.append(engine.Emit(ev))
                continue
            decrypted = dict(ev["decrypted"])
            decrypted.pop("record", None)  # (a late event's pointer to its record)
            held["decrypted"] = decrypted


def _is_pending(o: engine.Output) -> bool:
    """A record event whose record waits for its keys."""
    if type(o) is not engine.Emit or o.event.get("event") != "record":
        return False
    d = o.event.get("decrypted")
    return d is not None and d.get("status") == "pending"


class HotRelay:
    """Relays one relayable connection on its two transports through its engine."""

    __slots__ = ("layer", "engine", "emit", "half", "watchdog", "dog_timeout",
                 "last_activity", "idle_timeout", "idle_handle", "done", "keyed",
                 "detached", "slim_due", "early", "hold", "holds")

    def __init__(self, layer: Any, eng: engine.Connection,
                 emit: Callable[[list[engine.Output]], None]) -> None:
        self.layer = layer
        self.engine = eng
        self.emit = emit  # the layer's log path (coalescer, JSONL, terminal)
        self.half: dict[Side, _Half] = {}
        self.watchdog: Any = None
        self.dog_timeout = 0.0  # mitmproxy's inactivity timeout, once its task is ours
        self.last_activity = time.time()
        self.idle_timeout = 0.0
        self.idle_handle: asyncio.TimerHandle | None = None
        self.done = False
        # Relayable but not yet settled: a decryptor still waits for handshake keys.
        self.keyed = not eng.settled
        # mitmproxy's handler of this connection has ended (tlsinspector_detach): the
        # relay alone has the sockets, closes them, and keeps mitmproxy's inactivity
        # timeout itself.
        self.detached = False
        # Taken over during the handshake (Connection.faultless), mitmproxy's handler
        # may still run a hook task then: what slim_idle could not make smaller is
        # tried again once the handshakes are over (not detached: nothing to slim).
        self.slim_due = False
        # Taken over before the handshakes were over (a faultless connection): the
        # engine may still assemble hello and handshake messages, which count toward
        # --max-held as on the full path, until they are over.
        self.early = not eng.handshakes_over
        self.hold: _Hold | None = None  # events held while a record waits for keys
        self.holds = eng.keylog is not None  # (only a keyed engine logs pending records)

    # -- taking over ---------------------------------------------------------------------

    def start(self, context: Any, idle_timeout: float, detach: bool = False) -> bool:
        """Take both transports over; False (nothing changed) if either is out of reach.
        ``detach``: then let mitmproxy end its handler of the connection (see
        ``mitm_internals.detach``), where it can."""
        parts = {side: mitm_internals.transport_parts(
            context, context.client if side == "client" else context.server)
            for side in SIDES}
        if parts["client"] is None or parts["server"] is None:
            return False  # checked for both before either is touched
        taken = {side: mitm_internals.take_transport(p)
                 for side, p in parts.items() if p is not None}
        self.watchdog = mitm_internals.timeout_watchdog(context)
        self.attach(taken, idle_timeout)
        if detach and self._detach(context):
            return True
        # What mitmproxy keeps per connection and the relay no longer uses, smaller
        # while the connection lives (10,000 idle connections: issue 19's RSS row):
        # its watchdog's task (the relay's timer does its job from now on), the
        # layers' sleeping wakeup timers (they ignore Wakeup from now on) and the
        # empty deques.
        mitm_internals.cancel_wakeups(context)
        if self.watchdog is not None:
            self.dog_timeout = mitm_internals.take_watchdog(taken["client"][1], self.watchdog)
            if self.dog_timeout > 0:
                _watchdogs().add(self)
        mitm_internals.slim_idle(context, [t[1] for t in taken.values()], self.watchdog)
        self.slim_due = not self.engine.handshakes_over
        # And the last chunk each of mitmproxy's read tasks still holds (the layer
        # ignores every event from now on: maybe_take_over's caller's promise).
        mitm_internals.drop_read_chunks(context, self.layer)
        return True

    def _detach(self, context: Any) -> bool:
        """mitmproxy's handler, tasks, streams and layers of this connection end and
        are freed (issue 19's RSS row); the relay keeps only the sockets, and the job
        of mitmproxy's inactivity watchdog (its timeout, read now)."""
        dog = self.watchdog
        if not mitm_internals.detach(context):
            return False
        self.detached = True
        self.watchdog = None
        for half in self.half.values():
            protocol = half.transport.get_protocol()
            if isinstance(protocol, _SideProtocol):
                protocol.old = None  # mitmproxy's StreamReaderProtocol: let it go
            mitm_internals.forget_protocol(half.transport)
        _detached().add(self)
        timeout = float(getattr(dog, "timeout", 0) or 0)
        if timeout > 0:
            self.dog_timeout = timeout
            _watchdogs().add(self)
        return True

    def attach(self, taken: dict[Side, tuple[Any, Any, bytes, bool]],
               idle_timeout: float) -> None:
        """Relay on these transports from now on: per side (transport, the protocol
        it had, bytes read but not yet relayed, whether its writer waited for a drain)."""
        # A download's record events come packed from now on (one output per read
        # instead of one per 16 KiB record); the layer's hot_emit unpacks them.
        self.engine.pack_records()
        for side in SIDES:
            self.half[side] = _Half(taken[side][0])
        for side in SIDES:
            transport, old, _, write_paused = taken[side]
            transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
            transport.set_protocol(_SideProtocol(self, side, old))
            if transport.is_reading():
                # uvloop chooses its read callbacks (bytes or a buffer) when reading
                # starts: restart it so reads come to get_buffer/buffer_updated.
                transport.pause_reading()
                transport.resume_reading()
            if write_paused:  # mitmproxy's writer was already waiting for a drain
                self.half[other(side)].paused |= PEER
        for side in SIDES:
            buffered = taken[side][2]
            if buffered:  # what mitmproxy's StreamReader had read but not handed on
                self.data(side, buffered)
            self._apply_pause(side)
        if idle_timeout > 0:
            self.idle_timeout = idle_timeout
            self._arm(idle_timeout)

    # -- inbound ---------------------------------------------------------------------------

    def data(self, side: Side, data: bytes) -> None:
        if self.done:
            return
        half = self.half[side]
        if half.waiting:
            half.waiting += data  # after what waits (only while sliced)
            return
        if len(data) > half.slice:
            half.waiting = bytes(data)  # a view of the read buffer: the next read reuses it
            self._next_slice(side)
            return
        self._receive(side, data)

    def _receive(self, side: Side, data: bytes) -> None:
        eng = self.engine
        if type(data) is not bytes and not (eng.settled and eng.handshakes_over):
            # A record waiting for its key keeps its bytes, a codec may parse it (a
            # faultless connection's handshake is parsed here too): the chunk gets its
            # own copy (a view of the read buffer is reused).
            data = bytes(data)
        forwarded = eng.forwards_unchanged(side, data)
        if forwarded:  # written before the engine looks at it (see the full path)
            peer = self.half[other(side)]
            if peer.write_open:
                peer.transport.write(data)
        keyed = self.keyed
        if keyed:
            # The decryptor still opens handshake records (Connection.relayable): the
            # key log is read around each chunk as on the full path.
            self.layer.keys_before()
        now = time.time()
        self.last_activity = now
        if self.watchdog is not None:
            self.watchdog.register_activity()  # mitmproxy's own inactivity timeout
        start = perf_counter()
        outputs = eng.receive(side, data, now, forwarded)
        spent = perf_counter() - start
        fit = int(len(data) * TURN_BUDGET / spent) if spent > 0 else 1 << 20
        self.half[side].slice = max(SLICE_MIN, min(1 << 20, fit))
        self._apply(outputs)
        if keyed:
            self.layer.keys_after()
            self.keyed = not eng.settled
        if self.early and not self.done:
            self._early(side, now)
        if self.half[other(side)].lost:
            self._peer_gone(side)

    def _early(self, side: Side, now: float) -> None:
        """After a chunk of a connection taken over during its handshake: what the
        engine holds goes to the global budget (which may shed message assembly, or
        stop reading ``side``, as the full path's layer does), until the handshakes
        are over; then mitmproxy's handler is slimmed as at a later hand-over."""
        eng = self.engine
        if eng.handshakes_over:
            self.early = False
            if self.slim_due:
                self.slim_due = False
                mitm_internals.slim_idle(self.layer.context, [], None)
        if self.layer.hot_held(eng.held_bytes(), side, now):
            self.half[side].paused |= BUDGET
            self._apply_pause(side)

    def budget_resume(self) -> None:
        """The global budget is back under half its bound: read again."""
        for side in SIDES:
            half = self.half.get(side)
            if half is not None and half.paused & BUDGET:
                half.paused &= ~BUDGET
                self._apply_pause(side)

    def _next_slice(self, side: Side) -> None:
        """Hand the engine one slice of the waiting bytes; the rest waits a turn."""
        if self.done:
            return
        half = self.half[side]
        rest = half.waiting
        part, rest = rest[:half.slice], rest[half.slice:]
        half.waiting = rest
        self._receive(side, part)
        if rest:
            half.paused |= SLICE
            self._apply_pause(side)
            asyncio.get_running_loop().call_soon(self._next_slice, side)
            return
        half.paused &= ~SLICE
        self._apply_pause(side)
        if half.eof_waiting:
            half.eof_waiting = False
            self.eof(side)

    def _peer_gone(self, side: Side) -> None:
        """``side`` sent bytes toward a socket that is gone (reset, or a write to it
        failed): nothing it sends can arrive any more. End the connection as the full
        path does, where mitmproxy's drain of the dead writer fails and cancels the
        client's handler: ``side``'s direction ends too (its bytes so far are counted),
        the close event is logged and its socket is closed, so that a peer streaming
        toward a reset one learns of it within the buffers on the way, instead of the
        relay reading and dropping its bytes for as long as it sends."""
        if not self.done and self.half[side].read_open:
            self._end_reading(side)

    def holds_reads(self) -> bool:
        """Whether what was just read may still be referenced: a transport kept part
        of a write (what waits for a turn is a copy, see :meth:`data`)."""
        return any(h.transport.get_write_buffer_size() for h in self.half.values())

    def eof(self, side: Side) -> None:
        half = self.half[side]
        if self.done or not half.read_open:
            return
        if half.waiting:
            half.eof_waiting = True  # after its bytes
            return
        half.read_open = False
        self.last_activity = time.time()
        self._apply(self.engine.eof(side, self.last_activity))
        self._maybe_done()

    def lost(self, side: Side, exc: Exception | None) -> None:
        """The socket is gone (closed, reset): its direction ends, nothing more can be
        written to it."""
        half = self.half[side]
        half.write_open = False
        half.lost = True
        if self.detached and all(h.lost for h in self.half.values()):
            _detached().discard(self)
        if half.read_open:
            self._end_reading(side)
        self._maybe_done()

    def _end_reading(self, side: Side) -> None:
        """``side``'s direction ends now (its socket is gone, or its peer's is): what
        waits for a turn goes with it (it can reach no one), then its end as a FIN."""
        half = self.half[side]
        half.waiting = b""
        half.eof_waiting = False
        self.eof(side)

    # -- outbound ----------------------------------------------------------------------------

    def _apply(self, outputs: list[engine.Output]) -> None:
        self._log(outputs)
        for o in outputs:
            if type(o) is engine.Send:
                half = self.half[o.to]
                if half.write_open:
                    half.transport.write(o.data)
            elif isinstance(o, engine.Close):
                self._close_toward(o.to, o.how)
            # A settled engine asks for no wakeups (no timers, no faults).

    def _log(self, outputs: list[engine.Output]) -> None:
        """To the log, unless a record waits for its keys (:class:`_Hold`)."""
        hold = self.hold
        if hold is None:
            if not self.holds:
                self.emit(outputs)
                return
            first = next((i for i, o in enumerate(outputs) if _is_pending(o)), -1)
            if first < 0:
                self.emit(outputs)
                return
            if first:
                self.emit(outputs[:first])
                outputs = outputs[first:]
            hold = self.hold = _Hold(
                asyncio.get_running_loop().call_later(HOLD_MAX, self.release))
        hold.add(outputs)
        if len(hold.outputs) > HOLD_OUTPUTS:
            self.release()

    def keys_arrived(self, evs: list[dict[str, Any]]) -> bool:
        """Late results of this connection (the inspector's key log reads): True when
        held here (completing held record events; released once none waits)."""
        hold = self.hold
        if hold is None:
            return False
        hold.complete(evs)
        if not hold.pending:
            self.release()
        return True

    def release(self) -> None:
        """Whatever is held goes to the log now, in order."""
        hold, self.hold = self.hold, None
        if hold is not None:
            hold.handle.cancel()
            self.emit(hold.outputs)

    def _close_toward(self, to: Side, how: str) -> None:
        half = self.half[to]
        if not half.write_open:
            return
        half.write_open = False
        transport = half.transport
        if how == "rst":
            mitm_internals.linger_zero_transport(transport)
            transport.close()
        elif transport.can_write_eof():
            transport.write_eof()

    def writing_paused(self, side: Side, paused: bool) -> None:
        """``side``'s write buffer passed its high-water mark (or drained): stop (or
        resume) reading from the other side."""
        reader = other(side)
        if paused:
            self.half[reader].paused |= PEER
        else:
            self.half[reader].paused &= ~PEER
        self._apply_pause(reader)

    def _apply_pause(self, side: Side) -> None:
        half = self.half.get(side)
        if half is None or not half.read_open or half.transport.is_closing():
            return
        transport = half.transport
        if half.paused:
            transport.pause_reading()
        elif not transport.is_reading():
            transport.resume_reading()

    # -- the end -------------------------------------------------------------------------------

    def _maybe_done(self) -> None:
        if self.done or self.half["client"].read_open or self.half["server"].read_open:
            return
        self._finish(by=None)

    def _finish(self, by: str | None, reason: str | None = None) -> None:
        self.done = True
        self._forget_watchdog()
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None
        self.layer.last_keys()
        self.release()  # (the last read may have completed them)
        outputs = self.engine.finish(time.time(), by=by)
        if reason:
            for o in outputs:
                if isinstance(o, engine.Emit) and o.event["event"] == "close":
                    o.event["reason"] = reason
        self.emit(outputs)
        self.layer.hot_finished()
        self.close_sockets()

    def stop(self) -> None:
        """The layer ends the connection (shutdown): nothing more is relayed (a
        detached relay's layer then calls close_sockets)."""
        self.done = True
        self._forget_watchdog()
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None
        self.release()

    def close_sockets(self) -> None:
        """Detached: close both sockets (after what is already written), as mitmproxy's
        handler closes its writers at the end (a no-op when not detached: mitmproxy's
        handler closes them)."""
        if not self.detached:
            return
        for side in SIDES:
            transport = self.half[side].transport
            if not transport.is_closing():
                transport.close()

    def timed_out(self) -> None:
        """mitmproxy's inactivity timeout of a detached connection: closed as its
        ``on_timeout`` closes it (the client's socket, then the server's); the
        relay sees both ends and logs the close event."""
        self.abort_stuck()
        for side in SIDES:
            transport = self.half[side].transport
            if not transport.is_closing():
                transport.close()

    def abort_stuck(self) -> None:
        """A timeout ends the connection: reset (RFC 9293 3.6.1) each socket that still
        holds bytes toward its peer. That peer read nothing for the whole timeout (the
        bytes would have gone, else), and a close waits until they are written: for a
        peer that never reads again, forever, the socket open (and, after mitmproxy's
        inactivity timeout, the relay never learning of that side's end, so no close
        event). The other sockets are closed after what they hold, as before."""
        for half in self.half.values():
            if not half.lost:
                mitm_internals.abort_transport_if_holding(half.transport)

    def _forget_watchdog(self) -> None:
        dogs: _Watchdogs | None = getattr(_THREAD, "dogs", None)
        if dogs is not None:
            dogs.relays.discard(self)

    def _arm(self, delay: float) -> None:
        self.idle_handle = asyncio.get_running_loop().call_later(delay, self._idle)

    def _idle(self) -> None:
        self.idle_handle = None
        if self.done:
            return
        timeout = self.idle_timeout
        due = self.last_activity + timeout
        now = time.time()
        if now < due - 0.001:
            self._arm(due - now)
            return
        self.abort_stuck()
        self._finish("proxy", f"idle timeout: no bytes either way for {timeout:g} s")


# mitmproxy's inactivity watchdog of a hot connection (a task per connection, its
# coroutines, a future and a timer: about 1 KiB each, issue 19's RSS row) is checked
# by one timer per event loop instead, every timeout / 8 and at least every
# SWEEP_MAX seconds: its 600 s TCP timeout fires at most that much later.
SWEEP_MAX = 10.0
SWEEP_MIN = 0.05


class _Watchdogs:
    """The hot relays of one event loop whose watchdog task was taken over."""

    __slots__ = ("loop", "relays", "handle", "period")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.relays: set[HotRelay] = set()
        self.handle: asyncio.TimerHandle | None = None
        self.period = SWEEP_MAX

    def add(self, relay: HotRelay) -> None:
        self.relays.add(relay)
        period = max(SWEEP_MIN, min(SWEEP_MAX, relay.dog_timeout / 8))
        if period < self.period and self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.period = min(self.period, period)
        if self.handle is None:
            self.handle = self.loop.call_later(self.period, self.sweep)

    def sweep(self) -> None:
        """mitmproxy's TimeoutWatchdog.watch, for every relay at once: an expired
        watchdog runs its callback (the connection closes as mitmproxy closes it)."""
        self.handle = None
        now = time.time()
        for relay in list(self.relays):
            if relay.done:
                self.relays.discard(relay)
            elif relay.detached:
                if relay.last_activity + relay.dog_timeout < now:
                    self.relays.discard(relay)
                    relay.timed_out()
            elif not mitm_internals.watchdog_expired(relay.watchdog, relay.dog_timeout,
                                                     self.loop):
                self.relays.discard(relay)  # (expired: fired once, as watch() returns)
                relay.abort_stuck()  # mitmproxy's close then finds them closed
        if self.relays:
            self.handle = self.loop.call_later(self.period, self.sweep)


def _watchdogs() -> _Watchdogs:
    """This thread's (this event loop's) sweeper; a new one for a new loop."""
    loop = asyncio.get_running_loop()
    dogs: _Watchdogs | None = getattr(_THREAD, "dogs", None)
    if dogs is None or dogs.loop is not loop:
        dogs = _THREAD.dogs = _Watchdogs(loop)
    return dogs


def _detached() -> set[HotRelay]:
    """This thread's (event loop's) detached relays whose sockets are not both gone
    yet: the shutdown waits (bounded) for them as for mitmproxy's handlers."""
    relays: set[HotRelay] | None = getattr(_THREAD, "detached", None)
    if relays is None:
        relays = _THREAD.detached = set()
    return relays


def detached_open() -> int:
    """How many detached relays of this thread's event loop still have a socket open."""
    return len(_detached())


def maybe_take_over(layer: Any, idle_timeout: float) -> HotRelay | None:
    """The record layer's one call: hand a settled connection to a HotRelay.

    ``layer`` is a RecordLayer with an ``engine`` and ``context``, whose relay
    state is idle (nothing waits for a turn, no side paused by it), and which
    provides ``hot_emit(outputs)`` (whose record events may come packed,
    ``engine.EmitRecords``: ``engine.events`` unpacks them), ``keys_before()``,
    ``keys_after()``, ``last_keys()``, ``hot_finished()`` and ``hot_held(held, side,
    now)`` (the budget, while a faultless connection's handshake goes on), and which
    ignores every
    mitmproxy event once a relay is returned (the relay has the sockets; see
    ``mitm_internals.drop_read_chunks``). With ``layer.detach`` true the relay
    detaches the connection from mitmproxy (HotRelay._detach) and the layer must
    drop its mitmproxy references (``detached()``). None: stay on the full path (not
    relayable, or the transports are out of reach)."""
    eng = layer.engine
    if DISABLED or eng is None or not eng.relayable or not (
            type(eng) is engine.Connection or getattr(eng, "HOT_PATH", False)):
        return None  # (an engine wrapped by another addon: its own rules, the full path)
    relay = HotRelay(layer, eng, layer.hot_emit)
    if not relay.start(layer.context, idle_timeout, bool(getattr(layer, "detach", False))):
        return None
    return relay
