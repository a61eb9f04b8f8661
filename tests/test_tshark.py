"""The ClientHello fields we log equal what tshark decodes from the same connection."""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.proxyproc import Proxy, free_port
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.tlsserver import HelloServer
from tlsinspector.proxy import names

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
    """tshark on the loopback for one TCP port.

    dumpcap says "Capturing on" before packets really flow, and packets still
    in its buffers are lost on a quick stop. So the capture also watches a UDP
    canary port: we send canaries until tshark prints one (the capture is
    live), and at the end send a marker and wait until it is printed (all
    earlier packets are in the file). Waiting on events, not on time.
    """

    def __init__(self, port: int, out: Path, *more_ports: int) -> None:
        self.out = out
        self.canaries = {b"start": free_port(), b"end": free_port()}
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = " or ".join(f"tcp port {p}" for p in (port, *more_ports))
        self.proc = subprocess.Popen(
            ["tshark", "-i", "lo", "-f",
             f"{tcp} or udp port {self.canaries[b'start']} "
             f"or udp port {self.canaries[b'end']}",
             "-w", str(out), "-P", "-l"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._wait_canary(b"start")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put("")

    def _wait_canary(self, payload: bytes, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.udp.sendto(payload, ("127.0.0.1", self.canaries[payload]))
            try:
                line = self._lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if not line:
                raise RuntimeError("tshark exited")
            if "UDP" in line and f"{self.canaries[payload]} " in line:
                return
        raise TimeoutError("tshark never saw the canary")

    def stop(self) -> None:
        self._wait_canary(b"end")
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=20)
        self.udp.close()

    def client_hellos(self, port: int) -> list[dict[str, list[str]]]:
        cmd = ["tshark", "-r", str(self.out), "-d", f"tcp.port=={port},tls",
               "-Y", f"tls.handshake.type == 1 && tcp.dstport == {port}", "-T", "json"]
        for f in FIELDS.values():
            cmd += ["-e", f]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
        return [p["_source"]["layers"] for p in json.loads(res.stdout or "[]")]


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
def test_logged_client_hello_equals_tshark(demo_server: HelloServer, certs: Certs,
                                           tmp_path: Path,
                                           client: str) -> None:
    with Proxy(f"127.0.0.1:{demo_server.port}", tmp_path / "log.jsonl") as proxy:
        cap = Capture(proxy.port, tmp_path / "cap.pcapng")
        try:
            subprocess.run(CLIENTS[client](proxy.addr, str(certs.ca_cert)),
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
