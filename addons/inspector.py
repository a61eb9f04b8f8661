"""tlsinspector as a mitmproxy addon: every TLS record both ways, decoded and logged.

Run it under plain mitmproxy:

    mitmdump --mode reverse:tcp://127.0.0.1:4433 --listen-host 127.0.0.1 -p 8443 \
        -s addons/inspector.py --set tlsinspector_log=hs.jsonl

or through the CLI (``tlsinspector run``), which loads this same addon.

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
import weakref
from collections.abc import Generator, Sequence
from typing import IO, Any

from mitmproxy import ctx, exceptions
from mitmproxy.connection import ConnectionState
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers import HttpLayer, modes
from mitmproxy.proxy.layers.http import HttpStream

from tlsinspector.addons import mitm_internals
from tlsinspector.addons.keylogs import KeyLogFollower, KeyLogPathError
from tlsinspector.proxy import engine, render
from tlsinspector.proxy.history import Side

WRITABLE = (ConnectionState.OPEN, ConnectionState.CAN_WRITE)
BACKLOG_LIMIT = 4 << 20  # bytes a fault may hold toward one side before we stop reading
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


class RecordLayer(layer.Layer):
    """Relays raw TCP between client and server through the inspection engine."""

    def __init__(self, context: Any, inspector: Inspector) -> None:
        super().__init__(context)
        self.inspector = inspector
        self.engine: engine.Connection | None = None
        # Sides we stopped reading from (backpressure); not ``_paused``, which
        # mitmproxy's Layer uses for its blocking commands.
        self._not_reading: set[Side] = set()

    def _side(self, conn: Any) -> Side:
        return "client" if conn is self.context.client else "server"

    def _conn(self, side: Side) -> Any:
        return self.context.client if side == "client" else self.context.server

    def _handle_event(self, event: events.Event) -> Generator[commands.Command, Any, None]:
        now = time.time()
        if isinstance(event, events.Start):
            self.engine = self.inspector.new_connection(self.context)
            yield from self._apply(self.engine.start(now))
            if self.context.server.timestamp_start is None:
                err = yield commands.OpenConnection(self.context.server)
                if err:
                    self.inspector.emit({
                        "event": "error", "ts": round(time.time(), 6),
                        "conn": self.engine.conn_id,
                        "message": f"upstream {_addr(self.context.server.address)} "
                                   f"unreachable: {err}",
                    })
                    yield commands.CloseConnection(self.context.client)
                    yield from self._apply(self.engine.finish(time.time(), by="proxy"))
                    self._handle_event = self._done  # type: ignore[method-assign]
            return
        assert self.engine is not None
        if isinstance(event, events.DataReceived):
            outputs = self.engine.receive(self._side(event.connection), event.data, now)
            yield from self._apply(outputs)
            if self.engine.needs_keys:
                # A hello just went by: read the key log now rather than at the next tick.
                self.inspector.poll_keys()
            if any(type(o) is engine.Close for o in outputs):
                yield from self._maybe_done(now)  # a fault may have closed both sides
            if self._not_reading or self.engine.pending_timers:
                self._backpressure()
        elif isinstance(event, events.ConnectionClosed):
            yield from self._apply(self.engine.eof(self._side(event.connection), now))
            yield from self._maybe_done(now)
        elif isinstance(event, events.Wakeup):
            yield from self._apply(self.engine.wakeup(now))
            self._backpressure()
            yield from self._maybe_done(now)

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
                    self._not_reading.add(sender)
            elif sender in self._not_reading and backlog <= BACKLOG_LIMIT // 2:
                self.inspector.pause_reading(self.context, self._conn(sender), False)
                self._not_reading.discard(sender)

    def _maybe_done(self, now: float) -> Generator[commands.Command, Any, None]:
        assert self.engine is not None
        c, s = self.context.client, self.context.server
        readable = (c.state & ConnectionState.CAN_READ) or (s.state & ConnectionState.CAN_READ)
        if not readable and not self.engine.pending_timers:
            if self.engine.needs_keys:
                self.inspector.poll_keys()  # last chance for keys before the diagnosis
            for conn in (s, c):
                if conn.state is not ConnectionState.CLOSED:
                    yield commands.CloseConnection(conn)
            yield from self._apply(self.engine.finish(now))
            self._handle_event = self._done  # type: ignore[method-assign]

    def _done(self, event: events.Event) -> Generator[commands.Command, Any, None]:
        yield from ()

    def _apply(self, outputs: list[engine.Output]) -> Generator[commands.Command, Any, None]:
        # Log first, in one write for everything this event produced, then act.
        evs = [o.event for o in outputs if isinstance(o, engine.Emit)]
        if evs:
            self.inspector.emit_many(evs)
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


class Inspector:
    """Options, per-run state (connection numbering, seed) and the log sinks."""

    def __init__(self, terminal: IO[str] | None = None) -> None:
        self._numbers = itertools.count(1)
        self._terminal = terminal
        self._jsonl: render.JsonlWriter | None = None
        self.quiet = False
        self.app_records = True
        self._terminal_failed = False
        self.scenarios: tuple[Any, ...] = ()
        self.seed = 0
        self.rng = random.Random(0)
        self.keylogs: KeyLogFollower | None = None
        self._live: weakref.WeakSet[engine.Connection] = weakref.WeakSet()
        self._poller: asyncio.Task[None] | None = None

    def load(self, loader: Any) -> None:
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
        loader.add_option("tlsinspector_keylog", Sequence[str], [],
                          "NSS key log files (SSLKEYLOGFILE) to decrypt with; followed as "
                          "peers append to them, waited for if they do not exist yet.")

    def configure(self, updated: set[str]) -> None:
        if "tlsinspector_log" in updated:
            self._close_log()
            path = ctx.options.tlsinspector_log
            if path:
                try:
                    self._jsonl = render.JsonlWriter(path)
                except OSError as e:
                    raise exceptions.OptionsError(f"cannot open log file {path}: {e}") from e
        # Read once here, not per event: option lookups cost on the hot path.
        self.quiet = ctx.options.tlsinspector_quiet
        self.app_records = ctx.options.tlsinspector_app_records
        if "tlsinspector_scenarios" in updated and ctx.options.tlsinspector_scenarios:
            from tlsinspector.proxy import scenario

            try:
                self.scenarios = scenario.load_scenarios(ctx.options.tlsinspector_scenarios)
            except scenario.ScenarioError as e:
                raise exceptions.OptionsError(str(e)) from e
        if "tlsinspector_keylog" in updated:
            paths = list(ctx.options.tlsinspector_keylog)
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
        if self.keylogs is not None:
            for path in self.keylogs.waiting():
                self._print(f"tlsinspector: key log {path} does not exist yet; waiting for it")
            if self._poller is None:
                self._poller = asyncio.get_running_loop().create_task(self._poll_loop())
        if self.scenarios:
            names = ", ".join(s.name for s in self.scenarios)
            self._print(f"tlsinspector: scenarios {names}; seed {self.seed} "
                        f"(repeat with --seed {self.seed})")

    def done(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        if self.keylogs is not None:
            summary = self.keylogs.summary()
            if summary:
                self._warn(summary)
        self._close_log()

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(KEYLOG_POLL)
            self.poll_keys()

    def poll_keys(self) -> None:
        """Read the key log files; when they gained keys, every live connection
        decrypts what waited for them (``decrypted`` events). Never raises: a key
        log problem must not touch the traffic."""
        follower = self.keylogs
        if follower is None:
            return
        try:
            grew = follower.poll()
        except Exception as e:  # noqa: BLE001 - the traffic goes on whatever the file does
            follower.messages.append(f"key log read failed: {type(e).__name__}: {e}")
            grew = False
        for text in follower.messages:
            self._warn(text)
        follower.messages.clear()
        if not grew:
            return
        now = time.time()
        for eng in list(self._live):
            if not eng.needs_keys:
                if eng.closed:
                    self._live.discard(eng)  # nothing can arrive for it any more
                continue
            outs = eng.keys_arrived(now)
            evs = [o.event for o in outs if isinstance(o, engine.Emit)]
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
        nextlayer.layer = RecordLayer(ctx_, self)

    def new_connection(self, context: Any) -> engine.Connection:
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
            keylog=self.keylogs.keylog if self.keylogs is not None else None,
        )
        if self.keylogs is not None:
            self._live.add(conn)
        return conn

    def pause_reading(self, context: Any, conn: Any, pause: bool) -> bool:
        """Pause or resume reading from ``conn``'s socket; False if it is out of reach
        (tests/test_reliability.py's delay-fault test and tests/test_mitm_internals.py
        fail if a mitmproxy or asyncio change breaks this)."""
        io = mitm_internals.connection_io(context, conn)
        return io is not None and mitm_internals.pause_reading(io, pause)

    def reset_on_close(self, context: Any, conn: Any) -> bool:
        """Make closing ``conn`` an abortive close (RST, RFC 9293 3.6.1) via SO_LINGER 0."""
        io = mitm_internals.connection_io(context, conn)
        return io is not None and mitm_internals.set_linger_zero(io)

    def emit(self, ev: dict[str, Any]) -> None:
        self.emit_many([ev])

    def emit_many(self, evs: list[dict[str, Any]]) -> None:
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
        if not self.quiet:
            self._print("\n".join(render.line(ev) for ev in evs))

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
