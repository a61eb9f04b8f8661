"""`run --pcap`: both legs as pcapng, checked with tshark against a dumpcap capture of
the same run; fault comments; a SIGKILLed proxy's file; size bound; headers only; keys."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from mitmproxy.test import taddons

from tests.proxyproc import Proxy
from tests.test_tshark import Capture
from tlsinspector.addons.pcap import PcapRecorder
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.peers import run_client, start_server
from tlsinspector.proxy.records import Record, RecordFramer

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def tshark(*args: str) -> str:
    res = subprocess.run(["tshark", *args], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def follow(path: Path, a: int, b: int) -> tuple[bytes, bytes]:
    """The reassembled payload of the TCP connection between ports a and b, per
    direction: (from the first sender, from the other)."""
    out = tshark("-r", str(path), "-q", "-z", f"follow,tcp,raw,127.0.0.1:{a},127.0.0.1:{b}")
    first, second = bytearray(), bytearray()
    body = out.split("Node 1:", 1)[1].split("\n", 1)[1]
    for line in body.splitlines():
        if line.startswith("==="):
            break
        if line.startswith("\t"):
            second += bytes.fromhex(line.strip())
        elif line.strip():
            first += bytes.fromhex(line.strip())
    return bytes(first), bytes(second)


def legs(path: Path) -> list[tuple[int, int]]:
    """(client port, server port) of each TCP connection, as the SYN shows it."""
    out = tshark("-r", str(path), "-Y", "tcp.flags.syn == 1 && tcp.flags.ack == 0",
                 "-T", "fields", "-e", "tcp.srcport", "-e", "tcp.dstport")
    return [(int(a), int(b)) for a, b in (x.split("\t") for x in out.splitlines())]


def run_with_pcap(tmp_path: Path, certs: Certs, scenario: str | None, *extra: str,
                  keylog: Path | None = None) -> tuple[Path, Path, int, int]:
    ours, real = tmp_path / "both.pcapng", tmp_path / "real.pcapng"
    scen = [CONFIGS / f"{scenario}.yaml"] if scenario else []
    with start_server("openssl", certs, log_dir=tmp_path) as srv, \
            Proxy(srv.addr, tmp_path / "live.jsonl", scen,
                  extra=["--pcap", str(ours), *extra]) as proxy:
        cap = Capture(proxy.port, real, srv.port)
        try:
            run_client("openssl", "127.0.0.1", proxy.port, certs, timeout=20, keylog=keylog)
            proxy.wait_closes(1)
        finally:
            cap.stop()
        return ours, real, proxy.port, srv.port


@pytest.mark.parametrize("scenario", [None, "record-version-3030", "fallback-scsv",
                                      "handshake-fragmented"])
def test_each_leg_carries_the_bytes_that_leg_really_carried(
        tmp_path: Path, certs: Certs, scenario: str | None) -> None:
    ours, real, proxy_port, server_port = run_with_pcap(tmp_path, certs, scenario)
    for (c, s), want in zip(sorted(legs(ours), key=lambda p: p[1] != proxy_port),
                            (proxy_port, server_port), strict=True):
        assert s == want   # the client leg first (to the proxy), then the server leg
        (rc, rs), = [p for p in legs(real) if p[1] == want]
        got = follow(ours, c, s)
        assert got == follow(real, rc, rs)
        assert got[0] and got[1]
    ifaces = tshark("-r", str(ours), "-T", "fields", "-e", "frame.interface_name").split()
    assert set(ifaces) == {"client-leg", "server-leg"}


def test_a_fault_shows_as_a_comment_on_the_leg_where_it_happened(
        tmp_path: Path, certs: Certs) -> None:
    ours, _, proxy_port, server_port = run_with_pcap(tmp_path, certs, "record-version-3030")
    rows = [x.split("\t") for x in tshark(
        "-r", str(ours), "-Y", "frame.comment", "-T", "fields", "-e", "frame.interface_name",
        "-e", "tcp.srcport", "-e", "frame.comment").splitlines()]
    changed = [r for r in rows if r[2].startswith("tlsinspector fault")]
    original = [r for r in rows if r[2].startswith("tlsinspector: original")]
    assert changed and original
    assert changed[0][:2] == ["client-leg", str(proxy_port)]     # proxy -> client
    assert "record-version-3030: set-record-version 0x0303 -> 0x3030" in changed[0][2]
    assert original[0][:2] == ["server-leg", str(server_port)]   # server -> proxy
    # and `analyze` of this very file sees the changed record on the client leg only
    import json
    import sys

    log = tmp_path / "an.jsonl"
    subprocess.run([str(Path(sys.executable).parent / "tlsinspector"), "analyze", str(ours),
                    "--quiet", "--log", str(log)], check=True, timeout=60,
                   capture_output=True)
    evs = [json.loads(x) for x in log.read_text().splitlines()]
    legs_ = {e["conn"]: e["server"] for e in evs if e["event"] == "connect"}
    bad = {legs_[e["conn"]] for e in evs if e.get("version") == "0x3030"}
    assert bad == {f"127.0.0.1:{proxy_port}"}
    # `replay` takes its ClientHello from such a file (a JSON Lines log has no bytes).
    from tlsinspector.offline import capture_client_bytes, client_hello_bytes
    from tlsinspector.proxy.hexdump import Block

    sent = capture_client_bytes(str(ours), 1)
    hello = client_hello_bytes([Block("client", sent, 0, 0, "")])
    assert hello[0] == 0x16 and hello[5] == 1 and sent.startswith(hello)


def test_a_sigkilled_proxy_leaves_a_capture_tshark_reads(tmp_path: Path,
                                                         certs: Certs) -> None:
    ours = tmp_path / "both.pcapng"
    with start_server("openssl", certs, log_dir=tmp_path) as srv, \
            Proxy(srv.addr, tmp_path / "live.jsonl", extra=["--pcap", str(ours)]) as proxy:
        run_client("openssl", "127.0.0.1", proxy.port, certs, timeout=20)
        proxy.wait_closes(1)
        # A second connection is open (its hello through) when the proxy dies.
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        from tests.test_hello import WOLFSSL_REPORT_003

        s.sendall(WOLFSSL_REPORT_003)
        s.recv(7)
        os.kill(proxy.proc.pid, signal.SIGKILL)
        proxy.proc.wait(timeout=10)
        s.close()
    out = tshark("-r", str(ours), "-T", "fields", "-e", "frame.number")
    assert len(out.split()) >= 10
    assert len(legs(ours)) == 4


def test_size_bound_stops_writing_with_a_warning(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rec = PcapRecorder()
    path = tmp_path / "bounded.pcapng"
    with taddons.context(rec) as tctx:
        tctx.configure(rec, tlsinspector_pcap=str(path), tlsinspector_pcap_max_mb=1)
        from tlsinspector.proxy import pcapng

        w = pcapng.CaptureWriter(("127.0.0.1", 1000), ("127.0.0.1", 2000), 1)
        for i in range(40):
            rec.write(w.data("client", False, bytes([i]) * 60000, 1.0 + i))
        assert rec.stopped
        rec.done()
    assert "reached --pcap-max-mb (1 MB)" in capsys.readouterr().err
    assert 900_000 < path.stat().st_size <= 1_000_000
    assert len(tshark("-r", str(path), "-T", "fields", "-e", "frame.number").split()) > 10


def test_headers_only_zeroes_application_data(tmp_path: Path, certs: Certs) -> None:
    ours, real, proxy_port, _ = run_with_pcap(tmp_path, certs, None, "--pcap-headers-only")
    (c, s), = [p for p in legs(ours) if p[1] == proxy_port]
    (rc, rs), = [p for p in legs(real) if p[1] == proxy_port]
    for got, want in zip(follow(ours, c, s), follow(real, rc, rs), strict=True):
        assert len(got) == len(want)
        g = [r for r in RecordFramer().feed(got) if isinstance(r, Record)]
        w = [r for r in RecordFramer().feed(want) if isinstance(r, Record)]
        assert [(r.content_type, r.length) for r in g] == [(r.content_type, r.length) for r in w]
        for a, b in zip(g, w, strict=True):
            assert a.payload == (bytes(len(b.payload)) if b.content_type == 23 else b.payload)
        assert any(r.content_type == 23 and any(r.payload) for r in w)


def test_keys_embedded_only_when_asked_and_tshark_decrypts(tmp_path: Path,
                                                           certs: Certs) -> None:
    keylog = tmp_path / "keys.log"
    keylog.touch()
    plain, _, _, _ = run_with_pcap(tmp_path, certs, None)
    assert b"CLIENT_HANDSHAKE_TRAFFIC_SECRET" not in plain.read_bytes()
    (tmp_path / "real.pcapng").unlink()
    ours, _, proxy_port, _ = run_with_pcap(tmp_path, certs, None, "--pcap-keys", str(keylog),
                                           keylog=keylog)
    assert b"CLIENT_HANDSHAKE_TRAFFIC_SECRET" in ours.read_bytes()
    # No -o tls.keylog_file: the secrets come from the file's own DSB, written before
    # the packets they decrypt (the proxy holds a connection's packets until then).
    out = tshark("-r", str(ours), "-d", f"tcp.port=={proxy_port},tls", "-Y",
                 "tls.handshake.type == 11", "-T", "fields", "-e", "frame.interface_name")
    assert set(out.split()) == {"client-leg", "server-leg"}


@pytest.mark.parametrize("args,message", [
    (["--pcap", "/nonexistent/dir/x.pcapng"], "cannot write the pcapng"),
    (["--pcap-keys", "k.log"], "need --pcap FILE"),
    (["--pcap", "x.pcapng", "--pcap-keys", "/nonexistent.log"], "no such key log file"),
    (["--pcap", "x.pcapng", "--pcap-keys"], "only with --intercept"),
])
def test_bad_pcap_options_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    import sys

    res = subprocess.run([str(Path(sys.executable).parent / "tlsinspector"), "run",
                          "--upstream", "127.0.0.1:1", *args], capture_output=True,
                         text=True, timeout=30, cwd=tmp_path)
    assert res.returncode == 2 and message in res.stderr
    assert "Traceback" not in res.stderr


def test_reproduce_out_writes_both_legs(tmp_path: Path, certs: Certs) -> None:
    from tlsinspector.lab.reproduce import reproduce

    (v,) = reproduce(CONFIGS / "record-version-3030.yaml", ["openssl"], None, None,
                     tmp_path / "out", certs=certs)
    pcap = tmp_path / "out" / "both-legs.pcapng"
    assert v.out_dir == tmp_path / "out" and pcap.exists()
    assert len(legs(pcap)) == 2
    assert "record-version-3030" in tshark("-r", str(pcap), "-Y", "frame.comment", "-T",
                                           "fields", "-e", "frame.comment")


def _intercept_run(tmp_path: Path, certs: Certs, *extra: str) -> tuple[Path, Path, int, int]:
    """A TLS 1.3 curl download through `run --intercept --pcap`, and a dumpcap capture
    of the same run."""
    from dataclasses import replace

    from tlsinspector.addons.runner import ca_files
    from tlsinspector.lab.inspector import InspectorProcess
    from tlsinspector.lab.peers import client_command, run_command

    ours, real = tmp_path / "both.pcapng", tmp_path / "real.pcapng"
    ca_pem, ca_dir = ca_files(str(tmp_path / "ca"))
    with start_server("openssl", certs, tls="any", log_dir=tmp_path) as srv, \
            InspectorProcess(srv.addr, tmp_path / "live.jsonl", extra=[
                "--intercept", "--ca", str(ca_dir), "--upstream-ca", str(certs.ca_cert),
                "--pcap", str(ours), *extra]) as proxy:
        cap = Capture(proxy.port, real, srv.port)
        try:
            res = run_command("curl", *client_command(
                "curl", "127.0.0.1", proxy.port, replace(certs, ca_cert=ca_pem), tls="1.3"),
                timeout=20)
            proxy.wait_closes(1)
        finally:
            cap.stop()
    assert res.ok, res.output[-300:]
    return ours, real, proxy.port, srv.port


def test_intercept_writes_each_leg_as_it_was_carried_and_its_own_keys_only_when_asked(
        tmp_path: Path, certs: Certs) -> None:
    """--intercept terminates both legs: each leg is its own TLS connection. Per leg,
    tshark's reassembled TCP payload of our file equals dumpcap's of the same run
    (the client's ClientHello on one leg, the inspector's on the other, and so on);
    no secrets unless asked; with --pcap-keys (no file) the inspector's own secrets
    of both legs are embedded and tshark decrypts both legs with no option."""
    from concurrent.futures import ThreadPoolExecutor

    plain_dir, keys_dir = tmp_path / "plain", tmp_path / "keys"
    plain_dir.mkdir()
    keys_dir.mkdir()
    with ThreadPoolExecutor(2) as pool:   # the two runs side by side
        keyed = pool.submit(_intercept_run, keys_dir, certs, "--pcap-keys")
        ours, real, proxy_port, server_port = _intercept_run(plain_dir, certs)
        keys_run = keyed.result()
    pairs = sorted(legs(ours), key=lambda p: p[1] != proxy_port)
    assert [s for _, s in pairs] == [proxy_port, server_port]
    hellos = []
    for c, s in pairs:
        (rc, rs), = [p for p in legs(real) if p[1] == s]
        got = follow(ours, c, s)
        assert got == follow(real, rc, rs)
        assert got[0][:1] == b"\x16" and got[1][:1] == b"\x16" and len(got[1]) > 1000
        hellos.append(got[0][11:43])   # the ClientHello's random
    assert hellos[0] != hellos[1]      # two TLS connections, not one relayed
    assert b"TRAFFIC_SECRET" not in ours.read_bytes()

    ours, _, proxy_port, _ = keys_run
    data = ours.read_bytes()
    assert data.count(b"CLIENT_HANDSHAKE_TRAFFIC_SECRET") == 2   # one per leg
    out = tshark("-r", str(ours), "-d", f"tcp.port=={proxy_port},tls", "-Y",
                 "tls.handshake.type == 11", "-T", "fields", "-e", "frame.interface_name")
    assert set(out.split()) == {"client-leg", "server-leg"}
