"""proxy/capfile.py: pcap and pcapng framing, checked against Wireshark's own tools
(mergecap writes a pcapng with one interface per input link type, editcap converts
formats and injects secrets, tshark reads every packet's time and length)."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import dpkt  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsinspector.proxy import capfile
from tlsinspector.proxy.capfile import CaptureError, CaptureParser, Secrets

KEYS = b"CLIENT_RANDOM " + b"ab" * 32 + b" " + b"cd" * 48 + b"\n"


def parse(data: bytes, step: int | None = None) -> list[tuple[float, int, bytes] | Secrets]:
    p, out = CaptureParser(), []
    for i in range(0, len(data), step or max(1, len(data))):
        for item in p.feed(data[i:i + (step or len(data))]):
            out.append(item if isinstance(item, Secrets) else
                       (item[0], item[1], item[2][item[3]:item[4]]))
    p.end()
    return out


def tshark_frames(path: Path) -> list[tuple[float, int]]:
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e",
                          "frame.time_epoch", "-e", "frame.cap_len"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [(float(a), int(b)) for a, b in (x.split("\t") for x in out.splitlines())]


def _ip(n: int) -> bytes:
    tcp = dpkt.tcp.TCP(sport=40000 + n, dport=443, seq=n, flags=dpkt.tcp.TH_ACK,
                       data=bytes([n]) * (n * 7))
    ip = dpkt.ip.IP(src=b"\x0a\x00\x00\x01", dst=b"\x0a\x00\x00\x02", p=6, data=tcp)
    ip.len = len(ip)
    return bytes(ip)


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bytes]]:
    """A pcapng with two interfaces (Ethernet; raw IP in nanoseconds) and a DSB."""
    tmp = tmp_path_factory.mktemp("capfile")
    frames = []
    with open(tmp / "eth.pcap", "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_EN10MB)
        for n in range(1, 6):
            frames.append(bytes(dpkt.ethernet.Ethernet(data=_ip(n))))
            w.writepkt(frames[-1], ts=1_700_000_000 + n * 2)
    with open(tmp / "raw.pcap", "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_RAW, nano=True)
        for n in range(6, 10):
            frames.append(_ip(n))
            w.writepkt(frames[-1], ts=1_700_000_000 + n * 2 + 0.123456789)
    subprocess.run(["mergecap", "-F", "pcapng", "-w", str(tmp / "m.pcapng"),
                    str(tmp / "eth.pcap"), str(tmp / "raw.pcap")], check=True, timeout=60)
    (tmp / "keys.log").write_bytes(KEYS)
    subprocess.run(["editcap", "--inject-secrets", f"tls,{tmp / 'keys.log'}",
                    str(tmp / "m.pcapng"), str(tmp / "mk.pcapng")], check=True, timeout=60)
    return tmp / "mk.pcapng", frames


def test_pcapng_with_two_link_types_and_secrets_reads_as_tshark_does(
        merged: tuple[Path, list[bytes]]) -> None:
    path, frames = merged
    items = parse(path.read_bytes())
    secrets = [i for i in items if isinstance(i, Secrets)]
    packets = [i for i in items if not isinstance(i, Secrets)]
    assert [s.data for s in secrets] == [KEYS] and secrets[0].after_packet == 0
    # Each packet keeps its own interface's link type (dpkt's reader gives all the first).
    assert [p[1] for p in packets] == [1] * 5 + [101] * 4
    assert [p[2] for p in packets] == frames
    theirs = tshark_frames(path)
    assert [len(p[2]) for p in packets] == [n for _, n in theirs]
    for p, (ts, _) in zip(packets, theirs, strict=True):
        assert abs(p[0] - ts) < 1e-6   # the nanosecond interface too


@pytest.mark.parametrize("bridge", [16, 50, capfile.BRIDGE])
def test_any_chunking_gives_the_same(merged: tuple[Path, list[bytes]], bridge: int,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole, byte at a time, and in chunks larger than the bridge that finishes a
    packet cut by a chunk's end (with packets shorter and longer than the bridge)."""
    monkeypatch.setattr(capfile, "BRIDGE", bridge)
    data = merged[0].read_bytes()
    whole = parse(data)
    for step in (1, 7, 97, 200, 333):
        assert parse(data, step) == whole, step
    classic = (merged[0].parent / "eth.pcap").read_bytes()
    for step in (1, 61, 150):
        assert parse(classic, step) == parse(classic), step


@pytest.mark.parametrize("fmt", ["pcap", "nsecpcap"])
def test_classic_pcap_both_resolutions(merged: tuple[Path, list[bytes]], tmp_path: Path,
                                       fmt: str) -> None:
    path, frames = merged
    eth = path.parent / "eth.pcap"
    out = tmp_path / f"x.{fmt}"
    subprocess.run(["editcap", "-F", fmt, str(eth), str(out)], check=True, timeout=60)
    packets = parse(out.read_bytes())
    assert [p[2] for p in packets] == frames[:5]   # type: ignore[index]
    for p, (ts, _) in zip(packets, tshark_frames(out), strict=True):
        assert abs(p[0] - ts) < 1e-6               # type: ignore[index]


def test_big_endian_pcap() -> None:
    frame = _ip(3)
    data = (struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)
            + struct.pack(">IIII", 1_700_000_000, 250_000, len(frame), len(frame)) + frame)
    assert parse(data) == [(1_700_000_000.25, 101, frame)]


def test_every_cut_inside_a_block_is_reported(merged: tuple[Path, list[bytes]]) -> None:
    data = merged[0].read_bytes()
    ends, at = set(), 0
    while at < len(data):   # the block boundaries: a cut there is a shorter, whole file
        at += struct.unpack_from("<I", data, at + 4)[0]
        ends.add(at)
    for cut in range(4, len(data)):   # (under 4 bytes: "too short", below)
        if cut in ends:
            parse(data[:cut])
        else:
            with pytest.raises(CaptureError, match="truncated at byte"):
                parse(data[:cut])


@pytest.mark.parametrize("data,message", [
    (b"GET / HTTP/1.1\r\n", "not a pcap or pcapng capture"),
    (b"\xd4\xc3", "too short"),
    (b"", "too short"),
    (b"\x0a\x0d\x0d\x0a\x08\x00\x00\x00\x4d\x3c\x2b\x1a", "has length 8"),
    (b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\x00\x00\x00\x00" + bytes(16), "byte-order magic"),
])
def test_damage_is_a_capture_error(data: bytes, message: str) -> None:
    with pytest.raises(CaptureError, match=message):
        parse(data)


def test_a_packet_on_an_undeclared_interface(merged: tuple[Path, list[bytes]]) -> None:
    data = bytearray(merged[0].read_bytes())
    at = 0
    while struct.unpack_from("<I", data, at)[0] != 6:   # the first packet block
        at += struct.unpack_from("<I", data, at + 4)[0]
    data[at + 8] = 5
    with pytest.raises(CaptureError, match="interface 5"):
        parse(bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([b"", b"\x0a\x0d\x0d\x0a",
                                                 b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00"]))
def test_any_bytes_give_packets_or_a_capture_error(tail: bytes, head: bytes) -> None:
    try:
        parse(head + tail)
    except CaptureError:
        pass
