"""``--intercept``: terminate TLS on both legs, inspect each leg record by record.

Run it with the inspector under plain mitmproxy:

    mitmdump --mode reverse:tcp://127.0.0.1:4433 -p 8443 -s "$(tlsinspector addon-path)" \
        --set tlsinspector_intercept=true --set tlsinspector_log=both.jsonl

or through the CLI: ``tlsinspector run --upstream HOST:PORT --intercept``.

The transparent path (addons/inspector.py's RecordLayer) never terminates TLS.
With ``tlsinspector_intercept`` set, the inspector's next_layer hook installs
:class:`InterceptLayer` instead: mitmproxy's own ServerTLSLayer and
ClientTLSLayer do the two handshakes (certificates from mitmproxy's CA in its
confdir; ``tlsinspector ca`` prints it) and a TCPLayer that keeps no flow
relays the plaintext, which is never logged. The InterceptLayer sits *above*
both TLS layers, where every byte is still raw TLS: what the client and the
server send arrives as DataReceived events, what the inspector sends leaves as
SendData commands. It feeds each leg's bytes to its own sans-io engine
(proxy/engine.py), so each leg is logged record by record with ``"leg"``, and
its close event says per leg what was negotiated.

Each engine is on its leg's wire (issue 21 part 4, faults on either leg): a
peer's bytes reach mitmproxy's TLS layer only as the engine's Send outputs, and
what the TLS layer sends reaches the peer only as the engine's Send outputs,
exactly as RecordLayer relays the transparent path through the same engine.
On the client leg the client is "client" and the inspector "server"; on the
server leg the inspector is "client" and the server "server". So a scenario's
fault (``leg:`` picks the leg) drops, delays, fragments, rewrites or answers a
leg's records before the inspector's TLS stack reads them or before the peer
gets them; what an engine sends toward the inspector (a reply-alert, a close)
becomes an event for the TLS layers. The inspector is an endpoint of each leg
and the engines hold its keys, so faults inside encryption re-seal without a
key log. With no fault configured an engine forwards exactly its input, at once.

The interception policy (proxy/policy.py, ``--intercept-policy``) becomes
mitmproxy options (versions, ciphers, upstream verification, client
certificates) and per-connection choices in the tls_* hooks here (ALPN, SNI,
the certificate presented, resumption).
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from mitmproxy import connection as mconnection
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers import tcp, tls

from tlsinspector.addons import certmaker, mitm_internals
from tlsinspector.proxy import engine, names, records
from tlsinspector.proxy import policy as policy_mod
from tlsinspector.proxy.coalesce import Coalescer
from tlsinspector.proxy.history import Side
from tlsinspector.proxy.keylog import KeyLog
from tlsinspector.proxy.scenario_yaml import ScenarioError

if TYPE_CHECKING:
    from tlsinspector.addons.inspector import Inspector

Leg = Side  # "client" (client <-> inspector) | "server" (inspector <-> server)
CLOSED = mconnection.ConnectionState.CLOSED
CAN_READ = mconnection.ConnectionState.CAN_READ
CAN_WRITE = mconnection.ConnectionState.CAN_WRITE
MAX_UNSENT = 1 << 14  # an alert is 7 bytes (31 sealed); bound the drain anyway
HOLD_SECONDS = 2.0  # longest the client leg waits for a TLS 1.3 server's verdict


def _addr(address: Any) -> str:
    if not address:
        return "?"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _printable(text: str, limit: int = 300) -> str:
    """mitmproxy's error text may quote peer bytes: escaped, bounded."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit])


def negotiated(conn: Any, client_cert: bool) -> dict[str, Any]:
    """What one leg's TLS connection agreed on, from mitmproxy's connection object."""
    alpn = conn.alpn
    return {
        "version": conn.tls_version,
        "cipher": conn.cipher,
        "alpn": (alpn.decode("ascii", "replace") or None) if isinstance(alpn, bytes) else None,
        "sni": conn.sni or None,
        "client_cert": client_cert,
        "established": bool(conn.tls_established),
    }


def _plain_alert(code: int) -> bytes:
    """A fatal alert record in the clear (TLS 1.2 record version, as TLS 1.3 sends)."""
    return records.Record(names.CT_ALERT, 0x0303, bytes([names.FATAL, code])).raw


class InterceptLayer(layer.Layer):
    """Raw TLS of both legs in, engines fed, events and commands passed on.

    One decision of its own: the client leg waits for the server leg. What the
    inspector would send the client is held until the server leg has settled, so
    that a server that rejects the inspector's handshake (a fatal alert, e.g.
    certificate_required when the inspector has no client certificate to
    forward) is answered to the client with the same alert, in the clear, before
    any ServerHello (RFC 8446 6: alerts before the handshake keys are plaintext),
    the way terminating middleboxes that pass handshake failures through do.
    """

    def __init__(self, context: Any, inspector: Inspector) -> None:
        super().__init__(context)
        self.inspector = inspector
        # The stack mitmproxy builds for TLS interception of a TCP stream
        # (mitmproxy/addons/next_layer.py): ServerTLS / ClientTLS / TCP. The TCP
        # layer is told to ignore the stream: no TCPFlow, whose messages list would
        # keep every byte (DESIGN.md 4).
        self.server_tls = tls.ServerTLSLayer(context)
        self.client_tls = tls.ClientTLSLayer(context)
        self.relay = tcp.TCPLayer(context, ignore=True)
        self.server_tls.child_layer = self.client_tls
        self.client_tls.child_layer = self.relay
        self.legs: dict[Leg, engine.Connection] = {}
        # One per leg: a run of tiny records on one leg never absorbs the other's.
        self.coalescers: dict[Leg, Coalescer] = {"client": Coalescer(), "server": Coalescer()}
        self.keylog = KeyLog()        # the inspector's own secrets of both legs
        self.key_lines = 0            # lines fed to it; the engines look again when it grew
        self._key_lines_seen = 0
        self.ssl_ids: list[int] = []
        self.number = 0
        self._finished = False
        # The client leg waiting for the server leg (see the class docstring).
        self._held: list[commands.Command] | None = []
        self._server_alert: int | None = None   # a fatal alert the server sent
        self._own_alert: int | None = None      # a fatal alert the inspector sent the server
        self._cert_requested = False            # the server asked for a client certificate
        self._after_handshake = False           # the server sent a record after its handshake
        self._hold_timer: commands.RequestWakeup | None = None
        self._hold_expired = False
        self._close_by: str | None = None       # "proxy": the upstream was unreachable
        # Faults on either leg (issue 21 part 4): the engines' timers, the TLS
        # layers' close commands waiting for their engine, the connections whose
        # close the TLS layers were told of.
        self._timers: list[commands.RequestWakeup] = []
        self._close_cmds: dict[Leg, commands.CloseConnection] = {}
        self._eof_given: list[Any] = []

    # -- events from mitmproxy (raw TLS from the peers) ---------------------------------

    def _handle_event(self, event: events.Event) -> Generator[commands.Command, Any, None]:
        """Each peer's bytes go through its leg's engine before mitmproxy's TLS layer
        reads them, and what the TLS layer sends goes through the engine before the
        peer gets it: the engine is on the wire of each leg, as on the transparent
        path (one engine for both). With no fault its Send outputs are its input."""
        now = time.time()
        inbound: deque[events.Event] = deque()   # toward the TLS layers, in order
        if isinstance(event, events.Start):
            for leg, outs in self._start(now):
                yield from self._route(leg, outs, inbound, now)
            inbound.append(event)
        elif isinstance(event, events.Wakeup) and event.command is self._hold_timer:
            self._hold_expired = True
        elif isinstance(event, events.Wakeup) and event.command in self._timers:
            self._timers.remove(event.command)
            if self._finished:
                return  # an engine timer of a connection already logged as closed
            for leg, eng in self.legs.items():
                yield from self._route(leg, eng.wakeup(now), inbound, now)
        elif self._finished or not self.legs or not isinstance(
                event, events.DataReceived | events.ConnectionClosed):
            inbound.append(event)
        else:
            yield from self._from_peer(event, inbound, now)
        yield from self._drive(inbound, now)

    def _from_peer(self, event: events.DataReceived | events.ConnectionClosed,
                   inbound: deque[events.Event], now: float
                   ) -> Generator[commands.Command, Any, None]:
        """A peer's bytes or close, through its leg's engine (side: the peer's role)."""
        ctx_ = self.context
        if event.connection is ctx_.client:
            leg: Leg = "client"
        elif event.connection is ctx_.server:
            leg = "server"
        else:
            inbound.append(event)
            return
        eng = self.legs[leg]
        if isinstance(event, events.DataReceived):
            if leg == "server" and ctx_.server.tls_established:
                self._after_handshake = True
            outs = eng.receive(leg, event.data, now) if event.data else []
        else:
            outs = eng.eof(leg, now)
        yield from self._route(leg, outs, inbound, now)

    def _drive(self, inbound: deque[events.Event], now: float
               ) -> Generator[commands.Command, Any, None]:
        """Hand the TLS layers their events; route what they send; settle the hold."""
        while True:
            while inbound:
                for cmd in self.server_tls.handle_event(inbound.popleft()):
                    for c in (*self._unsent_alert(cmd), cmd):
                        if self._held is not None and self._to_client(c):
                            self._held.append(c)
                            continue
                        yield from self._outbound(c, inbound, now)
            for leg, outs in self._keys_arrived(now):
                yield from self._route(leg, outs, inbound, now)
            yield from self._settle(inbound, now)
            if inbound:
                continue
            break
        if not self._finished and self._both_closed():
            for conn in (self.context.server, self.context.client):
                if conn.state is not CLOSED:
                    yield commands.CloseConnection(conn)
            self.finish(time.time(), self._close_by)

    def _unsent_alert(self, cmd: commands.Command) -> list[commands.Command]:
        """Before a close: the close_notify of an established leg, and what OpenSSL
        wrote for the peer but mitmproxy did not send: a TLS layer
        whose handshake fails closes the connection without reading the alert
        OpenSSL queued (protocol_version, unknown_ca, ...) from its memory BIO. A
        terminating middlebox sends it (RFC 8446 6.2), so the peer learns why."""
        if not isinstance(cmd, commands.CloseConnection):
            return []
        conn = cmd.connection
        lay = (self.client_tls if conn is self.context.client
               else self.server_tls if conn is self.context.server else None)
        ssl_conn = getattr(lay, "tls", None)
        if ssl_conn is None or conn.state is CLOSED:
            return []
        if conn.tls_established:
            # An orderly close of an established leg is a close_notify first (RFC
            # 8446 6.1); mitmproxy's TLS layer closes TCP without one, which
            # OpenSSL 3 clients report as "unexpected eof while reading".
            try:
                ssl_conn.shutdown()
            except Exception:  # noqa: BLE001, S110 - a broken leg has nothing to say
                pass
        data = bytearray()
        while len(data) < MAX_UNSENT:
            try:
                chunk = ssl_conn.bio_read(MAX_UNSENT)
            except Exception:  # noqa: BLE001 - WantReadError: nothing more; anything else: done
                break
            if not chunk:
                break
            data += chunk
        return [commands.SendData(conn, bytes(data))] if data else []

    def _to_client(self, cmd: commands.Command) -> bool:
        return (isinstance(cmd, commands.SendData | commands.CloseConnection)
                and cmd.connection is self.context.client)

    def _settle(self, inbound: deque[events.Event], now: float
                ) -> Generator[commands.Command, Any, None]:
        """Release or replace what waits for the client once the server leg settled."""
        held = self._held
        if held is None:
            return
        if self._server_alert is not None:
            self._held = None
            out: list[commands.Command] = [
                commands.SendData(self.context.client, _plain_alert(self._server_alert)),
                commands.CloseConnection(self.context.client)]
            if self.context.server.state is not CLOSED:
                out.append(commands.CloseConnection(self.context.server))
            for cmd in out:
                yield from self._outbound(cmd, inbound, now)
            return
        server = self.context.server
        if server.error and not server.tls_established:
            # The server leg failed without an alert from the server (unreachable, reset, a
            # certificate the inspector refused): mitmproxy would finish the client's
            # handshake anyway and then have no server to relay to. A middlebox
            # closes the client instead; the log says why.
            self._held = None
            if server.timestamp_tcp_setup is None:
                # No TCP connection at all: the same error event and
                # upstream-unreachable finding as the transparent path.
                self._close_by = "proxy"
                self._emit("server", self.legs["server"].upstream_unreachable(
                    now, str(server.error)))
            else:
                self.inspector.emit({
                    "event": "error", "ts": round(now, 6), "conn": str(self.number),
                    "leg": "server", "message": f"server leg {_addr(server.address)} "
                                                f"failed: {_printable(str(server.error))}"})
            if server.state is not CLOSED:
                # The alert the inspector's TLS stack wrote for the server, now (its
                # close comes later): it goes to the server, and the engine names it.
                for cmd in self._unsent_alert(commands.CloseConnection(server)):
                    yield from self._outbound(cmd, inbound, now)
            if self.context.client.state is not CLOSED:
                if self._own_alert is not None:
                    # The inspector refused the server (its certificate, its version):
                    # the client gets the same alert, in the clear before any
                    # ServerHello as a server's own refusal above, rather than a bare
                    # close; the error event and the server leg's diagnosis say why.
                    yield from self._outbound(commands.SendData(
                        self.context.client, _plain_alert(self._own_alert)), inbound, now)
                yield from self._outbound(commands.CloseConnection(self.context.client),
                                          inbound, now)
            return
        if not held:
            return
        if server.tls_established and self._awaits_verdict():
            if self._hold_timer is None:
                self._hold_timer = commands.RequestWakeup(HOLD_SECONDS)
                yield self._hold_timer
            return
        self._held = None
        for cmd in held:
            if isinstance(cmd, commands.SendData) and self.context.client.state is CLOSED:
                continue
            yield from self._outbound(cmd, inbound, now)

    def _awaits_verdict(self) -> bool:
        """TLS 1.3: a client's handshake is over once it sent Finished, so a server
        that wanted a certificate the inspector did not send says so only in its
        next record (RFC 8446 4.4.2.4: certificate_required); wait for that record
        (or HOLD_SECONDS) before answering the client."""
        return (self._cert_requested and not self.inspector.client_cert_forwarded()
                and self.context.server.tls_version == "TLSv1.3"
                and not self._after_handshake and not self._hold_expired)

    # -- commands from the TLS layers (raw TLS the inspector sends) --------------------

    def _outbound(self, cmd: commands.Command, inbound: deque[events.Event], now: float
                  ) -> Generator[commands.Command, Any, None]:
        """What a TLS layer sends a peer, through that leg's engine (the inspector's
        role on the leg is the side: server on the client leg, client on the server
        leg). Other commands (OpenConnection, hooks, logs) go up unchanged."""
        ctx_ = self.context
        if self._finished or not isinstance(cmd, commands.SendData | commands.CloseConnection) \
                or cmd.connection not in (ctx_.client, ctx_.server):
            yield cmd
            return
        leg: Leg = "client" if cmd.connection is ctx_.client else "server"
        eng = self.legs[leg]
        me: Side = "server" if leg == "client" else "client"
        if isinstance(cmd, commands.SendData):
            yield from self._route(leg, eng.receive(me, cmd.data, now) if cmd.data else [],
                                   inbound, now)
            return
        self._close_cmds[leg] = cmd
        yield from self._route(leg, eng.eof(me, now), inbound, now)
        if self._close_cmds.get(leg) is cmd and not eng.backlog(leg):
            # The engine had closed toward the peer already (or holds nothing): the
            # TLS layer's close goes out as it asked.
            yield from self._close_wire(leg, "fin")

    def _route(self, leg: Leg, outs: list[engine.Output], inbound: deque[events.Event],
               now: float) -> Generator[commands.Command, Any, None]:
        """A leg engine's outputs: toward the peer of the leg they become commands,
        toward the inspector (a fault's reply to it, a close) events for its TLS
        layer, queued in ``inbound``; timers become wakeups; events are logged."""
        self._emit(leg, outs)
        peer: Side = leg   # the peer of the client leg is the client, and so on
        conn = self.context.client if leg == "client" else self.context.server
        for o in outs:
            if isinstance(o, engine.Send):
                if o.to != peer:
                    inbound.append(events.DataReceived(conn, o.data))
                elif conn.state & CAN_WRITE:
                    yield commands.SendData(conn, o.data)
            elif isinstance(o, engine.Close):
                if o.to != peer:
                    if conn not in self._eof_given:
                        self._eof_given.append(conn)
                        inbound.append(events.ConnectionClosed(conn))
                else:
                    yield from self._close_wire(leg, o.how)
            elif isinstance(o, engine.Wakeup):
                timer = commands.RequestWakeup(max(0.0, o.at - time.time()))
                self._timers.append(timer)
                yield timer

    def _close_wire(self, leg: Leg, how: str) -> Generator[commands.Command, Any, None]:
        """Close the peer's connection of ``leg``: the TLS layer's own close command
        when it asked for one (it may be a half-close), else a full close; ``rst``
        as an abortive close (SO_LINGER 0, as on the transparent path)."""
        conn = self.context.client if leg == "client" else self.context.server
        cmd = self._close_cmds.pop(leg, None)
        if conn.state is CLOSED:
            return
        if how == "rst":
            self.inspector.reset_on_close(self.context, conn)
            cmd = None
        yield cmd if cmd is not None else commands.CloseConnection(conn)

    # -- the two engines -------------------------------------------------------------

    def _start(self, now: float) -> list[tuple[Leg, list[engine.Output]]]:
        self.number, client_leg, server_leg = self.inspector.new_legs(self.context, self.keylog)
        self.legs = {"client": client_leg, "server": server_leg}
        self.inspector.live[id(self)] = self
        # One connect event for the connection (the client leg's); the server leg's
        # addresses are the same pair seen from the inspector. Timer faults may ask
        # for wakeups on either leg.
        server_start: list[engine.Output] = [o for o in server_leg.start(now)
                                             if not isinstance(o, engine.Emit)]
        return [("client", client_leg.start(now)), ("server", server_start)]

    def _keys_arrived(self, now: float) -> list[tuple[Leg, list[engine.Output]]]:
        # Only when OpenSSL logged a secret since the last look: a record waiting for
        # keys waits for a new line (the check ran after every event, on both legs).
        if self.key_lines == self._key_lines_seen:
            return []
        self._key_lines_seen = self.key_lines
        return [(leg, eng.keys_arrived(now)) for leg, eng in self.legs.items()
                if eng.needs_keys and not self._finished]

    def _emit(self, leg: Leg, outputs: list[engine.Output]) -> None:
        raw = engine.events(outputs)
        if leg == "server":
            # Before the coalescer, which may keep a tiny record (an alert) back until
            # the next event: the verdict must be known while this event is handled.
            for ev in raw:
                self._watch_server(ev)
        self._tagged(leg, self.coalescers[leg].feed(raw))

    def _watch_server(self, ev: dict[str, Any]) -> None:
        """What the server leg's events say about the server's verdict: a
        CertificateRequest, a fatal alert (in the clear, or decrypted with the
        inspector's own keys); and the inspector's own verdict on the server: the
        fatal alert its TLS stack sent the server (unknown_ca for a certificate it
        does not trust, protocol_version for a version outside its policy...)."""
        sender = ev.get("from")
        if sender not in ("server", "client") or ev["event"] not in ("record", "decrypted"):
            return
        for part in (ev, ev.get("decrypted")):
            if not isinstance(part, dict):
                continue
            alert = part.get("alert")
            fatal = isinstance(alert, dict) and alert.get("level") == "fatal"
            if sender == "client":
                if fatal and self._own_alert is None:
                    self._own_alert = int(alert["code"])  # type: ignore[index]
                continue
            for m in part.get("messages") or ():
                if isinstance(m, dict) and m.get("type") == "certificate_request":
                    self._cert_requested = True
            if fatal and self._server_alert is None:
                self._server_alert = int(alert["code"])  # type: ignore[index]

    def _tagged(self, leg: Leg, evs: list[dict[str, Any]]) -> None:
        for ev in evs:
            if ev["event"] not in ("connect", "close"):
                ev["leg"] = leg
        if evs:
            self.inspector.emit_many(evs)

    def _both_closed(self) -> bool:
        # The server's state is CLOSED until it is opened (it may never be).
        c, s = self.context.client, self.context.server
        return not (c.state & CAN_READ) and not (s.state & CAN_READ)

    def finish(self, now: float, by: str | None = None) -> None:
        """Both legs are done: one close event with each leg's findings and terms."""
        if self._finished or not self.legs:
            return
        for leg, outs in self._keys_arrived(now):
            self._emit(leg, outs)  # the wire is done: only what they log
        self._finished = True
        self.inspector.live.pop(id(self), None)
        self.inspector.intercept.forget(self)
        client_leg, server_leg = self.legs["client"], self.legs["server"]
        # Diagnosis of each leg may look at the other (proxy/diagnosis.py, the
        # interception block).
        p = self.inspector.intercept.policy
        client_leg.history.intercept = policy_mod.InterceptFacts("client", p, server_leg.history)
        server_leg.history.intercept = policy_mod.InterceptFacts("server", p, client_leg.history)
        closes: dict[Leg, dict[str, Any]] = {}
        for leg, eng in self.legs.items():
            rest = []
            for o in eng.finish(now, by):
                if isinstance(o, engine.Emit) and o.event["event"] == "close":
                    closes[leg] = o.event
                else:
                    rest.append(o)
            self._emit(leg, rest)
        self._emit_close(now, closes)

    def _emit_close(self, now: float, closes: dict[Leg, dict[str, Any]]) -> None:
        c, s = closes.get("client"), closes.get("server")
        if c is None or s is None:
            return
        ctx_ = self.context
        client_cert = bool(ctx_.client.certificate_list)
        findings = ([{**f, "leg": "client"} for f in c["diagnosis"]]
                    + [{**f, "leg": "server"} for f in s["diagnosis"]])
        ev = {**c, "ts": round(now, 6), "diagnosis": findings, "legs": {
            "client": {"by": c["by"], "bytes": c["bytes"], "records": c["records"],
                       **negotiated(ctx_.client, client_cert)},
            "server": {"by": s["by"], "bytes": s["bytes"], "records": s["records"],
                       **negotiated(ctx_.server, self.inspector.client_cert_forwarded())},
        }}
        if not ctx_.server.address or ctx_.server.timestamp_start is None:
            ev["legs"]["server"]["established"] = False
        for leg in ("client", "server"):
            self._tagged(leg, self.coalescers[leg].flush())
        self.inspector.emit_many([ev])

    def shutdown(self) -> None:
        """The proxy stops with this connection open (see RecordLayer.shutdown)."""
        from tlsinspector.addons import mitm_internals

        self.finish(time.time(), by="proxy")
        for conn in (self.context.client, self.context.server):
            mitm_internals.close_connection(self.context, conn)


# -- the policy's per-connection choices (tls_* hooks) ----------------------------------


def _intercepted(context: Any) -> InterceptLayer | None:
    for lay in context.layers:
        if isinstance(lay, InterceptLayer):
            return lay
    return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class InterceptHooks:
    """Options ``tlsinspector_intercept`` and ``tlsinspector_intercept_policy``, and
    the tls_* hooks that apply the policy to intercepted connections. Part of the
    Inspector addon (addons/inspector.py), which forwards the hooks here; they run
    after mitmproxy's tlsconfig addon has made its SSL objects, and adjust them
    through pyOpenSSL's public API (mitm_internals for the rest)."""

    def __init__(self) -> None:
        self.enabled = False
        self.policy: policy_mod.Policy = policy_mod.DEFAULT
        self._certs: dict[tuple[str, tuple[str, ...]], tuple[Any, Any]] = {}
        self._by_ssl: dict[int, InterceptLayer] = {}
        self._chained: set[int] = set()

    def load(self, loader: Any) -> None:
        loader.add_option("tlsinspector_intercept", bool, False,
                          "Terminate TLS on both legs (a TLS-intercepting middlebox) and "
                          "inspect each leg record by record; certificates come from "
                          "mitmproxy's CA in confdir (`tlsinspector ca`).")
        loader.add_option("tlsinspector_intercept_policy", str, "",
                          "Interception policy file (YAML, configs/policies/): versions, "
                          "suites, ALPN, SNI, certificate, client certificates per leg.")

    def configure(self, updated: set[str]) -> None:
        from mitmproxy import ctx, exceptions

        if "tlsinspector_intercept" in updated:
            self.enabled = bool(ctx.options.tlsinspector_intercept)
        if "tlsinspector_intercept_policy" in updated:
            path = ctx.options.tlsinspector_intercept_policy
            try:
                self.policy = policy_mod.load_policy(path) if path else policy_mod.DEFAULT
            except ScenarioError as e:
                raise exceptions.OptionsError(str(e)) from e
            ctx.options.update(**self.mitmproxy_options(self.policy))

    @staticmethod
    def mitmproxy_options(p: policy_mod.Policy) -> dict[str, Any]:
        """The policy's settings that mitmproxy has options for (tlsconfig reads them)."""
        opts: dict[str, Any] = {"ssl_insecure": not p.verify_upstream,
                                "client_certs": p.client_cert or None}
        legs = (("client", p.client), ("server", p.server))
        for leg, lp in legs:
            if lp.min_version:
                opts[f"tls_version_{leg}_min"] = policy_mod.MITM_VERSIONS[lp.min_version]
            if lp.max_version:
                opts[f"tls_version_{leg}_max"] = policy_mod.MITM_VERSIONS[lp.max_version]
            if lp.ciphers:
                opts[f"ciphers_{leg}"] = lp.ciphers
        if p.certificate == "weak-key":
            # OpenSSL will not even load a key below its security level (Debian's
            # default level 2: RSA >= 2048 bits) into the client-facing SSL object:
            # level 1 (RSA >= 1024) on that leg only, as the old appliance had.
            base = p.client.ciphers or ":".join(mitm_internals.default_ciphers())
            opts["ciphers_client"] = "@SECLEVEL=1:" + base
        return opts

    def tls_clienthello(self, data: Any) -> None:
        lay = _intercepted(data.context)
        if lay is None:
            return
        # The upstream handshake first, as mitmproxy's eager strategy does: the
        # client's ALPN answer, the certificate's names and a failure of the
        # server leg are known before the client leg answers (InterceptLayer holds
        # the client leg until then).
        data.establish_server_tls_first = True
        server = data.context.server
        if not self.policy.forward_sni and server.address:
            # No server_name upstream (RFC 6066 3): tlsconfig sends SNI only for a
            # name; an IP address is verified as such, anything else not at all.
            host = str(server.address[0])
            server.sni = host if _is_ip(host) else ""
        if not self.policy.forward_alpn:
            # tlsconfig offers upstream what the client offered; nothing then.
            data.context.client.alpn_offers = []

    def tls_start_client(self, data: Any) -> None:
        lay = _intercepted(data.context)
        if lay is None or data.ssl_conn is None:
            return
        p = self.policy
        if not p.resumption:
            data.ssl_conn = self._without_resumption(data.ssl_conn)
        self._keys(lay, data.ssl_conn)
        if p.certificate != "resign":
            cert, key = self._certificate(p.certificate, data.context)
            data.ssl_conn.use_certificate(cert)
            data.ssl_conn.use_privatekey(key)
        if p.chain == "with-ca":
            # The CA after the leaf, as appliances that send their root do (clients
            # then report a self-signed certificate in the chain). mitmproxy caches
            # its SSL contexts: add it once per context.
            sctx = data.ssl_conn.get_context()
            if id(sctx) not in self._chained:
                self._chained.add(id(sctx))
                sctx.add_extra_chain_cert(mitm_internals.certstore().default_ca.to_pyopenssl())
        if not p.client_alpn:
            mitm_internals.refuse_alpn(data.ssl_conn)

    @staticmethod
    def _without_resumption(old: Any) -> Any:
        """The client-facing SSL object again, from its context with session tickets
        off (RFC 5077) and no session cache: OpenSSL copies a context's options when
        it makes an SSL object, so tlsconfig's object is remade after the change.
        mitmproxy's leaves all use its CA's key (CertStore.get_cert)."""
        from OpenSSL import SSL, crypto

        sctx = old.get_context()
        sctx.set_options(SSL.OP_NO_TICKET)
        sctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        new = SSL.Connection(sctx)
        new.use_certificate(old.get_certificate())
        new.use_privatekey(crypto.PKey.from_cryptography_key(
            mitm_internals.certstore().default_privatekey))
        new.set_app_data(old.get_app_data())
        new.set_accept_state()
        return new

    def tls_start_server(self, data: Any) -> None:
        lay = _intercepted(data.context)
        if lay is None or data.ssl_conn is None:
            return
        self._keys(lay, data.ssl_conn)

    # -- the inspector's own secrets, per connection ----------------------------------

    def _keys(self, lay: InterceptLayer, ssl_conn: Any) -> None:
        """The inspector is an endpoint of both legs: its own secrets (OpenSSL's key
        log callback, RFC 8446 7.1 secrets in NSS format) decrypt each leg's
        handshake messages and alerts in the engines. They stay in memory."""
        self._by_ssl[id(ssl_conn)] = lay
        lay.ssl_ids.append(id(ssl_conn))
        ssl_conn.get_context().set_keylog_callback(self._keylog_line)

    def _keylog_line(self, ssl_conn: Any, line: bytes) -> None:
        lay = self._by_ssl.get(id(ssl_conn))
        if lay is not None:
            lay.keylog.feed(line.decode("ascii", "replace") + "\n")
            lay.key_lines += 1

    def forget(self, lay: InterceptLayer) -> None:
        for i in lay.ssl_ids:
            self._by_ssl.pop(i, None)

    # -- certificates other than mitmproxy's own ------------------------------------

    def _certificate(self, kind: str, context: Any) -> tuple[Any, Any]:
        sni = context.client.sni or (str(context.server.address[0])
                                     if context.server.address else "localhost")
        upstream = context.server.certificate_list
        if kind == "mimic" and upstream:
            names = tuple(dict.fromkeys(
                [n for n in ([upstream[0].cn] if upstream[0].cn else [])]
                + [str(a.value) for a in upstream[0].altnames]))
        elif kind == "wrong-name":
            names = ("wrong-name.invalid",)
        else:
            names = (sni,)
        cache_key = (kind, names)
        if cache_key not in self._certs:
            store = mitm_internals.certstore()
            ca = mitm_internals.ca_certificate(store)
            self._certs[cache_key] = certmaker.leaf(kind, names, ca, store.default_privatekey)
        return self._certs[cache_key]

    def client_cert_forwarded(self) -> bool:
        return self.policy.client_cert is not None
