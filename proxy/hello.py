"""ClientHello, ServerHello and HelloRetryRequest, read and written losslessly.

RFC 8446 4.1.2/4.1.3 and RFC 5246 7.4.1.2/7.4.1.3. Extensions are kept as one
ordered tuple with raw bodies (decoded views live in :mod:`proxy.extensions`),
"no extensions block" (None) is distinct from an empty one (``()``), and any
bytes after the extensions block are kept in ``trailing`` so that
``encode(parse(b)) == b`` for every body :func:`parse_client_hello` accepts.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tlsinspector.proxy.names import EXT_SUPPORTED_VERSIONS
from tlsinspector.proxy.wire import DecodeError, Reader, u16_list, uint, vector

# RFC 8446 4.1.3: a ServerHello with this random is a HelloRetryRequest.
HRR_RANDOM = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")

SUPPORTED_VERSIONS = EXT_SUPPORTED_VERSIONS
_EXT_HEAD = struct.Struct(">HH")


@dataclass(frozen=True, slots=True)
class Extension:
    type: int
    data: bytes

    @property
    def raw(self) -> bytes:
        return _EXT_HEAD.pack(self.type, len(self.data)) + self.data


# Hellos live as long as their connection (History keeps them for the diagnosis at
# close: 10,000 idle connections, issue 19's RSS row), and most of their parts repeat
# from one connection to the next: a client stack sends the same cipher suites and the
# same extension bodies each time. Equal parts therefore share one object (they are
# immutable: frozen Extensions, bytes, tuples of ints); the values are unchanged.
# Bounded: bodies of at most SHARE_MAX_BODY bytes, SHARE_MAX entries, and the table is
# emptied when full (a peer sending ever new bodies only stops the sharing). Not the
# extensions whose bodies are fresh on every connection (key shares, PSK identities
# and binders, tickets, cookies, ECH): they would only churn the table.
SHARE_MAX = 4096
SHARE_MAX_BODY = 256
UNSHARED = frozenset({35, 41, 44, 51, 0xFE0D})  # RFC 5077, RFC 8446 4.2.11/4.2.2/4.2.8, ECH
_EXTENSIONS: dict[bytes, Extension] = {}    # by type, length and body
_SUITES: dict[bytes, tuple[int, ...]] = {}   # by the vector, its length included


def _shared_extension(raw: bytes, ext_type: int) -> Extension:
    """The one Extension for these bytes (type, length and body)."""
    e = _EXTENSIONS.get(raw)
    if e is None:
        if len(_EXTENSIONS) >= SHARE_MAX:
            _EXTENSIONS.clear()
        e = _EXTENSIONS[raw] = Extension(ext_type, raw[4:])
    return e


def _shared_suites(raw: bytes) -> tuple[int, ...]:
    """The one tuple for this cipher_suites vector."""
    suites = _SUITES.get(raw)
    if suites is None:
        if len(_SUITES) >= SHARE_MAX:
            _SUITES.clear()
        suites = _SUITES[raw] = Reader(raw).u16_list(2, "cipher_suites")
    return suites


def parse_extensions(r: Reader) -> tuple[tuple[Extension, ...] | None, bytes]:
    """The optional extensions block at the end of a hello, plus trailing bytes."""
    if r.eof():
        return None, b""
    data = r.data
    total = r.u16("extensions length")
    pos, end = r.pos, r.pos + total
    if end > r.end:
        raise DecodeError(f"extensions: length {total} exceeds the {r.end - pos} bytes left")
    exts: list[Extension] = []
    # Hot loop (every hello): plain slicing rather than Reader calls.
    while pos < end:
        if pos + 4 > end:
            raise DecodeError(f"extensions: {end - pos} unexpected trailing bytes")
        ext_type = data[pos] << 8 | data[pos + 1]
        n = data[pos + 2] << 8 | data[pos + 3]
        if pos + 4 + n > end:
            raise DecodeError(f"extension data: need {n} bytes, {end - pos - 4} left")
        if n > SHARE_MAX_BODY or ext_type in UNSHARED:
            exts.append(Extension(ext_type, data[pos + 4 : pos + 4 + n]))
        else:
            exts.append(_shared_extension(data[pos : pos + 4 + n], ext_type))
        pos += 4 + n
    r.pos = end
    return tuple(exts), r.rest()


def find_extension(exts: tuple[Extension, ...] | None, ext_type: int) -> Extension | None:
    """The first extension of that type (a duplicate is a peer's error, kept as sent)."""
    for e in exts or ():
        if e.type == ext_type:
            return e
    return None


def encode_extensions(exts: tuple[Extension, ...] | None) -> bytes:
    if exts is None:
        return b""
    return vector(b"".join([_EXT_HEAD.pack(e.type, len(e.data)) + e.data for e in exts]), 2)


@dataclass(frozen=True, slots=True)
class ClientHello:
    legacy_version: int
    random: bytes
    session_id: bytes
    cipher_suites: tuple[int, ...]
    compression_methods: bytes
    extensions: tuple[Extension, ...] | None
    trailing: bytes = b""

    def extension(self, ext_type: int) -> Extension | None:
        return find_extension(self.extensions, ext_type)

    def encode(self) -> bytes:
        return (
            uint(self.legacy_version, 2)
            + self.random
            + vector(self.session_id, 1)
            + u16_list(self.cipher_suites, 2)
            + vector(self.compression_methods, 1)
            + encode_extensions(self.extensions)
            + self.trailing
        )


@dataclass(frozen=True, slots=True)
class ServerHello:
    legacy_version: int
    random: bytes
    session_id: bytes
    cipher_suite: int
    compression_method: int
    extensions: tuple[Extension, ...] | None
    trailing: bytes = b""

    @property
    def is_hrr(self) -> bool:
        return self.random == HRR_RANDOM

    def extension(self, ext_type: int) -> Extension | None:
        return find_extension(self.extensions, ext_type)

    @property
    def selected_version(self) -> int:
        """The negotiated version: supported_versions when present (RFC 8446 4.2.1)."""
        ext = self.extension(SUPPORTED_VERSIONS)
        if ext is not None and len(ext.data) == 2:
            return int.from_bytes(ext.data, "big")
        return self.legacy_version

    def encode(self) -> bytes:
        return (
            uint(self.legacy_version, 2)
            + self.random
            + vector(self.session_id, 1)
            + uint(self.cipher_suite, 2)
            + uint(self.compression_method, 1)
            + encode_extensions(self.extensions)
            + self.trailing
        )


def _client_suites(r: Reader) -> tuple[int, ...]:
    """ClientHello.cipher_suites (RFC 8446 4.1.2), shared when they repeat (above)."""
    start = r.pos
    if r.end - start >= 2:
        n = r.data[start] << 8 | r.data[start + 1]
        if n <= SHARE_MAX_BODY and n % 2 == 0 and start + 2 + n <= r.end:
            r.pos = start + 2 + n
            return _shared_suites(r.data[start : start + 2 + n])
    return r.u16_list(2, "cipher_suites")  # (its errors, as before)


def parse_client_hello(body: bytes) -> ClientHello:
    r = Reader(body)
    legacy_version = r.u16("legacy_version")
    random = r.take(32, "random")
    session_id = r.vector(1, "legacy_session_id")
    if len(session_id) > 32:
        raise DecodeError(f"legacy_session_id of {len(session_id)} bytes (max 32)")
    suites = _client_suites(r)
    compression = r.vector(1, "legacy_compression_methods")
    exts, trailing = parse_extensions(r)
    return ClientHello(legacy_version, random, session_id, suites, compression, exts, trailing)


def parse_server_hello(body: bytes) -> ServerHello:
    r = Reader(body)
    legacy_version = r.u16("legacy_version")
    random = r.take(32, "random")
    session_id = r.vector(1, "legacy_session_id_echo")
    if len(session_id) > 32:
        raise DecodeError(f"legacy_session_id_echo of {len(session_id)} bytes (max 32)")
    suite = r.u16("cipher_suite")
    compression = r.u8("legacy_compression_method")
    exts, trailing = parse_extensions(r)
    return ServerHello(legacy_version, random, session_id, suite, compression, exts, trailing)
