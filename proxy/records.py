"""TLS record framing (RFC 8446 section 5.1, RFC 5246 section 6.2.1), sans-io.

:class:`RecordFramer` is fed bytes as they arrive from one side of a connection
and yields, in order, complete :class:`Record` objects and :class:`Opaque` chunks
(bytes that are not TLS records). Concatenating the ``raw`` of everything it
yields, plus :meth:`RecordFramer.close`'s leftover, gives back exactly the bytes
fed in, for any segmentation: the framer never loses or rewrites a byte.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tlsinspector.proxy.frozen import fast_init

HEADER_LEN = 5
# RFC 8446 5.1/5.2: plaintext <= 2^14, ciphertext <= 2^14 + 256 (TLS 1.3) or
# 2^14 + 2048 (TLS 1.2, RFC 5246 6.2.3). Larger records are still framed (the
# length field allows 2^16 - 1) and flagged, never refused: we are a wiretap.
MAX_PLAINTEXT = 1 << 14
MAX_CIPHERTEXT = (1 << 14) + 2048

CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22
APPLICATION_DATA = 23
HEARTBEAT = 24
# 25 tls12_cid (RFC 9146) and 26 ack (RFC 9147) are DTLS-only but registered.
KNOWN_CONTENT_TYPES = frozenset({20, 21, 22, 23, 24, 25, 26})
# A header whose type is unregistered but whose version is 3.x is still a record
# (RFC 8446 5 / RFC 5246 6: the receiver must answer it with unexpected_message,
# so the peer that sent it and the alert after it are worth seeing): framed and
# logged with the type's number, as tlsfuzzer's invalid-content-type probes expect.
# Anything else (plain HTTP, SSH, garbage) cannot be resynchronised: opaque.
TLS_MAJOR = 3


def _frames(ctype: int, major: int | None) -> bool | None:
    """Whether a header starting with ``ctype`` (then ``major``, None while unread)
    frames as a record; None: the next byte decides."""
    if ctype in KNOWN_CONTENT_TYPES:
        return True
    if major is None:
        return None
    return major == TLS_MAJOR


@fast_init
@dataclass(frozen=True, slots=True)
class Record:
    """One TLS record as it was (or will be) on the wire.

    ``length_field`` is None when the header's length equals ``len(payload)``,
    which is always the case for parsed records; faults that deliberately lie
    about the length (truncate without fixing it) set it explicitly.
    """

    content_type: int
    version: int
    payload: bytes
    length_field: int | None = None

    @property
    def length(self) -> int:
        return len(self.payload) if self.length_field is None else self.length_field

    @property
    def raw(self) -> bytes:
        return self.header() + self.payload

    def header(self) -> bytes:
        try:
            return _PACK_HEADER(self.content_type, self.version, self.length)
        except struct.error:  # a value out of range: the error the long form raises
            return (bytes((self.content_type,)) + self.version.to_bytes(2, "big")
                    + self.length.to_bytes(2, "big"))

    @property
    def oversized(self) -> bool:
        return len(self.payload) > MAX_CIPHERTEXT


@dataclass(frozen=True, slots=True)
class Opaque:
    """Bytes that do not frame as TLS records (plain HTTP, garbage, a cut record)."""

    raw: bytes
    reason: str


def is_sslv2_client_hello(data: bytes) -> bool:
    """An SSLv2-compatible ClientHello (RFC 5246 appendix E.2): 2-byte header
    with the top bit set, then msg_type 1 and a version 0x0002 or 0x03xx."""
    return (
        len(data) >= 5
        and data[0] & 0x80 != 0
        and data[2] == 1
        and (data[3] == 0x03 or (data[3] == 0x00 and data[4] == 0x02))
    )


@dataclass(slots=True)  # not frozen: a frozen __init__ costs 3x on the per-record fast path
class Header:
    """A record seen on the fast path: its header only, the payload skipped uncopied."""

    content_type: int
    version: int
    length: int
    payload: bytes | None = None  # kept only when skim(keep=...) asks for it

    def header(self) -> bytes:
        return _PACK_HEADER(self.content_type, self.version, self.length)


@dataclass(frozen=True, slots=True)
class Run:
    """Fast path with ``bulk``: consecutive application_data records of one version,
    each longer than ``bulk`` bytes (a download's 16 KiB records), headers only.

    One object for a read's worth of them instead of a :class:`Header` each: the
    engine counts and logs them in one pass (issue 19, ~65,000 records per GB)."""

    version: int
    lengths: list[int]  # each record's length field, in order


# A record header's type, version and length (RFC 8446 5.1), read (written) in one call.
_HEADER = struct.Struct(">BHH").unpack_from
_PACK_HEADER = struct.Struct(">BHH").pack


class RecordFramer:
    """Incremental record framer for one direction of a connection.

    Once bytes are found that are not a TLS record header, framing cannot
    resynchronise (records carry no markers), so everything from there on is
    yielded as :class:`Opaque`.
    """

    __slots__ = ("_buf", "_opaque", "records", "_first", "_skip", "_cap", "_cap_head")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._opaque = False
        self._first = True
        self._skip = 0  # fast path: payload bytes of the current record still to pass
        # Fast path with ``keep``: the payload of a kept record cut by a read, and its header.
        self._cap: bytearray | None = None
        self._cap_head: Header | None = None
        self.records = 0

    @property
    def opaque(self) -> bool:
        return self._opaque

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Record | Opaque]:
        if self._opaque:
            return [Opaque(bytes(data), "after non-TLS bytes")] if data else []
        self._buf += data
        out: list[Record | Opaque] = []
        buf = self._buf
        pos = 0
        while True:
            avail = len(buf) - pos
            if avail <= 0:
                break
            if self._first and buf[pos] & 0x80 and avail < 5:
                break  # maybe an SSLv2-compatible hello: wait for its first 5 bytes
            if self._first and is_sslv2_client_hello(bytes(buf[pos : pos + 5])):
                # Framed as its own unit so the bytes are logged and forwarded.
                n = ((buf[pos] & 0x7F) << 8 | buf[pos + 1]) + 2
                if avail < n:
                    break
                out.append(Opaque(bytes(buf[pos : pos + n]), "SSLv2-compatible ClientHello"))
                pos += n
                self._first = False
                continue
            frames = _frames(buf[pos], buf[pos + 1] if avail > 1 else None)
            if frames is None:
                break
            if not frames:
                out.append(Opaque(bytes(buf[pos:]), _why_not_tls(bytes(buf[pos : pos + 5]))))
                pos = len(buf)
                self._opaque = True
                break
            if avail < HEADER_LEN:
                break
            length = buf[pos + 3] << 8 | buf[pos + 4]
            if avail < HEADER_LEN + length:
                break
            out.append(
                Record(
                    buf[pos],
                    buf[pos + 1] << 8 | buf[pos + 2],
                    bytes(buf[pos + HEADER_LEN : pos + HEADER_LEN + length]),
                )
            )
            self._first = False
            self.records += 1
            pos += HEADER_LEN + length
        if pos:
            del buf[:pos]
        return out

    def skim(self, data: bytes, keep: int = 0, bulk: int = 0) -> list[Header | Opaque | Run]:
        """The fast path: track record boundaries only, never copying payloads.

        Call it only at a record boundary (``buffered == 0``) and keep calling
        it afterwards; a partial header is buffered (at most 4 bytes) and a
        partial payload is just counted. With ``keep``, the payload of every
        record that is not application_data, and of application_data records
        of at most ``keep`` bytes, is copied into :attr:`Header.payload` (a
        record cut by a read is yielded by the read that completes it): what a
        decryptor needs after the handshake, without copying bulk.

        With ``bulk``, application_data records longer than ``bulk`` (and than
        ``keep``) whose headers are whole in ``data`` come as :class:`Run` items,
        one per run of them with one version, in place of their headers: the
        same records in the same order, only packed.
        """
        out: list[Header | Opaque | Run] = []
        if self._opaque:
            return [Opaque(bytes(data), "after non-TLS bytes")] if data else []
        end = len(data)
        pos = self._skip
        cap = self._cap
        if cap is not None:
            cap += data[:pos]
            if pos <= end:  # the kept record is complete
                assert self._cap_head is not None
                self._cap_head.payload = bytes(cap)
                out.append(self._cap_head)
                self._cap = self._cap_head = None
        if pos >= end:  # the whole read is payload of the current record
            self._skip = pos - end
            return out
        self._skip = 0
        while pos < end:
            if not self._buf and end - pos >= HEADER_LEN:
                # A whole header in this read (the common case): no buffering,
                # and the payload is stepped over in the same iteration.
                ctype = data[pos]
                if not _frames(ctype, data[pos + 1]):
                    self._opaque = True
                    out.append(Opaque(bytes(data[pos:]), _why_not_tls(data[pos:pos + 5])))
                    break
                length = data[pos + 3] << 8 | data[pos + 4]
                if (bulk and ctype == APPLICATION_DATA and length > max(bulk, keep)
                        and length <= MAX_CIPHERTEXT):  # an oversized one is logged as such
                    pos = self._run(data, pos, end, max(bulk, keep), out)
                    continue
                h = Header(ctype, data[pos + 1] << 8 | data[pos + 2], length)
                self.records += 1
                pos += HEADER_LEN
                if keep and (length <= keep or ctype != APPLICATION_DATA):
                    self._keep(h, data, pos, end, out)
                else:
                    out.append(h)
                pos += length
                continue
            # A header cut by the end of a read: buffer its first bytes.
            need = HEADER_LEN - len(self._buf)
            self._buf += data[pos : pos + need]
            pos += min(need, end - pos)
            if len(self._buf) < HEADER_LEN:
                break
            head = bytes(self._buf)
            self._buf.clear()
            if not _frames(head[0], head[1]):
                self._opaque = True
                out.append(Opaque(head + data[pos:], _why_not_tls(head)))
                break
            length = head[3] << 8 | head[4]
            h = Header(head[0], head[1] << 8 | head[2], length)
            self.records += 1
            if keep and (length <= keep or head[0] != APPLICATION_DATA):
                self._keep(h, data, pos, end, out)
            else:
                out.append(h)
            pos += length
        if pos > end:  # the last record continues in the next read
            self._skip = pos - end
        return out

    def _run(self, data: bytes, pos: int, end: int, bulk: int,
             out: list[Header | Opaque | Run]) -> int:
        """The run of bulk records starting with the whole header at ``pos`` (one
        already found to be bulk): it ends at a header cut by the end of ``data``,
        another type or version, or a record of at most ``bulk`` bytes. Returns
        where the next record starts (past ``end`` when the last one continues)."""
        unpack = _HEADER
        _, version, length = unpack(data, pos)
        last = end - HEADER_LEN
        # A download's records are mostly alike (16 KiB each, one header): check every
        # whole header of such a stretch at once, byte column by byte column, with
        # strided slices (C loops) rather than one Python iteration per record.
        stride = HEADER_LEN + length
        count = (last - pos) // stride + 1
        if count > 2:
            head, stop = bytes(data[pos:pos + HEADER_LEN]), pos + count * stride
            if all(data[pos + j:stop:stride] == head[j:j + 1] * count
                   for j in range(HEADER_LEN)):
                lengths = [length] * count
                pos = stop
            else:
                lengths = [length]
                pos += stride
        else:
            lengths = [length]
            pos += stride
        while pos <= last:
            ctype, v, length = unpack(data, pos)
            if (ctype != APPLICATION_DATA or v != version or length <= bulk
                    or length > MAX_CIPHERTEXT):
                break
            lengths.append(length)
            pos += HEADER_LEN + length
        self.records += len(lengths)
        out.append(Run(version, lengths))
        return pos

    def _keep(self, h: Header, data: bytes, pos: int, end: int,
              out: list[Header | Opaque | Run]) -> None:
        """Copy a kept record's payload, or start collecting it when the read cuts it."""
        if pos + h.length <= end:
            h.payload = bytes(data[pos : pos + h.length])
            out.append(h)
        else:
            self._cap = bytearray(data[pos:end])
            self._cap_head = h

    @property
    def in_record(self) -> bool:
        """Whether the stream is inside a record (a cut here leaves a partial one)."""
        return bool(self._buf) or self._skip > 0

    @property
    def header_out(self) -> bool:
        """Fast path, inside a record: its header was yielded already (its payload is
        being stepped over); not when the cut is in its header or in a kept payload,
        which is yielded only once whole."""
        return self._skip > 0 and self._cap is None

    @property
    def missing(self) -> int:
        """Fast path: bytes the current record still lacks (0 at a boundary)."""
        return self._skip or (HEADER_LEN - len(self._buf) if self._buf else 0)

    def held_bytes(self) -> bytes:
        """A copy of the bytes of the record still being assembled."""
        return bytes(self._buf)

    def close(self) -> Opaque | None:
        """The bytes of a record cut short by the end of the stream, if any."""
        if not self._buf:
            return None
        raw = bytes(self._buf)
        self._buf.clear()
        if self._first and raw[0] & 0x80 and (len(raw) < 5 or is_sslv2_client_hello(raw)):
            # An SSLv2-compatible hello has a 2-byte header (RFC 5246 E.2), not
            # TLS's 5: its length is the low 15 bits of the first two bytes.
            want = ((raw[0] & 0x7F) << 8 | raw[1]) + 2 if len(raw) >= 2 else None
            got = f"{len(raw)} of {want} bytes" if want else f"{len(raw)} of 2 header bytes"
            return Opaque(raw, f"partial record at close: SSLv2-compatible ClientHello ({got})")
        want = self.pending_length_of(raw)
        if want is None:
            reason = f"partial record header at close ({len(raw)} of 5 bytes)"
        else:
            reason = f"partial record at close ({len(raw)} of {want} bytes)"
        return Opaque(raw, reason)

    @staticmethod
    def pending_length_of(raw: bytes) -> int | None:
        if len(raw) < HEADER_LEN:
            return None
        return HEADER_LEN + (raw[3] << 8 | raw[4])


def _why_not_tls(head: bytes) -> str:
    if head[:4] in (b"GET ", b"POST", b"HEAD", b"PUT ", b"HTTP", b"OPTI", b"CONN", b"DELE"):
        return "plain HTTP where a TLS record was expected"
    if head[:3] == b"SSH":
        return "SSH banner where a TLS record was expected"
    return f"content type {head[0]} is not a TLS content type"


def preview(data: bytes, limit: int = 48) -> str:
    """A short printable rendering of bytes for logs (non-printables as '.')."""
    text = "".join(chr(b) if 32 <= b < 127 else "." for b in data[:limit])
    return text + ("..." if len(data) > limit else "")
