"""tlsinspector as a mitmproxy addon: every TLS record both ways, decoded and logged.

Run it under plain mitmproxy:

    mitmdump --mode reverse:tcp://127.0.0.1:4433 --listen-host 127.0.0.1 -p 8443 \
        -s "$(tlsinspector addon-path)" --set tlsinspector_log=hs.jsonl

or through the CLI (``tlsinspector run``), which loads this same addon. For
protocols whose server speaks first (SMTP, IMAP, POP3, FTP, MySQL) add
``--set connection_strategy=eager``, as ``tlsinspector run`` does: the upstream
then opens when the client connects (issue 17).

The addon only translates: the next_layer hook installs :class:`RecordLayer`, a
small layer modelled on mitmproxy/proxy/layers/tcp.py that relays raw bytes (TLS
is never terminated) and hands every event to the sans-io engine in
proxy/engine.py, turning the engine's Send/Close/Wakeup outputs back into
mitmproxy commands. No TCPFlow is kept, so memory does not grow with the
bytes transferred.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import sys
import time
from collections.abc import Generator, Sequence
from time import perf_counter
from typing import IO, Any

from mitmproxy import ctx, exceptions
from mitmproxy.connection import ConnectionState
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers import HttpLayer, modes
from mitmproxy.proxy.layers.http import HttpStream

from tlsinspector.addons import hotpath, intercept, limits, logfile, mitm_internals
from tlsinspector.addons.keylogs import KeyLogFollower, KeyLogPathError
from tlsinspector.proxy import diagnosis as _diagnosis  # noqa: F401 - see below
from tlsinspector.proxy import engine, outbox, render

# engine.finish imports the diagnosis module lazily; import it now, while files can
# still be opened: the first close may come when the process is out of descriptors.
from tlsinspector.proxy.coalesce import Coalescer
from tlsinspector.proxy.history import Side, other
from tlsinspector.proxy.scenario_yaml import terminal_safe

WRITABLE = (ConnectionState.OPEN, ConnectionState.CAN_WRITE)
BACKLOG_LIMIT = 4 << 20  # bytes a fault may hold toward one side before we stop reading
# Fairness (issue 12): a 64 KiB read of one-byte handshake records is ~11k records
# of engine work, ~100 ms on which every other connection would wait. A read is
# handed to the engine in slices of at most TURN_BUDGET seconds of work each,
# one per event-loop turn: the slice size follows the engine's measured cost per
# byte on this connection (SLICE_FIRST while it is unknown: no ordinary flight
# is split; down to SLICE_MIN for tiny records, up to SLICE_MAX for ordinary
# traffic, where a read is never split).
# Reading from a side pauses while more than SLICE_HOLD bytes wait.
TURN_BUDGET = 0.002
SLICE_FIRST = 16 << 10
SLICE_MIN = 1024
SLICE_MAX = 1 << 20
SLICE_HOLD = 64 << 10
DRAIN_SECONDS = 3.0  # at shutdown: how long closed connections get to wind down
MODE_LAYERS = (modes.ReverseProxy, modes.TransparentProxy, modes.Socks5Proxy)
KEYLOG_POLL = 0.05  # seconds between reads of the key log files (and on demand)


def _addr(address: Any) -> str:
    if not address:
        return "?"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _is_tunnel_start(stack: list[Any]) -> bool:
    """Where a raw byte stream toward a known destination begins.

    Reverse, transparent and SOCKS5 modes: right after the mode layer.
    Regular (HTTP proxy) mode: inside a CONNECT tunnel, i.e. right after
    the HTTP stream of the CONNECT request, which only asks for a next layer
    once the tunnel is established.
    """
    if len(stack) == 1:
        return isinstance(stack[0], MODE_LAYERS)
    return (len(stack) == 3 and isinstance(stack[0], modes.HttpProxy)
            and isinstance(stack[1], HttpLayer) and isinstance(stack[2], HttpStream))


# A hot connection's (never used) slice sizes and waiting bytes: shared by all of
# them, and empty (``_relay_idle`` was true at the hand-over; nothing is added after).
HOT_SLICE: dict[Side, int] = {"client": SLICE_FIRST, "server": SLICE_FIRST}
HOT_WAITING: dict[Side, bytearray] = {"client": bytearray(), "server": bytearray()}


class RecordLayer(layer.Layer):
    """Relays raw TCP between client and server through the inspection engine."""

    def __init__(self, context: Any, inspector: Inspector) -> None:
        super().__init__(context)
        self.inspector = inspector
        self.engine: engine.Connection | None = None
        self.coalescer = Coalescer()  # the log stays proportional to the traffic
        # Sides we stopped reading from (backpressure); not ``_paused``, which
        # mitmproxy's Layer uses for its blocking commands. These sets of sides are
        # frozensets, replaced (|=, -=) when they change: every connection starts
        # with the one shared empty set, and few ever pause (four empty sets were
        # 0.9 KiB of each idle connection, issue 19's RSS row).
        self._not_reading: frozenset[Side] = engine.NO_SIDES
        self._budget_paused: frozenset[Side] = engine.NO_SIDES  # by the --max-held bound
        self._last_activity = 0.0
        self._idle_due: float | None = None     # when the idle timer asked for fires
        # Bytes read but not yet handed to the engine (see SLICE), per side, and
        # a half-close that waits for them; whether a turn is requested.
        self._slice: dict[Side, int] = {"client": SLICE_FIRST, "server": SLICE_FIRST}
        self._waiting: dict[Side, bytearray] = {"client": bytearray(), "server": bytearray()}
        self._eof_waiting: list[Any] = []
        self._slice_paused: frozenset[Side] = engine.NO_SIDES
        self._turn_requested = False
        self.hot: hotpath.HotRelay | None = None  # the hot path's relay, once handed over
        self._key_poll_due: float | None = None  # the key-log poll timer asked for
        self._nodelay: frozenset[Side] = engine.NO_SIDES  # sockets with TCP_NODELAY set
        # id() of the event being handled (not the event: a DataReceived holds its
        # chunk, up to 64 KiB, which an idle hot connection must not keep).
        self._handling = 0

    def _side(self, conn: Any) -> Side:
        return "client" if conn is self.context.client else "server"

    def _conn(self, side: Side) -> Any:
        return self.context.client if side == "client" else self.context.server

    def _handle_event(self, event: events.Event) -> Generator[commands.Command, Any, None]:
        now = time.time()
        self._handling = id(event)  # for the hand-over: is anything queued behind it?
        if isinstance(event, events.Start):
            self.inspector.claim(self.context.client)
            self.engine = self.inspector.new_connection(self.context, self)
            self._last_activity = now
            self.inspector.live[id(self)] = self
            yield from self._apply(self.engine.start(now))
            self.inspector.check_fds(self.engine.conn_id)
            if self.context.server.timestamp_start is None:
                err = yield commands.OpenConnection(self.context.server)
                if err:
                    yield from self._apply(self.engine.upstream_unreachable(time.time(),
                                                                            str(err)))
                    if "Too many open files" in str(err):
                        self.inspector.check_fds(self.engine.conn_id, force=True)
                    yield commands.CloseConnection(self.context.client)
                    yield from self._apply(self.engine.finish(time.time(), by="proxy"))
                    self._finished()
                    return
            timeout = self.inspector.idle_timeout
            if timeout > 0:
                self._idle_due = now + timeout
                yield commands.RequestWakeup(timeout)
            return
        assert self.engine is not None
        if isinstance(event, events.DataReceived):
            self._last_activity = now
            side = self._side(event.connection)
            data = event.data
            waiting = self._waiting[side]
            if waiting or len(data) > self._slice[side]:
                waiting += data
                data = bytes(waiting[:self._slice[side]])
                del waiting[:len(data)]
                yield from self._more_turns(side)
            yield from self._receive(event.connection, data, now)
            self._read_again(side)
        elif isinstance(event, events.ConnectionClosed):
            self._last_activity = now
            if self._waiting[self._side(event.connection)]:
                self._eof_waiting.append(event.connection)  # after its bytes
                return
            yield from self._apply(self.engine.eof(self._side(event.connection), now))
            yield from self._maybe_done(now)
        elif isinstance(event, events.Wakeup):
            if self._turn_requested:
                yield from self._turn(now)
                if self._handle_event in (self._done, self._hot):
                    # Closed, or handed to the hot relay by the turn's last slice: the
                    # relay has the connection (detached: no context is left to read).
                    return
            if self._idle_due is not None and now >= self._idle_due - 0.001:
                yield from self._idle(now)
                if self._handle_event == self._done:
                    return
            if self._key_poll_due is not None and now >= self._key_poll_due - 0.001:
                self._key_poll_due = None
                if self.engine.holding_keys:
                    # A fault holds records for keys: read the key log, then let the
                    # engine release what it can (wakeup) in this same turn.
                    self.inspector.poll_keys()
                    yield from self._apply(self.engine.keys_arrived(now))
            yield from self._apply(self.engine.wakeup(now))
            yield from self._key_poll()
            self._backpressure()
            yield from self._maybe_done(now)

    def _receive(self, conn: Any, data: bytes, now: float
                 ) -> Generator[commands.Command, Any, None]:
        assert self.engine is not None
        side = self._side(conn)
        forwarded = self.engine.forwards_unchanged(side, data)
        if forwarded:
            # Nothing can change these bytes: they go on before the engine parses,
            # decrypts and logs them (its work no longer delays the peer), and before
            # the key log is read for them (a key that frees a held record makes the
            # next chunk forwardable, never this one less so).
            peer = self._conn(other(side))
            if peer.state in WRITABLE:
                yield commands.SendData(peer, data)
        self.keys_before()
        start = perf_counter()  # real time: how long the engine kept the loop
        outputs = self.engine.receive(side, data, now, forwarded)
        spent = perf_counter() - start
        # Bytes that cost TURN_BUDGET at this connection's last measured rate.
        fit = int(len(data) * TURN_BUDGET / spent) if spent > 0 else SLICE_MAX
        self._slice[side] = max(SLICE_MIN, min(SLICE_MAX, fit))
        yield from self._apply(outputs)
        self.keys_after()
        yield from self._key_poll()
        if any(type(o) is engine.Close for o in outputs):
            yield from self._maybe_done(now)  # a fault may have closed both sides
        if self._not_reading or self.engine.pending_timers:
            self._backpressure()
        self._account(now, conn)
        # -- issue 19: hand a settled connection to the hot path (addons/hotpath.py) --
        if (self.engine.relayable and self._relay_idle()
                and not mitm_internals.events_queued(self.context, self, self._handling)):
            self.hot = hotpath.maybe_take_over(self, self.inspector.idle_timeout)
            if self.hot is not None:
                self.inspector.budget.update(self, self.engine.held_bytes(), now)
                self._handle_event = self._hot  # type: ignore[method-assign]
                # The full path's relay state is never used again (issue 19's RSS row:
                # two dicts and two buffers per idle connection): the shared empty ones.
                self._slice, self._waiting = HOT_SLICE, HOT_WAITING
                if self.hot.detached:
                    self.detached()
        # -- end of the hot path hook --

    def _key_poll(self) -> Generator[commands.Command, Any, None]:
        """While the engine holds records for keys, look at the key log every
        KEYLOG_POLL seconds (the engine's own Wakeup covers its deadline)."""
        assert self.engine is not None
        if self.engine.holding_keys and self._key_poll_due is None:
            self._key_poll_due = time.time() + KEYLOG_POLL
            yield commands.RequestWakeup(KEYLOG_POLL)

    def _more_turns(self, side: Side) -> Generator[commands.Command, Any, None]:
        """Bytes wait for a later turn: ask for one, and stop reading while many wait."""
        if len(self._waiting[side]) > SLICE_HOLD and side not in self._slice_paused:
            if self.inspector.pause_reading(self.context, self._conn(side), True):
                self._slice_paused |= {side}
        if self._waiting[side] and not self._turn_requested:
            self._turn_requested = True
            yield commands.RequestWakeup(0)

    def _read_again(self, side: Side) -> None:
        """A side paused for slices reads again once its waiting bytes are all handed
        to the engine, however they drained: by a turn, or by a later read whose
        larger slice took them first (that way was missed once: with slow receives,
        as under `--pcap` on a loaded machine, bulk downloads stalled for good)."""
        if side in self._slice_paused and not self._waiting[side] and (
                side not in self._not_reading and self._handle_event != self._done):
            self.inspector.pause_reading(self.context, self._conn(side), False)
            self._slice_paused -= {side}

    def _turn(self, now: float) -> Generator[commands.Command, Any, None]:
        """One event-loop turn's share of the waiting bytes (a slice per side)."""
        self._turn_requested = False
        sides: tuple[Side, Side] = ("client", "server")
        for side in sides:
            waiting = self._waiting[side]
            if not waiting or self._handle_event == self._done:
                self._read_again(side)
                continue
            data = bytes(waiting[:self._slice[side]])
            del waiting[:len(data)]
            yield from self._receive(self._conn(side), data, now)
            if self.hot is not None:
                return  # handed over (nothing waited, nothing paused: _relay_idle)
            if waiting:
                yield from self._more_turns(side)
                continue
            self._read_again(side)
            for conn in [c for c in self._eof_waiting if self._side(c) == side]:
                self._eof_waiting.remove(conn)
                if self._handle_event != self._done and self.engine is not None:
                    yield from self._apply(self.engine.eof(side, now))
                    yield from self._maybe_done(now)

    # -- resource bounds (addons/limits.py) -------------------------------------

    def _account(self, now: float, conn: Any) -> None:
        """Tell the global budget what this connection holds; stop reading from the
        sender if the budget says so (backpressure, --max-held)."""
        assert self.engine is not None
        side = self._side(conn)
        waiting = len(self._waiting["client"]) + len(self._waiting["server"])
        held = self.engine.held_bytes() + waiting
        if self.inspector.budget.update(self, held, now):
            if self.inspector.pause_reading(self.context, conn, True):
                self._budget_paused |= {side}
            self._held_paused(side, now)

    def _held_paused(self, side: Side, now: float) -> None:
        assert self.engine is not None
        budget = self.inspector.budget
        self._log([self._event("held_limit", now, **{"from": side}, action="paused",
                               held=self.engine.held_bytes(), total=budget.total,
                               max_held=budget.limit)])

    def hot_held(self, held: int, side: Side, now: float) -> bool:
        """The hot relay's _account, during a handshake it relays (HotRelay._early):
        True when ``side`` must stop reading (the relay pauses it itself, and
        :meth:`pause_for_budget` resumes it through the relay)."""
        if not self.inspector.budget.update(self, held, now):
            return False
        self._held_paused(side, now)
        return True

    def _event(self, name: str, now: float, **fields: Any) -> dict[str, Any]:
        assert self.engine is not None
        return {"event": name, "ts": round(now, 6), "conn": self.engine.conn_id, **fields}

    def _log(self, evs: list[dict[str, Any]]) -> None:
        evs = self.coalescer.feed(evs)
        if evs:
            self.inspector.emit_many(evs)

    def shed(self, now: float, why: str) -> int:
        """budget: let go of what can be let go without touching the wire."""
        if self.engine is None:
            return 0
        before = self.engine.held_bytes()
        outs = self.engine.shed(now, why)
        self._log(engine.events(outs))
        return before - self.engine.held_bytes()

    def pause_for_budget(self, pause: bool) -> None:
        """budget: read again (the total is back under half the bound)."""
        if self.hot is not None:
            if not pause:
                self.hot.budget_resume()
            return
        for side in list(self._budget_paused):
            if pause or side in self._not_reading:
                continue  # the per-connection backlog bound still holds this side
            self.inspector.pause_reading(self.context, self._conn(side), False)
            self._budget_paused -= {side}

    def _idle(self, now: float) -> Generator[commands.Command, Any, None]:
        """The idle timer fired: close if nothing moved for --idle-timeout seconds,
        else ask again for the rest of it."""
        assert self.engine is not None
        timeout = self.inspector.idle_timeout
        due = self._last_activity + timeout
        if now < due - 0.001:
            self._idle_due = due
            yield commands.RequestWakeup(due - now)
            return
        self._idle_due = None
        for conn in (self.context.server, self.context.client):
            if conn.state is not ConnectionState.CLOSED:
                # A socket still holding bytes for a peer that read none of them in all
                # that time is reset: a close would wait for them forever (the hot
                # relay's abort_stuck, the same).
                self.inspector.abort_if_holding(self.context, conn)
                yield commands.CloseConnection(conn)
        outputs = self.engine.finish(now, by="proxy")
        for o in outputs:
            if isinstance(o, engine.Emit) and o.event["event"] == "close":
                o.event["reason"] = f"idle timeout: no bytes either way for {timeout:g} s"
        yield from self._apply(outputs)
        self._finished()

    def _finished(self) -> None:
        """The close event is out: ignore whatever mitmproxy still reports."""
        self._handle_event = self._done  # type: ignore[method-assign]
        self.inspector.budget.forget(self)
        self.inspector.live.pop(id(self), None)

    def _backpressure(self) -> None:
        """Bytes a delay or a paced write holds in the engine are not in any socket
        buffer, so mitmproxy's own backpressure (draining writers before reading
        more) does not see them: stop reading from the sender while more than
        BACKLOG_LIMIT wait toward its peer, and read again below half of it."""
        assert self.engine is not None
        pairs: tuple[tuple[Side, Side], ...] = (("client", "server"), ("server", "client"))
        for to, sender in pairs:
            backlog = self.engine.backlog(to)
            if sender not in self._not_reading and backlog > BACKLOG_LIMIT:
                if self.inspector.pause_reading(self.context, self._conn(sender), True):
                    self._not_reading |= {sender}
            elif sender in self._not_reading and backlog <= BACKLOG_LIMIT // 2:
                self.inspector.pause_reading(self.context, self._conn(sender), False)
                self._not_reading -= {sender}

    def _maybe_done(self, now: float) -> Generator[commands.Command, Any, None]:
        assert self.engine is not None
        c, s = self.context.client, self.context.server
        readable = (c.state & ConnectionState.CAN_READ) or (s.state & ConnectionState.CAN_READ)
        waiting = self._waiting["client"] or self._waiting["server"]
        if readable or waiting:
            return
        if self.engine.pending_timers and self.engine.only_delayed:
            # Both peers have closed while a delay still holds bytes toward one: the
            # connection ended now, so its close event (and diagnosis) is logged now;
            # the held bytes and the close behind them still go out at their time
            # (a peer that only half-closed may be reading), then the sockets close.
            self.last_keys()
            yield from self._apply(self.engine.finish(now))
            self._handle_event = self._draining  # type: ignore[method-assign]
            return
        if not self.engine.pending_timers:
            self.last_keys()  # last chance for keys before the diagnosis
            for conn in (s, c):
                if conn.state is not ConnectionState.CLOSED:
                    yield commands.CloseConnection(conn)
            yield from self._apply(self.engine.finish(now))
            self._finished()

    def _draining(self, event: events.Event) -> Generator[commands.Command, Any, None]:
        """After the close event: deliver what a delay still holds, at its time."""
        assert self.engine is not None
        if isinstance(event, events.Wakeup):
            yield from self._apply(self.engine.wakeup(time.time()))
        if not self.engine.pending_timers:
            for conn in (self.context.server, self.context.client):
                if conn.state is not ConnectionState.CLOSED:
                    yield commands.CloseConnection(conn)
            self._finished()

    def _done(self, event: events.Event) -> Generator[commands.Command, Any, None]:
        yield from ()

    # -- the hot path (issue 19, addons/hotpath.py) ---------------------------------------

    def _relay_idle(self) -> bool:
        """Nothing of this layer's own relay state would be lost by handing over."""
        return not (self._waiting["client"] or self._waiting["server"] or self._eof_waiting
                    or self._not_reading or self._budget_paused or self._slice_paused
                    or self._handle_event in (self._done, self._draining))

    def _hot(self, event: events.Event) -> Generator[commands.Command, Any, None]:
        """The hot relay has the sockets: mitmproxy only reports timers asked for
        earlier (ignored) and, at the very end, the connections' closes."""
        yield from ()

    def hot_emit(self, outputs: list[engine.Output]) -> None:
        # (the relay asked for packed records: Connection.pack_records; they stay
        # packed down to the log file where nothing else needs them one by one)
        items = self.coalescer.feed_packed(outbox.packed_events(outputs))
        if items:
            self.inspector.emit_packed(items)

    def keys_before(self) -> None:
        """Before a chunk goes to the engine (the full path's and the hot relay's)."""
        assert self.engine is not None
        if self.engine.expects_keys:
            # Peers write their secrets as their handshake goes: reading the key log
            # first lets these records open at once (no pending, no late event).
            self.inspector.poll_keys(quick=True)

    def keys_after(self) -> None:
        """After the engine had a chunk."""
        assert self.engine is not None
        if self.engine.needs_keys:
            # A hello just went by, or a record waits for its secret: read the key
            # log now rather than at the next tick.
            self.inspector.poll_keys(quick=True)

    def last_keys(self) -> None:
        """Before the close event (the full path's and the hot relay's): a last read of
        the key log, so records whose keys were logged since the timer's last poll are
        completed before the close and its diagnosis."""
        if self.engine is not None and self.engine.needs_keys:
            self.inspector.poll_keys()

    @property
    def detach(self) -> bool:
        """Whether the hot relay detaches the connection from mitmproxy
        (``tlsinspector_detach``)."""
        return self.inspector.detach

    def detached(self) -> None:
        """The hot relay detached the connection from mitmproxy (mitmproxy's handler
        ends): let go of its context (the Client and Server objects, the mode layer
        and its NextLayer), which nothing of the hot path reads any more, so that they
        are freed with the handler (issue 19's RSS row). mitmproxy's last events for
        the connection (ConnectionClosed, at the handler's end) are ignored by _hot,
        which reads no context."""
        self.context = None  # type: ignore[assignment]
        mitm_internals.slim_event_queue(self)

    def hot_finished(self) -> None:
        """The hot relay logged the close event: let mitmproxy close both sockets
        (after what is written) and end its tasks (a detached relay closes them)."""
        self._finished()
        if self.context is None:
            return
        for conn in (self.context.server, self.context.client):
            mitm_internals.close_connection(self.context, conn)

    def shutdown(self) -> None:
        """The proxy is stopping (SIGINT, SIGTERM, mitmproxy's shutdown) with this
        connection open: log its close event now, by the proxy, with its byte counts
        and diagnosis, then close both sockets (FIN after what is already written).

        Outside mitmproxy's event flow on purpose: once the proxy stops, no more
        events reach the layer, and the sockets' own ends would otherwise be logged
        as the peers' ("close by client") or not at all."""
        assert self.engine is not None
        if self.hot is not None:
            self.hot.stop()
        evs = engine.events(self.engine.finish(time.time(), by="proxy"))
        if evs:
            self.inspector.emit_many(evs)
        self._finished()
        if self.hot is not None and self.hot.detached:
            self.hot.close_sockets()  # mitmproxy no longer has them
            return
        for conn in (self.context.client, self.context.server):
            mitm_internals.close_connection(self.context, conn)

    def _apply(self, outputs: list[engine.Output]) -> Generator[commands.Command, Any, None]:
        # Log first, in one write for everything this event produced, then act.
        evs = self.coalescer.feed(engine.events(outputs))
        if evs:
            self.inspector.emit_many(evs)
        if self.engine is not None and self.engine.split_toward - self._nodelay:
            # split-writes: without TCP_NODELAY Nagle merges the small writes again.
            for side in self.engine.split_toward - self._nodelay:
                self._nodelay |= {side}
                self.inspector.no_delay(self.context, self._conn(side))
        for o in outputs:
            if isinstance(o, engine.Send):
                conn = self._conn(o.to)
                if conn.state in WRITABLE:  # identity, not Flag arithmetic (per chunk)
                    yield commands.SendData(conn, o.data)
            elif isinstance(o, engine.Close):
                conn = self._conn(o.to)
                if conn.state is ConnectionState.CLOSED:
                    continue
                if o.how == "rst":
                    # SO_LINGER 0 first: the close then sends a TCP RST.
                    self.inspector.reset_on_close(self.context, conn)
                    yield commands.CloseConnection(conn)
                else:
                    yield commands.CloseTcpConnection(conn, half_close=True)
            elif isinstance(o, engine.Wakeup):
                yield commands.RequestWakeup(max(0.0, o.at - time.time()))


def _seconds(text: str) -> float | None:
    """A finite number of seconds >= 0 from an option's text, or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 <= value < float("inf") else None


class Inspector:
    """Options, per-run state (connection numbering, seed) and the log sinks."""

    def __init__(self, terminal: IO[str] | None = None) -> None:
        self._numbers = itertools.count(1)
        self._terminal = terminal
        self._jsonl: logfile.JsonlLog | None = None
        self.quiet = False
        self.app_records = True
        self.log_preview = False
        self.budget = limits.HeldBudget()
        self.fds = limits.FdWatch()
        self.idle_timeout = 0.0
        self.detach = False  # tlsinspector_detach (run turns it on)
        self.protocol: str | None = None   # --protocol: the plaintext protocol, forced
        self._terminal_failed = False
        self._plain_http_said = False  # a plain HTTP request in regular mode (said once)
        self.scenarios: tuple[Any, ...] = ()
        #: Connections whose close event is not yet out, for a clean shutdown.
        self.live: dict[int, RecordLayer | intercept.InterceptLayer] = {}
        self.seed = 0
        self.rng = random.Random(0)
        self.keylogs: KeyLogFollower | None = None
        self.key_wait = engine.KEY_WAIT
        self._poller: asyncio.Task[None] | None = None
        self.intercept = intercept.InterceptHooks()
        # Eager connect (issue 17): client connection ids whose upstream is open but
        # whose RecordLayer has not started yet (no byte either way so far), and the
        # ids a RecordLayer took over. A client that closes while still pending is
        # logged from client_disconnected (connect and close events).
        self._pending: dict[str, tuple[Any, Any]] = {}
        self._fd_recheck: asyncio.TimerHandle | None = None
        self._claimed: set[str] = set()

    def load(self, loader: Any) -> None:
        self.intercept.load(loader)
        loader.add_option("tlsinspector_log", str, "",
                          "Write the JSON Lines log (DESIGN.md schema) to this file.")
        loader.add_option("tlsinspector_scenarios", Sequence[str], [],
                          "Fault scenario files (YAML) to apply.")
        loader.add_option("tlsinspector_seed", int, -1,
                          "Seed for probabilistic faults (-1: random, printed at start).")
        loader.add_option("tlsinspector_quiet", bool, False,
                          "Do not print the record-by-record view on the terminal.")
        loader.add_option("tlsinspector_app_records", bool, True,
                          "Log each application_data record (off: counted in the close event).")
        loader.add_option("tlsinspector_max_held", int, limits.DEFAULT_MAX_HELD,
                          "Bound on bytes held across all connections (partial records, "
                          "messages being assembled, bytes held for faults); beyond it "
                          "message assembly is given up and reading paused. 0: no bound.")
        # A str, parsed in configure: mitmproxy's --set has no float options (it
        # raised "Unsupported option type: <class 'float'>" and the addon did not load).
        loader.add_option("tlsinspector_idle_timeout", str, "0",
                          "Close a connection after this many seconds without a byte either "
                          "way (0: never; fractions allowed, e.g. 0.5).")
        loader.add_option("tlsinspector_detach", bool, False,
                          "Once a connection is on the hot path, end mitmproxy's handler of "
                          "it (its tasks, streams and layers: less memory per idle "
                          "connection); mitmproxy's server_disconnected and "
                          "client_disconnected hooks then fire at that moment, not at "
                          "the real close. `tlsinspector run` turns it on; leave it off "
                          "when another addon needs those hooks.")
        loader.add_option("tlsinspector_log_preview", bool, False,
                          "Log a 48-byte printable preview of non-TLS bytes (application "
                          "data: off by default, when only length and reason are logged).")
        loader.add_option("tlsinspector_protocol", str, "",
                          "The plaintext protocol before TLS (STARTTLS): smtp, lmtp, imap, "
                          "pop3, ftp, xmpp, ldap, postgres, mysql; empty: told from the "
                          "bytes.")
        loader.add_option("tlsinspector_keylog", Sequence[str], [],
                          "NSS key log files (SSLKEYLOGFILE) to decrypt with; followed as "
                          "peers append to them, waited for if they do not exist yet.")
        loader.add_option("tlsinspector_key_wait_ms", int, 2000,
                          "How long keys may take to arrive (ms): a fault that needs keys "
                          "holds its record that long, then is reported as not applied and "
                          "the record goes on unchanged; decryption stops waiting for a "
                          "connection's keys after it (one note) and relays its records "
                          "without decryption. Forwarding waits for nothing else.")

    def configure(self, updated: set[str]) -> None:
        self.intercept.configure(updated)
        if "tlsinspector_log" in updated:
            self._close_log()
            path = ctx.options.tlsinspector_log
            if path:
                try:
                    self._jsonl = logfile.JsonlLog(path)
                except logfile.LogFileError as e:
                    raise exceptions.OptionsError(str(e)) from e
        # Read once here, not per event: option lookups cost on the hot path.
        self.quiet = ctx.options.tlsinspector_quiet
        self.app_records = ctx.options.tlsinspector_app_records
        self.log_preview = ctx.options.tlsinspector_log_preview
        self.detach = ctx.options.tlsinspector_detach
        if ctx.options.tlsinspector_max_held < 0:
            raise exceptions.OptionsError("tlsinspector_max_held must be >= 0 (0: no bound)")
        idle_timeout = _seconds(ctx.options.tlsinspector_idle_timeout)
        if idle_timeout is None:
            raise exceptions.OptionsError("tlsinspector_idle_timeout must be seconds >= 0 "
                                          "(0: never), got "
                                          f"{ctx.options.tlsinspector_idle_timeout!r}")
        if ctx.options.tlsinspector_key_wait_ms < 0:
            raise exceptions.OptionsError("tlsinspector_key_wait_ms must be >= 0")
        self.key_wait = ctx.options.tlsinspector_key_wait_ms / 1000
        from tlsinspector.proxy.plaintext import PROTOCOLS

        protocol = ctx.options.tlsinspector_protocol
        if protocol and protocol not in PROTOCOLS:
            raise exceptions.OptionsError(f"tlsinspector_protocol: unknown protocol "
                                          f"{protocol!r} (known: {', '.join(PROTOCOLS)})")
        self.protocol = protocol or None
        self.budget.limit = ctx.options.tlsinspector_max_held
        self.idle_timeout = idle_timeout
        if "tlsinspector_scenarios" in updated and ctx.options.tlsinspector_scenarios:
            from tlsinspector.proxy import scenario

            try:
                self.scenarios = scenario.load_scenarios(ctx.options.tlsinspector_scenarios)
            except scenario.ScenarioError as e:
                raise exceptions.OptionsError(str(e)) from e
        if self.scenarios and {"tlsinspector_scenarios", "tlsinspector_intercept"} & updated:
            from tlsinspector.proxy.scenario import leg_refusal

            # leg: needs --intercept; the plaintext faults cannot work with it.
            why = leg_refusal((f for s in self.scenarios for f in s.faults),
                              self.intercept.enabled)
            if why is not None:
                raise exceptions.OptionsError(why)
        if "tlsinspector_keylog" in updated:
            paths = list(ctx.options.tlsinspector_keylog)
            if self.keylogs is not None:
                self.keylogs.close()
            try:
                self.keylogs = (KeyLogFollower(paths, skip_existing=True) if paths
                                else None)
            except KeyLogPathError as e:
                raise exceptions.OptionsError(str(e)) from e
            if self.keylogs is not None:
                self.poll_keys()
        if "tlsinspector_seed" in updated:
            seed = ctx.options.tlsinspector_seed
            self.seed = seed if seed >= 0 else random.SystemRandom().randrange(2**31)
            self.rng = random.Random(self.seed)

    def running(self) -> None:
        self._watch_accept_errors()
        if self.keylogs is not None:
            for path in self.keylogs.waiting():
                self._print(f"tlsinspector: key log {terminal_safe(path)} does not exist yet; "
                            "waiting for it")
            if self._poller is None:
                self._poller = asyncio.get_running_loop().create_task(self._poll_loop())
        if self.scenarios:
            names = ", ".join(s.name for s in self.scenarios)
            self._print(f"tlsinspector: scenarios {names}; seed {self.seed} "
                        f"(repeat with --seed {self.seed})")

    def _watch_accept_errors(self) -> None:
        """asyncio's loop reports an accept() that failed for lack of descriptors to
        its exception handler (uvloop says nothing: FdWatch's probe covers it)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        previous = loop.get_exception_handler()

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            if limits.FdWatch.is_fd_error(context.get("exception")):
                self.check_fds(None, force=True)
                return
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handler)

    def _recheck_fds(self) -> None:
        self._fd_recheck = None
        self.check_fds(None, opened=0)

    def check_fds(self, conn: str | None, force: bool = False, opened: int = 1) -> None:
        """One rate-limited warning and an ``error`` event near the open-file limit.
        ``opened``: descriptors the call stands for (see FdWatch)."""
        text = self.fds.check(force, opened)
        if self.fds.skipped and self._fd_recheck is None:
            # A burst between two reads of the count (eager connects fill the table
            # fast, and uvloop refuses the clients beyond it silently): read it once
            # more when the next read is due.
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                self._fd_recheck = loop.call_later(self.fds.next_read_in(),
                                                   self._recheck_fds)
        if text is None:
            return
        self._warn(text)
        ev: dict[str, Any] = {"event": "error", "ts": round(time.time(), 6), "conn": conn,
                              "kind": "fd_limit", "message": text}
        self.emit(ev)

    async def done(self) -> None:
        # mitmproxy's shutdown (mitmdump's SIGINT/SIGTERM handlers, or ours in
        # addons/runner.py): every open connection gets its close event first,
        # then every handler a bounded time to close its sockets, so that nothing
        # is cancelled half-way when the loop ends (a CancelledError traceback each).
        self.close_all()
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        if self.keylogs is not None:
            summary = self.keylogs.summary()
            if summary:
                self._warn(summary)
            self.keylogs.close()
        self._close_log()
        # Also the connections whose first bytes never came: mitmproxy had not
        # asked for a layer yet, so there is nothing of ours to log for them.
        mitm_internals.close_every_client()
        deadline = time.monotonic() + DRAIN_SECONDS
        while (mitm_internals.open_handlers() or hotpath.detached_open()) and (
                time.monotonic() < deadline):
            await asyncio.sleep(0.01)  # the handlers' own cleanup; bounded

    def close_all(self) -> None:
        """End every open connection as the proxy (see RecordLayer.shutdown), and the
        ones whose upstream is open but which carried no byte yet (eager connect)."""
        for layer_ in list(self.live.values()):
            layer_.shutdown()
        for client_id in list(self._pending):
            self._log_quiet(client_id, "proxy")

    def _log_quiet(self, client_id: str, by: str) -> None:
        """Connect and close events of a connection that carried no byte either way."""
        pending = self._pending.pop(client_id, None)
        if pending is None:
            return
        eng = self._bare_connection(*pending)
        now = time.time()
        outs = eng.start(now)
        if by == "client":
            outs += eng.eof("client", now)
        outs += eng.finish(now, by=by)
        self.emit_many(engine.events(outs))

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(KEYLOG_POLL)
            self.poll_keys()

    def poll_keys(self, quick: bool = False) -> None:
        """Read the key log files; when they gained keys, every live connection
        decrypts what waited for them (``decrypted`` events). Never raises: a key
        log problem must not touch the traffic. ``quick``: per chunk, see
        KeyLogFollower.poll (the timer's polls are full)."""
        follower = self.keylogs
        if follower is None:
            return
        try:
            grew = follower.poll(quick)
        except Exception as e:  # noqa: BLE001 - the traffic goes on whatever the file does
            follower.messages.append(f"key log read failed: {type(e).__name__}: {e}")
            grew = False
        for text in follower.messages:
            self._warn(text)
        follower.messages.clear()
        if not grew:
            return
        # Only the connections that pinned a client random whose keys just changed
        # (KeyLog.owners, their layers): the work per new key is bounded by who wants
        # it, not by how many connections are open (a scan of every live one cost
        # 24 ms per read of the key log with 10,000 open).
        owners = follower.keylog.owners(follower.take_changed())
        now = time.time()
        for owner in owners:
            eng = owner.engine
            if eng is None or not eng.needs_keys:
                continue
            evs = engine.events(eng.keys_arrived(now))
            hot = owner.hot
            if hot is not None and hot.keys_arrived(evs):
                continue  # held with the events they complete (hotpath._Hold)
            # The layer's coalescer may still hold its last tiny records: late events
            # go through it, so that they follow the record events they complete.
            evs = owner.coalescer.feed(evs)
            if evs:
                self.emit_many(evs)

    def _close_log(self) -> None:
        if self._jsonl is None:
            return
        if self._jsonl.lost:
            self._warn(f"{self._jsonl.lost} events were never written to the JSON Lines "
                       f"log {self._jsonl.path} ({self._jsonl.error})")
        self._jsonl.close()
        self._jsonl = None

    # -- eager connect: connections that never reach a RecordLayer (issue 17) -------
    #
    # With connection_strategy "eager" (addons/runner.py) the mode layer opens the
    # upstream when the client connects, before any byte: mitmproxy asks for our
    # layer only once a side sends data. These public hooks log the connections
    # that never get that far, so every connection has its connect and close.

    def claim(self, client: Any) -> None:
        """A RecordLayer starts for ``client``: it logs the connection from now on."""
        self._pending.pop(client.id, None)
        self._claimed.add(client.id)

    def server_connected(self, data: Any) -> None:
        mode = data.client.proxy_mode.type_name if data.client.proxy_mode else "reverse"
        # Regular (HTTP proxy) mode also opens upstreams for plain HTTP requests,
        # which are not ours: a tunnel is pending from http_connected instead.
        if mode != "regular" and data.client.id not in self._claimed:
            self._pending[data.client.id] = (data.client, data.server)
        self.check_fds(None)  # each connection now holds its upstream descriptor too

    def http_connected(self, flow: Any) -> None:
        if flow.client_conn.id not in self._claimed and flow.server_conn.peername:
            self._pending[flow.client_conn.id] = (flow.client_conn, flow.server_conn)

    def requestheaders(self, flow: Any) -> None:
        """``--mode regular``: a plain HTTP request (an absolute URL, not a CONNECT
        tunnel) is relayed by mitmproxy's HTTP layer; it carries no TLS, so nothing
        of it is inspected or logged. Said once per run, rather than a silent log."""
        if self._plain_http_said or flow.request.method == "CONNECT":
            return
        self._plain_http_said = True
        self._warn(f"plain HTTP request {terminal_safe(flow.request.method[:16])} "
                   f"{terminal_safe(flow.request.pretty_url[:200])} relayed without "
                   "inspection (no TLS; only CONNECT tunnels are inspected; said once)")

    def server_connect_error(self, data: Any) -> None:
        """The upstream refused before our layer started: log it as the layer would
        (connect, error, close by the proxy). A RecordLayer logs its own."""
        if data.client.id in self._claimed:
            return
        self._pending.pop(data.client.id, None)
        self.check_fds(None, force="Too many open files" in str(data.server.error))
        eng = self._bare_connection(data.client, data.server)
        now = time.time()
        evs = engine.events(eng.start(now))
        evs += engine.events(eng.upstream_unreachable(now, str(data.server.error)))
        evs += engine.events(eng.finish(now, by="proxy"))
        self.emit_many(evs)

    def client_disconnected(self, client: Any) -> None:
        self._claimed.discard(client.id)
        # The client connected and closed without a byte either way: the server saw
        # the connection open and close exactly as it would directly.
        self._log_quiet(client.id, "client")

    def _bare_connection(self, client: Any, server: Any) -> engine.Connection:
        """An engine connection for the events of a connection no layer of ours saw."""
        number = next(self._numbers)
        mode = client.proxy_mode.type_name if client.proxy_mode else "reverse"
        return engine.Connection(str(number), _addr(client.peername), _addr(server.address),
                                 mode, number=number)

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        ctx_ = nextlayer.context
        # The stack as it was before this decision (mitmproxy's own NextLayer
        # addon may already have appended the layers it chose).
        chosen = nextlayer.layer
        if not _is_tunnel_start(mitm_internals.stack_before(ctx_, chosen)):
            return
        if chosen is not None:
            # mitmproxy's own NextLayer addon ran first and chose TLS interception
            # or a TCPLayer: undo that choice before it has handled any event.
            mitm_internals.undo_layer_choice(ctx_, chosen)
        if self.intercept.enabled:
            self.claim(ctx_.client)  # the InterceptLayer logs this connection itself
            nextlayer.layer = intercept.InterceptLayer(ctx_, self)
            return
        nextlayer.layer = RecordLayer(ctx_, self)

    # -- --intercept (addons/intercept.py) ------------------------------------------

    def tls_clienthello(self, data: Any) -> None:
        self.intercept.tls_clienthello(data)

    def tls_start_client(self, data: Any) -> None:
        self.intercept.tls_start_client(data)

    def tls_start_server(self, data: Any) -> None:
        self.intercept.tls_start_server(data)

    def client_cert_forwarded(self) -> bool:
        return self.intercept.client_cert_forwarded()

    def new_legs(self, context: Any, keylog: Any
                 ) -> tuple[int, engine.Connection, engine.Connection]:
        """The two engines of an intercepted connection: one number, one conn id,
        the client leg (client <-> inspector) and the server leg (inspector <-> server).
        ``keylog`` holds the inspector's own secrets of both legs (it is an endpoint
        of each), so encrypted handshake messages and alerts are decoded."""
        number = next(self._numbers)
        mode = context.client.proxy_mode.type_name if context.client.proxy_mode else "reverse"
        legs = []
        leg: Side
        for leg in ("client", "server"):
            plan = None
            if self.scenarios:
                from tlsinspector.proxy import faults

                # One plan per leg (faults with leg: plan on theirs only), each with
                # its own generator drawn from the run's seed.
                plan = faults.FaultPlanner(self.scenarios, number,
                                           random.Random(self.rng.random()), leg=leg)
            legs.append(engine.Connection(
                str(number), _addr(context.client.peername), _addr(context.server.address),
                mode, number=number, faults=plan, log_app_data=self.app_records,
                log_preview=self.log_preview, keylog=keylog))
        # addons/pcap.py (run --pcap) watches both legs when it is loaded.
        master = getattr(ctx, "master", None)   # unset in unit harnesses
        recorder = master.addons.get("pcaprecorder") if master else None
        if recorder is not None:
            return number, *recorder.observe_legs((legs[0], legs[1]), context, keylog)
        return number, legs[0], legs[1]

    def new_connection(self, context: Any, layer: RecordLayer | None = None) -> engine.Connection:
        """The engine of a new connection; with --keylog, ``layer`` is what
        :meth:`poll_keys` hands late keys to (its engine and coalescer)."""
        number = next(self._numbers)
        plan = None
        if self.scenarios:
            from tlsinspector.proxy import faults

            plan = faults.FaultPlanner(self.scenarios, number,
                                       random.Random(self.rng.random()))
        mode = context.client.proxy_mode.type_name if context.client.proxy_mode else "reverse"
        conn = engine.Connection(
            str(number),
            _addr(context.client.peername),
            _addr(context.server.address),
            mode,
            number=number,
            faults=plan,
            log_app_data=self.app_records,
            log_preview=self.log_preview,
            keylog=self.keylogs.keylog if self.keylogs is not None else None,
            key_wait=self.key_wait,
            protocol=self.protocol,
            key_owner=layer,
        )
        # addons/pcap.py (run --pcap) watches the connection when it is loaded.
        master = getattr(ctx, "master", None)   # unset in unit harnesses
        recorder = master.addons.get("pcaprecorder") if master else None
        observed = recorder.observe(conn, context) if recorder is not None else conn
        return observed

    def pause_reading(self, context: Any, conn: Any, pause: bool) -> bool:
        """Pause or resume reading from ``conn``'s socket; False if it is out of reach
        (tests/test_reliability.py's delay-fault test and tests/test_mitm_internals.py
        fail if a mitmproxy or asyncio change breaks this)."""
        io = mitm_internals.connection_io(context, conn)
        return io is not None and mitm_internals.pause_reading(io, pause)

    def no_delay(self, context: Any, conn: Any) -> bool:
        """Paced writes toward ``conn`` leave as separate TCP segments (TCP_NODELAY)."""
        io = mitm_internals.connection_io(context, conn)
        return io is not None and mitm_internals.set_nodelay(io)

    def reset_on_close(self, context: Any, conn: Any) -> bool:
        """Make closing ``conn`` an abortive close (RST, RFC 9293 3.6.1) via SO_LINGER 0."""
        io = mitm_internals.connection_io(context, conn)
        return io is not None and mitm_internals.set_linger_zero(io)

    def abort_if_holding(self, context: Any, conn: Any) -> bool:
        """Reset ``conn`` now if its writer still holds bytes (a timeout's close of a
        peer that reads nothing: see mitm_internals.abort_if_holding)."""
        io = mitm_internals.connection_io(context, conn)
        return io is not None and mitm_internals.abort_if_holding(io)

    def emit(self, ev: dict[str, Any]) -> None:
        self.emit_many([ev])

    def emit_packed(self, items: list[dict[str, Any] | outbox.EmitRecords]) -> None:
        """:meth:`emit_many` for events among which runs of bulk records come packed
        (the hot relay's): written to the log file from their template, unless
        something needs each event (the terminal view, or a sink that took
        ``emit_many`` over: the live view, a test)."""
        if self.quiet and "emit_many" not in vars(self):
            self._write_log(items)
        else:
            self.emit_many(outbox.unpacked(items))

    def emit_many(self, evs: list[dict[str, Any]]) -> None:
        self._write_log(evs)
        if not self.quiet:
            self._print("\n".join(render.line(ev) for ev in evs))

    def _write_log(self, evs: Sequence[dict[str, Any] | outbox.EmitRecords]) -> None:
        log = self._jsonl
        if log is not None:
            gap = log.lost
            try:
                log.write_many(evs)
            except OSError as e:
                self._warn(f"cannot write the JSON Lines log {log.path}: {e}; events are "
                           "counted and a log_gap event marks the place once it can be "
                           "written again")
            else:
                if gap and not log.lost:
                    self._warn(f"the JSON Lines log {log.path} is written again; {gap} events "
                               "were lost (see the log_gap event)")

    def _warn(self, text: str) -> None:
        try:
            print(f"tlsinspector: WARNING {text}", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass  # nowhere left to say it

    def _print(self, text: str) -> None:
        stream = self._terminal or sys.stdout
        try:
            stream.write(text + "\n")
            stream.flush()
        except (OSError, ValueError) as e:
            # A full disk under a redirected stdout, a closed pipe: the terminal
            # view is lost, the traffic and the JSONL log are not.
            if not self._terminal_failed:
                self._terminal_failed = True
                self._warn(f"cannot write the terminal view: {e}")


addons = [Inspector()]
