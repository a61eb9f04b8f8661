"""proxy/scan.py: the capture run's loop, compiled by mypyc and as pure Python.

setup.py compiles proxy/scan.py into the extension ``tlsinspector.proxy.scan``; the
same file, interpreted, is the fallback. Both must give the same analysis to the
byte: here the compiled module (as imported) and the source file loaded by path
read the same captures (reordered, duplicated and dropped segments, IPv4 with TCP
timestamp options, IPv6, VLAN tags, pcap in either byte order and timestamp unit,
pcapng with several interfaces), and the stream events, the JSONL log and the
terminal output are compared.
"""

from __future__ import annotations

import importlib.util
import io
import os
import random
import struct
from pathlib import Path
from types import ModuleType

import dpkt  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_tcpstream import _pcapng
from tlsinspector import offline
from tlsinspector.proxy import capfile, scan, tcpstream
from tlsinspector.proxy.tcpstream import ACK, FIN, PSH, SYN, Segment

ROOT = Path(__file__).resolve().parent.parent
HELLO = (ROOT / "tests" / "fixtures" / "hellos" / "openssl-tls12.bin").read_bytes()


def _pure() -> ModuleType:
    """proxy/scan.py itself, interpreted, even where the compiled module is installed."""
    spec = importlib.util.spec_from_file_location("scan_pure", ROOT / "proxy" / "scan.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


PURE = _pure()


def test_the_compiled_module_is_the_one_imported() -> None:
    """CI installs with a compiler (packages.debian: gcc, python3-dev), so the suite
    runs the extension; TLSINSPECTOR_PURE=1 at install asks for the pure module."""
    assert not PURE.COMPILED
    if os.environ.get("TLSINSPECTOR_PURE") == "1":
        assert not scan.COMPILED and scan.__file__.endswith(".py")
        return
    assert scan.COMPILED, f"{scan.__file__}: not compiled (see setup.py's notice)"
    assert not scan.__file__.endswith(".py")
    assert type(scan.pcap_run).__name__ == "builtin_function_or_method"


def _tls(rng: random.Random) -> tuple[bytes, bytes]:
    """A client's and a server's bytes: a real ClientHello, then a ServerHello and
    application data records of random sizes."""
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\xc0\x2f" + b"\x00"
    sh = b"\x02" + len(body).to_bytes(3, "big") + body
    server = b"\x16\x03\x03" + len(sh).to_bytes(2, "big") + sh
    for _ in range(rng.randrange(1, 12)):
        n = rng.choice([1, 100, 1400, 5000, 16384])
        server += b"\x17\x03\x03" + n.to_bytes(2, "big") + rng.randbytes(n)
    return HELLO, server


def _conversation(rng: random.Random, port: int, isn: int) -> list[Segment]:
    """One connection: handshake, the client's hello, the server's download with the
    client's ACKs (some repeated), then FINs; a few segments retransmitted, moved
    or dropped."""
    c, s = ("10.0.0.1", port), ("10.0.0.2", 443)
    client, server = _tls(rng)
    mss = rng.choice([7, 536, 1448])
    segs: list[Segment] = []

    def add(frm: tuple[str, int], seq: int, ack: int, data: bytes = b"",
            flags: int = ACK) -> None:
        to = s if frm == c else c
        segs.append(Segment(0, 0.0, frm[0], frm[1], to[0], to[1], seq & 0xFFFFFFFF,
                            ack & 0xFFFFFFFF, flags, data))

    add(c, 999, 0, flags=SYN)
    add(s, isn, 1000, flags=SYN | ACK)
    add(c, 1000, isn + 1, client, ACK | PSH)
    cend = 1000 + len(client)
    for pos in range(0, len(server), mss):
        add(s, isn + 1 + pos, cend, server[pos:pos + mss],
            ACK | PSH if rng.random() < 0.2 else ACK)
        for _ in range(rng.choice([0, 0, 1, 2])):
            add(c, cend, isn + 1 + pos + rng.choice([0, mss, -mss]))
    add(s, isn + 1 + len(server), cend, flags=FIN | ACK)
    add(c, cend, isn + 2 + len(server), flags=FIN | ACK)
    body = segs[3:-2]
    for _ in range(rng.choice([0, 1, 3])):
        if not body:
            break
        what, i = rng.randrange(3), rng.randrange(len(body))
        if what == 0:
            body.insert(rng.randrange(len(body) + 1), body[i])
        elif what == 1:
            body.insert(rng.randrange(len(body) + 1), body.pop(i))
        elif rng.random() < 0.5:
            body.pop(i)
    return segs[:3] + body + segs[-2:]


def _frame(s: Segment, kind: str) -> bytes:
    """s as an Ethernet frame: IPv4 ("v4"), IPv4 with TCP timestamps (RFC 7323: the
    run's data offset is not 5), IPv6, or IPv4 behind an 802.1Q VLAN tag."""
    opts = (b"\x01\x01\x08\x0a" + struct.pack("!II", s.number, s.number // 2)
            if kind == "ts" else b"")
    tcp = dpkt.tcp.TCP(sport=s.sport, dport=s.dport, seq=s.seq, ack=s.ack, flags=s.flags,
                       opts=opts, data=s.payload)
    tcp.off = 5 + len(opts) // 4
    if kind == "v6":
        pre = b"\xfe\x80" + bytes(13)
        ip6 = dpkt.ip6.IP6(src=pre + s.src[-1:].encode(), dst=pre + s.dst[-1:].encode(),
                           nxt=6, hlim=64, data=tcp, plen=len(bytes(tcp)))
        return bytes(dpkt.ethernet.Ethernet(type=0x86DD, data=ip6))
    ip = dpkt.ip.IP(src=bytes(map(int, s.src.split("."))),
                    dst=bytes(map(int, s.dst.split("."))), p=6, data=tcp)
    ip.len = len(ip)
    eth = bytes(dpkt.ethernet.Ethernet(data=ip))
    if kind == "vlan":
        return eth[:12] + b"\x81\x00\x00\x2a" + eth[12:]
    return eth


def _capture(seed: int, kinds: list[str]) -> tuple[list[Segment], list[bytes]]:
    """Connections of the given frame kinds, their packets interleaved in runs, with
    times that mostly step forward and now and then jump or go back."""
    rng = random.Random(seed)
    convs = [_conversation(rng, 40000 + i, rng.choice([0, 5000, 0xFFFFFFFF - 100]))
             for i in range(len(kinds))]
    segs: list[Segment] = []
    frames: list[bytes] = []
    ts = 1_700_000_000.0
    while any(convs):
        i = rng.choice([j for j, cv in enumerate(convs) if cv])
        for _ in range(rng.randrange(1, 40)):
            if not convs[i]:
                break
            s = convs[i].pop(0)
            ts += rng.choice([0.00001] * 8 + [0.02, -0.0001])
            s = Segment(len(segs) + 1, round(ts, 6), s.src, s.sport, s.dst, s.dport, s.seq,
                        s.ack, s.flags, s.payload)
            segs.append(s)
            frames.append(_frame(s, kinds[i]))
    return segs, frames


def _pcap(segs: list[Segment], frames: list[bytes], order: str, nano: bool) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 262144, 1)]
    for s, f in zip(segs, frames, strict=True):
        sec = int(s.ts)
        frac = round((s.ts - sec) * (1e9 if nano else 1e6))
        out.append(struct.pack(order + "IIII", sec, frac, len(f), len(f)) + f)
    return b"".join(out)


def _read(data: bytes, mod: ModuleType, chunk: int, batch: int, sources: bool
          ) -> tuple[list[object], int, float]:
    """data through CaptureParser and a Reassembler whose runs use ``mod``."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(tcpstream, "scan", mod)
        r = tcpstream.Reassembler(batch=batch, sources=sources)
        p = capfile.CaptureParser(lane=r.lane)
        got: list[object] = []
        for i in range(0, len(data), chunk):
            got += p.feed(data[i:i + chunk])
        p.end()
        return got + list(r.finish(p.last_ts)), r.segments, p.last_ts


KINDS = st.lists(st.sampled_from(["v4", "v4", "ts", "v6", "vlan"]), min_size=1, max_size=3)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), kinds=KINDS, fmt=st.sampled_from(
    ["pcap<", "pcap>", "nsecpcap<", "pcapng<", "pcapng>"]),
    ifaces=st.sampled_from([[6], [6, 9], [9, 6, 6]]),
    chunk=st.sampled_from([333, 1 << 20]), batch=st.sampled_from([1000, 256 << 10]),
    sources=st.booleans())
def test_compiled_and_pure_give_the_same_stream_events(
        seed: int, kinds: list[str], fmt: str, ifaces: list[int], chunk: int, batch: int,
        sources: bool) -> None:
    """Every event (Data bytes, boundaries, packet numbers and times; gaps, ends), the
    segment count and the last capture time are equal with the compiled loop and the
    interpreted one, on IPv4 (with and without TCP options), IPv6 and VLAN-tagged
    connections interleaved, classic pcap in either byte order (micro- and
    nanoseconds) and pcapng in either byte order over one to three interfaces."""
    segs, frames = _capture(seed, kinds)
    order = fmt[-1]
    if fmt.startswith("pcapng"):
        # (tests/test_tcpstream's writer: Ethernet interfaces of 10**-r s, packets
        # spread over them, secrets and other blocks between)
        data = _pcapng(segs, order, ifaces, seed)
    else:
        data = _pcap(segs, frames, order, fmt.startswith("nsec"))
    if fmt.startswith("pcapng") and kinds != ["v4"] * len(kinds):
        # _pcapng frames IPv4 only: carry the other kinds by replacing its frames
        data = _pcapng_frames(data, order, frames)
    got = _read(data, scan, chunk, batch, sources)
    assert got == _read(data, PURE, chunk, batch, sources)
    assert got[1] == len(segs)


def _pcapng_frames(data: bytes, order: str, frames: list[bytes]) -> bytes:
    """The pcapng ``data`` with its Enhanced Packet Blocks' frames replaced, in order."""
    out, at, i = [], 0, 0
    while at < len(data):
        btype, total = struct.unpack_from(order + "II", data, at)
        block = data[at:at + total]
        if btype == 6:
            head = bytearray(block[:28])
            f = frames[i]
            i += 1
            struct.pack_into(order + "II", head, 20, len(f), len(f))
            body = bytes(head[8:]) + f + bytes(-len(f) % 4)
            size = 12 + len(body)
            block = struct.pack(order + "II", 6, size) + body + struct.pack(order + "I", size)
        out.append(block)
        at += total
    assert i == len(frames)
    return b"".join(out)


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_analyze_log_and_terminal_are_the_same_compiled_and_pure(
        fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`analyze`'s JSONL log and terminal view of the same capture, byte for byte, with
    the compiled loop and the interpreted one (and --quiet's close events)."""
    segs, frames = _capture(7, ["v4", "ts", "v6", "vlan", "v4"])
    data = (_pcap(segs, frames, "<", False) if fmt == "pcap"
            else _pcapng_frames(_pcapng(segs, "<", [6, 9], 7), "<", frames))
    cap = tmp_path / f"c.{fmt}"
    cap.write_bytes(data)
    outputs = []
    for name, mod in (("compiled", scan), ("pure", PURE)):
        with monkeypatch.context() as m:
            m.setattr(tcpstream, "scan", mod)
            log, term = tmp_path / f"{name}.jsonl", io.StringIO()
            sink = offline.Sink(str(log), False, out=term)
            try:
                closes = offline.analyze_capture(str(cap), sink, offline.Filters())
            finally:
                sink.close()
            quiet = offline.analyze_capture(
                str(cap), offline.Sink(None, True, out=io.StringIO()), offline.Filters())
            outputs.append((log.read_bytes(), term.getvalue(), closes, quiet))
    assert outputs[0] == outputs[1]
    log_bytes, term_text, closes, _ = outputs[0]
    assert b'"event":"record"' in log_bytes and len(closes) == 5
    assert "client_hello" in term_text
