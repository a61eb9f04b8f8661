"""JA3 and JA4 against published vectors (JA3 is also checked against tshark live)."""

from __future__ import annotations

import hashlib
import random

from tlsinspector.proxy.fingerprint import fingerprints, ja3, ja3_string, ja4, ja4_r
from tlsinspector.proxy.hello import ClientHello, Extension

# FoxIO's JA4 documentation, Chrome example:
#   JA4   = t13d1516h2_8daaf6152771_e5627efa2ab1
#   ciphers (sorted) 002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,
#   cca8,cca9; extensions (sorted, without SNI and ALPN) 0005,000a,000b,000d,0012,0015,
#   0017,001b,0023,002b,002d,0033,4469,ff01; signature algorithms in wire order
#   0403,0804,0401,0503,0805,0501,0806,0601
CIPHERS = [0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013,
           0xC014, 0x009C, 0x009D, 0x002F, 0x0035]
SIGS = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]
EXTS = [0x0000, 0x0005, 0x000A, 0x000B, 0x000D, 0x0010, 0x0012, 0x0015, 0x0017, 0x001B,
        0x0023, 0x002B, 0x002D, 0x0033, 0x4469, 0xFF01]


def u16s(values: list[int], length_size: int) -> bytes:
    body = b"".join(v.to_bytes(2, "big") for v in values)
    return len(body).to_bytes(length_size, "big") + body


def chrome_like(seed: int) -> ClientHello:
    rng = random.Random(seed)
    bodies = {
        0x0000: u16s([], 0) + b"\x00\x0e\x00\x00\x0bexample.com",
        0x000A: u16s([0x3A3A, 0x001D, 0x0017, 0x0018], 2),
        0x000B: b"\x01\x00",
        0x000D: u16s(SIGS, 2),
        0x0010: b"\x00\x0c\x02h2\x08http/1.1",
        0x002B: b"\x06" + bytes.fromhex("7a7a03040303"),
    }
    exts = [Extension(t, bodies.get(t, b"")) for t in EXTS]
    rng.shuffle(exts)  # Chrome permutes its extensions; JA4 sorts them
    exts = [Extension(0x1A1A, b""), *exts, Extension(0x2A2A, b"\x00")]
    return ClientHello(0x0303, bytes(32), bytes(32), (0x0A0A, *CIPHERS), b"\x00", tuple(exts))


def test_ja4_published_chrome_vector_regardless_of_order_and_grease() -> None:
    for seed in range(5):
        ch = chrome_like(seed)
        assert ja4(ch) == "t13d1516h2_8daaf6152771_e5627efa2ab1"
        assert ja4_r(ch).startswith("t13d1516h2_002f,0035,009c,009d,1301")
        assert ja4_r(ch).endswith("_0403,0804,0401,0503,0805,0501,0806,0601")


def test_ja4_no_sni_no_alpn_no_extensions() -> None:
    ch = ClientHello(0x0303, bytes(32), b"", (0x002F,), b"\x00", None)
    assert ja4(ch) == ("t12i0100" + "00_" + hashlib.sha256(b"002f").hexdigest()[:12]
                       + "_000000000000")


def test_ja3_string_and_hash_drop_grease() -> None:
    ch = chrome_like(0)
    s = ja3_string(ch)
    version, ciphers, exts, curves, formats = s.split(",")
    assert version == "771"
    assert ciphers.split("-")[:3] == ["4865", "4866", "4867"]
    assert "2570" not in ciphers and "6682" not in exts and "14906" not in curves
    assert curves == "29-23-24" and formats == "0"
    assert ja3(ch) == hashlib.md5(s.encode()).hexdigest()


def test_cached_fingerprints_equal_the_computed_ones_and_ignore_only_what_neither_reads(
        ) -> None:
    """fingerprints() caches by shape: hellos that differ in random, session id and
    key share give the cached answer; a change to any byte JA3 or JA4 reads (a group,
    the ALPN offer, a signature algorithm, a suite) gives a new one."""
    from dataclasses import replace

    base = chrome_like(0)
    for seed in range(3):
        ch = replace(chrome_like(seed), random=bytes([seed]) * 32,
                     session_id=bytes([seed + 1]) * 32)
        ch = replace(ch, extensions=tuple(
            Extension(e.type, bytes([seed]) * 36) if e.type == 0x0033 else e
            for e in ch.extensions or ()))
        assert fingerprints(ch) == (ja3(ch), ja4(ch)) == fingerprints(chrome_like(seed))
    for t, body in ((0x000A, u16s([0x001D], 2)), (0x0010, b"\x00\x03\x02h3"),
                    (0x000D, u16s([0x0403], 2)), (0x002B, b"\x02\x03\x03")):
        ch = replace(base, extensions=tuple(Extension(e.type, body) if e.type == t else e
                                            for e in base.extensions or ()))
        assert fingerprints(ch) == (ja3(ch), ja4(ch)) != fingerprints(base), hex(t)
    fewer = replace(base, cipher_suites=base.cipher_suites[:-1])
    assert fingerprints(fewer) == (ja3(fewer), ja4(fewer)) != fingerprints(base)
    none = ClientHello(0x0303, bytes(32), b"", (0x002F,), b"\x00", None)
    assert fingerprints(none) == (ja3(none), ja4(none))
