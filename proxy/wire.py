"""Byte-level readers and writers shared by the TLS codecs.

Every structure in this package is read with a :class:`Reader` and written with
plain ``bytes`` concatenation helpers next to it, so that ``write(read(b)) == b``
holds by construction (STYLE.md rule 2). The only exception the readers raise is
:class:`DecodeError`, which carries the TLS alert a strict peer would send for
the same input (RFC 8446 section 6.2: decode_error for malformed messages).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager

DECODE_ERROR = 50
ILLEGAL_PARAMETER = 47


class DecodeError(Exception):
    """Malformed wire data; ``alert`` is the alert description a peer would send."""

    def __init__(self, reason: str, alert: int = DECODE_ERROR) -> None:
        super().__init__(reason)
        self.reason = reason
        self.alert = alert


class Reader:
    """A cursor over immutable bytes with length-prefixed sub-blocks."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def remaining(self) -> int:
        return self.end - self.pos

    def eof(self) -> bool:
        return self.pos >= self.end

    def take(self, n: int, what: str = "field") -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise DecodeError(f"{what}: need {n} bytes, {self.end - self.pos} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def rest(self) -> bytes:
        out = self.data[self.pos : self.end]
        self.pos = self.end
        return out

    def uint(self, size: int, what: str = "field") -> int:
        return int.from_bytes(self.take(size, what), "big")

    def u8(self, what: str = "field") -> int:
        return self.uint(1, what)

    def u16(self, what: str = "field") -> int:
        return self.uint(2, what)

    def u24(self, what: str = "field") -> int:
        return self.uint(3, what)

    def vector(self, length_size: int, what: str = "vector") -> bytes:
        """An opaque vector with a ``length_size``-byte length prefix (RFC 8446 3.4)."""
        n = self.uint(length_size, f"{what} length")
        return self.take(n, what)

    @contextmanager
    def block(self, length_size: int, what: str = "block") -> Iterator[Reader]:
        """A length-prefixed sub-reader that must be consumed exactly."""
        n = self.uint(length_size, f"{what} length")
        if self.pos + n > self.end:
            raise DecodeError(f"{what}: length {n} exceeds the {self.end - self.pos} bytes left")
        sub = Reader(self.data, self.pos, self.pos + n)
        yield sub
        if not sub.eof():
            raise DecodeError(f"{what}: {sub.remaining()} unexpected trailing bytes")
        self.pos += n

    def u16_list(self, length_size: int, what: str) -> tuple[int, ...]:
        raw = self.vector(length_size, what)
        if len(raw) % 2:
            raise DecodeError(f"{what}: odd length {len(raw)}")
        return struct.unpack(f">{len(raw) // 2}H", raw)


def uint(value: int, size: int) -> bytes:
    return value.to_bytes(size, "big")


def vector(data: bytes, length_size: int) -> bytes:
    return len(data).to_bytes(length_size, "big") + data


def u16_list(values: tuple[int, ...] | list[int], length_size: int) -> bytes:
    return vector(struct.pack(f">{len(values)}H", *values), length_size)
