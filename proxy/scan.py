"""The tight loop of a capture *run*, written for mypyc (issue 16: analyze throughput).

:meth:`tcpstream.Reassembler.lane` hands a capture reader a *run* when it grew a
direction's batch: the run takes the packets that follow while each is either the
next in-order bytes of that direction or a bare ACK from its peer, and stops at the
first that is anything else. The per-direction state, the checks before and the
write-back after stay in proxy/tcpstream.py; this module is only the loop over
packets: classic pcap records (:func:`pcap_run`) or pcapng Enhanced Packet Blocks
of one interface (:func:`pcapng_run`), plain ints in, plain ints out.

Why a module of its own, and why written this way: at install, setup.py compiles
it with mypyc into a C extension (``tlsinspector.proxy.scan``), and the same file is
the pure-Python fallback where no compiler is (or with TLSINSPECTOR_PURE=1). mypyc
makes fast C of top-level functions over ``int``, ``float`` and ``bytes`` (a byte
index is a C array read, int arithmetic on tagged machine words), and slow C of
what it cannot type: so no closures, no ``struct`` (one Python object per field),
every header field read by byte arithmetic in the byte order of its format (the
pcap record header and pcapng blocks in the file's order, RFC 791 and RFC 9293
headers in network order). :data:`COMPILED` says which one was imported.

The loop and its conditions are the ones tcpstream's lane applies per packet; the
tests feed the compiled module, this file interpreted, and the lane per packet the
same captures and compare every event (tests/test_scan.py).
"""

from __future__ import annotations

ACK = 0x10
MAX_SNAP_RUN = 1 << 20       # capfile.MAX_SNAP: a larger record is the reader's to report
MAX_BLOCK_RUN = 16 << 20     # capfile.MAX_BLOCK
EPB_TYPE = 6                 # a pcapng Enhanced Packet Block (pcapng 4.3)
_M32 = 0xFFFFFFFF

# What a run hands back: (where it stopped, packets read, the last one's time, then
# the direction's state after it: delivered, next sequence number, last packet taken,
# latest capture time, acknowledged offset, the peer's last ACK, batch room left).
RunResult = tuple[int, int, float, int, int, int, float, int, int, int]


def _u32(buf: bytes, i: int, little: bool) -> int:
    if little:
        return buf[i] | buf[i + 1] << 8 | buf[i + 2] << 16 | buf[i + 3] << 24
    return buf[i] << 24 | buf[i + 1] << 16 | buf[i + 2] << 8 | buf[i + 3]


def _be32(buf: bytes, i: int) -> int:
    return buf[i] << 24 | buf[i + 1] << 16 | buf[i + 2] << 8 | buf[i + 3]


def _unwrap(base: int, delivered: int, seq: int) -> int:
    """tcpstream._unwrap: the stream offset of ``seq`` within 2 GiB of ``delivered``
    (sequence numbers wrap at 2**32, RFC 9293 3.4)."""
    diff = ((seq - base) - delivered) & _M32
    if diff >= 1 << 31:
        diff -= 1 << 32
    return delivered + diff


def pcap_run(buf: bytes, view: memoryview, at: int, n: int, count: int, ts: float,
             little: bool, div: float, skip: int, mask: int, want: int,
             addrs: int, ports: int, paddrs: int, pports: int,
             nseq: int, last_ack: int, plack: int, base: int, acked: int,
             delivered: int, last: int, bts: float, lts: float, seconds: float,
             room: int, batch: list[bytes | memoryview],
             pieces: list[tuple[int, int, float]] | None) -> RunResult:
    """The classic pcap records of ``buf`` from ``at`` (``n``: where whole data ends)
    that continue the hot direction (``addrs``, ``ports``: its packed addresses and
    ports as integers; ``nseq``, ``last_ack``: the sequence and acknowledgement numbers
    its next packet carries) or are bare ACKs from its peer (``paddrs``, ``pports``;
    -1: none). Each taken packet's payload goes into ``batch`` as a view and, unless
    ``pieces`` is None, (stream offset, packet number, time) into ``pieces``; the run
    stops when ``room`` bytes were taken, ``seconds`` passed since ``bts``, or at the
    first packet that is anything else. ``little``: the file's byte order; ``div``:
    timestamp units per second; ``skip``, ``mask``, ``want``: the link's IP header
    offset and its ethertype check (tcpstream._LANE)."""
    while at + 16 <= n:
        caplen = _u32(buf, at + 8, little)
        off = at + 16 + skip
        end = at + 16 + caplen
        if caplen > MAX_SNAP_RUN or end > n or end < off + 40:
            break
        # From the ethertype (the two bytes before the IP header; for a link with none,
        # bytes of the record header, masked out): IPv4 with no options (RFC 791 3.1),
        # not a fragment, TCP (RFC 9293 3.1), flags ACK and maybe PSH, nothing else.
        etype = buf[off - 2] << 8 | buf[off - 1]
        total = buf[off + 2] << 8 | buf[off + 3]
        pstart = off + 20 + (buf[off + 32] >> 4) * 4
        pend = off + total
        if (etype | mask != want or buf[off] != 0x45 or buf[off + 9] != 6
                or (buf[off + 6] & 0x3F) | buf[off + 7] or buf[off + 33] & 0xF7 != ACK
                or pend > end or pstart > pend):
            break
        t = _u32(buf, at, little) + _u32(buf, at + 4, little) / div
        a = _be32(buf, off + 12) << 32 | _be32(buf, off + 16)
        p = _be32(buf, off + 20)
        if a == addrs and p == ports:
            if (_be32(buf, off + 24) != nseq or _be32(buf, off + 28) != last_ack
                    or pstart == pend or t - bts > seconds):
                break   # not the append path (the lane decides)
            count += 1
            size = pend - pstart
            if pieces is not None:
                pieces.append((delivered, count, t))
            batch.append(view[pstart:pend])
            delivered += size
            nseq = (nseq + size) & _M32
            ts = t
            at = end
            last = count
            if t > lts:
                lts = t
            room -= size
            if room <= 0:
                break
        elif a == paddrs and p == pports and pstart == pend:
            ack = _be32(buf, off + 28)
            if ack != plack:   # tcpstream's _acked(peer, ack), in locals
                plack = ack
                acked = max(acked, _unwrap(base, delivered, ack))
            count += 1
            ts = t
            at = end
        else:
            break
    return at, count, ts, delivered, nseq, last, lts, acked, plack, room


def pcapng_run(buf: bytes, view: memoryview, at: int, n: int, count: int, ts: float,
               little: bool, iface: int, units: int, div: float, offset: int,
               skip: int, mask: int, want: int,
               addrs: int, ports: int, paddrs: int, pports: int,
               nseq: int, last_ack: int, plack: int, base: int, acked: int,
               delivered: int, last: int, bts: float, lts: float, seconds: float,
               room: int, batch: list[bytes | memoryview],
               pieces: list[tuple[int, int, float]] | None) -> RunResult:
    """:func:`pcap_run` over pcapng Enhanced Packet Blocks (pcapng 4.3) of interface
    ``iface`` (its timestamp ``units`` per second as an integer and ``div`` as a
    float, its ``offset`` in seconds, pcapng 4.2). It also stops at any other block,
    a packet of another interface, or a block whose framing is not plain (its length
    fields disagree, the packet does not fit): the reader takes that one and reports
    what is damaged."""
    while at + 32 <= n:
        total = _u32(buf, at + 4, little)
        caplen = _u32(buf, at + 20, little)
        off = at + 28 + skip
        end = at + 28 + caplen
        bend = at + total
        if (_u32(buf, at, little) != EPB_TYPE or _u32(buf, at + 8, little) != iface
                or total % 4 or total > MAX_BLOCK_RUN or bend > n or 32 + caplen > total
                or end < off + 40 or _u32(buf, bend - 4, little) != total):
            break
        etype = buf[off - 2] << 8 | buf[off - 1]
        tot = buf[off + 2] << 8 | buf[off + 3]
        pstart = off + 20 + (buf[off + 32] >> 4) * 4
        pend = off + tot
        if (etype | mask != want or buf[off] != 0x45 or buf[off + 9] != 6
                or (buf[off + 6] & 0x3F) | buf[off + 7] or buf[off + 33] & 0xF7 != ACK
                or pend > end or pstart > pend):
            break
        # capfile's split of the 64-bit time: the same float as a classic pcap's.
        u = _u32(buf, at + 12, little) << 32 | _u32(buf, at + 16, little)
        t = (u // units + offset) + (u % units) / div
        a = _be32(buf, off + 12) << 32 | _be32(buf, off + 16)
        p = _be32(buf, off + 20)
        if a == addrs and p == ports:
            if (_be32(buf, off + 24) != nseq or _be32(buf, off + 28) != last_ack
                    or pstart == pend or t - bts > seconds):
                break
            count += 1
            size = pend - pstart
            if pieces is not None:
                pieces.append((delivered, count, t))
            batch.append(view[pstart:pend])
            delivered += size
            nseq = (nseq + size) & _M32
            ts = t
            at = bend
            last = count
            if t > lts:
                lts = t
            room -= size
            if room <= 0:
                break
        elif a == paddrs and p == pports and pstart == pend:
            ack = _be32(buf, off + 28)
            if ack != plack:
                plack = ack
                acked = max(acked, _unwrap(base, delivered, ack))
            count += 1
            ts = t
            at = bend
        else:
            break
    return at, count, ts, delivered, nseq, last, lts, acked, plack, room


def _compiled() -> bool:
    # A mypyc-compiled module's functions are builtins, not Python functions.
    return type(_compiled).__name__ != "function"


COMPILED: bool = _compiled()
