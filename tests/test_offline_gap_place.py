"""The capture-gap finding's evidence names the packets around the gap in words,
also when one of them is unknown (never Python's None); a server stream the capture
lost bytes of is not diagnosed as a server that never answered."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import dpkt
import pytest

from tests.test_analyze_summary import BIN, LO, _client_hello_without_sni, _pcap
from tlsinspector.offline import _gap_place


def test_a_gap_at_the_stream_start_is_before_a_packet() -> None:
    assert _gap_place(None, 8) == "before packet 8"


def test_a_gap_at_the_stream_end_is_after_a_packet() -> None:
    assert _gap_place(12, None) == "after packet 12"


def test_a_gap_between_two_packets() -> None:
    assert _gap_place(5, 8) == "between packets 5 and 8"


def test_no_packet_known() -> None:
    assert "None" not in _gap_place(None, None)


def test_a_server_flight_lost_from_the_capture_is_no_no_server_hello(tmp_path: Path) -> None:
    cap = tmp_path / "gap.pcap"
    # The server's first 100 bytes are not in the capture: its segment starts after them.
    _pcap(cap, b"", [("client", _client_hello_without_sni()), ("server-gap", b"\x17" * 50)])
    log = tmp_path / "gap.jsonl"
    res = subprocess.run([str(BIN), "analyze", str(cap), "--quiet", "--log", str(log)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    [close] = [e for e in map(json.loads, log.read_text().splitlines())
               if e["event"] == "close"]
    codes = [d["code"] for d in close["diagnosis"]]
    assert codes == ["capture-gap"], codes
    assert "(before packet 5)" in close["diagnosis"][0]["evidence"][0]


def _gap_pcap(path: Path, gap_side: str, first_fin: str) -> None:
    """A ClientHello, a server record, then ``gap_side``'s next record after 100 bytes
    the capture lost; both FINs, ``first_fin``'s first."""
    seq = {40000: 1000, 443: 5000}

    def seg(sport: int, flags: int, data: bytes = b"") -> bytes:
        dport = 443 if sport == 40000 else 40000
        tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq[sport],
                           ack=seq[dport] if flags != dpkt.tcp.TH_SYN else 0,
                           flags=flags, data=data)
        seq[sport] += len(data) + (1 if flags & (dpkt.tcp.TH_SYN | dpkt.tcp.TH_FIN) else 0)
        ip = dpkt.ip.IP(src=LO, dst=LO, p=6, data=tcp)
        ip.len = len(bytes(ip))
        return bytes(ip)

    A, S, F, P = dpkt.tcp.TH_ACK, dpkt.tcp.TH_SYN, dpkt.tcp.TH_FIN, dpkt.tcp.TH_PUSH
    port = {"client": 40000, "server": 443}
    pkts = [seg(40000, S), seg(443, S | A), seg(40000, A),
            seg(40000, P | A, _client_hello_without_sni()),
            seg(443, P | A, bytes.fromhex("160303000a") + b"\x02" * 10)]
    seq[port[gap_side]] += 100
    pkts.append(seg(port[gap_side], P | A, bytes.fromhex("1703030005") + b"hello"))
    second = "server" if first_fin == "client" else "client"
    pkts += [seg(port[first_fin], F | A), seg(port[second], F | A), seg(40000, A)]
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_RAW)
        for i, p in enumerate(pkts):
            w.writepkt(p, ts=1.0 + i / 1000)


@pytest.mark.parametrize("gap_side", ["client", "server"])
@pytest.mark.parametrize("first_fin", ["client", "server"])
def test_who_closed_first_is_read_from_the_fins_also_for_a_side_with_a_gap(
        tmp_path: Path, gap_side: str, first_fin: str) -> None:
    """A side whose stream lost bytes gets no end of stream in the engine (a partial
    record would be blamed on it), but its FIN is in the capture: the close names
    the side that sent the first FIN (it named the other side, whatever the order)."""
    cap = tmp_path / "gap.pcap"
    _gap_pcap(cap, gap_side, first_fin)
    log = tmp_path / "gap.jsonl"
    res = subprocess.run([str(BIN), "analyze", str(cap), "--quiet", "--log", str(log)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    [close] = [e for e in map(json.loads, log.read_text().splitlines())
               if e["event"] == "close"]
    assert close["by"] == first_fin, close
    assert "capture-gap" in [d["code"] for d in close["diagnosis"]]
