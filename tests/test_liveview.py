"""run --web: the live ladder view in a real browser, and its bounds."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.browser import DevTools
from tlsinspector.addons.liveview import Hub, host_allowed
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.inspector import InspectorProcess
from tlsinspector.lab.peers import free_port, run_client, wait_for_port
from tlsinspector.lab.tlsserver import HelloServer


def test_live_view_shows_a_connection_made_after_the_page_opened(
        tmp_path: Path, certs: Certs, demo_server: HelloServer) -> None:
    web = free_port()
    with InspectorProcess(f"127.0.0.1:{demo_server.port}", tmp_path / "live.jsonl",
                          extra=["--web", f"127.0.0.1:{web}"]) as proxy:
        wait_for_port("127.0.0.1", web, 60, proxy.proc)
        page = urllib.request.urlopen(f"http://127.0.0.1:{web}/", timeout=10)
        csp = page.read().decode()
        assert "connect-src 'self'" in csp and "default-src 'none'" in csp
        rebound = urllib.request.Request(f"http://127.0.0.1:{web}/events",
                                         headers={"Host": f"evil.example:{web}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(rebound, timeout=10)
        assert refused.value.code == 403
        browser = DevTools(tmp_path)
        try:
            browser.call("Page.enable")
            browser.call("Page.navigate", url=f"http://127.0.0.1:{web}/")
            browser.wait_for("document.body && document.body.dataset.ready === '1'")
            # The event stream is open once the first (empty) snapshot arrived.
            browser.wait_for("document.body.dataset.lanes === '0'")
            res = run_client("python", "127.0.0.1", proxy.port, certs)
            assert res.ok, res.output
            proxy.wait_closes(1)
            # Lanes are pushed as they change: wait for the one whose close arrived.
            text = browser.wait_for(
                "(t => t.includes('SNI localhost') && t.includes('closed by') && t)"
                "(document.getElementById('lanes').textContent)")
            assert "client_hello" in str(text) and "completed" in str(text)
        finally:
            browser.close()
        assert "live view on http://127.0.0.1:" in proxy.output()


def test_hub_keeps_the_newest_connections_and_bounds_each() -> None:
    hub = Hub(max_conns=3)
    for n in range(1, 6):
        hub.feed([{"event": "connect", "ts": 1.0, "conn": str(n), "client": "a:1",
                   "server": "b:2", "mode": "reverse"}])
    assert list(hub.conns) == ["3", "4", "5"] and hub.dropped == 2
    hub.feed([{"event": "record", "ts": 2.0, "conn": "5", "from": "client", "index": i,
               "content_type": "application_data", "version": "0x0303", "length": 5,
               "encrypted": True} for i in range(1000)])
    hub.feed([{"event": "close", "ts": 3.0, "conn": "5", "by": "client",
               "bytes": {"client": 1, "server": 1}, "diagnosis": []}])
    assert len(hub.conns["5"]) <= 401 and hub.conns["5"][-1]["event"] == "close"


def test_a_slow_browser_loses_old_updates_not_the_proxy() -> None:
    from tlsinspector.addons.liveview import QUEUE_PER_BROWSER, Watcher

    hub = Hub()
    w = Watcher.__new__(Watcher)   # no event loop needed to queue
    from collections import deque

    w.queue, w.closed = deque(maxlen=QUEUE_PER_BROWSER), False

    class _Wake:
        def set(self) -> None:
            pass

    w.wake = _Wake()  # type: ignore[assignment]
    hub.watchers.append(w)
    for n in range(QUEUE_PER_BROWSER + 50):
        hub.feed([{"event": "connect", "ts": 1.0, "conn": str(n), "client": "a:1",
                   "server": "b:2", "mode": "reverse"}])
        hub.push()
    assert len(w.queue) == QUEUE_PER_BROWSER
    assert '"conn":"50"' in w.queue[0]          # the 50 oldest updates are gone
    assert sys.getsizeof(w.queue) < 1 << 20


def test_only_ip_literals_and_localhost_may_ask() -> None:
    for ok in ("127.0.0.1:8081", "localhost:8081", "[::1]:8081", "10.0.0.5", "LOCALHOST"):
        assert host_allowed(ok), ok
    for bad in ("evil.example:8081", "127.0.0.1.nip.io:8081", "", "localhost.evil:1"):
        assert not host_allowed(bad), bad


def test_the_access_log_escapes_the_requested_path(caplog: pytest.LogCaptureFixture) -> None:
    # `GET /\x1b[2J\x1b]0;pwned\x07x` to --web: tornado's own access line printed the
    # ESC and BEL raw into the proxy's terminal.
    import logging
    from types import SimpleNamespace

    from tlsinspector.addons.liveview import _log_request

    req = SimpleNamespace(method="G\x1bT", uri="/\x1b[2J\x1b]0;pwned\x07x",
                          remote_ip="127.0.0.1", request_time=lambda: 0.001)
    handler = SimpleNamespace(get_status=lambda: 404, request=req)
    with caplog.at_level(logging.INFO, logger="tornado.access"):
        _log_request(handler)
    [rec] = caplog.records
    text = rec.getMessage()
    assert text == r"404 G\x1bT /\x1b[2J\x1b]0;pwned\x07x (127.0.0.1) 1.00ms"
    assert rec.levelno == logging.WARNING
    assert not any(ord(c) < 0x20 for c in text)
