"""Both legs of a proxied connection as a pcapng capture (sans-io: bytes out).

``run --pcap`` writes what each leg really carried: the client leg (client <->
proxy) on interface 0 and the server leg (proxy <-> server) on interface 1,
each packet an IPv4 or IPv6 datagram (LINKTYPE_RAW) with the real addresses and
ports and a synthesized TCP header whose sequence and acknowledgement numbers
follow the bytes (RFC 9293 3.4), so Wireshark reassembles each stream. A record
a fault touched carries an EPB comment (pcapng opt_comment): scenario, action,
before -> after on the leg that got the changed bytes, and "original" on the
other.

:class:`CaptureWriter` turns engine-level happenings (a side sent bytes, the
proxy sent bytes toward a side, a FIN or RST) into whole pcapng blocks; the
addon appends each block to the file as it comes, so the file is valid at every
moment. The header blocks come from dpkt's pcapng classes. By hand, and why: packet
blocks (dpkt's copy every packet several times: 3.4 times the proxy's CPU per
GB), the IP/TCP headers (dpkt's would checksum every payload byte in Python; the
TCP checksum is left 0, which Wireshark does not check by default), and the
Decryption Secrets Block (dpkt has none; pcapng section 4.7, type 0x0000000A,
secrets type TLSK).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Any

import dpkt  # type: ignore[import-untyped]

from tlsinspector.proxy.history import Side

LINKTYPE_RAW = 101
CLIENT_LEG, SERVER_LEG = 0, 1
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
MAX_SEGMENT = 65000          # payload per packet: under the 65535-byte IP length field
DSB_TYPE, TLS_KEY_LOG = 0x0000000A, 0x544C534B
_V4 = struct.Struct("!BBHHHBBH4s4s")
_V6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")


def header_blocks() -> bytes:
    """The Section Header Block and the two interfaces, one per leg."""
    shb = dpkt.pcapng.SectionHeaderBlockLE(opts=[
        dpkt.pcapng.PcapngOptionLE(code=dpkt.pcapng.PCAPNG_OPT_SHB_USERAPPL,
                                   data=b"tlsinspector"),
        dpkt.pcapng.PcapngOptionLE(code=dpkt.pcapng.PCAPNG_OPT_ENDOFOPT)])
    out = bytes(shb)
    for name, desc in (("client-leg", "client <-> tlsinspector"),
                       ("server-leg", "tlsinspector <-> server")):
        idb = dpkt.pcapng.InterfaceDescriptionBlockLE(linktype=LINKTYPE_RAW, snaplen=0, opts=[
            dpkt.pcapng.PcapngOptionLE(code=dpkt.pcapng.PCAPNG_OPT_IF_NAME,
                                       data=name.encode()),
            dpkt.pcapng.PcapngOptionLE(code=dpkt.pcapng.PCAPNG_OPT_IF_DESCRIPTION,
                                       data=desc.encode()),
            dpkt.pcapng.PcapngOptionLE(code=dpkt.pcapng.PCAPNG_OPT_IF_TSRESOL, data=b"\x06"),
            dpkt.pcapng.PcapngOptionLE(code=dpkt.pcapng.PCAPNG_OPT_ENDOFOPT)])
        out += bytes(idb)
    return out


def secrets_block(keylog: bytes) -> bytes:
    """A Decryption Secrets Block holding NSS key log lines (pcapng 4.7)."""
    pad = b"\0" * (-len(keylog) % 4)
    # block type, total length, secrets type, secrets length, data + pad, total length
    total = 16 + len(keylog) + len(pad) + 4
    return (struct.pack("<IIII", DSB_TYPE, total, TLS_KEY_LOG, len(keylog)) + keylog + pad
            + struct.pack("<I", total))


_EPB = struct.Struct("<IIIIIII")   # type, total length, interface, ts high, ts low, caplen, len
_OPT = struct.Struct("<HH")


Buffers = list[bytes | memoryview]


def _packet(leg: int, ts: float, ip_tcp: bytes, payload: bytes | memoryview,
            comment: str | None) -> Buffers:
    """An Enhanced Packet Block (pcapng 4.3), packed here rather than with dpkt's
    EnhancedPacketBlockLE: its bytes() copies the packet data several times, which
    tripled the proxy's CPU per GB with --pcap (bench/pcap_bench.py). As three
    buffers, the payload uncopied: the caller writes them with one writev(2)."""
    us = round(ts * 1e6)
    n = len(ip_tcp) + len(payload)
    pad = b"\0" * (-n % 4)
    opts = b""
    if comment:
        text = comment.encode()
        opts = (_OPT.pack(1, len(text)) + text + b"\0" * (-len(text) % 4)   # opt_comment
                + _OPT.pack(0, 0))                                         # opt_endofopt
    total = 28 + n + len(pad) + len(opts) + 4
    return [_EPB.pack(6, total, leg, us >> 32, us & 0xFFFFFFFF, n, n) + ip_tcp, payload,
            pad + opts + struct.pack("<I", total)]


def _ip_bytes(host: str) -> bytes:
    ip = ipaddress.ip_address(host.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.packed


def _datagram(src: bytes, dst: bytes, tcp: bytes, size: int) -> bytes:
    """The IP header for a TCP header plus ``size`` payload bytes, and the TCP header."""
    if len(src) == 4 and len(dst) == 4:
        hdr = _V4.pack(0x45, 0, 20 + len(tcp) + size, 0, 0x4000, 64, 6, 0, src, dst)
        s = sum(struct.unpack("!10H", hdr))
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        return hdr[:10] + struct.pack("!H", ~s & 0xFFFF) + hdr[12:] + tcp
    src = src if len(src) == 16 else b"\0" * 10 + b"\xff\xff" + src
    dst = dst if len(dst) == 16 else b"\0" * 10 + b"\xff\xff" + dst
    return _V6.pack(6 << 28, len(tcp) + size, 6, 64, src, dst) + tcp


@dataclass(slots=True)
class _Leg:
    """One TCP connection as seen on the wire: two endpoints and their sequence numbers."""

    index: int
    a: tuple[bytes, int]      # the endpoint that connected (client, or the proxy)
    b: tuple[bytes, int]
    seq: dict[str, int] = field(default_factory=dict)   # "a"/"b" -> next sequence number
    open: bool = False
    closed: set[str] = field(default_factory=set)
    app: dict[str, _Walker] = field(default_factory=dict)   # headers-only, per direction


class CaptureWriter:
    """Packets for one proxied connection, both legs; every method returns pcapng bytes.

    ``client``/``proxy_front`` are the client leg's endpoints, ``proxy_back``/``server``
    the server leg's ("host", port). ISNs come from ``isn`` (seeded by the caller).
    """

    def __init__(self, client: tuple[str, int], proxy_front: tuple[str, int],
                 isn: int, headers_only: bool = False) -> None:
        self.headers_only = headers_only
        self._isn = isn
        self.legs: dict[Side, _Leg] = {
            "client": _Leg(CLIENT_LEG, (_ip_bytes(client[0]), client[1]),
                           (_ip_bytes(proxy_front[0]), proxy_front[1])),
        }

    def server_leg(self, proxy_back: tuple[str, int], server: tuple[str, int]) -> None:
        if "server" not in self.legs:
            self.legs["server"] = _Leg(SERVER_LEG, (_ip_bytes(proxy_back[0]), proxy_back[1]),
                                       (_ip_bytes(server[0]), server[1]))

    def _segment(self, leg: _Leg, frm: str, flags: int, payload: bytes | memoryview, ts: float,
                 comment: str | None) -> Buffers:
        to = "b" if frm == "a" else "a"
        src, dst = (leg.a, leg.b) if frm == "a" else (leg.b, leg.a)
        ack = leg.seq[to] if flags != SYN else 0
        tcp = _TCP.pack(src[1], dst[1], leg.seq[frm] & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4,
                        flags if flags == SYN else flags | ACK, 65535, 0, 0)
        leg.seq[frm] += len(payload) + (1 if flags & (SYN | FIN) else 0)
        return _packet(leg.index, ts, _datagram(src[0], dst[0], tcp, len(payload)), payload,
                       comment)

    def _ensure_open(self, leg: _Leg, ts: float) -> Buffers:
        """The three-way handshake, once, so Wireshark sees the start of each stream."""
        if leg.open:
            return []
        leg.open = True
        leg.seq = {"a": self._isn + 1000 * leg.index, "b": self._isn + 7777 + 1000 * leg.index}
        return (self._segment(leg, "a", SYN, b"", ts, None)
                + self._segment(leg, "b", SYN | ACK, b"", ts, None)
                + self._segment(leg, "a", ACK, b"", ts, None))

    def _end(self, side: Side, toward_side: bool) -> tuple[_Leg, str] | None:
        """The leg and the endpoint key ("a"/"b") of a write: by ``side`` itself, or by
        the proxy toward ``side``."""
        leg = self.legs.get(side)
        if leg is None:
            return None
        if side == "client":
            return leg, ("b" if toward_side else "a")
        return leg, ("a" if toward_side else "b")

    def data(self, side: Side, toward_side: bool, data: bytes, ts: float,
             comment: str | None = None) -> bytes:
        """``side`` sent ``data`` to the proxy, or (``toward_side``) the proxy sent it to
        ``side``: the packets on that side's leg."""
        return b"".join(self.data_parts(side, toward_side, data, ts, comment))

    def data_parts(self, side: Side, toward_side: bool, data: bytes, ts: float,
                   comment: str | None = None) -> Buffers:
        """:meth:`data` as the buffers to write in order, ``data`` not copied (views of
        it): for one writev(2) while ``data`` is still what it is."""
        end = self._end(side, toward_side)
        if end is None or not data:
            return []
        leg, frm = end
        parts = self._ensure_open(leg, ts)
        if self.headers_only:
            data = self._zero_app_data(leg, frm, data)
        view = memoryview(data)
        for i in range(0, len(data), MAX_SEGMENT):
            parts += self._segment(leg, frm, PSH, view[i:i + MAX_SEGMENT], ts,
                                   comment if i == 0 else None)
        return parts

    def close(self, side: Side, toward_side: bool, how: str, ts: float) -> bytes:
        end = self._end(side, toward_side)
        if end is None:
            return b""
        leg, frm = end
        if frm in leg.closed or "rst" in leg.closed:
            return b""
        out = self._ensure_open(leg, ts)
        leg.closed.add(frm if how == "fin" else "rst")
        return b"".join(out + self._segment(leg, frm, RST if how == "rst" else FIN, b"", ts,
                                            None))

    def _zero_app_data(self, leg: _Leg, frm: str, data: bytes) -> bytes:
        walker = leg.app.get(frm)
        if walker is None:
            walker = leg.app[frm] = _Walker()
        return walker.zero(data)


@dataclass(slots=True)
class _Walker:
    """--pcap-headers-only: application_data payloads become zeros; record headers,
    lengths and TCP sequence numbers stay true, so every record still frames
    (RFC 8446 5.1). State carries across writes: a header may span two."""

    head: bytearray = field(default_factory=bytearray)
    left: int = 0
    app: bool = False

    def zero(self, data: bytes) -> bytes:
        n = len(data)
        out = bytearray(n)   # zeros: what is not application data is copied in, per record
        i = 0
        while i < n:
            if self.left:
                k = min(self.left, n - i)
                if not self.app:
                    out[i:i + k] = data[i:i + k]
                self.left -= k
                i += k
                continue
            take = min(5 - len(self.head), n - i)
            self.head += data[i:i + take]
            out[i:i + take] = data[i:i + take]
            i += take
            if len(self.head) == 5:
                self.app = self.head[0] == 23
                self.left = int.from_bytes(self.head[3:5], "big")
                self.head.clear()
        return bytes(out)


def fault_comment(fault: dict[str, Any], delivered: bool) -> str:
    """The packet comment for a fault: what it did on this leg (or: the original)."""
    detail = fault.get("detail", "")
    if isinstance(detail, dict) and "before" in detail and "after" in detail:
        detail = f"{detail['before']} -> {detail['after']}"
    what = f"{fault.get('scenario')}: {fault.get('action')} {detail}".strip()
    if delivered:
        return f"tlsinspector fault {what}"
    return f"tlsinspector: original bytes; fault {what} changed them on the other leg"
