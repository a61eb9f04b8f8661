"""Handshake message framing across records (RFC 8446 section 4, RFC 5246 7.4).

Handshake messages are a byte stream inside handshake records: one record may
carry several messages, and one message may span several records (a large
ClientHello, a certificate chain). :class:`HandshakeReassembler` turns record
payloads into whole :class:`HandshakeMessage` objects, remembering which
records each message came from so faults can rewrite them.
"""

from __future__ import annotations

from dataclasses import dataclass

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

# A generous cap: TLS allows 2^24 - 1, but no real first flight message comes
# close; beyond this the reassembler stops buffering and reports the message as
# unparsed instead of holding megabytes (DESIGN.md "Bounded memory").
MAX_MESSAGE = 1 << 20


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
    records: tuple[int, ...]


class HandshakeReassembler:
    """Plaintext handshake record payloads in, whole messages out."""

    __slots__ = ("_buf", "_records", "overflowed")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._records: list[int] = []
        self.overflowed = False

    @property
    def pending(self) -> int:
        return len(self._buf)

    def want(self) -> int | None:
        if len(self._buf) < HEADER_LEN:
            return None
        return HEADER_LEN + int.from_bytes(self._buf[1:4], "big")

    def feed(self, payload: bytes, record_index: int) -> list[HandshakeMessage]:
        if self.overflowed:
            return []
        self._buf += payload
        if payload:
            self._records.append(record_index)
        out: list[HandshakeMessage] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= HEADER_LEN:
            n = int.from_bytes(buf[pos + 1 : pos + 4], "big")
            if n > MAX_MESSAGE:
                self.overflowed = True
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
        if self.overflowed:
            buf.clear()
            self._records = []
        return out

    def pending_type(self) -> int | None:
        """The type of the message still being assembled, if one has begun."""
        return self._buf[0] if self._buf else None

    def fragment(self) -> Fragment | None:
        if not self._buf:
            return None
        return Fragment(len(self._buf), self.want(), tuple(self._records))

    def reset(self) -> None:
        self._buf.clear()
        self._records = []
