"""Key derivation against published vectors (RFC 8448, the TLS 1.2 PRF vector)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tlsinspector.proxy import keyschedule as ks


def test_rfc8448_server_handshake_keys() -> None:
    # RFC 8448 3 "Simple 1-RTT Handshake": server handshake traffic secret -> key, iv.
    s = ks.suite(0x1301)
    assert s is not None and s.tls13
    key, iv = ks.traffic_keys(s, bytes.fromhex(
        "b67b7d690cc16c4e75e54213cb2d37b4e9c912bcded9105d42befd59d391ad38"))
    assert key.hex() == "3fce516009c21727d0f2e4e86ee403bc"
    assert iv.hex() == "5d313eb2671276ee13000b30"


def test_key_update_changes_secret() -> None:
    s = ks.suite(0x1302)
    assert s is not None and s.prf_hash == "sha384"
    sec = bytes(48)
    nxt = ks.next_traffic_secret(s, sec)
    assert len(nxt) == 48 and nxt != sec
    assert nxt == ks.hkdf_expand_label("sha384", sec, b"traffic upd", b"", 48)


def test_tls12_prf_sha256_vector() -> None:
    # The widely used P_SHA256 test vector (IETF TLS WG, 2009).
    out = ks.prf("sha256", bytes.fromhex("9bbe436ba940f017b17652849a71db35"), b"test label",
                 bytes.fromhex("a0ba9f936cda311827a6f796ffd5198c"), 100)
    assert out.hex() == (
        "e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a6b301791e90d35c9"
        "c9a46b4e14baf9af0fa022f7077def17abfd3797c0564bab4fbc91666e9def9b97fce34f796789ba"
        "a48082d122ee42c5a72e5a5110fff70187347b66")


def test_suite_table() -> None:
    expect = {
        0x1303: ("CHACHA20-POLY1305", 32, 12, None, "sha256"),
        0x1305: ("AES-CCM", 16, 12, None, "sha256"),
        0xC02F: ("AES-GCM", 16, 4, None, "sha256"),
        0xC030: ("AES-GCM", 32, 4, None, "sha384"),
        0xCCA8: ("CHACHA20-POLY1305", 32, 12, None, "sha256"),
        0xC013: ("AES-CBC", 16, 16, "sha1", "sha256"),
        0xC027: ("AES-CBC", 16, 16, "sha256", "sha256"),
        0xC028: ("AES-CBC", 32, 16, "sha384", "sha384"),
        0x002F: ("AES-CBC", 16, 16, "sha1", "sha256"),
    }
    for code, want in expect.items():
        s = ks.suite(code)
        assert s is not None, hex(code)
        assert (s.cipher, s.key_len, s.iv_len, s.mac, s.prf_hash) == want, s
    assert ks.suite(0x1305).tag_len == 8  # type: ignore[union-attr]
    assert ks.suite(0x000A) is None  # 3DES: not supported
    assert ks.suite(0x0005) is None  # RC4
    assert ks.suite(0xFFFF) is None


def test_key_block_split() -> None:
    s = ks.suite(0xC013)
    assert s is not None
    c, sv = ks.key_block(s, bytes(48), bytes(32), bytes(range(32)))
    block = ks.prf("sha256", bytes(48), b"key expansion", bytes(range(32)) + bytes(32), 2 * 56)
    assert c.mac_key == block[:20] and sv.mac_key == block[20:40]
    assert c.key == block[40:56] and sv.key == block[56:72] and c.iv == block[72:88]
    assert "mac=20" in repr(c) and c.key.hex() not in repr(c)


@given(st.sampled_from(["sha1", "sha256", "sha384"]), st.binary(min_size=1, max_size=64),
       st.binary(max_size=80), st.integers(1, 200))
def test_hkdf_expand_agrees_with_cryptography(hash_name: str, prk: bytes, info: bytes,
                                              length: int) -> None:
    """The hashlib HKDF-Expand (RFC 5869 2.3) against cryptography's, several
    blocks long too."""
    from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

    theirs = HKDFExpand(ks.HASHES[hash_name](), length, info).derive(prk)
    assert ks.hkdf_expand(hash_name, prk, info, length) == theirs


@given(st.binary(min_size=32, max_size=48))
def test_traffic_keys_agree_with_hkdf_expand_label_for_every_tls13_suite(secret: bytes) -> None:
    # traffic_keys takes a shortcut (one HMAC per value): the general path is the reference.
    for s in (x for x in ks.supported_suites() if x.tls13):
        assert ks.traffic_keys(s, secret) == (
            ks.hkdf_expand_label(s.prf_hash, secret, b"key", b"", s.key_len),
            ks.hkdf_expand_label(s.prf_hash, secret, b"iv", b"", s.iv_len))


@given(st.sampled_from(["sha1", "sha256", "sha384"]), st.binary(max_size=300),
       st.lists(st.binary(max_size=200), min_size=1, max_size=4))
def test_hmac_key_agrees_with_the_standard_library(hash_name: str, key: bytes,
                                                   msgs: list[bytes]) -> None:
    """HmacKey (RFC 2104 on hashlib, the pads hashed once) against hmac.digest, keys
    empty, shorter and longer than the hash's block (hashed first), one key reused
    for several messages (its states are copied, never changed)."""
    import hmac

    mac = ks.HmacKey(hash_name, key)
    for m in msgs:
        assert mac.digest(m) == hmac.digest(key, m, hash_name)
    assert repr(mac) == "HmacKey(...)"  # key material is never printed
