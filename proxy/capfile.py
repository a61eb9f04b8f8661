"""pcap and pcapng files to packets and key log secrets (sans-io: bytes in).

``tlsinspector analyze`` reads a capture in large chunks and hands them to
:class:`CaptureParser`, which returns, in file order:

- packets as plain tuples ``(ts, link, buf, start, end, number)``: capture time
  (unix seconds), the link type of the packet's interface, where the frame bytes
  (as captured) are: ``buf[start:end]`` (not sliced here: the fast path reads its
  headers in place and copies only the TCP payload), and the packet's number in
  the file, 1-based as Wireshark counts;
- whatever a *lane* put in the list instead of packets: given a lane factory
  (``CaptureParser(lane=...)``, tcpstream.Reassembler.lane), the packets of a link
  type it has a lane for are handed to it in this loop, in file order, and it
  puts what it made of them (stream events) in the list: the common case of a
  bulk capture then costs no object per packet. A lane that grew a direction's
  batch returns a *run*, which takes the records (classic pcap) or Enhanced Packet
  Blocks of the same interface (pcapng) that continue it in one call
  (tcpstream.Reassembler.lane): no call per packet either;
- :class:`Secrets`: the NSS key log lines of a pcapng Decryption Secrets Block
  (pcapng draft section 4.7, block type 0x0000000A, secrets type ``TLSK``), in
  the file where they are, so secrets written after some packets (as
  ``run --pcap-keys`` and ``editcap --inject-secrets`` do) reach the engine when
  they would reach Wireshark.

Why by hand and not with dpkt's reader (dpkt still decodes unusual frames,
proxy/tcpstream.py): dpkt's pcapng reader skips Decryption Secrets Blocks, takes
the first interface's link type and time resolution for every packet (a pcapng
may mix them per interface, pcapng 4.2), reads only the first section, and costs
about 2 us per packet in objects (a third of analyze's time on Ethernet-sized
segments). The formats are small: classic pcap (a 24-byte file header, then a
16-byte header per packet, either byte order, microsecond or nanosecond magic)
and pcapng's block framing (type, total length, body, total length again;
https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng-02.html).

Damage is reported, never raised past :class:`CaptureError`: a file that is no
capture at all, a block whose length fields disagree, or a file that ends inside
a header or a packet (:meth:`CaptureParser.end`). Memory: one block at a time
(a block over :data:`MAX_BLOCK` is damage, not a reason to buffer).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PCAP_MAGIC_US, PCAP_MAGIC_NS = 0xA1B2C3D4, 0xA1B23C4D
SHB, IDB, PB, SPB, EPB, DSB = 0x0A0D0D0A, 1, 2, 3, 6, 0x0000000A
BYTE_ORDER_MAGIC = 0x1A2B3C4D
TLS_KEY_LOG = 0x544C534B          # "TLSK": NSS key log lines (pcapng 4.7)
OPT_IF_TSRESOL, OPT_IF_TSOFFSET = 9, 14
MAX_BLOCK = 16 << 20              # no packet or secrets block is this large
MAX_SNAP = 1 << 20                # a classic pcap record's caplen above this is damage
BRIDGE = 1 << 17                  # bytes of a new chunk that finish the last chunk's packet
_BLOCK = {o: struct.Struct(o + "II") for o in "<>"}     # block type, total length
_EPB = {o: struct.Struct(o + "IIII") for o in "<>"}     # interface, time high/low, caplen

Packet = tuple[float, int, bytes, int, int, int]
# A lane: (buf, start, end, number, ts, out) takes the packet and puts what it made of
# it, if anything, in out; a factory gives one per link type, or None.
# A lane may return a *run*: a function that takes the records (classic pcap) or
# Enhanced Packet Blocks (pcapng) from a given offset while they continue what the
# lane just took (tcpstream.PcapRun, tcpstream.PcapngRun). The factory is told the
# framing: (link type, pcapng).
Lane = Callable[[bytes, int, int, int, float, list[Any]], Any]
LaneFactory = Callable[[int, bool], Lane | None]


class CaptureError(ValueError):
    """The file is not a capture, or is damaged at a known place."""


@dataclass(frozen=True, slots=True)
class Secrets:
    """Key log lines embedded in the capture (a Decryption Secrets Block)."""

    data: bytes
    after_packet: int     # how many packets came before it
    ts: float = 0.0       # the capture time of the packet before it


@dataclass(frozen=True, slots=True)
class Interface:
    link: int
    divisor: float        # timestamp units per second
    offset: int           # seconds added to every timestamp (if_tsoffset)
    take: Lane | None = None
    units: int = 1_000_000  # the same, an integer: a time is split into seconds and
    #                         the rest as classic pcap's is, so the same packets give
    #                         the same float in either format


def _time(hi: int, lo: int, i: Interface) -> float:
    """A pcapng timestamp (pcapng 4.3: 64 bits of the interface's units) in seconds."""
    u = (hi << 32) | lo
    return (u // i.units + i.offset) + (u % i.units) / i.divisor


def sniff(head: bytes) -> str | None:
    """"pcap", "pcapng" or None, from the first four bytes of a file."""
    if len(head) < 4:
        return None
    if struct.unpack("<I", head[:4])[0] == SHB:
        return "pcapng"
    for order in "<>":
        if struct.unpack(order + "I", head[:4])[0] in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            return "pcap"
    return None


class CaptureParser:
    """Chunks of a pcap or pcapng file in, packets and secrets out."""

    def __init__(self, lane: LaneFactory | None = None) -> None:
        self._lane = lane
        self._lanes: dict[int, Lane | None] = {}
        self.last_ts = 0.0           # the capture time of the last packet read
        self._buf = b""
        self._pos = 0              # file offset of _buf[0]
        self.kind: str | None = None
        self.packets = 0
        self.links: list[int] = []  # every link type seen (pcap: one)
        self._order = "<"
        self._divisor = 1e6
        self._link = 0
        self._ifaces: list[Interface] = []
        self._rec: struct.Struct = struct.Struct("<IIII")

    def feed(self, data: bytes) -> list[Any]:
        """Packets and secrets (and what the lane made) of the whole units read."""
        out: list[Any] = []
        if self._buf and self.kind is not None and len(data) > BRIDGE:
            # The last chunk ended inside a packet: finish it from a small bridge (the
            # leftover and the chunk's first bytes) rather than copying the whole chunk
            # behind the leftover; then read on in the chunk itself.
            old = len(self._buf)
            bridge = self._buf + data[:BRIDGE]
            at = self._parse(bridge, 0, out)
            if at >= old:
                self._pos += old
                self._buf = b""
                at = self._parse(data, at - old, out)
                self._pos += at
                self._buf = data[at:]
                return out
            # (at < old: a unit longer than the bridge, nothing was read; the plain way)
        buf = self._buf + data if self._buf else data
        at = 0
        if self.kind is None:
            at = self._start(buf)
            if self.kind is None:
                self._buf = buf
                return out
        at = self._parse(buf, at, out)
        self._pos += at
        self._buf = buf[at:]
        return out

    def _lane_for(self, link: int) -> Lane | None:
        if self._lane is None:
            return None
        if link not in self._lanes:
            self._lanes[link] = self._lane(link, self.kind == "pcapng")
        return self._lanes[link]

    def _parse(self, buf: bytes, at: int, out: list[Any]) -> int:
        """Every whole unit of ``buf`` from ``at``; where the first incomplete one starts."""
        if self.kind == "pcap":
            return self._pcap(buf, at, out)
        return self._pcapng(buf, at, out)

    def end(self) -> None:
        """The file ended: raise if it ended inside a header or a packet."""
        if self.kind is None:
            raise CaptureError("not a pcap or pcapng capture (too short for a file header)")
        if self._buf:
            raise CaptureError(f"truncated at byte {self._pos + len(self._buf)}: the last "
                               f"{len(self._buf)} bytes are part of a header or packet "
                               f"(after packet {self.packets})")

    # -- file headers ---------------------------------------------------------------------

    def _start(self, buf: bytes) -> int:
        kind = sniff(buf[:4])
        if kind is None:
            if len(buf) >= 4:
                # Text (a pasted hex dump, a log) rather than a binary capture: say so.
                texty = all(32 <= b < 127 or b in b"\t\r\n" for b in buf[:4])
                raise CaptureError("not a pcap or pcapng capture (unknown magic number "
                                   f"{buf[:4].hex()})" + ("; it starts with text: for a hex "
                                                         "dump use --hex FILE" if texty else ""))
            return 0
        if kind == "pcapng":
            self.kind = kind   # the SHB is an ordinary block
            return 0
        if len(buf) < 24:
            return 0
        self._order = "<" if struct.unpack("<I", buf[:4])[0] in (
            PCAP_MAGIC_US, PCAP_MAGIC_NS) else ">"
        magic, major, _minor, _zone, _sig, _snap, link = struct.unpack(
            self._order + "IHHiIII", buf[:24])
        if major != 2:
            raise CaptureError(f"pcap version {major} is not supported (only 2.x)")
        self._divisor = 1e9 if magic == PCAP_MAGIC_NS else 1e6
        # The upper bits of the link type field hold the FCS length (pcap spec 4).
        self._link = link & 0x0FFFFFFF
        self.links = [self._link]
        self._rec = struct.Struct(self._order + "IIII")
        self.kind = "pcap"
        return 24

    # -- classic pcap -----------------------------------------------------------------------

    def _pcap(self, buf: bytes, at: int, out: list[Any]) -> int:
        unpack, n, link, div = self._rec.unpack_from, len(buf), self._link, self._divisor
        count, take, ts = self.packets, self._lane_for(link), self.last_ts
        try:
            while at + 16 <= n:
                sec, frac, caplen, _orig = unpack(buf, at)
                if caplen > MAX_SNAP:
                    raise CaptureError(f"damaged at byte {self._pos + at}: a packet header "
                                       f"claims {caplen} bytes (after packet {count})")
                end = at + 16 + caplen
                if end > n:
                    break
                count += 1
                ts = sec + frac / div
                if take is None:
                    out.append((ts, link, buf, at + 16, end, count))
                    at = end
                    continue
                run = take(buf, at + 16, end, count, ts, out)
                at = end
                if run is not None:
                    # The lane grew a direction's batch: it takes the records that
                    # continue it in one call (tcpstream.Reassembler.lane).
                    at, count, ts = run(buf, at, n, count, ts, out, self._order == "<", div)
        finally:
            self.packets, self.last_ts = count, ts
        return at

    # -- pcapng -----------------------------------------------------------------------------

    def _pcapng(self, buf: bytes, at: int, out: list[Any]) -> int:
        n = len(buf)
        head, epb = _BLOCK[self._order], _EPB[self._order]
        while at + 12 <= n:
            btype, total = head.unpack_from(buf, at)
            if btype == SHB:   # the same bytes in either byte order
                self._section(buf, at)
                head, epb = _BLOCK[self._order], _EPB[self._order]
                btype, total = head.unpack_from(buf, at)
            if total < 12 or total % 4 or total > MAX_BLOCK:
                raise CaptureError(f"damaged at byte {self._pos + at}: block type "
                                   f"{btype:#x} has length {total} (after packet "
                                   f"{self.packets})")
            end = at + total
            if end > n:
                break
            if head.unpack_from(buf, end - 8)[1] != total:
                raise CaptureError(f"damaged at byte {self._pos + at}: block type "
                                   f"{btype:#x}'s two length fields disagree")
            if btype == EPB:
                # An Enhanced Packet Block (pcapng 4.3), the packets of nearly every
                # capture: read here, in the loop, rather than in a call per packet.
                if total < 32:
                    raise CaptureError(f"damaged at byte {self._pos + at}: a packet block "
                                       f"of {total} bytes")
                iface, hi, lo, caplen = epb.unpack_from(buf, at + 8)
                if 32 + caplen > total or iface >= len(self._ifaces):
                    self._epb(buf, at, end, out)   # says what is damaged
                else:
                    i = self._ifaces[iface]
                    self.packets += 1
                    u, units = (hi << 32) | lo, i.units
                    ts = (u // units + i.offset) + (u % units) / i.divisor
                    self.last_ts = ts
                    if i.take is None:
                        out.append((ts, i.link, buf, at + 28, at + 28 + caplen,
                                    self.packets))
                    else:
                        run = i.take(buf, at + 28, at + 28 + caplen, self.packets, ts, out)
                        if run is not None:
                            # The lane grew a direction's batch: it takes the blocks of
                            # this interface that continue it in one call.
                            end, self.packets, self.last_ts = run(
                                buf, end, n, self.packets, ts, out, self._order == "<",
                                iface, i.units, i.divisor, i.offset)
            else:
                self._other(btype, buf, at, end, out)
            at = end
        return at

    def _section(self, buf: bytes, at: int) -> None:
        """A Section Header Block starts a section: its byte order, no interfaces yet."""
        if len(buf) < at + 12:
            return
        bom = buf[at + 8:at + 12]
        if bom == struct.pack("<I", BYTE_ORDER_MAGIC):
            self._order = "<"
        elif bom == struct.pack(">I", BYTE_ORDER_MAGIC):
            self._order = ">"
        else:
            raise CaptureError(f"damaged at byte {self._pos + at}: a section header with "
                               f"byte-order magic {bom.hex()}")
        self._ifaces = []

    def _iface(self, index: int, at: int) -> Interface:
        if index >= len(self._ifaces):
            raise CaptureError(f"damaged at byte {self._pos + at}: a packet on interface "
                               f"{index}, which no Interface Description Block declared")
        return self._ifaces[index]

    def _epb(self, buf: bytes, at: int, end: int, out: list[Any]) -> None:
        iface, hi, lo, caplen, _orig = struct.unpack_from(self._order + "IIIII", buf, at + 8)
        if 28 + caplen + 4 > end - at:
            raise CaptureError(f"damaged at byte {self._pos + at}: a packet of {caplen} "
                               "bytes in a smaller block")
        i = self._iface(iface, at)
        self.packets += 1
        ts = self.last_ts = _time(hi, lo, i)
        if i.take is None:
            out.append((ts, i.link, buf, at + 28, at + 28 + caplen, self.packets))
        else:
            i.take(buf, at + 28, at + 28 + caplen, self.packets, ts, out)

    def _other(self, btype: int, buf: bytes, at: int, end: int, out: list[Any]) -> None:
        order = self._order
        if btype == IDB:
            link = struct.unpack_from(order + "H", buf, at + 8)[0]
            divisor, offset = self._options(buf, at + 16, end - 4)
            self._ifaces.append(Interface(link, divisor, offset, self._lane_for(link),
                                          int(divisor)))
            if link not in self.links:
                self.links.append(link)
        elif btype == SPB:
            # A Simple Packet Block: interface 0, no timestamp (pcapng 4.4).
            orig = struct.unpack_from(order + "I", buf, at + 8)[0]
            i = self._iface(0, at)
            self.packets += 1
            out.append((0.0, i.link, buf, at + 12, min(end - 4, at + 12 + orig), self.packets))
        elif btype == PB:
            iface, _drops, hi, lo, caplen, _orig = struct.unpack_from(
                order + "HHIIII", buf, at + 8)
            i = self._iface(iface, at)
            self.packets += 1
            ts = self.last_ts = _time(hi, lo, i)
            out.append((ts, i.link, buf, at + 28, min(end - 4, at + 28 + caplen),
                        self.packets))
        elif btype == DSB:
            stype, slen = struct.unpack_from(order + "II", buf, at + 8)
            if stype == TLS_KEY_LOG and 16 + slen + 4 <= end - at:
                out.append(Secrets(bytes(buf[at + 16:at + 16 + slen]), self.packets,
                                   self.last_ts))
        # Other blocks (name resolution, statistics, custom, the SHB itself) carry
        # nothing the analysis reads.

    def _options(self, buf: bytes, at: int, end: int) -> tuple[float, int]:
        """An IDB's if_tsresol and if_tsoffset (pcapng 4.2); defaults: microseconds, 0."""
        divisor, offset = 1e6, 0
        while at + 4 <= end:
            code, length = struct.unpack_from(self._order + "HH", buf, at)
            value = buf[at + 4:at + 4 + length]
            if code == 0:
                break
            if code == OPT_IF_TSRESOL and length >= 1:
                r = value[0]
                divisor = float(2 ** (r & 0x7F)) if r & 0x80 else float(10 ** (r & 0x7F))
            elif code == OPT_IF_TSOFFSET and length == 8:
                offset = struct.unpack(self._order + "q", value)[0]
            at += 4 + length + (-length % 4)
        return divisor, offset
