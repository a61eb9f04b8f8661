"""Live ladder view: ``tlsinspector run --web 127.0.0.1:8081`` (issue 18).

Serves the report page (tlsinspector/report.py) over HTTP and appends
connections as they happen, with server-sent events, on tornado (which
mitmproxy already ships) running on mitmproxy's own event loop. Under plain
mitmproxy::

    mitmdump --mode reverse:tcp://127.0.0.1:4433 -p 8443 -s "$(tlsinspector addon-path)" \\
        -s addons/liveview.py --set tlsinspector_web=127.0.0.1:8081

It never holds up traffic: the inspector's log path only appends events to a
bounded store (the oldest connections go past ``tlsinspector_web_max``) and
marks the connection changed; a timer turns changed connections into lane
updates at most every ``TICK`` seconds, and only while a browser is watching.
Each browser has a bounded queue: a browser that reads too slowly loses the
oldest updates, never slows the proxy. The listener binds 127.0.0.1 unless
told otherwise (the page shows SNI and addresses of everything relayed), and
answers only requests that name it by IP address or localhost (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from mitmproxy import ctx, exceptions

from tlsinspector.report import connections, render

TICK = 0.25                 # seconds between pushes of changed lanes
EVENTS_PER_CONN = 400       # a bulk connection's application records beyond this are skipped
QUEUE_PER_BROWSER = 256     # lane-update messages waiting for one slow browser


def _log_request(handler: Any) -> None:
    """tornado's access log line with the request escaped: the path and method are the
    requester's bytes, and tornado's own line printed ESC and BEL from them raw
    (``GET /\x1b[2J`` cleared the proxy's terminal)."""
    import tornado.log

    from tlsinspector.proxy.render import escape

    status = handler.get_status()
    log = (tornado.log.access_log.info if status < 400 else tornado.log.access_log.warning
           if status < 500 else tornado.log.access_log.error)
    req = handler.request
    log("%d %s %s (%s) %.2fms", status, escape(str(req.method)), escape(str(req.uri)),
        escape(str(req.remote_ip)), 1000.0 * req.request_time())


class Hub:
    """The bounded store of recent connections and the browsers watching them."""

    def __init__(self, max_conns: int = 1000) -> None:
        self.max_conns = max_conns
        self.conns: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self.dirty: set[str] = set()
        self.watchers: list[Watcher] = []
        self.dropped = 0

    def feed(self, evs: list[dict[str, Any]]) -> None:
        """Called from the inspector's log path: O(events), no I/O, never blocks."""
        for ev in evs:
            conn = ev.get("conn")
            if conn is None:
                continue
            key = str(conn)
            held = self.conns.get(key)
            if held is None:
                held = self.conns[key] = []
                while len(self.conns) > self.max_conns:
                    old, _ = self.conns.popitem(last=False)
                    self.dirty.discard(old)
                    self.dropped += 1
            if len(held) < EVENTS_PER_CONN or ev.get("event") != "record":
                held.append(ev)
                self.dirty.add(key)  # a bulk transfer past the bound costs no updates

    def lanes(self, keys: list[str]) -> list[dict[str, Any]]:
        return [lane for k in keys if k in self.conns for lane in connections(self.conns[k])]

    def push(self) -> None:
        """Changed connections to every watcher, as one SSE message."""
        if not self.dirty:
            return
        keys, self.dirty = [k for k in self.conns if k in self.dirty], set()
        if not self.watchers:
            return
        msg = sse({"lanes": self.lanes(keys), "dropped": self.dropped})
        for w in self.watchers:
            w.put(msg)

    def snapshot(self) -> str:
        return sse({"lanes": self.lanes(list(self.conns)), "dropped": self.dropped,
                    "reset": True})


def sse(data: Any) -> str:
    # One "data:" line: JSON never holds a raw newline (they are escaped as \n).
    return "data: " + json.dumps(data, separators=(",", ":")) + "\n\n"


class Watcher:
    def __init__(self) -> None:
        self.queue: deque[str] = deque(maxlen=QUEUE_PER_BROWSER)
        self.wake = asyncio.Event()
        self.closed = False

    def put(self, msg: str) -> None:
        self.queue.append(msg)     # maxlen: the oldest update goes first
        self.wake.set()


def host_allowed(host_header: str) -> bool:
    """Only an IP literal or localhost in the Host header: a web page whose own name
    was rebound to 127.0.0.1 (DNS rebinding) must not read the view."""
    host = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _handlers(hub: Hub, max_conns: int) -> list[Any]:
    import tornado.iostream
    import tornado.web

    class Guarded(tornado.web.RequestHandler):
        def prepare(self) -> None:
            if not host_allowed(self.request.host):
                raise tornado.web.HTTPError(403)

    class Page(Guarded):
        def get(self) -> None:
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.set_header("Cache-Control", "no-store")
            self.write(render([], "tlsinspector live", {"live": {"max": max_conns}}, live=True))

    class Events(Guarded):
        watcher: Watcher | None = None

        async def get(self) -> None:
            self.set_header("Content-Type", "text/event-stream")
            self.set_header("Cache-Control", "no-store")
            w = self.watcher = Watcher()
            w.put(hub.snapshot())
            hub.watchers.append(w)
            try:
                while not w.closed:
                    await w.wake.wait()
                    w.wake.clear()
                    while w.queue:
                        self.write(w.queue.popleft())
                    await self.flush()
            except tornado.iostream.StreamClosedError:
                pass
            finally:
                if w in hub.watchers:
                    hub.watchers.remove(w)

        def on_connection_close(self) -> None:
            if self.watcher is not None:
                self.watcher.closed = True
                self.watcher.wake.set()

    return [(r"/", Page), (r"/events", Events)]


class LiveView:
    """The addon: option, HTTP listener, and the tap on the inspector's events."""

    def __init__(self, tap: Callable[[Callable[[list[dict[str, Any]]], None]], None]
                 | None = None) -> None:
        self.hub = Hub()
        self._server: Any = None
        self._timer: asyncio.Task[None] | None = None
        self._tap = tap

    def load(self, loader: Any) -> None:
        loader.add_option("tlsinspector_web", str, "",
                          "Serve the live ladder view on HOST:PORT (e.g. 127.0.0.1:8081).")
        loader.add_option("tlsinspector_web_max", int, 1000,
                          "Connections the live view keeps; older ones are dropped.")

    def configure(self, updated: set[str]) -> None:
        if "tlsinspector_web_max" in updated:
            if ctx.options.tlsinspector_web_max < 1:
                raise exceptions.OptionsError("tlsinspector_web_max must be at least 1")
            self.hub.max_conns = ctx.options.tlsinspector_web_max
        if "tlsinspector_web" in updated and ctx.options.tlsinspector_web:
            self.address()

    def address(self) -> tuple[str, int]:
        host, sep, port = ctx.options.tlsinspector_web.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise exceptions.OptionsError(
                f"tlsinspector_web must be HOST:PORT, got {ctx.options.tlsinspector_web!r}")
        return host.strip("[]") or "127.0.0.1", int(port)

    def running(self) -> None:
        if not ctx.options.tlsinspector_web or self._server is not None:
            return
        import tornado.web

        if self._tap is None:
            inspector = ctx.master.addons.get("inspector")
            if inspector is None:
                raise exceptions.OptionsError("the live view needs the inspector addon")
            self._tap = lambda feed: tap_inspector(inspector, feed)
        self._tap(self.hub.feed)
        host, port = self.address()
        app = tornado.web.Application(_handlers(self.hub, self.hub.max_conns),
                                      log_function=_log_request)
        self._server = app.listen(port, address=host, xheaders=False)
        self._timer = asyncio.get_running_loop().create_task(self._tick())
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        print(f"tlsinspector: live view on http://{shown}/", flush=True)
        if host != "localhost" and not _loopback(host):
            print(f"tlsinspector: WARNING the live view on {shown} is reachable from other "
                  "hosts and shows every connection's addresses and SNI", flush=True)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)  # batching interval, not synchronisation
            try:
                self.hub.push()
            except Exception as e:  # noqa: BLE001 - the view must never stop the proxy
                print(f"tlsinspector: WARNING live view: {e}", flush=True)

    def done(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._server is not None:
            self._server.stop()
        for w in self.hub.watchers:
            w.closed = True
            w.wake.set()


def tap_inspector(inspector: Any, feed: Callable[[list[dict[str, Any]]], None]) -> None:
    """Also hand every batch the inspector logs to ``feed`` (after its own sinks)."""
    emit_many = inspector.emit_many

    def both(evs: list[dict[str, Any]]) -> None:
        emit_many(evs)
        feed(evs)

    inspector.emit_many = both


addons = [LiveView()]
