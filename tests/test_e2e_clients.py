"""Every real client through `tlsinspector run` to every real server, TLS 1.2 and 1.3.

Each connection completes a handshake and an HTTP exchange, and the JSONL log
shows every record both ways with the ClientHello decoded.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.proxyproc import Proxy
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.peers import CLIENT_KINDS, run_client, start_server

SERVERS = ("openssl", "go", "python")


def by_conn(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        out[e["conn"]].append(e)
    return out


@pytest.mark.timeout(240)
@pytest.mark.parametrize("tls", ["1.2", "1.3"])
@pytest.mark.parametrize("server_kind", SERVERS)
def test_all_clients_through_inspector(certs: Certs, tmp_path: Path, server_kind: str,
                                       tls: str) -> None:
    with start_server(server_kind, certs, tls=tls, log_dir=tmp_path) as server, \
            Proxy(server.addr, tmp_path / "log.jsonl") as proxy:
        results = {}
        for n, kind in enumerate(CLIENT_KINDS, start=1):
            results[kind] = run_client(kind, "127.0.0.1", proxy.port, certs, tls=tls)
            proxy.wait_closes(n)
        events = proxy.events()
    failed = {k: r.output[-400:] for k, r in results.items() if not r.ok}
    assert not failed, failed
    conns = by_conn(events)
    assert len(conns) == len(CLIENT_KINDS)
    want = "0x0304" if tls == "1.3" else "0x0303"
    for conn, evs in conns.items():
        assert evs[0]["event"] == "connect" and evs[-1]["event"] == "close"
        recs = [e for e in evs if e["event"] == "record"]
        for side in ("client", "server"):
            idx = [r["index"] for r in recs if r["from"] == side]
            assert idx == list(range(1, len(idx) + 1)), (conn, side)
            assert len(idx) >= 2
        ch = recs[0]["messages"][0]
        assert ch["type"] == "client_hello" and ch["cipher_suites"]
        assert ch["ja3"] and ch["ja4"].startswith("t1")
        sh = next(m for r in recs if r["from"] == "server" for m in r.get("messages", ()))
        assert sh["type"] == "server_hello" and sh["selected_version"] == want
        assert any(r["encrypted"] for r in recs if r["from"] == "client")
        assert evs[-1]["diagnosis"] == [], evs[-1]["diagnosis"]
