"""JA3 and JA4 fingerprints of a ClientHello.

JA3 (Salesforce): "SSLVersion,Ciphers,Extensions,EllipticCurves,PointFormats"
in decimal, GREASE (RFC 8701) removed, then MD5. JA4 (FoxIO, JA4.md):
"<t><version><d|i><#ciphers><#extensions><alpn>_<sha256 sorted ciphers>_<sha256
sorted extensions without SNI/ALPN + '_' + signature algorithms>", 12 hex each.
"""

from __future__ import annotations

import functools
import hashlib

from tlsinspector.proxy.hello import ClientHello, Extension
from tlsinspector.proxy.names import EXT_SUPPORTED_VERSIONS
from tlsinspector.proxy.wire import DecodeError, Reader

SERVER_NAME, SUPPORTED_GROUPS, EC_POINT_FORMATS = 0, 10, 11
SIGNATURE_ALGORITHMS, ALPN = 13, 16
SUPPORTED_VERSIONS = EXT_SUPPORTED_VERSIONS

_JA4_VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3",
                 0x0002: "s2", 0xFEFF: "d1", 0xFEFD: "d2", 0xFEFC: "d3"}


def _is_grease(v: int) -> bool:
    return v & 0x0F0F == 0x0A0A and v >> 8 == v & 0xFF


def _u16s(ch: ClientHello, ext_type: int, length_size: int) -> list[int]:
    ext = ch.extension(ext_type)
    if ext is None:
        return []
    try:
        r = Reader(ext.data)
        return list(r.u16_list(length_size, "list"))
    except DecodeError:
        return []


def _point_formats(ch: ClientHello) -> list[int]:
    ext = ch.extension(EC_POINT_FORMATS)
    if ext is None:
        return []
    try:
        return list(Reader(ext.data).vector(1, "formats"))
    except DecodeError:
        return []


def ja3_string(ch: ClientHello) -> str:
    def join(values: list[int]) -> str:
        return "-".join(str(v) for v in values if not _is_grease(v))

    return ",".join([
        str(ch.legacy_version),
        join(list(ch.cipher_suites)),
        join([e.type for e in ch.extensions or ()]),
        join(_u16s(ch, SUPPORTED_GROUPS, 2)),
        join(_point_formats(ch)),
    ])


def ja3(ch: ClientHello) -> str:
    return hashlib.md5(ja3_string(ch).encode(), usedforsecurity=False).hexdigest()


def _alpn_first(ch: ClientHello) -> str | None:
    ext = ch.extension(ALPN)
    if ext is None:
        return None
    try:
        r = Reader(ext.data)
        with r.block(2, "protocol_name_list") as lst:
            first = lst.vector(1, "protocol_name")
            lst.rest()
        return first.decode("latin-1")
    except DecodeError:
        return None


def _ja4_parts(ch: ClientHello, transport: str) -> tuple[str, list[str], list[str], list[str]]:
    versions = [v for v in _u16s(ch, SUPPORTED_VERSIONS, 1) if not _is_grease(v)]
    version = _JA4_VERSIONS.get(max(versions) if versions else ch.legacy_version, "00")
    sni = "d" if ch.extension(SERVER_NAME) is not None else "i"
    ciphers = [f"{c:04x}" for c in ch.cipher_suites if not _is_grease(c)]
    exts = [e.type for e in ch.extensions or () if not _is_grease(e.type)]
    alpn = _alpn_first(ch)
    if not alpn:
        alpn_chars = "00"
    elif alpn[0].isalnum() and alpn[-1].isalnum() and alpn.isascii():
        alpn_chars = alpn[0] + alpn[-1]
    else:
        h = alpn.encode("latin-1").hex()
        alpn_chars = h[0] + h[-1]
    a = (f"{transport}{version}{sni}{min(len(ciphers), 99):02d}{min(len(exts), 99):02d}"
         f"{alpn_chars}")
    ext_hex = [f"{e:04x}" for e in exts if e not in (SERVER_NAME, ALPN)]
    sigs = [f"{s:04x}" for s in _u16s(ch, SIGNATURE_ALGORITHMS, 2) if not _is_grease(s)]
    return a, sorted(ciphers), sorted(ext_hex), sigs


def ja4_r(ch: ClientHello, transport: str = "t") -> str:
    a, ciphers, exts, sigs = _ja4_parts(ch, transport)
    c = ",".join(exts) + ("_" + ",".join(sigs) if sigs else "")
    return f"{a}_{','.join(ciphers)}_{c}"


def _h12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12] if text else "000000000000"


def ja4(ch: ClientHello, transport: str = "t") -> str:
    a, ciphers, exts, sigs = _ja4_parts(ch, transport)
    c = ",".join(exts) + ("_" + ",".join(sigs) if sigs else "")
    return f"{a}_{_h12(','.join(ciphers))}_{_h12(c) if exts else '000000000000'}"


#: The extensions whose bodies JA3 or JA4 read; every other one counts by its type.
_READ = frozenset({SUPPORTED_GROUPS, EC_POINT_FORMATS, SUPPORTED_VERSIONS, ALPN,
                   SIGNATURE_ALGORITHMS})
Shape = tuple[int, tuple[int, ...], tuple[tuple[int, bytes], ...] | None]


def shape(ch: ClientHello) -> Shape:
    """Everything JA3 and JA4 depend on. A client sends the same shape on every
    connection (its random, session id, key shares and PSK change, and neither
    fingerprint reads them), so :func:`fingerprints` computes each shape once."""
    exts = None if ch.extensions is None else tuple(
        (e.type, e.data if e.type in _READ else b"") for e in ch.extensions)
    return ch.legacy_version, ch.cipher_suites, exts


def fingerprints(ch: ClientHello) -> tuple[str, str]:
    """``(ja3(ch), ja4(ch))``, cached by :func:`shape`."""
    return _by_shape(shape(ch))


@functools.lru_cache(maxsize=512)
def _by_shape(key: Shape) -> tuple[str, str]:
    version, suites, exts = key
    ch = ClientHello(version, b"", b"", suites, b"", None if exts is None else tuple(
        Extension(t, d) for t, d in exts))
    return ja3(ch), ja4(ch)
