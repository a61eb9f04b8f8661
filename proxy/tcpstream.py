"""Captured frames to TCP byte streams per connection and direction (sans-io).

:func:`decode_frame` turns one captured frame (Ethernet, Linux cooked v1/v2, raw
IP, BSD loopback/null; IPv4 and IPv6) into a :class:`Segment` with dpkt, a
small, well-kept BSD-licensed packet library that also reads the capture files
(tlsinspector/offline.py). :class:`Reassembler` rebuilds each connection's two
byte streams the way the receiving TCP did (RFC 9293 3.10.7.4): retransmissions
and duplicates are dropped, overlapping segments are trimmed to what is new,
out-of-order segments wait until the hole before them is filled. A hole that is
never filled (a segment missing from the capture) becomes a :class:`Gap`, and that
direction stops there: bytes after a gap are never spliced onto bytes before it,
because every record boundary after the splice would be wrong.

Sequence numbers are relative to each direction's ISN (SYN) or first segment,
unwrapped against the bytes already delivered, so streams longer than 4 GiB work.
Memory is bounded: out-of-order data waiting for a hole is capped per direction
(MAX_PENDING); past the cap the hole is declared a gap.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dpkt  # type: ignore[import-untyped]

from tlsinspector.proxy import scan
from tlsinspector.proxy.history import Side

# Link types (https://www.tcpdump.org/linktypes.html); DLT_RAW is 12 or 14 on some BSDs.
LINK_NULL, LINK_ETHERNET, LINK_RAW, LINK_LOOP = 0, 1, 101, 108
LINK_SLL, LINK_SLL2, LINK_IPV4, LINK_IPV6 = 113, 276, 228, 229
LINKTYPES = {LINK_NULL: "BSD loopback", LINK_ETHERNET: "Ethernet", LINK_RAW: "raw IP",
             12: "raw IP", 14: "raw IP", LINK_LOOP: "OpenBSD loopback",
             LINK_SLL: "Linux cooked (SLL)", LINK_SLL2: "Linux cooked v2 (SLL2)",
             LINK_IPV4: "raw IPv4", LINK_IPV6: "raw IPv6"}
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
MAX_PENDING = 32 << 20   # out-of-order bytes held per direction before a hole is a gap
_M32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Segment:
    number: int          # packet number in the capture, 1-based (as Wireshark counts)
    ts: float
    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    ack: int
    flags: int
    payload: bytes
    truncated: bool = False   # the capture cut the payload (snaplen): its bytes are unknown


_NAMES: dict[bytes, str] = {}


def _name(packed: bytes) -> str:
    """An address as text (cached: a capture repeats a few addresses many times)."""
    name = _NAMES.get(packed)
    if name is None:
        if len(_NAMES) > 65536:
            _NAMES.clear()
        name = _NAMES[packed] = str(ipaddress.ip_address(packed))
    return name


def _ip_payload(link: int, frame: bytes) -> Any:
    if link == LINK_ETHERNET:
        return dpkt.ethernet.Ethernet(frame).data
    if link == LINK_SLL:
        return dpkt.sll.SLL(frame).data
    if link == LINK_SLL2:
        return dpkt.sll2.SLL2(frame).data
    if link in (LINK_NULL, LINK_LOOP):
        frame = frame[4:]   # address family, in host (NULL) or network (LOOP) byte order
    elif link not in (LINK_RAW, 12, 14, LINK_IPV4, LINK_IPV6):
        raise ValueError(f"link type {link} is not supported (supported: "
                         f"{', '.join(sorted(set(LINKTYPES.values())))})")
    if not frame:
        return None
    version = frame[0] >> 4
    return (dpkt.ip.IP(frame) if version == 4 else dpkt.ip6.IP6(frame) if version == 6
            else None)


_ETH_SKIP = {LINK_ETHERNET: 14, LINK_SLL: 16, LINK_SLL2: 20, LINK_NULL: 4, LINK_LOOP: 4,
             LINK_RAW: 0, 12: 0, 14: 0, LINK_IPV4: 0, LINK_IPV6: 0}
_ETHERTYPE_AT = {LINK_ETHERNET: 12, LINK_SLL: 14, LINK_SLL2: 0}
_IP_TYPES = (b"\x08\x00", b"\x86\xdd")
_U16 = struct.Struct("!H")
_V4 = struct.Struct("!BxHxxHxB2x4s4s")     # ver/ihl, total length, frag, proto, src, dst
_TCP = struct.Struct("!HHIIBB")             # ports, seq, ack, data offset, flags


def _fast(link: int, frame: bytes, number: int, ts: float) -> Segment | None | bool:
    """The common case by hand (struct, no objects per layer): an IPv4 or IPv6 TCP
    segment right after the link header. False: not the common case, ask dpkt."""
    at = _ETHERTYPE_AT.get(link)
    off = _ETH_SKIP[link]
    if at is not None and frame[at:at + 2] not in _IP_TYPES:
        return False     # VLAN tags, other ethertypes: dpkt knows them all
    if len(frame) < off + 20:
        return False
    version = frame[off] >> 4
    if version == 4:
        vihl, total, frag, proto, src, dst = _V4.unpack_from(frame, off)
        if proto != 6 or frag & 0x3FFF:
            return None if proto != 6 else False
        ihl = (vihl & 15) * 4
        # total 0: a segmentation-offloaded frame captured before the NIC split it.
        tcp_at, end = off + ihl, off + total if total else len(frame)
    elif version == 6:
        if frame[off + 6] != 6 or len(frame) < off + 40:
            return False   # extension headers: dpkt walks them
        plen = _U16.unpack_from(frame, off + 4)[0]
        if not plen:
            return False
        src, dst = frame[off + 8:off + 24], frame[off + 24:off + 40]
        tcp_at, end = off + 40, off + 40 + plen
    else:
        return False
    if len(frame) < tcp_at + 20:
        return False
    sport, dport, seq, ack, doff, flags = _TCP.unpack_from(frame, tcp_at)
    start = tcp_at + (doff >> 4) * 4
    payload = frame[start:end]
    return Segment(number, ts, _name(src), sport, _name(dst), dport, seq, ack, flags,
                   payload, len(frame) < end)


def decode_frame(link: int, frame: bytes, number: int, ts: float) -> Segment | None:
    """The TCP segment in a captured frame, or None (not TCP over IP, or mangled).

    Raises ValueError only for a link type we cannot decode at all."""
    if link in _ETH_SKIP:
        fast = _fast(link, frame, number, ts)
        if fast is not False:
            return fast   # type: ignore[return-value]
    return _decode_dpkt(link, frame, number, ts)


def _decode_dpkt(link: int, frame: bytes, number: int, ts: float) -> Segment | None:
    try:
        ip = _ip_payload(link, frame)
    except (dpkt.UnpackError, IndexError):
        return None
    tcp = getattr(ip, "data", None)
    if not isinstance(tcp, dpkt.tcp.TCP):
        return None
    if isinstance(ip, dpkt.ip.IP):
        if ip.mf or ip.offset:
            return None   # an IP fragment: TCP over fragmented IP is not reassembled
        want = ip.len - ip.hl * 4 - tcp.off * 4
    else:
        # plen 0: a jumbogram or a segmentation-offloaded frame; take what is there.
        want = ip.plen - _ext_len(ip) - tcp.off * 4 if ip.plen else len(tcp.data)
    payload = bytes(tcp.data)
    truncated = len(payload) < want
    return Segment(number, ts, _name(bytes(ip.src)), tcp.sport, _name(bytes(ip.dst)),
                   tcp.dport, tcp.seq, tcp.ack, tcp.flags, payload, truncated)


def _ext_len(ip6: Any) -> int:
    return sum(len(h) for h in getattr(ip6, "all_extension_headers", ()))


# -- reassembly ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Opened:
    conn: int
    client: str          # "host:port" ("[v6]:port")
    server: str
    how: str             # how the client was told: "SYN" or a content guess
    ts: float = 0.0      # capture time of its first packet


@dataclass(frozen=True, slots=True)
class Data:
    conn: int
    side: Side
    data: bytes
    offset: int          # stream offset of data[0]
    packets: tuple[tuple[int, int, float], ...]   # (stream offset, packet number, ts)
    ts: float            # the latest capture time of the packets of this data


@dataclass(frozen=True, slots=True)
class Gap:
    conn: int
    side: Side
    offset: int          # stream offset where bytes are missing
    missing: int | None  # how many (None: unknown, the stream ends in the hole)
    after_packet: int | None
    before_packet: int | None
    undecoded: int       # bytes captured after the gap that are not decoded
    ts: float
    fin_ts: float | None = None  # this side's FIN, when the capture had it before the gap


@dataclass(frozen=True, slots=True)
class Ended:
    conn: int
    side: Side
    how: str             # "fin" | "rst" | "gap" | "capture end" | "fin after gap"
    ts: float


@dataclass(frozen=True, slots=True)
class Closed:
    conn: int
    ts: float


StreamEvent = Opened | Data | Gap | Ended | Closed


def _unwrap(base: int, delivered: int, seq: int) -> int:
    """The stream offset of sequence number ``seq``: the one within 2 GiB of
    ``delivered`` (sequence numbers wrap at 2**32, RFC 9293 3.4)."""
    diff = ((seq - base) - delivered) & _M32
    if diff >= 1 << 31:
        diff -= 1 << 32
    return delivered + diff


@dataclass(slots=True)
class _Dir:
    side: Side
    base: int | None = None      # sequence number of stream offset 0
    delivered: int = 0           # stream offset of the next byte to deliver
    pending: dict[int, tuple[bytes, int, float]] = field(default_factory=dict)
    pending_bytes: int = 0
    fin_at: int | None = None
    fin_ts: float | None = None  # capture time of its FIN (who closed first, gap or not)
    acked: int = 0               # the peer acknowledged up to here (evidence of a hole)
    ended: bool = False
    dead: bool = False           # a gap: nothing more is decoded
    last_packet: int | None = None
    retransmitted: int = 0
    undecoded: int = 0
    last_ack: int = -1           # the last acknowledgement number this side sent
    # Delivered bytes not yet handed out as one Data event (Reassembler(batch=N)).
    batch: list[bytes | memoryview] = field(default_factory=list)
    pieces: list[tuple[int, int, float]] = field(default_factory=list)
    batch_size: int = 0
    batch_ts: float = 0.0        # capture time of the batch's first packet
    last_ts: float = 0.0         # the latest capture time of the batch's packets
    # The sequence number the lane takes without a look at anything else (-1: none;
    # nothing pending, no gap, no end): kept by _take and set after every feed().
    next_seq: int = -1
    conn: int = 0
    peer: _Dir | None = None
    keys: list[bytes] = field(default_factory=list)   # its frame keys (feed_frame)

    def offset(self, seq: int) -> int:
        assert self.base is not None
        return _unwrap(self.base, self.delivered, seq)


@dataclass(slots=True)
class _Conn:
    number: int
    client: tuple[str, int]
    dirs: dict[str, _Dir]
    isn_client: int | None
    closed: bool = False


def _ready(d: _Dir) -> None:
    """What the lane may take next from d without a look at anything else: the next
    in-order byte, unless something is pending, missing or ended (-1: nothing)."""
    d.next_seq = -1 if (d.base is None or d.pending or d.dead or d.ended
                        or d.fin_at is not None) else (d.base + d.delivered) & _M32


def _addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_NONE: list[StreamEvent] = []   # returned (never mutated) when a packet produced nothing


_V4_TCP = struct.Struct("!BxHxxHxB2x8s4sIIBB")   # IPv4 without options, then TCP


def _frame_key(link: int, frame: bytes, start: int, n: int
               ) -> tuple[bytes, int, int, int, int, int] | None:
    """The fast path's view of a common frame, ``frame[start:n]``: (key, seq, ack,
    flags, payload start, payload end), key being the source and destination addresses
    and ports as they sit in the headers. None: anything unusual (dpkt and
    :meth:`Reassembler.feed` decide)."""
    off = _ETH_SKIP.get(link)
    if off is None:
        return None
    at = _ETHERTYPE_AT.get(link)
    if at is not None and frame[start + at:start + at + 2] not in _IP_TYPES:
        return None
    off += start
    if n < off + 40:
        return None
    if frame[off] == 0x45:   # IPv4 with no options: one unpack for both headers
        _v, total, frag, proto, addrs, ports, seq, ack, doff, flags = _V4_TCP.unpack_from(
            frame, off)
        end = off + total
        if proto != 6 or frag & 0x3FFF or not total or n < end:
            return None
        return addrs + ports, seq, ack, flags, off + 20 + (doff >> 4) * 4, end
    if frame[off] >> 4 != 6 or frame[off + 6] != 6 or n < off + 60:
        return None   # IPv4 options, IPv6 extension headers: the slow path
    plen = _U16.unpack_from(frame, off + 4)[0]
    tcp_at, end = off + 40, off + 40 + plen
    if not plen or n < end:
        return None   # a jumbogram, or truncated by the snap length: the slow path
    _sport, _dport, seq, ack, doff, flags = _TCP.unpack_from(frame, tcp_at)
    return (frame[off + 8:off + 40] + frame[tcp_at:tcp_at + 4], seq, ack, flags,
            tcp_at + (doff >> 4) * 4, end)


# Reassembler.lane: link type -> (IP header offset, ethertype mask, wanted value): the
# ethertype sits right before the IP header (Ethernet, SLL); links with none mask it.
_LANE = {LINK_ETHERNET: (14, 0, 0x0800), LINK_SLL: (16, 0, 0x0800),
         LINK_NULL: (4, 0xFFFF, 0xFFFF), LINK_LOOP: (4, 0xFFFF, 0xFFFF),
         LINK_RAW: (0, 0xFFFF, 0xFFFF), 12: (0, 0xFFFF, 0xFFFF), 14: (0, 0xFFFF, 0xFFFF),
         LINK_IPV4: (0, 0xFFFF, 0xFFFF)}
# From the ethertype: type, IPv4 version/IHL, total length, fragment field, protocol;
# TCP sequence, acknowledgement, data offset, flags.
_V4_LANE = struct.Struct("!HBxHxxHxB14xIIBB")
_KEY = struct.Struct("!QI")
# A run (see Reassembler.lane): (buf, at, n, count, ts, out, the file's byte order is
# little-endian, timestamp divisor) -> (where it stopped, packets read, the last one's
# time). The loop itself is proxy/scan.py's.
PcapRun = Callable[[bytes, int, int, int, float, list[Any], bool, float],
                   tuple[int, int, float]]
# The same for pcapng Enhanced Packet Blocks: (buf, at, n, count, ts, out, the
# section's byte order is little-endian, the interface's index, its timestamp units
# per second as an integer and as a float, its offset in seconds).
PcapngRun = Callable[[bytes, int, int, int, float, list[Any], bool, int, int, float, int],
                     tuple[int, int, float]]
Lane = Callable[[bytes, int, int, int, float, list[Any]], PcapRun | PcapngRun | None]
# What a run starts from (Reassembler._run_state), in scan.pcap_run's order.
RunState = tuple[int, int, int, int, int, int, int, int, int, int, int, float, float, float,
                 int]


def _segment_key(s: Segment) -> bytes:
    """The key :func:`_frame_key` finds for this segment's direction."""
    src, dst = ipaddress.ip_address(s.src).packed, ipaddress.ip_address(s.dst).packed
    return src + dst + struct.pack("!HH", s.sport, s.dport)


class Reassembler:
    """Segments in, :data:`StreamEvent` out, per connection and direction.

    With ``batch`` > 0, in-order bytes of a direction are handed out as one
    :class:`Data` of up to ``batch`` bytes: when the other direction sends, when
    the direction ends, when ``batch_seconds`` of capture time have passed since its
    first byte, or at :meth:`finish` -- the way a receiving application's read(2)
    returns whatever arrived (the engine sees the bytes of many segments in one
    call, as on the live proxy). :meth:`feed_frame` decodes common frames itself
    and takes in-order segments of known directions without building a Segment.

    With ``sources=False`` nobody asks which packets carried which bytes
    (``analyze --quiet`` without ``--log``): :attr:`Data.packets` stays empty and no
    tuple is made per packet.
    """

    def __init__(self, batch: int = 0, batch_seconds: float = 0.01,
                 sources: bool = True) -> None:
        self._conns: dict[tuple[tuple[str, int], tuple[str, int]], _Conn] = {}
        self._count = 0
        self._batch = batch
        self._batch_seconds = batch_seconds
        self._sources = sources
        self._dirs: dict[bytes, _Dir] = {}   # frame key -> direction (feed_frame)
        self.segments = 0                     # TCP segments seen
        self._buf: bytes = b""                # the buffer feed_frame last read from,
        self._view = memoryview(b"")          # and a view of it: payloads are not copied
        #                                       until a batch is joined
        self._hot: _Dir | None = None         # the direction whose batch the lane grew

    def _key(self, s: Segment) -> tuple[tuple[str, int], tuple[str, int]]:
        a, b = (s.src, s.sport), (s.dst, s.dport)
        return (a, b) if a <= b else (b, a)

    def feed_frame(self, link: int, buf: bytes, start: int, end: int, number: int,
                   ts: float) -> list[StreamEvent]:
        """A captured frame, ``buf[start:end]``: :func:`decode_frame` then :meth:`feed`,
        except for the common case (an ACK, or the next in-order bytes of a direction
        already seen), which takes a few operations."""
        hit = _frame_key(link, buf, start, end)
        if hit is not None:
            key, seq, ack, flags, pstart, pend = hit
            d = self._dirs.get(key)
            if (d is not None and d.base is not None and not flags & ~(ACK | PSH)
                    and flags & ACK):
                if ack != d.last_ack:
                    self._acked(d, ack)
                if pstart == pend:
                    self.segments += 1
                    return _NONE
                if (not d.pending and not d.dead and not d.ended and d.fin_at is None
                        and (seq - d.base) & _M32 == d.delivered & _M32):
                    self.segments += 1
                    return self._in_order(d, buf, pstart, pend, number, ts)
        seg = decode_frame(link, buf[start:end], number, ts)
        if seg is None:
            return _NONE
        return self.feed(seg)

    def lane(self, link: int, pcapng: bool = False) -> Lane | None:
        """The common case of :meth:`feed_frame` fused into a capture reader's loop
        (proxy/capfile.py calls it per packet, for frames of this link type): an IPv4
        segment with no options that is an ACK or the next in-order bytes of a
        direction already seen is taken in place, its bytes a view appended to the
        direction's batch, no tuple, Segment or event per packet (issue 16: the cost
        left was per packet, about 3 us of Python on Ethernet-sized segments).
        Anything else goes through :meth:`feed_frame` at once, in the same place
        (a packet handed back for later would be reassembled after the ones that
        followed it). What either makes goes into ``out``. None: no lane for this
        link type (the reader hands out its packets).

        When the lane appended a packet's bytes to a growing batch it returns a *run*
        for the reader's framing (classic pcap records, or with ``pcapng`` Enhanced
        Packet Blocks of the same interface): the reader hands it the records that
        follow, and it takes
        those that carry the next in-order bytes of the same direction (same
        addresses, ports and acknowledgement number, ACK or ACK|PSH, within the
        batch's time and size) with the direction's state in local variables,
        stopping at the first packet that is anything else (the reader then hands
        that one to the lane as usual). On a bulk capture of Ethernet-sized segments
        that is nearly every packet: one header unpack per record and one per frame,
        no call and no attribute of the direction per packet (issue 16). Work per
        byte stays bounded: the run reads each record once and stops at any doubt."""
        where = _LANE.get(link)
        if where is None:
            return None
        skip, mask, want = where
        dirs, m32, batch, seconds = self._dirs, _M32, self._batch, self._batch_seconds
        unpack, sources = _V4_LANE.unpack_from, self._sources

        def slow(buf: bytes, start: int, end: int, number: int, ts: float,
                 out: list[Any]) -> PcapRun | PcapngRun | None:
            evs = self.feed_frame(link, buf, start, end, number, ts)
            if evs:
                out.extend(evs)
            return None

        def take(buf: bytes, start: int, end: int, number: int, ts: float,
                 out: list[Any]) -> PcapRun | PcapngRun | None:
            off = start + skip
            if end < off + 40:
                return slow(buf, start, end, number, ts, out)
            # One unpack from the ethertype (the two bytes before the IP header; for a
            # link with none, bytes of the capture's record header, masked out) on.
            etype, vihl, total, frag, proto, seq, ack, doff, flags = unpack(buf, off - 2)
            pstart, pend = off + 20 + (doff >> 4) * 4, off + total
            d = dirs.get(buf[off + 12:off + 24])   # the addresses and ports: _frame_key's
            if (d is None or etype | mask != want or vihl != 0x45 or proto != 6
                    or frag & 0x3FFF or pend > end or pstart > pend
                    or flags & 0xF7 != ACK):   # ACK, maybe PSH, nothing else
                return slow(buf, start, end, number, ts, out)   # IPv6, options, SYN, ...
            if ack != d.last_ack:
                self._acked(d, ack)
            self.segments += 1
            if pstart == pend:
                return None
            if seq != d.next_seq:   # (-1 unless nothing else can be in the way)
                self.segments -= 1
                return slow(buf, start, end, number, ts, out)
            d.next_seq = (seq + pend - pstart) & m32
            if buf is not self._buf:
                self._buf, self._view = buf, memoryview(buf)
            if not d.batch or ts - d.batch_ts > seconds:
                self._take(d, self._view[pstart:pend], number, ts, out)
                return None
            # _take's common case: one more piece of a growing batch
            if sources:
                d.pieces.append((d.delivered, number, ts))
            d.batch.append(self._view[pstart:pend])
            d.batch_size += pend - pstart
            d.delivered += pend - pstart
            d.last_packet = number
            d.last_ts = ts if ts > d.last_ts else d.last_ts
            if d.batch_size >= batch:
                self._flush(d, out)
                return None
            self._hot = d
            return run

        run: PcapRun | PcapngRun = (self._pcapng_run(skip, mask, want) if pcapng
                                     else self._pcap_run(skip, mask, want))
        return take

    def _run_ends(self) -> tuple[_Dir, _Dir, int, int, int, int]:
        """A run's two ends: the hot direction it appends to and that direction's peer,
        with the packed addresses and ports of each (the peer's are -1, matching no
        packet, when it has no key of its own yet: its ACKs then end the run)."""
        d, peer = self._hot, self._hot.peer if self._hot is not None else None
        assert d is not None and d.batch and d.keys and d.base is not None
        assert peer is not None
        addrs, ports = _KEY.unpack(d.keys[0])
        paddrs = pports = -1
        if peer.keys and self._dirs.get(peer.keys[0]) is peer:
            paddrs, pports = _KEY.unpack(peer.keys[0])
        return d, peer, addrs, ports, paddrs, pports

    def _run_kept(self, d: _Dir, peer: _Dir, out: list[Any], segments: int, delivered: int,
                  nseq: int, last: int | None, lts: float, acked: int, plack: int,
                  full: bool) -> None:
        """What a run took, written back from its locals into ``d`` and ``peer`` (once
        per run, not per packet); ``full``: the batch reached its size, flush it."""
        self.segments += segments
        d.batch_size += delivered - d.delivered
        d.delivered, d.next_seq, d.last_packet, d.last_ts = delivered, nseq, last, lts
        d.acked, peer.last_ack = acked, plack
        if full:
            self._flush(d, out)

    def _run_state(self) -> tuple[_Dir, _Dir, RunState]:
        """The hot direction, its peer, and the state a run reads, as plain ints and
        floats in :mod:`scan`'s order: addresses and ports of both ends, the next
        sequence number, the last acknowledgement numbers of both, base, acked,
        delivered, last packet, batch start and latest time, batch seconds, room."""
        d, peer, addrs, ports, paddrs, pports = self._run_ends()
        assert d.base is not None and d.last_packet is not None   # (_run_ends, _take)
        return d, peer, (addrs, ports, paddrs, pports, d.next_seq, d.last_ack,
                         peer.last_ack, d.base, d.acked, d.delivered, d.last_packet,
                         d.batch_ts, d.last_ts, self._batch_seconds,
                         self._batch - d.batch_size)

    def _pcap_run(self, skip: int, mask: int, want: int) -> PcapRun:
        """The run :meth:`lane` hands a classic pcap reader (see there): the loop is
        :func:`scan.pcap_run` (compiled with mypyc where a compiler was at install),
        take's paths for the records from ``at`` while each is either the next bytes
        of the hot direction (its append path) or a bare ACK from its peer (its
        _acked, inline); this writes back what it took."""

        def run(buf: bytes, at: int, n: int, count: int, ts: float, out: list[Any],
                little: bool, div: float) -> tuple[int, int, float]:
            d, peer, st = self._run_state()
            r = scan.pcap_run(buf, self._view, at, n, count, ts, little, div, skip, mask,
                              want, *st, d.batch, d.pieces if self._sources else None)
            if r[0] != at:
                self._run_kept(d, peer, out, r[1] - count, *r[3:9], r[9] <= 0)
            return r[0], r[1], r[2]

        return run

    def _pcapng_run(self, skip: int, mask: int, want: int) -> PcapngRun:
        """The run :meth:`lane` hands a pcapng reader: :meth:`_pcap_run` over Enhanced
        Packet Blocks of one interface (its link type and timestamp resolution, pcapng
        4.2), :func:`scan.pcapng_run`. It stops at any other block (an interface,
        Decryption Secrets, a new section), a packet of another interface, or a block
        whose framing is not plain (its length fields disagree, the packet does not
        fit): the reader takes that one as before and reports what is damaged."""

        def run(buf: bytes, at: int, n: int, count: int, ts: float, out: list[Any],
                little: bool, iface: int, units: int, div: float, offset: int
                ) -> tuple[int, int, float]:
            d, peer, st = self._run_state()
            r = scan.pcapng_run(buf, self._view, at, n, count, ts, little, iface, units,
                                div, offset, skip, mask, want, *st, d.batch,
                                d.pieces if self._sources else None)
            if r[0] != at:
                self._run_kept(d, peer, out, r[1] - count, *r[3:9], r[9] <= 0)
            return r[0], r[1], r[2]

        return run

    def feed(self, s: Segment) -> list[StreamEvent]:
        self.segments += 1
        out: list[StreamEvent] = []
        key = self._key(s)
        c = self._conns.get(key)
        syn_only = s.flags & (SYN | ACK) == SYN
        if c is not None and c.closed:
            if not syn_only:
                return out   # a late retransmission of a connection that ended
            c = None         # the 4-tuple is used again: a new connection
        elif c is not None and syn_only and c.isn_client not in (None, s.seq):
            self._finish(c, s.ts, out)
            c = None
        if c is None:
            if not (s.payload or s.flags & SYN):
                return out   # a bare ACK/FIN/RST of a connection we never saw
            c = self._open(key, s, out)
        side: Side = "client" if (s.src, s.sport) == c.client else "server"
        d = c.dirs[side]
        if not d.keys:
            d.keys.append(_segment_key(s))
            self._dirs[d.keys[0]] = d
        if s.flags & SYN:
            if d.base is None:
                d.base = (s.seq + 1) & _M32
            if side == "client":
                c.isn_client = s.seq
            seq = (s.seq + 1) & _M32
        else:
            seq = s.seq
        if d.base is None:
            d.base = seq
        if s.flags & ACK:
            self._acked(d, s.ack)
        self._data(c, d, seq, s, out)
        if s.flags & FIN and d.fin_at is None:
            self._fin(c, d, seq, s, out)
        if s.flags & RST:
            for x in c.dirs.values():
                self._end(c, x, "rst", s.ts, out)
        self._check_end(c, d, s.ts, out)
        _ready(c.dirs["client"])
        _ready(c.dirs["server"])
        return out

    @staticmethod
    def _fin(c: _Conn, d: _Dir, seq: int, s: Segment, out: list[StreamEvent]) -> None:
        d.fin_at = d.offset(seq) + len(s.payload)
        d.fin_ts = s.ts
        if d.dead:
            # The capture lost bytes of this side, not its close: who closed first is
            # still known (the direction itself ended at its gap).
            out.append(Ended(c.number, d.side, "fin after gap", s.ts))

    def _open(self, key: Any, s: Segment, out: list[StreamEvent]) -> _Conn:
        self._count += 1
        src, dst = (s.src, s.sport), (s.dst, s.dport)
        if s.flags & SYN:
            client, how = (src, "SYN") if not s.flags & ACK else (dst, "SYN-ACK")
        elif len(s.payload) > 5 and s.payload[0] == 0x16 and s.payload[5] == 2:
            client, how = dst, "guessed: the first data is a ServerHello"
        elif len(s.payload) > 5 and s.payload[0] == 0x16 and s.payload[5] == 1:
            client, how = src, "guessed: the first data is a ClientHello"
        else:
            client, how = src, "guessed: the first sender (no SYN in the capture)"
        server = dst if client == src else src
        cd, sd = _Dir("client", conn=self._count), _Dir("server", conn=self._count)
        cd.peer, sd.peer = sd, cd
        c = _Conn(self._count, client, {"client": cd, "server": sd},
                  s.seq if how == "SYN" else None)
        self._conns[key] = c
        out.append(Opened(c.number, _addr(*client), _addr(*server), how, s.ts))
        return c

    def _acked(self, d: _Dir, ack: int) -> None:
        """d's side acknowledged up to ``ack``: evidence of how far the peer sent."""
        d.last_ack = ack
        peer = d.peer
        if peer is not None and peer.base is not None:
            peer.acked = max(peer.acked, peer.offset(ack))

    def _in_order(self, d: _Dir, buf: bytes, start: int, end: int, number: int,
                  ts: float) -> list[StreamEvent]:
        """The next bytes of d, ``buf[start:end]``: appended to its batch as a view."""
        if buf is not self._buf:
            self._buf, self._view = buf, memoryview(buf)
        view = self._view[start:end]
        if d.batch and ts - d.batch_ts <= self._batch_seconds:
            # The common case of _take, inline: one more piece of a growing batch (the
            # peer's batch is empty: whichever side started a batch flushed the other's).
            if self._sources:
                d.pieces.append((d.delivered, number, ts))
            d.batch.append(view)
            d.batch_size += end - start
            d.delivered += end - start
            d.next_seq = (d.base + d.delivered) & _M32 if d.base is not None else -1
            d.last_packet = number
            if ts > d.last_ts:
                d.last_ts = ts
            if d.batch_size < self._batch:
                return _NONE
            out: list[StreamEvent] = []
            self._flush(d, out)
            return out
        out = []
        self._take(d, view, number, ts, out)
        return out or _NONE

    def _take(self, d: _Dir, payload: bytes | memoryview, number: int, ts: float,
              out: list[StreamEvent]) -> None:
        """In-order bytes at d.delivered: into the batch (or out at once)."""
        peer = d.peer
        if peer is not None and peer.batch:
            self._flush(peer, out)   # the other direction's bytes came first
        if d.batch and ts - d.batch_ts > self._batch_seconds:
            self._flush(d, out)
        n = len(payload)
        if not d.batch:
            d.batch_ts = d.last_ts = ts
        elif ts > d.last_ts:
            d.last_ts = ts
        if self._sources:
            d.pieces.append((d.delivered, number, ts))
        d.batch.append(payload)
        d.batch_size += n
        d.delivered += n
        d.last_packet = number
        if d.base is not None:
            d.next_seq = (d.base + d.delivered) & _M32
        if d.batch_size >= self._batch:
            self._flush(d, out)

    def _flush(self, d: _Dir, out: list[StreamEvent]) -> None:
        if not d.batch:
            return
        data = b"".join(d.batch)   # (one piece: bytes or a view, copied once here)
        out.append(Data(d.conn, d.side, data, d.delivered - d.batch_size, tuple(d.pieces),
                        d.last_ts))
        d.batch, d.pieces, d.batch_size = [], [], 0

    def _data(self, c: _Conn, d: _Dir, seq: int, s: Segment, out: list[StreamEvent]) -> None:
        if not s.payload and not s.truncated:
            return
        if d.dead:
            d.undecoded += len(s.payload)
            return
        off = d.offset(seq)
        if s.truncated:
            return    # its bytes are unknown: the hole stays and becomes a gap
        end = off + len(s.payload)
        if end <= d.delivered:
            d.retransmitted += 1
            return
        if off > d.delivered:
            have = d.pending.get(off)
            if have is None or len(have[0]) < len(s.payload):
                d.pending_bytes += len(s.payload) - (len(have[0]) if have else 0)
                d.pending[off] = (s.payload, s.number, s.ts)
            if d.pending_bytes > MAX_PENDING:
                self._gap(c, d, s.ts, out)
            return
        self._take(d, s.payload[d.delivered - off:], s.number, s.ts, out)
        while d.pending:
            nxt = min(d.pending)
            if nxt > d.delivered:
                break
            chunk, number, ts = d.pending.pop(nxt)
            d.pending_bytes -= len(chunk)
            if nxt + len(chunk) <= d.delivered:
                continue
            self._take(d, chunk[d.delivered - nxt:], number, ts, out)

    def _gap(self, c: _Conn, d: _Dir, ts: float, out: list[StreamEvent]) -> None:
        self._flush(d, out)
        nxt = min(d.pending) if d.pending else None
        end = nxt if nxt is not None else d.fin_at if d.fin_at is not None else (
            d.acked if d.acked > d.delivered else None)
        before = d.pending[nxt][1] if nxt is not None else None
        undecoded = d.pending_bytes
        d.pending.clear()
        d.pending_bytes = 0
        d.dead = True
        d.undecoded += undecoded
        out.append(Gap(c.number, d.side, d.delivered,
                       None if end is None else end - d.delivered, d.last_packet, before,
                       undecoded, ts, d.fin_ts))
        self._end(c, d, "gap", ts, out)

    def _end(self, c: _Conn, d: _Dir, how: str, ts: float, out: list[StreamEvent]) -> None:
        if not d.ended:
            # Both directions' bytes go out before either end: the other side's
            # batch may hold what this side's FIN answers.
            for x in c.dirs.values():
                self._flush(x, out)
            d.ended = True
            out.append(Ended(c.number, d.side, how, ts))

    def _check_end(self, c: _Conn, d: _Dir, ts: float, out: list[StreamEvent]) -> None:
        if d.fin_at is not None and d.delivered >= d.fin_at and not d.pending:
            self._end(c, d, "fin", ts, out)
        if all(x.ended for x in c.dirs.values()) and not c.closed:
            c.closed = True
            for x in c.dirs.values():
                for k in x.keys:
                    if self._dirs.get(k) is x:
                        del self._dirs[k]
            out.append(Closed(c.number, ts))

    def _finish(self, c: _Conn, ts: float, out: list[StreamEvent]) -> None:
        for d in c.dirs.values():
            if d.ended:
                continue
            hole = d.pending or (d.fin_at is not None and d.fin_at > d.delivered) or (
                d.acked > d.delivered)
            if hole and not d.dead:
                self._gap(c, d, ts, out)
            self._end(c, d, "capture end", ts, out)
        self._check_end(c, c.dirs["client"], ts, out)

    def finish(self, ts: float) -> list[StreamEvent]:
        """The capture ended: holes still open are gaps; every connection closes."""
        out: list[StreamEvent] = []
        for c in self._conns.values():
            self._finish(c, ts, out)
        self._conns.clear()
        self._dirs.clear()
        return out
