"""proxy/tcpstream.py: reassembly as the receiver sees it; holes are gaps, never splices."""

from __future__ import annotations

import io
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tlsinspector.proxy.tcpstream import (
    ACK,
    FIN,
    MAX_PENDING,
    PSH,
    RST,
    SYN,
    Closed,
    Data,
    Ended,
    Gap,
    Opened,
    Reassembler,
    Segment,
    StreamEvent,
)

C, S = ("10.0.0.1", 40000), ("10.0.0.2", 443)


def seg(n: int, frm: tuple[str, int], seq: int, payload: bytes = b"", flags: int = ACK,
        ack: int = 0) -> Segment:
    to = S if frm == C else C
    return Segment(n, float(n), frm[0], frm[1], to[0], to[1], seq & 0xFFFFFFFF, ack, flags,
                   payload)


def stream(events: list[StreamEvent], side: str) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Data) and e.side == side)


def run(segments: list[Segment]) -> list[StreamEvent]:
    r = Reassembler()
    out: list[StreamEvent] = []
    for s in segments:
        out += r.feed(s)
    return out + r.finish(99.0)


def conversation(data: bytes, cuts: list[int], isn: int = 1000) -> list[Segment]:
    segs = [seg(1, C, isn, flags=SYN), seg(2, S, 5000, flags=SYN | ACK, ack=isn + 1)]
    pos = 0
    for i, cut in enumerate(sorted(set(cuts)) + [len(data)]):
        if cut > pos:
            segs.append(seg(3 + i, C, isn + 1 + pos, data[pos:cut]))
            pos = cut
    segs.append(seg(100, C, isn + 1 + len(data), flags=FIN | ACK))
    return segs


def test_in_order_with_syn_and_fin() -> None:
    evs = run(conversation(b"hello world", [5]))
    assert isinstance(evs[0], Opened) and evs[0].client == "10.0.0.1:40000"
    assert evs[0].how == "SYN"
    assert stream(evs, "client") == b"hello world"
    assert not [e for e in evs if isinstance(e, Gap)]
    assert isinstance(evs[-1], Closed)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(min_size=1, max_size=300),
       cuts=st.lists(st.integers(0, 300), max_size=12),
       seed=st.integers(0, 10_000), isn=st.integers(0, 0xFFFFFFFF))
def test_any_order_with_duplicates_gives_the_same_stream(data: bytes, cuts: list[int],
                                                         seed: int, isn: int) -> None:
    segs = conversation(data, [c for c in cuts if c < len(data)], isn)
    body = segs[2:-1]
    rng = random.Random(seed)
    body = body + rng.sample(body, k=len(body) // 2)      # retransmissions
    rng.shuffle(body)                                      # out of order
    evs = run(segs[:2] + body + segs[-1:])
    assert stream(evs, "client") == data
    assert not [e for e in evs if isinstance(e, Gap)]


def test_overlapping_retransmission_adds_only_what_is_new() -> None:
    segs = [seg(1, C, 99, flags=SYN), seg(2, C, 100, b"abcdef"), seg(3, C, 103, b"defghi"),
            seg(4, C, 100, b"abc")]
    assert stream(run(segs), "client") == b"abcdefghi"


def test_sequence_numbers_wrap() -> None:
    segs = [seg(1, C, 0xFFFFFFFA, flags=SYN), seg(2, C, 0xFFFFFFFB, b"0123"),
            seg(3, C, 0xFFFFFFFF, b"4567"), seg(4, C, 3, b"89")]
    assert stream(run(segs), "client") == b"0123456789"


def test_a_missing_segment_is_a_gap_and_nothing_after_it_is_delivered() -> None:
    segs = conversation(b"AAAABBBBCCCC", [4, 8])
    del segs[3]     # "BBBB"
    evs = run(segs)
    assert stream(evs, "client") == b"AAAA"
    (gap,) = [e for e in evs if isinstance(e, Gap)]
    assert (gap.side, gap.offset, gap.missing, gap.undecoded) == ("client", 4, 4, 4)
    assert (gap.after_packet, gap.before_packet) == (3, 5)


def test_a_missing_last_segment_is_seen_from_the_fin() -> None:
    segs = conversation(b"AAAABBBB", [4])
    del segs[3]
    (gap,) = [e for e in run(segs) if isinstance(e, Gap)]
    assert gap.missing == 4 and gap.before_packet is None


def test_without_syn_the_client_is_told_by_the_hello() -> None:
    server_hello_first = b"\x16\x03\x03\x00\x04\x02\x00\x00\x00"
    evs = run([seg(1, S, 5000, server_hello_first)])
    assert isinstance(evs[0], Opened)
    assert evs[0].client == "10.0.0.1:40000" and "ServerHello" in evs[0].how


def test_rst_ends_both_directions_and_a_late_copy_opens_nothing() -> None:
    evs = run([seg(1, C, 99, flags=SYN), seg(2, C, 100, b"hi"), seg(3, S, 1, flags=RST),
               seg(4, C, 100, b"hi")])
    assert sum(isinstance(e, Opened) for e in evs) == 1
    assert sum(isinstance(e, Closed) for e in evs) == 1


def test_port_reuse_with_a_new_syn_is_a_new_connection() -> None:
    first = conversation(b"one", [])
    second = [seg(200 + s.number, C if s.src == C[0] else S,
                  s.seq + 77777, s.payload, s.flags, s.ack) for s in conversation(b"two", [])]
    evs = run(first + [seg(150, S, 5001, flags=FIN | ACK)] + second)
    opened = [e for e in evs if isinstance(e, Opened)]
    assert [e.conn for e in opened] == [1, 2]
    assert [e.data for e in evs if isinstance(e, Data)] == [b"one", b"two"]


# -- feed_frame: the fast path over real frame bytes equals feed() over Segments ----------


def _frame(s: Segment, v6: bool) -> bytes:
    import dpkt  # type: ignore[import-untyped]

    tcp = dpkt.tcp.TCP(sport=s.sport, dport=s.dport, seq=s.seq, ack=s.ack & 0xFFFFFFFF,
                       flags=s.flags,
                       data=s.payload)
    if v6:
        pre = b"\xfe\x80" + bytes(13)
        ip = dpkt.ip6.IP6(src=pre + s.src.split(".")[-1].encode()[:1],
                          dst=pre + s.dst.split(".")[-1].encode()[:1], nxt=6, hlim=64,
                          data=tcp, plen=len(bytes(tcp)))
        return bytes(dpkt.ethernet.Ethernet(type=0x86DD, data=ip))
    ip = dpkt.ip.IP(src=bytes(map(int, s.src.split("."))), dst=bytes(map(int, s.dst.split("."))),
                    p=6, data=tcp)
    ip.len = len(ip)
    return bytes(dpkt.ethernet.Ethernet(data=ip))


def _turns(evs: list[StreamEvent]) -> list[tuple[str, bytes]]:
    """The bytes in the order the two sides' Data came, a side's consecutive ones joined
    (batching may join them; it must never move bytes across the other side's)."""
    out: list[tuple[str, bytes]] = []
    for e in evs:
        if isinstance(e, Data):
            if out and out[-1][0] == e.side:
                out[-1] = (e.side, out[-1][1] + e.data)
            else:
                out.append((e.side, e.data))
    return out


def _summary(evs: list[StreamEvent]) -> tuple[object, ...]:
    """What a consumer learns: per side the bytes, gaps and how each side ended."""
    return (_turns(evs),) + tuple((side, stream(evs, side),
                  [(g.offset, g.missing, g.undecoded) for g in evs
                   if isinstance(g, Gap) and g.side == side],
                  [e.how for e in evs if type(e).__name__ == "Ended"
                   and e.side == side])   # type: ignore[attr-defined]
                 for side in ("client", "server"))


def _mutated(data: bytes, back: bytes, cuts: list[int], seed: int, isn: int, drop: bool
             ) -> list[Segment]:
    segs = conversation(data, [c for c in cuts if c < len(data)], isn)
    # The server answers in between (the batches of the two sides interleave) and ACKs.
    segs.insert(3, seg(50, S, 5001, back, ack=(isn + 1) & 0xFFFFFFFF))
    segs.insert(4, seg(51, C, isn + 1, ack=5001 + len(back)))
    body = segs[5:-1]
    rng = random.Random(seed)
    if drop and len(body) > 1:
        body.pop(rng.randrange(len(body) - 1))            # a hole, maybe
    body = body + rng.sample(body, k=len(body) // 3)      # retransmissions
    if seed % 2:
        rng.shuffle(body)                                  # out of order
    return segs[:5] + body + segs[-1:]


CASES = dict(data=st.binary(min_size=1, max_size=400), back=st.binary(max_size=200),
             cuts=st.lists(st.integers(0, 400), max_size=10), seed=st.integers(0, 10_000),
             isn=st.integers(0, 0xFFFFFFFF), drop=st.booleans(), v6=st.booleans(),
             batch=st.sampled_from([1, 50, 256 << 10]))


@settings(max_examples=120, deadline=None)
@given(**CASES)
def test_feed_frame_equals_feed(data: bytes, back: bytes, cuts: list[int], seed: int,
                                isn: int, drop: bool, v6: bool, batch: int) -> None:
    segs = _mutated(data, back, cuts, seed, isn, drop)
    want = run(segs)
    r = Reassembler(batch=batch)
    got: list[StreamEvent] = []
    pre = b"\0" * 7   # the frame sits inside a larger buffer, as in a capture chunk
    for s in segs:
        f = _frame(s, v6)
        got += r.feed_frame(1, pre + f + pre, len(pre), len(pre) + len(f), s.number, s.ts)
    got += r.finish(99.0)
    if v6:   # the addresses differ; the streams must not
        assert _summary(got) == _summary(want)
    else:
        assert _summary(got) == _summary(want)
        assert [type(e).__name__ for e in got if not isinstance(e, Data)] == [
            type(e).__name__ for e in want if not isinstance(e, Data)]


@settings(max_examples=120, deadline=None)
@given(**{**CASES, "cuts": st.lists(st.integers(0, 400), min_size=2, max_size=10)},
       raw=st.booleans(), chunk=st.sampled_from([7, 100, 1 << 20]))
def test_the_lane_in_the_capture_reader_equals_feed(
        data: bytes, back: bytes, cuts: list[int], seed: int, isn: int, drop: bool,
        v6: bool, batch: int, raw: bool, chunk: int) -> None:
    """Reassembler.lane, called by the pcap reader for every packet of a whole file
    (Ethernet or raw IP, read in chunks that cut packets), gives what feed() gives:
    a lane that took a segment out of order, or kept a declined one for later,
    moves bytes."""
    import dpkt  # type: ignore[import-untyped]

    from tlsinspector.proxy.capfile import CaptureParser

    segs = _mutated(data, back, [c % len(data) for c in cuts], seed, isn, drop)
    want = run(segs)
    f = io.BytesIO()
    w = dpkt.pcap.Writer(f, linktype=101 if raw else 1)
    for s in segs:
        frame = _frame(s, v6)
        w.writepkt(frame[14:] if raw else frame, ts=s.ts)
    r = Reassembler(batch=batch)
    p = CaptureParser(lane=r.lane)
    got: list[StreamEvent] = []
    pcap = f.getvalue()
    for i in range(0, len(pcap), chunk):
        items = p.feed(pcap[i:i + chunk])
        assert not any(type(x) is tuple for x in items)   # every packet went to the lane
        got += items
    p.end()
    got += r.finish(99.0)
    assert _summary(got) == _summary(want)
    assert [(type(e).__name__, getattr(e, "side", None)) for e in got
            if not isinstance(e, Data)] == [
        (type(e).__name__, getattr(e, "side", None)) for e in want if not isinstance(e, Data)]
    assert r.segments == len(segs)


def _bulk(data: bytes, mss: int, isn: int, seed: int) -> list[Segment]:
    """A download: the server's segments with the client's ACKs between them (some
    ahead of the bytes, some behind, some repeated), PSH on some, a changed
    acknowledgement number now and then, time steps that sometimes pass the batch's
    time limit or go back, and a few segments retransmitted, moved or dropped."""
    rng = random.Random(seed)
    segs = [seg(1, C, 999, flags=SYN), seg(2, S, isn, flags=SYN | ACK, ack=1000),
            seg(3, C, 1000, b"hello", ack=isn + 1)]
    body: list[Segment] = []
    for pos in range(0, len(data), mss):
        flags = ACK | PSH if rng.random() < 0.2 else ACK
        body.append(seg(0, S, isn + 1 + pos, data[pos:pos + mss], flags,
                        ack=1005 + (rng.random() < 0.05) * rng.choice([-1, 7])))
        if rng.random() < 0.4:
            ack = isn + 1 + pos + rng.choice([0, mss, 3 * mss, -mss, 1 << 31])
            body.append(seg(0, C, 1005, ack=ack & 0xFFFFFFFF))
    for _ in range(rng.choice([0, 0, 1, 3])):
        if not body:
            break
        what, i = rng.randrange(3), rng.randrange(len(body))
        if what == 0:
            body.insert(rng.randrange(len(body) + 1), body[i])   # a retransmission
        elif what == 1:
            body.insert(rng.randrange(len(body) + 1), body.pop(i))   # out of order
        else:
            body.pop(i)   # a hole
    end = isn + 1 + len(data)
    if seed % 3:
        segs += body + [seg(0, S, end, flags=FIN | ACK, ack=1005)]
    else:   # the capture ends in the download, the client's ACKs ahead, then behind
        segs += body + [seg(0, C, 1005, ack=(end + 500) & 0xFFFFFFFF),
                        seg(0, C, 1005, ack=(end - 1) & 0xFFFFFFFF)]
    ts = 0.0
    out = []
    for n, s in enumerate(segs, 1):
        ts += rng.choice([0.0] * 8 + [0.0001] * 8 + [0.003, 0.02, -0.001])
        out.append(Segment(n, ts, s.src, s.sport, s.dst, s.dport, s.seq, s.ack, s.flags,
                           s.payload))
    return out


def _read_with_lane(data: bytes, chunk: int, batch: int, sources: bool, with_run: bool
                    ) -> tuple[list[object], int, float]:
    """``data`` (a capture) through CaptureParser in ``chunk``-byte pieces into a
    Reassembler's lane: its events, segment count and last time. ``with_run``: the lane
    hands the reader its run; otherwise every packet goes through the lane alone."""
    from tlsinspector.proxy.capfile import CaptureParser

    r = Reassembler(batch=batch, sources=sources)

    def lane(link: int, pcapng: bool) -> object:
        take = r.lane(link, pcapng)
        assert take is not None
        return take if with_run else lambda *a: take(*a) and None

    p = CaptureParser(lane=lane)   # type: ignore[arg-type]
    got: list[object] = []
    for i in range(0, len(data), chunk):
        got += p.feed(data[i:i + chunk])
    p.end()
    return got + list(r.finish(p.last_ts)), r.segments, p.last_ts


@settings(max_examples=150, deadline=None)
@given(size=st.integers(1, 6000), mss=st.sampled_from([1, 7, 100, 1448]),
       isn=st.sampled_from([0, 5000, 0xFFFFFFFF - 300, 0xFFFFFFFF]),
       seed=st.integers(0, 10_000), batch=st.sampled_from([1, 50, 1000, 256 << 10]),
       chunk=st.sampled_from([7, 333, 1 << 20]), sources=st.booleans())
def test_the_lanes_pcap_run_equals_the_lane_per_packet(
        size: int, mss: int, isn: int, seed: int, batch: int, chunk: int,
        sources: bool) -> None:
    """The run the lane hands a classic pcap reader (the records that continue a
    direction's batch, and the peer's bare ACKs, taken in one call) gives exactly the
    events of the lane called per packet: the same Data (bytes, boundaries, packet
    numbers, times), gaps and ends, the same segment count and last capture time."""
    import dpkt  # type: ignore[import-untyped]


    # (sizes drawn, not binary(): hypothesis favours short strings, and a run needs
    # many segments to reach a batch's size or time limit)
    segs = _bulk(random.Random(seed).randbytes(size), mss, isn, seed)
    f = io.BytesIO()
    w = dpkt.pcap.Writer(f, linktype=1)
    for s in segs:
        w.writepkt(_frame(s, False), ts=s.ts)
    pcap = f.getvalue()

    def read(with_run: bool) -> tuple[list[object], int, float]:
        return _read_with_lane(pcap, chunk, batch, sources, with_run)

    assert read(True) == read(False)


def _pcapng(segs: list[Segment], order: str, ifaces: list[int], seed: int) -> bytes:
    """segs as a pcapng written by hand: one section in ``order``'s byte order, an
    Ethernet interface per entry of ``ifaces`` (its if_tsresol: 10**-r seconds), each
    packet on an interface drawn from ``seed``, and now and then a Decryption Secrets
    Block or a comment-carrying block between the packets (what ends a run)."""
    import struct

    rng = random.Random(seed)

    def block(btype: int, body: bytes) -> bytes:
        body += bytes(-len(body) % 4)
        total = 12 + len(body)
        return struct.pack(order + "II", btype, total) + body + struct.pack(order + "I", total)

    out = [block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))]
    for r in ifaces:
        opt = struct.pack(order + "HH", 9, 1) + bytes([r, 0, 0, 0]) + bytes(4)
        out.append(block(1, struct.pack(order + "HHI", 1, 0, 262144) + opt))
    for s in segs:
        what = rng.random()
        if what < 0.03:
            out.append(block(0x0A, struct.pack(order + "II", 0x544C534B, 4) + b"# k\n"))
        elif what < 0.05:
            out.append(block(4, b""))   # a Name Resolution Block: nothing to read
        i = rng.randrange(len(ifaces))
        # a non-negative time in the interface's units (the capture's times may go back)
        units = round((s.ts + 1) * 10 ** ifaces[i])
        frame = _frame(s, False)
        out.append(block(6, struct.pack(order + "IIIII", i, units >> 32, units & _U32,
                                        len(frame), len(frame)) + frame))
    return b"".join(out)


_U32 = 0xFFFFFFFF


@settings(max_examples=120, deadline=None)
@given(size=st.integers(1, 6000), mss=st.sampled_from([1, 7, 100, 1448]),
       isn=st.sampled_from([0, 0xFFFFFFFF - 300]), seed=st.integers(0, 10_000),
       batch=st.sampled_from([1, 1000, 256 << 10]), chunk=st.sampled_from([7, 333, 1 << 20]),
       sources=st.booleans(), order=st.sampled_from("<>"),
       ifaces=st.sampled_from([[6], [9], [6, 6], [6, 9]]))
def test_the_lanes_pcapng_run_equals_the_lane_per_packet_and_classic_pcap(
        size: int, mss: int, isn: int, seed: int, batch: int, chunk: int,
        sources: bool, order: str, ifaces: list[int]) -> None:
    """The run over pcapng Enhanced Packet Blocks (the blocks of one interface that
    continue a direction's batch, taken in one call; other interfaces, secrets and
    other blocks end it) gives exactly the events of the lane called per packet, for
    any cut of the file into chunks; and, with one interface in microseconds, exactly
    what the classic pcap of the same packets gives."""
    import dpkt  # type: ignore[import-untyped]

    from tlsinspector.proxy.capfile import Secrets

    segs = _bulk(random.Random(seed).randbytes(size), mss, isn, seed)
    segs = [Segment(s.number, round(s.ts + 1, 6) - 1, s.src, s.sport, s.dst, s.dport,
                    s.seq, s.ack, s.flags, s.payload) for s in segs]
    ng = _pcapng(segs, order, ifaces, seed)

    def read(data: bytes, with_run: bool) -> tuple[list[object], int, float]:
        got = _read_with_lane(data, chunk, batch, sources, with_run)
        assert not any(type(x) is tuple for x in got[0])   # every packet went to the lane
        return got

    fast = read(ng, True)
    assert fast == read(ng, False)
    assert fast[1] == len(segs)
    if ifaces == [6]:
        f = io.BytesIO()
        w = dpkt.pcap.Writer(f, linktype=1)
        for s in segs:
            w.writepkt(_frame(s, False), ts=s.ts + 1)
        classic = read(f.getvalue(), True)
        evs, count, last = fast
        # (the two formats' times may differ in the last bit of a float: what the
        # stream carries, not where a batch's time limit cut it, is compared)
        assert _summary([e for e in evs if type(e) is not Secrets]) == _summary(
            classic[0])   # type: ignore[arg-type]
        assert count == classic[1] and abs(last - classic[2]) < 1e-6


def test_a_gapped_sides_fin_is_still_reported_with_its_time() -> None:
    """A gap ends a direction's bytes, not the knowledge of its close: a FIN that comes
    after the gap was declared (MAX_PENDING out of order) is an Ended "fin after gap"
    at its own time, and one seen before the gap was declared (at the capture's end)
    rides on the Gap as fin_ts; either way analyze can tell who closed first."""
    hole = 100
    later = [seg(1, C, 1000, flags=SYN), seg(2, S, 5000, flags=SYN | ACK, ack=1001),
             seg(3, C, 1001, b"x" * 10),
             # bytes after a hole, more than MAX_PENDING: the hole becomes a gap now
             seg(4, C, 1011 + hole, b"y" * (MAX_PENDING + 1)),
             seg(5, C, 1011 + hole + MAX_PENDING + 1, flags=FIN | ACK),
             seg(6, S, 5001, flags=FIN | ACK)]
    evs = run(later)
    ends = [(e.side, e.how, e.ts) for e in evs if isinstance(e, Ended)]
    assert ends == [("client", "gap", 4.0), ("client", "fin after gap", 5.0),
                    ("server", "fin", 6.0)], ends
    [gap] = [e for e in evs if isinstance(e, Gap)]
    assert gap.fin_ts is None  # (its FIN came after)
    assert isinstance(evs[-1], Closed)
    # The hole still open when the capture ends: the FIN was seen, the Gap carries it.
    at_end = [seg(1, C, 1000, flags=SYN), seg(2, S, 5000, flags=SYN | ACK, ack=1001),
              seg(3, C, 1001 + hole, b"z" * 10),
              seg(4, C, 1011 + hole, flags=FIN | ACK),
              seg(5, S, 5001, flags=FIN | ACK)]
    evs = run(at_end)
    [gap] = [e for e in evs if isinstance(e, Gap)]
    assert (gap.side, gap.fin_ts) == ("client", 4.0)
    assert [(e.side, e.how) for e in evs if isinstance(e, Ended)] == [
        ("server", "fin"), ("client", "gap")]
