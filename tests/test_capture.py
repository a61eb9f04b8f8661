"""`tlsinspector analyze CAPTURE`: real captures of real clients through the proxy give the
live log's records and diagnosis; mutated captures (dpkt) show what reassembly does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dpkt  # type: ignore[import-untyped]
import pytest

from tests.proxyproc import Proxy
from tests.test_tshark import Capture
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.peers import CLIENT_KINDS, run_client, start_server
from tlsinspector.proxy.scenario import keys_refusal, load_scenario

BIN = Path(sys.executable).parent / "tlsinspector"
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
KEYS = ("from", "index", "content_type", "version", "length", "messages", "alert",
        "encrypted", "unparsed")
# Scenarios whose faults work inside encryption need the peers' key logs, which
# this plain capture run does not have (tests/test_inside_live.py covers them).
# The cause scenarios of issue 15 run live with two clients each in
# tests/test_scenarios_e2e.py; their timeouts would cost 20 s each here with s_client.
ISSUE15 = {"delay-causes-timeout", "downgrade-stripped-versions", "drop-causes-timeout",
           "finished-mismatch", "no-shared-cipher", "plaintext-alert-injected",
           "proxy-reset-midstream", "ssl3-hello"}
SCENARIOS = sorted(p.stem for p in CONFIGS.glob("*.yaml")
                   if keys_refusal(load_scenario(p).faults) is None and p.stem not in ISSUE15
                   and load_scenario(p).intercept is None  # no faults: test_intercept.py
                   # STARTTLS scenarios need a mail server: test_starttls_stripped.py.
                   and not any(f.match.plaintext for f in load_scenario(p).faults))
Json = dict[str, Any]
SEQUENCE_FINDINGS = {"likely-encrypted-alert"}


def analyze(path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[Json]]:
    log = path.with_suffix(".an.jsonl")
    log.unlink(missing_ok=True)
    res = subprocess.run([str(BIN), "analyze", str(path), "--quiet", "--log", str(log), *args],
                         capture_output=True, text=True, timeout=120)
    evs = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    return res, evs


def records(evs: list[Json], side: str, conn: str | None = None) -> list[Json]:
    return [{k: e.get(k) for k in KEYS} for e in evs
            if e["event"] == "record" and e["from"] == side and conn in (None, e["conn"])]


def codes(evs: list[Json], conn: str | None = None) -> list[str]:
    return [d["code"] for e in evs if e["event"] == "close" and conn in (None, e["conn"])
            for d in e["diagnosis"]]


def leg(evs: list[Json], port: int) -> str:
    return next(e["conn"] for e in evs if e["event"] == "connect"
                and e["server"].endswith(f":{port}"))


def capture_run(tmp_path: Path, certs: Certs, scenario: str, client: str
                ) -> tuple[list[Json], Path, int, int]:
    live = tmp_path / "live.jsonl"
    with start_server("openssl", certs, log_dir=tmp_path) as srv, \
            Proxy(srv.addr, live, [CONFIGS / f"{scenario}.yaml"]) as proxy:
        cap = Capture(proxy.port, tmp_path / "cap.pcapng", srv.port)
        try:
            run_client(client, "127.0.0.1", proxy.port, certs, timeout=20)
            evs = proxy.wait_closes(1)
        finally:
            cap.stop()
        return evs, tmp_path / "cap.pcapng", proxy.port, srv.port


# The suite runs every scenario with OpenSSL and every other client once; `make
# capture-matrix` (TLSINSPECTOR_CAPTURE_MATRIX=1) runs every scenario with every client.
PAIRS = [(s, "openssl") for s in SCENARIOS] + [
    ("strip-supported-groups", "go"), ("record-version-3030", "curl"),
    ("alert-bad-record-mac", "gnutls"), ("truncated-server-flight", "python"),
    ("strip-sni", "wolfssl")]
if os.environ.get("TLSINSPECTOR_CAPTURE_MATRIX"):
    PAIRS = [(s, c) for s in SCENARIOS for c in CLIENT_KINDS]


@pytest.mark.parametrize("scenario,client", PAIRS)
def test_capture_of_both_legs_gives_the_live_records_and_diagnosis(
        tmp_path: Path, certs: Certs, scenario: str, client: str) -> None:
    live, cap, proxy_port, server_port = capture_run(tmp_path, certs, scenario, client)
    res, evs = analyze(cap)
    assert res.returncode == 0, res.stderr
    client_leg, server_leg = leg(evs, proxy_port), leg(evs, server_port)
    # Each side's records as they left that side: the client's on the client leg, the
    # server's on the server leg (a fault changes them on the way to the other leg).
    # The capture may hold more at the end: what a peer said after the proxy had
    # finished with the connection (a fault closed it; the proxy stopped reading).
    last_live = max(e["ts"] for e in live if e["event"] == "record")
    for side, conn in (("client", client_leg), ("server", server_leg)):
        theirs, ours = records(evs, side, conn), records(live, side)
        assert theirs[:len(ours)] == ours
        extra = [e for e in evs if e["event"] == "record" and e["conn"] == conn
                 and e["from"] == side][len(ours):]
        assert all(e["ts"] >= last_live for e in extra), extra
    # Every record event names the packets that carried it.
    assert all(e["source"]["packets"][0] >= 1 for e in evs if e["event"] == "record"
               and "unparsed" not in e and "source" in e)
    # The live diagnosis is found again on the legs, except findings that rest on
    # knowing the fault (what it changed inside encrypted records, or its outcome):
    # a capture holds only bytes.
    seen = set(codes(evs, client_leg)) | set(codes(evs, server_leg))
    close = next(e for e in live if e["event"] == "close")
    legs = {c: next(e["bytes"] for e in evs if e["event"] == "close" and e["conn"] == c)
            for c in (client_leg, server_leg)}
    # After a fault ended the connection the proxy stops forwarding: a side's later
    # records reach the proxy (and its live log) but not the other leg.
    withheld = (legs[client_leg]["server"] < legs[server_leg]["server"]
                or legs[server_leg]["client"] < legs[client_leg]["client"])
    for d in close["diagnosis"]:
        # A finding that reads both sides' records in their order (an alert-sized last
        # record after the peer started encrypting) rests, live, on records one leg
        # never carried once the proxy withheld them: each leg alone cannot show it.
        if withheld and d["code"] in SEQUENCE_FINDINGS:
            continue
        # An alert sent after the other side had closed is judged by the order of
        # that close and the alert across two legs, which a loaded machine may put
        # either way in a capture: its finding may be named either way.
        late = "sent after" in d["summary"]
        if late and {d["code"], d["code"].removeprefix("alert-")} & seen:
            continue
        if not (d["code"].startswith("fault") or any("fault" in x for x in d["evidence"])):
            assert d["code"] in seen, (d, seen)


def _rewrite(src: Path, dst: Path, change: Any) -> None:
    """Read src with dpkt, let ``change`` reorder/duplicate/drop, write dst (pcap)."""
    with open(src, "rb") as f:
        r = dpkt.pcap.UniversalReader(f)
        link, pkts = r.datalink(), list(r)
    with open(dst, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=link, snaplen=262144)
        for ts, buf in change(pkts, link):
            w.writepkt(buf, ts=ts)


def _tcp_data(pkts: list[tuple[float, bytes]], link: int, sport: int | None = None
              ) -> list[int]:
    from tlsinspector.proxy.tcpstream import decode_frame

    out = []
    for i, (ts, buf) in enumerate(pkts):
        s = decode_frame(link, buf, i + 1, ts)
        if s is not None and s.payload and sport in (None, s.sport):
            out.append(i)
    return out


@pytest.fixture(scope="module")
def bulk_capture(tmp_path_factory: pytest.TempPathFactory, certs: Certs
                 ) -> tuple[Path, list[Json], int]:
    """A no-fault connection that moves enough data for many segments each way."""
    tmp = tmp_path_factory.mktemp("bulk")
    live, cap, proxy_port, _ = capture_run(tmp, certs, "slow-middlebox", "openssl")
    res, evs = analyze(cap, "--port", str(proxy_port))
    assert res.returncode == 0, res.stderr
    return cap, evs, proxy_port


def _same(a: list[Json], b: list[Json]) -> None:
    for side in ("client", "server"):
        assert records(a, side) == records(b, side)
    assert codes(a) == codes(b)


def test_reordered_and_duplicated_segments_change_nothing(
        bulk_capture: tuple[Path, list[Json], int], tmp_path: Path) -> None:
    cap, base, port = bulk_capture

    def mangle(pkts: list[tuple[float, bytes]], link: int) -> list[tuple[float, bytes]]:
        data = _tcp_data(pkts, link)
        assert len(data) >= 6
        out = list(pkts)
        for i in data[1::3]:                       # swap neighbours: out of order
            j = data[data.index(i) + 1] if data.index(i) + 1 < len(data) else None
            if j is not None:
                out[i], out[j] = out[j], out[i]
        return [p for p in out for _ in (0, 1)]   # and every packet twice

    _rewrite(cap, tmp_path / "mangled.pcap", mangle)
    res, evs = analyze(tmp_path / "mangled.pcap", "--port", str(port))
    assert res.returncode == 0, res.stderr
    _same(evs, base)
    assert not [e for e in evs if e["event"] == "gap"]


def test_a_removed_segment_is_a_gap_not_a_splice(
        bulk_capture: tuple[Path, list[Json], int], tmp_path: Path) -> None:
    cap, base, port = bulk_capture
    dropped: list[int] = []

    def drop(pkts: list[tuple[float, bytes]], link: int) -> list[tuple[float, bytes]]:
        # The server's second data segment toward the client (its encrypted flight).
        victim = _tcp_data(pkts, link, sport=port)[1]
        dropped.append(victim + 1)
        return pkts[:victim] + pkts[victim + 1:]

    _rewrite(cap, tmp_path / "dropped.pcap", drop)
    res, evs = analyze(tmp_path / "dropped.pcap", "--port", str(port))
    assert res.returncode == 0, res.stderr
    (gap,) = [e for e in evs if e["event"] == "gap"]
    assert gap["from"] == "server" and gap["missing"] > 0
    # Numbers after the removal shift down by one: the hole lies between these two.
    assert gap["after_packet"] < dropped[0] <= gap["before_packet"]
    server = records(evs, "server")
    assert len(server) < len(records(base, "server"))
    assert server == records(base, "server")[:len(server)]   # nothing after the hole
    close = evs[-1]
    assert close["event"] == "close" and close["diagnosis"][-1]["code"] == "capture-gap"
    assert "partial-record" not in codes(evs)   # the capture lost it, not the peer



def test_a_capture_that_stops_after_the_client_hello_says_so(
        bulk_capture: tuple[Path, list[Json], int], tmp_path: Path) -> None:
    # A capture stopped (or cut) while the connection was still open has no FIN or
    # RST in it: neither side closed, so no finding may say one gave up
    # (no-server-hello: "the client gave up first") or cut a record; the close event
    # says the capture ended, as a proxy's stop does (by: proxy, with a reason).
    cap, base, port = bulk_capture

    def stop(pkts: list[tuple[float, bytes]], link: int) -> list[tuple[float, bytes]]:
        return pkts[:_tcp_data(pkts, link)[0] + 1]   # up to the ClientHello's segment

    _rewrite(cap, tmp_path / "stopped.pcap", stop)
    res, evs = analyze(tmp_path / "stopped.pcap", "--port", str(port))
    assert res.returncode == 0, res.stderr
    close = evs[-1]
    assert close["event"] == "close" and close["by"] == "proxy"
    assert "the capture ended with the connection still open" in close["reason"]
    assert codes(evs) == []
    assert records(evs, "client") == records(base, "client")[:1]
    assert records(evs, "server") == []


def _reencapsulate(pkts: list[tuple[float, bytes]], link: int, new: int
                   ) -> list[tuple[float, bytes]]:
    from tlsinspector.proxy.tcpstream import _ip_payload

    out = []
    for ts, buf in pkts:
        ip = bytes(_ip_payload(link, buf))
        if new == dpkt.pcap.DLT_LINUX_SLL:
            frame = bytes(dpkt.sll.SLL(type=0, ethtype=0x0800, data=ip))
        elif new == dpkt.pcap.DLT_EN10MB:   # IPv6 over Ethernet
            v4 = dpkt.ip.IP(ip)
            v6 = dpkt.ip6.IP6(src=b"\xfe\x80" + bytes(13) + v4.src[-1:],
                              dst=b"\xfe\x80" + bytes(13) + v4.dst[-1:],
                              nxt=6, hlim=64, data=v4.data, plen=len(bytes(v4.data)))
            frame = bytes(dpkt.ethernet.Ethernet(type=0x86DD, data=v6))
        elif new == dpkt.pcap.DLT_NULL:
            frame = (2).to_bytes(4, sys.byteorder) + ip
        else:
            frame = ip
        out.append((ts, frame))
    return out


@pytest.mark.parametrize("link", [dpkt.pcap.DLT_LINUX_SLL, dpkt.pcap.DLT_NULL,
                                  dpkt.pcap.DLT_RAW, dpkt.pcap.DLT_EN10MB])
def test_other_link_types_give_the_same(bulk_capture: tuple[Path, list[Json], int],
                                        tmp_path: Path, link: int) -> None:
    cap, base, port = bulk_capture
    with open(cap, "rb") as f:
        r = dpkt.pcap.UniversalReader(f)
        src, pkts = r.datalink(), list(r)
    out = tmp_path / "relinked.pcap"
    with open(out, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=link, snaplen=262144)
        for ts, buf in _reencapsulate(pkts, src, link):
            w.writepkt(buf, ts=ts)
    res, evs = analyze(out, "--port", str(port))
    assert res.returncode == 0, res.stderr
    _same(evs, base)
    if link == dpkt.pcap.DLT_EN10MB:
        assert evs[0]["client"].startswith("[fe80::")


def test_filters(bulk_capture: tuple[Path, list[Json], int], tmp_path: Path) -> None:
    cap, base, port = bulk_capture
    _, evs = analyze(cap, "--sni", "local*")
    conns = {e["conn"] for e in evs if e["event"] == "close"}
    assert len(conns) == 2   # both legs carry the hello with server_name localhost
    _, evs = analyze(cap, "--sni", "example.*")
    assert not [e for e in evs if e["event"] == "record"]
    conn = base[0]["conn"]
    _, evs = analyze(cap, "--conn", conn)
    assert {e["conn"] for e in evs} == {conn}


# -- bad input ---------------------------------------------------------------------------


def _bad(path: Path, message: str) -> None:
    res = subprocess.run([str(BIN), "analyze", str(path)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2, res.stdout
    assert message in res.stderr and "Traceback" not in res.stderr


def test_truncated_capture(bulk_capture: tuple[Path, list[Json], int], tmp_path: Path) -> None:
    cap, _, _ = bulk_capture
    data = cap.read_bytes()
    (tmp_path / "cut.pcapng").write_bytes(data[: len(data) * 2 // 3 + 3])
    _bad(tmp_path / "cut.pcapng", "truncated")


def test_truncated_classic_pcap(bulk_capture: tuple[Path, list[Json], int],
                                tmp_path: Path) -> None:
    cap, _, _ = bulk_capture
    _rewrite(cap, tmp_path / "whole.pcap", lambda p, link: p)
    data = (tmp_path / "whole.pcap").read_bytes()
    (tmp_path / "cut.pcap").write_bytes(data[: len(data) // 2 + 7])
    _bad(tmp_path / "cut.pcap", "truncated")


def test_not_a_capture(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("16 03 03 00 4f\n")
    _bad(tmp_path / "notes.txt", "is not a pcap or pcapng capture")
    _bad(tmp_path / "notes.txt", "it starts with text: for a hex dump use --hex FILE")
    (tmp_path / "binary").write_bytes(bytes(range(200, 256)))
    _bad(tmp_path / "binary", "(unknown magic number c8c9cacb)\n")  # no --hex hint
    (tmp_path / "empty").write_bytes(b"")
    _bad(tmp_path / "empty", "is not a pcap or pcapng capture")
    _bad(tmp_path / "missing.pcap", "cannot read")


def test_capture_without_tcp(tmp_path: Path) -> None:
    udp = dpkt.ip.IP(src=bytes([127, 0, 0, 1]), dst=bytes([127, 0, 0, 1]), p=17,
                     data=dpkt.udp.UDP(sport=5353, dport=5353, data=b"hello"))
    with open(tmp_path / "udp.pcap", "wb") as f:
        dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_RAW).writepkt(bytes(udp), ts=1.0)
    _bad(tmp_path / "udp.pcap", "no TCP segments in the capture (1 packet)")


def test_replay_the_client_hello_of_a_captured_connection(
        bulk_capture: tuple[Path, list[Json], int], certs: Certs, tmp_path: Path) -> None:
    cap, base, _ = bulk_capture
    hello = next(m for e in base if e["event"] == "record" and e["from"] == "client"
                 for m in e.get("messages", ()) if m["type"] == "client_hello")
    log = tmp_path / "replay.jsonl"
    with start_server("go", certs, tls="1.3", log_dir=tmp_path) as srv:
        res = subprocess.run([str(BIN), "replay", str(cap), "--conn", base[0]["conn"],
                              "--server", srv.addr, "--log", str(log), "--quiet"],
                             capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    evs = [json.loads(x) for x in log.read_text().splitlines()]
    sent = next(m for e in evs if e["event"] == "record" and e["from"] == "client"
                for m in e.get("messages", ()) if m["type"] == "client_hello")
    assert sent["random"] == hello["random"]   # byte for byte, the captured hello
    assert any(m["type"] == "server_hello" for e in evs if e["event"] == "record"
               for m in e.get("messages", ()))


def test_renegotiation_scsv_needs_keys_and_gets_them_from_keylog(
        tmp_path: Path, certs: Certs) -> None:
    """The one shipped scenario whose fault works inside encryption: with the client's
    key log, `analyze --keylog` decrypts both legs like the live engine did and finds
    the renegotiation-scsv diagnosis from the server leg's bytes alone."""
    from tests.test_analyze_keys import _views
    from tlsinspector.lab.peers import client_command, run_command

    live_log, keys = tmp_path / "live.jsonl", tmp_path / "keys.log"
    keys.touch()
    with start_server("openssl", certs, tls="1.2", renegotiation=True,
                      log_dir=tmp_path) as srv, \
            Proxy(srv.addr, live_log, [CONFIGS / "renegotiation-scsv.yaml"],
                  keylog=[keys], extra=["--key-wait-ms", "60000"]) as proxy:
        # (--key-wait-ms: the live view must not give up on keys a loaded client writes
        # more than 2 s late; the capture's view, compared with it, never gives up.)
        cap = Capture(proxy.port, tmp_path / "cap.pcapng", srv.port)
        try:
            cmd, stdin = client_command("openssl", "127.0.0.1", proxy.port, certs, "1.2",
                                        keylog=keys, renegotiate=True)
            run_command("openssl", cmd, stdin, 20)
            live = proxy.wait_closes(1)
        finally:
            cap.stop()
    res, evs = analyze(tmp_path / "cap.pcapng", "--keylog", str(keys))
    assert res.returncode == 0, res.stderr
    client_leg, server_leg = leg(evs, proxy.port), leg(evs, srv.port)
    want = _views(live, "1")
    for side, conn in (("client", client_leg), ("server", server_leg)):
        assert records(evs, side, conn)[:len(records(live, side))] == records(live, side)
        got = {k: v for k, v in _views(evs, conn).items() if k[0] == side}
        assert got == {k: v for k, v in want.items() if k[0] == side}
    # The renegotiation hello as the server got it: decrypted from the capture.
    hello = [m for v in _views(evs, server_leg).values() if v["from"] == "client"
             for m in v.get("messages", ()) if m["type"] == "client_hello"]
    assert hello and "TLS_EMPTY_RENEGOTIATION_INFO_SCSV" in hello[0]["cipher_suites"]
    assert "renegotiation-scsv" in codes(evs, server_leg)
    assert "renegotiation-scsv" in codes(live)


def test_capture_of_an_unsupported_link_type(tmp_path: Path) -> None:
    with open(tmp_path / "usb.pcap", "wb") as f:
        dpkt.pcap.Writer(f, linktype=189).writepkt(b"\x00" * 64, ts=1.0)   # USB Linux
    _bad(tmp_path / "usb.pcap", "link type 189 is not supported")


@pytest.mark.timeout(240)
def test_a_bulk_capture_gives_the_live_close_counts(tmp_path: Path, certs: Certs) -> None:
    """A 16 MiB download through the live proxy (on its hot path), captured by dumpcap:
    on each leg `analyze` counts the records and bytes the live close event counts,
    with --log (record sources kept) and with --quiet alone (no per-packet sources,
    the reassembler's leanest lane), and finds the live diagnosis again."""
    import io

    from tests.test_hotpath import download
    from tests.test_reliability import Firehose
    from tlsinspector import offline

    blocks = 256   # 16 MiB
    server = Firehose(certs.server_cert, certs.server_key)
    server.start()
    cap = tmp_path / "bulk.pcapng"
    try:
        with Proxy(f"127.0.0.1:{server.port}", tmp_path / "live.jsonl") as proxy:
            dump = Capture(proxy.port, cap, server.port, buffer_mb=256)
            try:
                assert download(proxy.port, certs, blocks) == (
                    blocks << 16, Firehose.digest(blocks << 16))
                live = proxy.wait_closes(1)
            finally:
                dump.stop()
    finally:
        server.close()
    [close] = [e for e in live if e["event"] == "close"]
    assert close["records"]["server"] > blocks   # the bulk, record by record
    res, evs = analyze(cap)
    assert res.returncode == 0, res.stderr
    logged = [e for e in evs if e["event"] == "close"]
    quiet = offline.analyze_capture(str(cap), offline.Sink(None, True, out=io.StringIO()),
                                    offline.Filters())
    assert quiet == logged   # the two lanes: the same close events, diagnosis and all
    assert len(logged) == 2  # the client leg and the server leg
    for c in logged:
        assert (c["records"], c["bytes"]) == (close["records"], close["bytes"])
    assert {d["code"] for d in close["diagnosis"]} <= set(codes(evs))


def test_pcapng_and_its_classic_pcap_give_the_same_analysis(
        bulk_capture: tuple[Path, list[Json], int], tmp_path: Path) -> None:
    """dumpcap's pcapng (read by Enhanced Packet Block runs) and the same packets as a
    classic pcap (nanoseconds, as dumpcap wrote them), converted by Wireshark's editcap
    (read by pcap record runs), give
    the same analysis: every logged event, and the --quiet terminal output."""
    cap, base, port = bulk_capture
    pcap = tmp_path / "same.pcap"
    subprocess.run(["editcap", "-F", "nsecpcap", str(cap), str(pcap)], check=True, timeout=60,
                   capture_output=True)
    assert pcap.read_bytes()[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    res, evs = analyze(pcap, "--port", str(port))
    assert res.returncode == 0, res.stderr
    assert [e for e in evs if e["event"] == "record"]
    assert evs == base
    quiet = [subprocess.run([str(BIN), "analyze", str(p), "--quiet", "--port", str(port)],
                            capture_output=True, text=True, timeout=120) for p in (cap, pcap)]
    assert quiet[0].returncode == quiet[1].returncode == 0
    assert quiet[0].stdout.replace(str(cap), "CAP") == quiet[1].stdout.replace(str(pcap), "CAP")
