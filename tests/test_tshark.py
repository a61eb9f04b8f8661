"""The ClientHello fields we log equal what tshark decodes from the same connection."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from addons.runner import DemoServer, _self_signed
from proxy import names
from tests.proxyproc import Proxy

FIELDS = {
    "version": "tls.handshake.version",
    "suites": "tls.handshake.ciphersuite",
    "exts": "tls.handshake.extension.type",
    "sni": "tls.handshake.extensions_server_name",
    "groups": "tls.handshake.extensions_supported_group",
    "versions": "tls.handshake.extensions.supported_version",
    "alpn": "tls.handshake.extensions_alpn_str",
    "ja3": "tls.handshake.ja3",
}


class Capture:
    """tshark on the loopback for one port; started when it says it is capturing."""

    def __init__(self, port: int, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            ["tshark", "-i", "lo", "-f", f"tcp port {port}", "-w", str(out), "-q"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        for line in self.proc.stderr:  # blocks until tshark reports it is capturing
            if "Capturing on" in line:
                break
        else:
            raise RuntimeError(f"tshark did not start: exit {self.proc.wait(timeout=10)}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)

    def client_hellos(self, port: int) -> list[dict[str, list[str]]]:
        cmd = ["tshark", "-r", str(self.out), "-d", f"tcp.port=={port},tls",
               "-Y", f"tls.handshake.type == 1 && tcp.dstport == {port}", "-T", "json"]
        for f in FIELDS.values():
            cmd += ["-e", f]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
        return [p["_source"]["layers"] for p in json.loads(res.stdout or "[]")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> DemoServer:
    cert, key = _self_signed(tmp_path_factory.mktemp("tshark"))
    srv = DemoServer(cert, key)
    srv.start()
    srv.cert = cert  # type: ignore[attr-defined]
    return srv


CLIENTS = {
    "openssl": lambda addr, ca: ["openssl", "s_client", "-connect", addr, "-servername",
                                 "localhost", "-CAfile", ca, "-quiet", "-alpn", "h2,http/1.1"],
    "curl": lambda addr, ca: ["curl", "-sS", "--max-time", "20", "--cacert", ca, "--resolve",
                              f"localhost:{addr.split(':')[1]}:127.0.0.1",
                              f"https://localhost:{addr.split(':')[1]}/"],
    "gnutls": lambda addr, ca: ["gnutls-cli", "--x509cafile", ca, "-p", addr.split(":")[1],
                                "--sni-hostname", "localhost", "127.0.0.1"],
}


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_logged_client_hello_equals_tshark(server: DemoServer, tmp_path: Path,
                                           client: str) -> None:
    with Proxy(f"127.0.0.1:{server.port}", tmp_path / "log.jsonl") as proxy:
        cap = Capture(proxy.port, tmp_path / "cap.pcapng")
        try:
            subprocess.run(CLIENTS[client](proxy.addr, str(server.cert)),  # type: ignore[attr-defined]
                           input=b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
                           capture_output=True, timeout=30)
            events = proxy.wait_closes(1)
        finally:
            cap.stop()
        [theirs] = cap.client_hellos(proxy.port)
    ours = next(m for e in events if e["event"] == "record" and e["from"] == "client"
                for m in e.get("messages", []) if m["type"] == "client_hello")

    def codes(key: str) -> list[int]:
        return [int(v, 0) if v.startswith("0x") else int(v) for v in theirs.get(FIELDS[key], [])]

    assert ours["legacy_version"] == f"0x{codes('version')[0]:04x}"
    assert ours["cipher_suites"] == [names.cipher_suite_name(c) for c in codes("suites")]
    assert [e["type"] for e in ours["extensions"]] == [names.extension_name(c)
                                                       for c in codes("exts")]
    assert ours.get("sni") == theirs[FIELDS["sni"]][0]
    assert ours.get("supported_groups") == [names.group_name(c) for c in codes("groups")]
    assert ours.get("supported_versions") == [f"0x{c:04x}" for c in codes("versions")]
    if FIELDS["alpn"] in theirs:
        assert ours["alpn"] == theirs[FIELDS["alpn"]]
    assert ours["ja3"] == theirs[FIELDS["ja3"]][0]
