"""Record protection: open(seal(x)) == x for every supported suite; tampering is a typed error."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsinspector.proxy import keyschedule as ks
from tlsinspector.proxy.protection import (
    ProtectionError,
    RecordProtection,
    sealed_length,
    tls12,
    tls13,
)

SUITES = ks.supported_suites()
HANDSHAKE = 22


def pair(s: ks.Suite, etm: bool, material: bytes) -> tuple[RecordProtection, RecordProtection]:
    if s.tls13:
        secret = (material * 48)[: ks.HASH_LEN[s.prf_hash]]
        return tls13(s, secret), tls13(s, secret)
    c, _ = ks.key_block(s, (material * 48)[:48], bytes(32), bytes(range(32)))
    return tls12(s, c, etm), tls12(s, c, etm)


def header(p: RecordProtection, inner_type: int, version: int, payload: bytes) -> bytes:
    return (bytes((p.outer_type(inner_type),)) + version.to_bytes(2, "big")
            + len(payload).to_bytes(2, "big"))


def test_every_cipher_family_is_covered() -> None:
    fams = {(s.tls13, s.cipher, s.mac, s.tag_len) for s in SUITES}
    for want in [(True, "AES-GCM", None, 16), (True, "CHACHA20-POLY1305", None, 16),
                 (True, "AES-CCM", None, 16), (True, "AES-CCM", None, 8),
                 (False, "AES-GCM", None, 16), (False, "CHACHA20-POLY1305", None, 16),
                 (False, "AES-CBC", "sha1", 0), (False, "AES-CBC", "sha256", 0),
                 (False, "AES-CBC", "sha384", 0)]:
        assert want in fams


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SUITES), st.booleans(), st.binary(min_size=1, max_size=8),
       st.binary(max_size=600), st.sampled_from([21, 22, 23]), st.integers(0, 40),
       st.integers(0, 2**40), st.integers(0, 10_000))
def test_open_seal_roundtrip_and_tamper(s: ks.Suite, etm: bool, material: bytes, data: bytes,
                                        inner: int, padding: int, seq: int, flip: int) -> None:
    sealer, opener = pair(s, etm, material)
    sealer.seq = opener.seq = seq
    version = 0x0303
    payload = sealer.seal(inner, data, version, padding=padding if s.tls13 else padding * 16)
    hdr = header(sealer, inner, version, payload)
    if padding == 0:
        assert len(payload) == sealed_length(s, len(data), etm)
    assert opener.open(hdr, payload) == (inner, data)
    assert sealer.seq == opener.seq == seq + 1
    # Any changed byte of payload (or the header version: it is in the AAD/MAC).
    bad = bytearray(payload)
    bad[flip % len(bad)] ^= 0x01
    opener.seq = seq
    with pytest.raises(ProtectionError) as e:
        opener.open(hdr, bytes(bad))
    assert e.value.kind in {"bad_tag", "bad_mac", "bad_padding", "too_short"}
    assert e.value.alert == 20
    opener.seq = seq
    with pytest.raises(ProtectionError):
        opener.open(hdr[:1] + b"\x03\x01" + hdr[3:], payload)
    # A wrong sequence number does not open either (replay/reorder protection).
    opener.seq = seq + 1
    with pytest.raises(ProtectionError):
        opener.open(hdr, payload)


@pytest.mark.parametrize("s", [s for s in SUITES if s.code in (0x1301, 0xC02F, 0xC013)],
                         ids=lambda s: s.name)
def test_too_short(s: ks.Suite) -> None:
    _, opener = pair(s, False, b"k")
    with pytest.raises(ProtectionError) as e:
        opener.open(b"\x17\x03\x03\x00\x03", b"abc")
    assert e.value.kind == "too_short"


def test_tls13_all_zero_inner_is_typed() -> None:
    s = ks.suite(0x1301)
    assert s is not None
    sealer, opener = pair(s, False, b"z")
    payload = sealer.seal(0, b"", padding=4)  # content type 0 + zeros: no type at all
    with pytest.raises(ProtectionError) as e:
        opener.open(b"\x17\x03\x03\x00\x15", payload)
    assert e.value.kind == "bad_inner"


def test_clone_is_independent_and_repr_has_no_keys() -> None:
    s = ks.suite(0xC02F)
    assert s is not None
    a, b = pair(s, False, b"q")
    c = a.clone()
    a.seal(23, b"x")
    assert (a.seq, c.seq) == (1, 0)
    assert repr(c) == "Tls12AeadProtection(TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, seq=0)"


def test_encrypted_alert_lengths() -> None:
    lengths = {c: sealed_length(ks.suite(c), 2) for c in (0x1301, 0x1303, 0xC02F, 0xCCA8)}  # type: ignore[arg-type]
    assert lengths == {0x1301: 19, 0x1303: 19, 0xC02F: 26, 0xCCA8: 18}
    cbc = ks.suite(0xC013)
    assert cbc is not None
    assert (sealed_length(cbc, 2), sealed_length(cbc, 2, True)) == (48, 52)
