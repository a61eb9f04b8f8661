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


@pytest.mark.timeout(240)  # two reproduce runs in a row: a loaded machine takes a minute each
def test_every_connection_of_a_fast_exiting_client_gets_its_close_event(
        certs: Certs, tmp_path: Path) -> None:
    # Issue 15 bug 4: gnutls-cli --resume makes two connections and exits at once;
    # wait_close returned at the first close event, so the second connection's close
    # event and diagnosis were missing from the verdict (2 runs of 3).
    from tlsinspector.lab.reproduce import reproduce

    scen = tmp_path / "s.yaml"
    scen.write_text("name: never\nfaults:\n  - match: {from: server, index: 99}\n"
                    "    action: drop\n")
    cmd = ("gnutls-cli --resume --x509cafile {ca} -p {port} --sni-hostname localhost "
           "--verify-hostname localhost {host}")
    for attempt in range(2):
        [v] = reproduce(scen, [], client_cmd=cmd, out_dir=tmp_path / f"o{attempt}",
                        certs=certs, timeout=30)
        assert "This is a resumed session" in v.client_output, v.client_output[-500:]
        closes = [e for e in v.events if e["event"] == "close"]
        assert len({e["conn"] for e in v.events if e["event"] == "connect"}) == 2
        assert len(closes) == 2, [e["event"] for e in v.events]
        assert all("fault-not-applied" in [d["code"] for d in c["diagnosis"]] for c in closes)
