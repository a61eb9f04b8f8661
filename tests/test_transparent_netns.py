"""Go through regular (HTTP CONNECT) mode, in namespaces (see tests/test_transparent.py).

The client connects to the server's own address with no proxy setting; the
gateway redirects port 443 to tlsinspector (nftables or iptables rules made by
`tlsinspector transparent-rules --apply`), which relays at record level. Needs
root, iproute2 and nftables/iptables (installed by .ci/run); never skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tlsinspector.lab.certs import Certs, make_certs
from tlsinspector.lab.peers import stop_process

BIN = Path(sys.executable).parent
NS = {"c": f"tic{os.getpid()}", "gw": f"tig{os.getpid()}", "s": f"tis{os.getpid()}"}


def sh(*argv: str, ns: str | None = None, check: bool = True,
       timeout: float = 30) -> subprocess.CompletedProcess[str]:
    cmd = (["ip", "netns", "exec", NS[ns]] if ns else []) + list(argv)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr}")
    return res


def wait_port(ns: str, host: str, port: int) -> None:
    code = ("import socket,time,sys\n"
            "d=time.monotonic()+60\n"  # bounds a hang: a loaded machine starts slowly
            "while time.monotonic()<d:\n"
            f"    try: socket.create_connection(('{host}',{port}),1).close(); sys.exit(0)\n"
            "    except OSError: time.sleep(0.05)\n"
            "sys.exit(1)\n")
    sh(sys.executable, "-c", code, ns=ns, timeout=90)


@pytest.fixture(scope="module")
def network() -> Iterator[None]:
    if os.geteuid() != 0:
        raise RuntimeError("the transparent-mode test needs root (network namespaces)")
    try:
        for n in NS.values():
            sh("ip", "netns", "add", n)
        sh("ip", "link", "add", "vc", "netns", NS["c"], "type", "veth", "peer", "name", "vgc",
           "netns", NS["gw"])
        sh("ip", "link", "add", "vs", "netns", NS["s"], "type", "veth", "peer", "name", "vgs",
           "netns", NS["gw"])
        for ns, dev, addr in (("c", "vc", "10.77.1.2/24"), ("gw", "vgc", "10.77.1.1/24"),
                              ("gw", "vgs", "10.77.2.1/24"), ("s", "vs", "10.77.2.2/24")):
            sh("ip", "addr", "add", addr, "dev", dev, ns=ns)
            sh("ip", "link", "set", dev, "up", ns=ns)
        for ns in NS:
            sh("ip", "link", "set", "lo", "up", ns=ns)
        sh("ip", "route", "add", "default", "via", "10.77.1.1", ns="c")
        sh("ip", "route", "add", "default", "via", "10.77.2.1", ns="s")
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns="gw")
        yield
    finally:
        for n in NS.values():
            subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def certs_s(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("tcerts"), names=("server.test",),
                      ips=("10.77.2.2",))


class InNs:
    def __init__(self, ns: str, argv: list[str], out: Path) -> None:
        self.out = open(out, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(["ip", "netns", "exec", NS[ns], *argv], stdout=self.out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        stop_process(self.proc)
        self.out.close()


@pytest.mark.timeout(300)
def test_go_with_https_proxy_through_regular_mode(network: None, certs_s: Certs,
                                                  tmp_path: Path) -> None:
    """Go's net/http honours HTTPS_PROXY (never for loopback, hence the namespaces)."""
    from tlsinspector.lab.peers import go_binary

    client = go_binary("client")
    server = InNs("s", ["openssl", "s_server", "-accept", "443", "-www", "-cert",
                        str(certs_s.server_cert), "-key", str(certs_s.server_key)],
                  tmp_path / "server.out")
    log = tmp_path / "regular.jsonl"
    proxy = InNs("gw", [str(BIN / "tlsinspector"), "run", "--mode", "regular", "--listen",
                        "0.0.0.0:3128", "--log", str(log)], tmp_path / "proxy.out")
    try:
        wait_port("s", "10.77.2.2", 443)
        wait_port("gw", "127.0.0.1", 3128)
        res = sh("env", "HTTPS_PROXY=http://10.77.1.1:3128", str(client), "-ca",
                 str(certs_s.ca_cert), "-sni", "10.77.2.2", "-url", "https://10.77.2.2/",
                 ns="c", check=False)
    finally:
        proxy.stop()
        server.stop()
    assert res.returncode == 0 and "HTTP 200" in res.stdout, res.stderr
    events = [json.loads(x) for x in log.read_text().splitlines()]
    connect = next(e for e in events if e["event"] == "connect")
    assert connect["mode"] == "regular" and connect["server"] == "10.77.2.2:443"
    assert any(m["type"] == "client_hello" for e in events if e["event"] == "record"
               for m in e.get("messages", []))
