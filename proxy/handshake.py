"""Handshake message framing across records (RFC 8446 section 4, RFC 5246 7.4).

Handshake messages are a byte stream inside handshake records: one record may
carry several messages, and one message may span several records (a large
ClientHello, a certificate chain). :class:`HandshakeReassembler` turns record
payloads into whole :class:`HandshakeMessage` objects, remembering which
records each message came from so faults can rewrite them.
"""

from __future__ import annotations

from dataclasses import dataclass

from tlsinspector.proxy.frozen import fast_init

HEADER_LEN = 4

HELLO_REQUEST = 0
CLIENT_HELLO = 1
SERVER_HELLO = 2
NEW_SESSION_TICKET = 4
ENCRYPTED_EXTENSIONS = 8
CERTIFICATE = 11
SERVER_KEY_EXCHANGE = 12
CERTIFICATE_REQUEST = 13
SERVER_HELLO_DONE = 14
CERTIFICATE_VERIFY = 15
CLIENT_KEY_EXCHANGE = 16
FINISHED = 20
KEY_UPDATE = 24

# Limits on one message being assembled (h11 style: named, generous defaults).
# TLS allows 2^24 - 1 bytes per message (RFC 8446 4), and real tools send hellos
# that large (tlsfuzzer's large-hello test sends 16 MB), so the size cap is the
# protocol's own. Records per message are capped so a message in 1-byte records
# (RFC 8446 5.1 allows them) cannot make bookkeeping grow without bound: 2^17
# records carry a 16 MB message in 128-byte records. Beyond either limit the
# reassembler stops buffering this direction and reports why; the bytes are
# still forwarded, unparsed (DESIGN.md "Bounded memory", "Transparency").
MAX_MESSAGE = (1 << 24) - 1
MAX_RECORDS = 1 << 17
# A message spanning more records than this logs only the first and last index.
MAX_LOGGED_RECORDS = 1024


@fast_init
@dataclass(frozen=True, slots=True)
class HandshakeMessage:
    msg_type: int
    body: bytes
    # Indexes (1-based, per direction) of the records the message came from.
    records: tuple[int, ...] = ()

    @property
    def raw(self) -> bytes:
        return bytes((self.msg_type,)) + len(self.body).to_bytes(3, "big") + self.body


def encode_message(msg_type: int, body: bytes) -> bytes:
    return bytes((msg_type,)) + len(body).to_bytes(3, "big") + body


@dataclass(frozen=True, slots=True)
class Fragment:
    """Bytes of a message still incomplete after a record (or at the end)."""

    have: int
    want: int | None
    first_record: int | None   # where the message began (1-based, per direction)
    record_count: int          # records it has spanned so far


class HandshakeReassembler:
    """Plaintext handshake record payloads in, whole messages out.

    Work per fed byte is bounded by a constant, for any fragmentation: nothing
    proportional to the message so far is copied per record (the record index
    list is only appended to, and turned into a tuple once, when the message
    completes).
    """

    __slots__ = ("_buf", "_records", "overflowed", "max_message", "max_records")

    def __init__(self, max_message: int = MAX_MESSAGE, max_records: int = MAX_RECORDS) -> None:
        self._buf = bytearray()
        self._records: list[int] = []
        # Why this direction stopped being parsed (a limit was exceeded), or None.
        self.overflowed: str | None = None
        self.max_message = max_message
        self.max_records = max_records

    @property
    def pending(self) -> int:
        return len(self._buf)

    def want(self) -> int | None:
        if len(self._buf) < HEADER_LEN:
            return None
        return HEADER_LEN + int.from_bytes(self._buf[1:4], "big")

    def feed(self, payload: bytes, record_index: int) -> list[HandshakeMessage]:
        if self.overflowed is not None:
            return []
        if not self._buf and type(payload) is bytes and payload:
            return self._feed_whole(payload, record_index)
        return self._feed_buffered(payload, record_index)

    def _feed_buffered(self, payload: bytes, record_index: int) -> list[HandshakeMessage]:
        self._buf += payload
        if payload:
            self._records.append(record_index)
        out: list[HandshakeMessage] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= HEADER_LEN:
            n = int.from_bytes(buf[pos + 1 : pos + 4], "big")
            if n > self.max_message:
                self._overflow(f"handshake message of {n} bytes exceeds the limit of "
                               f"{self.max_message}")
                break
            if len(buf) - pos < HEADER_LEN + n:
                break
            end = pos + HEADER_LEN + n
            out.append(HandshakeMessage(buf[pos], bytes(buf[pos + HEADER_LEN : end]),
                                        tuple(self._records)))
            pos = end
            # A message that ends exactly at the record end owns no later record.
            self._records = [record_index] if pos < len(buf) else []
        if pos:
            del buf[:pos]
        if self.overflowed is None and len(self._records) > self.max_records:
            self._overflow(f"handshake message spans more than {self.max_records} records")
        return out

    def _feed_whole(self, payload: bytes, record_index: int) -> list[HandshakeMessage]:
        """:meth:`feed` when nothing is buffered (nearly every record): the messages
        are cut from ``payload`` itself, and only a partial last one is buffered (no
        copy of the record into the buffer and out again)."""
        out: list[HandshakeMessage] = []
        pos, size, records = 0, len(payload), (record_index,)
        while size - pos >= HEADER_LEN:
            n = int.from_bytes(payload[pos + 1:pos + 4], "big")
            end = pos + HEADER_LEN + n
            if n > self.max_message or end > size:
                break
            out.append(HandshakeMessage(payload[pos], payload[pos + HEADER_LEN:end], records))
            pos = end
        if pos < size:
            # The rest (a partial message, or one over the limit): the general path.
            out += self._feed_buffered(payload[pos:] if pos else payload, record_index)
        return out

    def abandon(self, why: str) -> int:
        """Stop assembling (a global memory bound bit): frees what is buffered and
        returns how much that was; later records of this side are not parsed."""
        freed = len(self._buf)
        if self.overflowed is None:
            self._overflow(why)
        return freed

    def _overflow(self, why: str) -> None:
        self.overflowed = why
        self._buf.clear()
        self._records = []

    def pending_type(self) -> int | None:
        """The type of the message still being assembled, if one has begun."""
        return self._buf[0] if self._buf else None

    def fragment(self) -> Fragment | None:
        if not self._buf:
            return None
        first = self._records[0] if self._records else None
        return Fragment(len(self._buf), self.want(), first, len(self._records))

    def reset(self) -> None:
        self._buf.clear()
        self._records = []
