"""lab/inspector.py: how a test or a reproduce run knows the proxy is done."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.proxyproc import Proxy
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.tlsserver import HelloServer


@pytest.mark.timeout(60)
def test_wait_close_knows_no_client_connected_without_a_time_window(
        demo_server: HelloServer, tmp_path: Path) -> None:
    with Proxy(f"127.0.0.1:{demo_server.port}", tmp_path / "log.jsonl") as proxy:
        # (the start-up probe of the port is a connection that sends nothing and
        # leaves no event). A 10-minute budget: only the kernel's and the proxy's state can end this
        # early (pytest's 60 s timeout fails a wait that relies on the clock).
        assert proxy.wait_close(set(), timeout=600) == []


@pytest.mark.timeout(60)
def test_wait_close_waits_for_a_connection_that_is_still_open(
        demo_server: HelloServer, certs: Certs, tmp_path: Path) -> None:
    with Proxy(f"127.0.0.1:{demo_server.port}", tmp_path / "log.jsonl") as proxy:
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        got: list[list[dict[str, Any]]] = []
        waiter = threading.Thread(target=lambda: got.append(proxy.wait_close(set(), 30)))
        try:
            # Accepted (or queued) but silent, so nothing is logged yet: the connection
            # is in flight and "the client never connected" would be wrong. (The old
            # rule, no event within 2 s, returned here.)
            assert proxy.in_flight() >= 1
            waiter.start()
            waiter.join(3.0)
            assert waiter.is_alive() and not got
            s.sendall(bytes.fromhex("15030300020100"))  # close_notify alert, then EOF
            s.shutdown(socket.SHUT_WR)
            s.settimeout(10)
            while s.recv(100):
                pass
        finally:
            s.close()
        waiter.join(30)
        [events] = got
        kinds = [e["event"] for e in events]
        assert kinds[0] == "connect" and kinds[-1] == "close"
        recs = [e for e in events if e["event"] == "record"]
        # README: a record event's "alert" {level, description, code}; the demo server
        # (OpenSSL) answers an alert before any hello with unexpected_message.
        assert [(r["from"], r["alert"]) for r in recs] == [
            ("client", {"level": "warning", "description": "close_notify", "code": 0}),
            ("server", {"level": "fatal", "description": "unexpected_message", "code": 10})]
