"""Diagnosis of real failures, with no fault configured: the proxy changes nothing."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.proxyproc import Proxy
from tests.test_hello import WOLFSSL_REPORT_003
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.peers import run_client, start_server


def close_event(proxy: Proxy) -> dict:  # type: ignore[type-arg]
    return next(e for e in proxy.wait_closes(1) if e["event"] == "close")


def test_server_that_really_requires_sni(certs: Certs, tmp_path: Path) -> None:
    with start_server("python", certs, require_sni="localhost", log_dir=tmp_path) as srv, \
            Proxy(srv.addr, tmp_path / "log.jsonl") as proxy:
        res = run_client("python", "127.0.0.1", proxy.port, certs, sni=None)
        assert not res.ok and "HANDSHAKE_FAILURE" in res.output
        close = close_event(proxy)
    codes = [d["code"] for d in close["diagnosis"]]
    assert codes[0] == "missing-sni"
    assert any("no server_name" in e for e in close["diagnosis"][0]["evidence"])


def test_client_that_really_sends_no_supported_groups(certs: Certs, tmp_path: Path) -> None:
    # The wolfSSL ClientHello of report 003, byte for byte, to a Go server that
    # only accepts ECDHE suites under TLS 1.2 (as smtp.gmail.com did).
    with start_server("go", certs, tls="1.2", ecdhe_only=True, log_dir=tmp_path) as srv, \
            Proxy(srv.addr, tmp_path / "log.jsonl") as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(WOLFSSL_REPORT_003)
            s.settimeout(10)
            answer = s.recv(100)
        assert answer == bytes.fromhex("15030300020228")  # fatal handshake_failure
        close = close_event(proxy)
    codes = [d["code"] for d in close["diagnosis"]]
    assert "missing-supported-groups" in codes and "missing-sni" in codes
    assert not any("fault" in c for c in codes)
