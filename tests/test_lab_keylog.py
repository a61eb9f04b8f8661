"""Every built-in peer that can write an NSS key log does, for the connection it made.

The ClientHello random that the inspector logged (the wire's own bytes) must be the
random the key log names: a key log for another connection, or none, fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.proxyproc import Proxy
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.peers import CLIENT_KINDS, KEYLOG, SERVER_KINDS, run_client, start_server

TLS13_LABELS = {"CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
                "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"}


def keylog_entries(path: Path) -> dict[str, set[str]]:
    """client random (hex) -> the labels logged for it."""
    out: dict[str, set[str]] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            label, random, secret = line.split()
            assert len(random) == 64 and len(secret) >= 64, line
            out.setdefault(random.lower(), set()).add(label)
    return out


def hello_randoms(events: list[dict[str, object]]) -> list[str]:
    return [m["random"] for e in events if e["event"] == "record" and e["from"] == "client"
            for m in e.get("messages", ()) if m["type"] == "client_hello"]  # type: ignore[attr-defined,index]


def expected_labels(kind: str, tls: str) -> set[str]:
    if tls == "1.2":
        return {"CLIENT_RANDOM"}
    return TLS13_LABELS if KEYLOG[kind] == "all" else set()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_every_client_writes_its_keys(certs: Certs, tmp_path: Path, tls: str) -> None:
    with start_server("openssl", certs, tls=tls, log_dir=tmp_path) as server, \
            Proxy(server.addr, tmp_path / "log.jsonl") as proxy:
        for n, kind in enumerate(CLIENT_KINDS, start=1):
            keys = tmp_path / f"{kind}.keys"
            res = run_client(kind, "127.0.0.1", proxy.port, certs, tls=tls, keylog=keys)
            assert res.ok, res.output[-400:]
            proxy.wait_closes(n)
            random = hello_randoms(proxy.events())[-1]
            want = expected_labels(kind, tls)
            got = keylog_entries(keys) if keys.exists() else {}
            if not want:  # wolfSSL under TLS 1.3: no secrets to be had (see KEYLOG)
                assert got == {}, (kind, tls, got)
                continue
            assert got.get(random, set()) >= want, (kind, tls, got, random)
            assert set(got) == {random}, (kind, "keys for another connection", got)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_every_server_writes_its_keys(certs: Certs, tmp_path: Path, kind: str) -> None:
    keys = tmp_path / "server.keys"
    with start_server(kind, certs, tls="1.3", log_dir=tmp_path, keylog=keys) as server, \
            Proxy(server.addr, tmp_path / "log.jsonl") as proxy:
        res = run_client("python", "127.0.0.1", proxy.port, certs, tls="1.3")
        assert res.ok, res.output[-400:]
        proxy.wait_closes(1)
        random = hello_randoms(proxy.events())[-1]
    assert keylog_entries(keys).get(random, set()) >= TLS13_LABELS, keys.read_text()
