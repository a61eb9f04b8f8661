"""Transparent mode end to end, in a network built from namespaces.

    client ns                gateway ns (ip_forward=1)                server ns
    10.77.1.2   veth-c <-> veth-gw-c 10.77.1.1 | 10.77.2.1 veth-gw-s <-> veth-s 10.77.2.2
    fd77:1::2                fd77:1::1 | fd77:2::1                    fd77:2::2

The client (curl, openssl s_client) connects to the server's own address with
no proxy setting. On the gateway, `tlsinspector transparent-rules --apply`
(nftables or iptables) redirects port 443 arriving on veth-gw-c to
`tlsinspector run --mode transparent`, which learns the original destination
from SO_ORIGINAL_DST and relays record by record. A second test puts the rules
on the client host itself (--placement local) and exempts the inspector's uid.

Needs root, iproute2, nftables, iptables, openssl and curl (.ci/run installs
them). Never skipped: anything essential missing fails with its name.
Every namespace has a per-run name and is deleted in the fixture's teardown;
deleting a namespace deletes its veths and its rules with it.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.proxyproc import BIN, free_port
from tlsinspector.cli import CONFIGS
from tlsinspector.lab.certs import Certs, make_certs
from tlsinspector.lab.peers import stop_process

SERVER4, SERVER6 = "10.77.2.2", "fd77:2::2"
NOBODY = 65534  # an unprivileged client uid for the local placement
TOOLS = ("ip", "ss", "nft", "iptables", "ip6tables", "openssl", "curl", "setpriv")


def _preflight() -> None:
    if os.geteuid() != 0:
        pytest.fail("tests/test_transparent.py needs root: it creates network namespaces, "
                    "veth pairs and nftables/iptables rules (run the suite as root, as CI does)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"tests/test_transparent.py needs {', '.join(missing)} on PATH "
                    "(Debian: the packages in packages.debian, which .ci/run and "
                    "`make deps` install; setpriv is in util-linux)")
    if not (BIN / "tlsinspector").exists():
        pytest.fail(f"{BIN / 'tlsinspector'} is missing: install the project into the venv")


def run(argv: list[str], ns: str | None = None, check: bool = True, timeout: float = 30,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + argv
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                         input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {res.returncode}:\n"
                             f"{res.stdout}{res.stderr}")
    return res


@dataclass
class Net:
    client: str
    gw: str
    server: str


@pytest.fixture
def net() -> Iterator[Net]:
    _preflight()
    tag = secrets.token_hex(4)
    n = Net(f"tlsi-{tag}-c", f"tlsi-{tag}-gw", f"tlsi-{tag}-s")
    created: list[str] = []
    try:
        for ns in (n.client, n.gw, n.server):
            run(["ip", "netns", "add", ns])
            created.append(ns)
        run(["ip", "link", "add", "veth-c", "netns", n.client, "type", "veth",
             "peer", "name", "veth-gw-c", "netns", n.gw])
        run(["ip", "link", "add", "veth-s", "netns", n.server, "type", "veth",
             "peer", "name", "veth-gw-s", "netns", n.gw])
        for ns, dev, v4, v6 in ((n.client, "veth-c", "10.77.1.2/24", "fd77:1::2/64"),
                                (n.gw, "veth-gw-c", "10.77.1.1/24", "fd77:1::1/64"),
                                (n.gw, "veth-gw-s", "10.77.2.1/24", "fd77:2::1/64"),
                                (n.server, "veth-s", "10.77.2.2/24", "fd77:2::2/64")):
            run(["ip", "addr", "add", v4, "dev", dev], ns)
            run(["ip", "-6", "addr", "add", v6, "dev", dev, "nodad"], ns)
            run(["ip", "link", "set", dev, "up"], ns)
        for ns in (n.client, n.gw, n.server):
            run(["ip", "link", "set", "lo", "up"], ns)
        run(["ip", "route", "add", "default", "via", "10.77.1.1"], n.client)
        run(["ip", "-6", "route", "add", "default", "via", "fd77:1::1"], n.client)
        run(["ip", "route", "add", "default", "via", "10.77.2.1"], n.server)
        run(["ip", "-6", "route", "add", "default", "via", "fd77:2::1"], n.server)
        for knob in ("ipv4/ip_forward", "ipv6/conf/all/forwarding"):  # per namespace
            run(["sh", "-c", f"echo 1 > /proc/sys/net/{knob}"], n.gw)
        yield n
    finally:
        while RUNNING:
            RUNNING.pop().stop()
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """Server certificate for server.test, 10.77.2.2 and fd77:2::2. pytest's folders
    are private to root: an unprivileged client gets the CA as an open descriptor
    (see ``curl``), not by path."""
    return make_certs(tmp_path_factory.mktemp("transparent-certs"), names=("server.test",),
                      ips=(SERVER4, SERVER6))


class NsProcess:
    """A long-running process inside a namespace, output to a file. Every one is
    registered in RUNNING and stopped by the ``net`` fixture's teardown at the
    latest (deleting a namespace does not end the processes inside it)."""

    def __init__(self, ns: str, argv: list[str], out: Path) -> None:
        RUNNING.append(self)
        self.out_path = out
        self._out = open(out, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=self._out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.ns = ns

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def wait_listening(self, local: str, timeout: float = 90) -> None:
        """Poll the namespace's listening sockets until one is bound to ``local`` as
        ss prints it ("0.0.0.0:8080", "[::]:8080", "*:443"). No probe connection:
        a transparent proxy would log it as a connection to itself. The timeout bounds
        a hang only: a proxy starting beside others on a loaded machine took over 30 s."""
        port = local.rsplit(":", 1)[1]
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.proc.args!r} exited {self.proc.returncode} "
                                     f"before listening on {local}:\n{self.output()}")
            listing = run(["ss", "-Hltn", f"sport = :{port}"], self.ns, timeout=10).stdout
            if local in [line.split()[3] for line in listing.splitlines()]:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on {local} in {self.ns} after "
                                     f"{timeout}s:\n{self.output()}")
            time.sleep(0.02)  # polling interval, not synchronisation

    def stop(self) -> None:
        stop_process(self.proc)
        self._out.close()


RUNNING: list[NsProcess] = []


def start_server(n: Net, certs: Certs, out: Path, tls12: bool = False) -> NsProcess:
    argv = ["openssl", "s_server", "-www", "-accept", "443", "-cert",
            str(certs.server_cert), "-key", str(certs.server_key)]
    srv = NsProcess(n.server, argv + (["-tls1_2"] if tls12 else []), out)
    srv.wait_listening("*:443")  # one dual-stack socket
    return srv


def start_inspector(ns: str, listen: str, port: int, log: Path, out: Path,
                    scenario: Path | None = None) -> NsProcess:
    argv = [str(BIN / "tlsinspector"), "run", "--mode", "transparent", "--listen",
            f"{listen}:{port}", "--log", str(log)]
    proxy = NsProcess(ns, argv + (["--scenario", str(scenario)] if scenario else []), out)
    proxy.wait_listening(f"{listen}:{port}")
    return proxy


def curl(ns: str, certs: Certs, address: str, as_uid: int | None = None,
         ) -> subprocess.CompletedProcess[str]:
    resolve = f"server.test:443:{'[' + address + ']' if ':' in address else address}"
    argv = ["curl", "-sS", "--max-time", "20", "--cacert", str(certs.ca_cert),
            "--resolve", resolve, "https://server.test/"]
    if as_uid is not None:
        # root opens the CA file as descriptor 3; the unprivileged curl reads it through
        # /dev/fd/3, which needs the file's permission, not the (root-only) folders'.
        argv[argv.index(str(certs.ca_cert))] = "/dev/fd/3"
        # A public certificate: readable by anyone, whatever umask made it (another
        # test in the same worker may have narrowed the process's umask).
        os.chmod(certs.ca_cert, 0o644)
        inner = shlex.join(["setpriv", f"--reuid={as_uid}", f"--regid={as_uid}",
                            "--clear-groups", *argv])
        argv = ["sh", "-c", f'exec 3< "$1" && exec {inner}', "sh", str(certs.ca_cert)]
    return run(argv, ns, check=False, timeout=30)


def s_client(ns: str, certs: Certs, address: str) -> subprocess.CompletedProcess[str]:
    host = f"[{address}]" if ":" in address else address
    return run(["openssl", "s_client", "-connect", f"{host}:443", "-servername", "server.test",
                "-CAfile", str(certs.ca_cert), "-verify_return_error", "-verify_hostname",
                "server.test", "-quiet"], ns, check=False, timeout=30,
               stdin="GET / HTTP/1.0\r\n\r\n")


def wait_closes(log: Path, n: int, timeout: float = 60.0) -> None:
    """Until the log holds ``n`` close events: a client may finish before the proxy
    has seen the server's side end, and stopping the proxy then loses the close."""
    deadline = time.monotonic() + timeout
    while not log.exists() or log.read_text().count('"event":"close"') < n:
        if time.monotonic() > deadline:
            return  # the assertions on the log say what is missing
        time.sleep(0.02)  # polling the log for the close events


def connections(log: Path) -> list[list[dict[str, Any]]]:
    """The log's events grouped per connection, in connection order."""
    by_conn: dict[Any, list[dict[str, Any]]] = {}
    for line in log.read_text().splitlines():
        ev = json.loads(line)
        by_conn.setdefault(ev["conn"], []).append(ev)
    return list(by_conn.values())


def check_connection(events: list[dict[str, Any]], client: str, server: str) -> None:
    """One inspected connection: the original destination, the SNI, records both ways."""
    kinds = [e["event"] for e in events]
    assert kinds[0] == "connect" and "close" in kinds, kinds
    connect = events[0]
    assert connect["mode"] == "transparent"
    assert connect["server"] == server, connect  # the original destination, not the proxy
    assert connect["client"].rsplit(":", 1)[0].strip("[]") == client, connect
    records = [e for e in events if e["event"] == "record"]
    assert {e["from"] for e in records} == {"client", "server"}, records
    hellos = [m for e in records if e["from"] == "client" for m in e.get("messages", [])
              if m["type"] == "client_hello"]
    assert len(hellos) == 1 and hellos[0]["sni"] == "server.test", hellos
    assert any(m["type"] == "server_hello" for e in records if e["from"] == "server"
               for m in e.get("messages", []))


def served(res: subprocess.CompletedProcess[str]) -> bool:
    # openssl s_server -www answers with a page listing its ciphers
    return res.returncode == 0 and "s_server" in res.stdout


def rules(ns: str, backend: str, port: int, placement: str, action: str,
          interface: str | None = "veth-gw-c", exempt_uid: int | None = None,
          check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [str(BIN / "tlsinspector"), "transparent-rules", "--port", str(port), "--dport",
            "443", "--placement", placement, "--backend", backend, action]
    if interface and placement == "gateway":
        argv += ["--interface", interface]
    if exempt_uid is not None:
        argv += ["--exempt-uid", str(exempt_uid)]
    return run(argv, ns, check=check)


def nat_listing(ns: str, backend: str) -> str:
    if backend == "nft":
        return run(["nft", "list", "ruleset"], ns).stdout
    return (run(["iptables", "-t", "nat", "-S"], ns).stdout
            + run(["ip6tables", "-t", "nat", "-S"], ns).stdout)


def assert_rules_installed(ns: str, backend: str, port: int, chain: str,
                           match: str) -> None:
    listing = nat_listing(ns, backend)
    if backend == "nft":
        assert "table inet tlsinspector" in listing, listing
        assert f"hook {chain.lower()}" in listing and match in listing, listing
        assert f"tcp dport 443 redirect to :{port}" in listing, listing
    else:
        for tool in ("iptables", "ip6tables"):
            out = run([tool, "-t", "nat", "-S", chain], ns).stdout
            lines = [x for x in out.splitlines() if "REDIRECT" in x]
            assert len(lines) == 1, f"{tool}: {out}"
            assert match in lines[0] and "--dport 443" in lines[0], lines
            assert f"--to-ports {port}" in lines[0], lines


def assert_no_rules(ns: str, backend: str, port: int) -> None:
    """--remove leaves nothing behind: no table, no REDIRECT, no mention of the port."""
    listing = nat_listing(ns, backend)
    if backend == "nft":
        assert listing.strip() == "", f"nft ruleset after --remove:\n{listing}"
    else:
        left = [x for x in listing.splitlines() if not x.startswith(("-P ", "-N "))]
        assert left == [], f"iptables/ip6tables nat rules after --remove:\n{listing}"
    assert str(port) not in listing


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_gateway(net: Net, certs: Certs, tmp_path: Path, backend: str) -> None:
    """Forwarded traffic, IPv4 and IPv6, real clients; then a fault through the same path."""
    port = free_port()
    assert_no_rules(net.gw, backend, port)
    applied = rules(net.gw, backend, port, "gateway", "--apply")
    assert "applied:" in applied.stdout, applied.stdout
    try:
        assert_rules_installed(net.gw, backend, port, "PREROUTING",
                               'iifname "veth-gw-c"' if backend == "nft" else "-i veth-gw-c")

        # 1. No fault: the handshakes complete as if the inspector were not there.
        server = start_server(net, certs, tmp_path / "server.out")
        log4, log6 = tmp_path / "v4.jsonl", tmp_path / "v6.jsonl"
        # One listener is one address family (see the README): one inspector each.
        proxy4 = start_inspector(net.gw, "0.0.0.0", port, log4, tmp_path / "proxy4.out")
        proxy6 = start_inspector(net.gw, "[::]", port, log6, tmp_path / "proxy6.out")
        try:
            results = {
                "curl v4": curl(net.client, certs, SERVER4),
                "s_client v4": s_client(net.client, certs, SERVER4),
                "curl v6": curl(net.client, certs, SERVER6),
                "s_client v6": s_client(net.client, certs, SERVER6),
            }
            wait_closes(log4, 2)
            wait_closes(log6, 2)
        finally:
            proxy4.stop()
            proxy6.stop()
            server.stop()
        for name, res in results.items():
            assert served(res), f"{name}: {res.stdout[-2000:]}{res.stderr}\n" \
                                f"{(tmp_path / 'proxy4.out').read_text()}"
        conns4, conns6 = connections(log4), connections(log6)
        assert len(conns4) == 2 and len(conns6) == 2, (conns4, conns6)
        for events in conns4:
            check_connection(events, "10.77.1.2", f"{SERVER4}:443")
            assert not any("fault" in e for e in events)
        for events in conns6:
            check_connection(events, "fd77:1::2", f"[{SERVER6}]:443")

        # 2. The fault: a TLS 1.2 server, record version 0x3030 on its second record.
        server = start_server(net, certs, tmp_path / "server12.out", tls12=True)
        logf = tmp_path / "fault.jsonl"
        proxy = start_inspector(net.gw, "0.0.0.0", port, logf, tmp_path / "proxyf.out",
                                scenario=CONFIGS / "record-version-3030.yaml")
        try:
            results = {"curl": curl(net.client, certs, SERVER4),
                       "s_client": s_client(net.client, certs, SERVER4)}
            wait_closes(logf, 2)
        finally:
            proxy.stop()
            server.stop()
        for name, res in results.items():
            assert res.returncode != 0, f"{name} succeeded through the fault: {res.stdout}"
            assert "wrong version number" in res.stdout + res.stderr, f"{name}: {res.stderr}"
        conns = connections(logf)
        assert len(conns) == 2, conns
        for events in conns:
            check_connection(events, "10.77.1.2", f"{SERVER4}:443")
            faulted = [e for e in events if e["event"] == "record" and "fault" in e]
            assert len(faulted) == 1, faulted
            f = faulted[0]
            assert f["from"] == "server" and f["index"] == 2, f
            assert f["fault"][0]["scenario"] == "record-version-3030", f
            assert f["fault"][0]["action"] == "set-record-version", f
        if backend == "nft":  # the redirection is the same with either backend
            server_speaks_first(net, port, tmp_path)
    finally:  # unchecked here so that a failure above is the one reported
        removed = rules(net.gw, backend, port, "gateway", "--remove", check=False)
    assert removed.returncode == 0 and "applied:" in removed.stdout, removed
    assert_no_rules(net.gw, backend, port)


BANNER_SERVER = """
import socket
s = socket.create_server(("10.77.2.2", 443))
s.settimeout(30)
for banner in (b"220 banner.test ESMTP\\r\\n", b""):
    c, _ = s.accept()
    c.settimeout(30)
    c.sendall(banner)
    got = b""
    while True:
        d = c.recv(4096)
        if not d:
            break
        got += d
    c.close()
    print(repr(got), flush=True)
"""
BANNER_CLIENT = """
import socket
c = socket.create_connection(("10.77.2.2", 443), timeout=30)
got = b""
while not got.endswith(b"\\n"):
    d = c.recv(100)
    if not d:
        break
    got += d
print(repr(got), flush=True)
c.sendall(b"QUIT\\r\\n")
c.close()
socket.create_connection(("10.77.2.2", 443), timeout=30).close()
"""


def server_speaks_first(net: Net, port: int, tmp: Path) -> None:
    """Issue 17 in transparent mode: the upstream opens when the client connects, so a
    server's banner reaches a client that has sent nothing; a connect-then-close
    reaches the server (it receives nothing, as directly) and is logged."""
    log = tmp / "banner.jsonl"
    server = NsProcess(net.server, [sys.executable, "-c", BANNER_SERVER], tmp / "banner.out")
    server.wait_listening(f"{SERVER4}:443")
    proxy = start_inspector(net.gw, "0.0.0.0", port, log, tmp / "proxyb.out")
    try:
        res = run([sys.executable, "-c", BANNER_CLIENT], net.client, timeout=40)
        wait_closes(log, 2)
        server.proc.wait(timeout=30)
    finally:
        proxy.stop()
        server.stop()
    assert res.stdout.splitlines() == [repr(b"220 banner.test ESMTP\r\n")], res
    assert server.output().splitlines() == [repr(b"QUIT\r\n"), repr(b"")]
    conns = connections(log)
    assert len(conns) == 2, conns
    assert [e["event"] for e in conns[1]] == ["connect", "close"], conns[1]
    assert conns[1][0]["server"] == f"{SERVER4}:443" and conns[1][1]["by"] == "client"
    assert any(e["event"] == "plaintext" and e["status"] == "220" for e in conns[0])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_local(net: Net, certs: Certs, tmp_path: Path, backend: str) -> None:
    """The client host's own outgoing connections (OUTPUT). The inspector runs as root
    and root is exempted, so its upstream connection is not redirected back into it;
    the client runs as an unprivileged user and is inspected."""
    port = free_port()
    # nft once rejected "hook output priority dstnat" (fixed: the output hook uses
    # "priority -100"); a regression fails here, not as an xfail.
    rules(net.client, backend, port, "local", "--apply", exempt_uid=0)
    try:
        assert_rules_installed(net.client, backend, port, "OUTPUT",
                               "meta skuid != 0" if backend == "nft"
                               else "! --uid-owner 0")
        server = start_server(net, certs, tmp_path / "server.out")
        log = tmp_path / "local.jsonl"
        proxy = start_inspector(net.client, "127.0.0.1", port, log, tmp_path / "proxy.out")
        try:
            res = curl(net.client, certs, SERVER4, as_uid=NOBODY)
            direct = curl(net.client, certs, SERVER4)  # as root: exempt, not inspected
            wait_closes(log, 1)
        finally:
            proxy.stop()
            server.stop()
        assert served(res), f"{res.stderr}\n{(tmp_path / 'proxy.out').read_text()}"
        assert served(direct), direct.stderr
        conns = connections(log)
        assert len(conns) == 1, conns  # the client's; neither upstream nor root's looped
        # the source address was chosen by routing before the redirect
        check_connection(conns[0], "10.77.1.2", f"{SERVER4}:443")
    finally:
        removed = rules(net.client, backend, port, "local", "--remove", exempt_uid=0,
                        check=False)
    assert removed.returncode == 0 and "applied:" in removed.stdout, removed
    assert_no_rules(net.client, backend, port)
