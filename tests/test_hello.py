"""Hello codecs: golden captures from real stacks decode right and re-encode byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tlsinspector.proxy import extensions as ext
from tlsinspector.proxy import hello
from tlsinspector.proxy.handshake import HandshakeReassembler
from tlsinspector.proxy.hello import (
    HRR_RANDOM,
    ClientHello,
    Extension,
    ServerHello,
    parse_client_hello,
    parse_server_hello,
)
from tlsinspector.proxy.messages import describe
from tlsinspector.proxy.records import Record, RecordFramer
from tlsinspector.proxy.wire import DecodeError, vector

FIXTURES = Path(__file__).parent / "fixtures" / "hellos"

# Report 003 (wolfSSL to smtp.gmail.com:465), the ClientHello as posted:
#   16 0303 004f             handshake record, TLS 1.2, 79 bytes
#   01 00004b 0303           client_hello, 75 bytes, legacy_version TLS 1.2
#   2e2aec85...3a05          random (32 bytes)
#   00                       no session id
#   0014 c027 c023 ... c012  10 cipher suites, all ECDHE
#   01 00                    compression: null
#   000e                     14 bytes of extensions:
#   000d 000a 0008 0403 0203 0401 0201   signature_algorithms only
WOLFSSL_REPORT_003 = bytes.fromhex(
    "16030300 4f010000 4b03032e 2aec857f 15dd095f 22d15382 60d78067 28aa6748"
    "cef071ab 63d0b23e 553a0500 0014c027 c023c00a c009c007 c008c014 c013c011"
    "c0120100 000e000d 000a0008 04030203 04010201".replace(" ", ""))


def hello_of(stream: bytes) -> tuple[bytes, ClientHello]:
    framer, hs = RecordFramer(), HandshakeReassembler()
    for item in framer.feed(stream):
        assert isinstance(item, Record)
        for msg in hs.feed(item.payload, 1):
            assert msg.msg_type == 1
            return msg.body, parse_client_hello(msg.body)
    raise AssertionError("no ClientHello")


@pytest.mark.parametrize("name", ["openssl", "openssl-tls12", "gnutls", "curl", "python"])
def test_golden_client_hellos_roundtrip(name: str) -> None:
    body, ch = hello_of((FIXTURES / f"{name}.bin").read_bytes())
    assert ch.encode() == body
    desc, _ = describe_body(body)
    assert desc["sni"] == "example.com"
    assert desc["legacy_version"] == "0x0303"
    assert desc["cipher_suites"] and all(isinstance(s, str) for s in desc["cipher_suites"])
    types = [e["type"] for e in desc["extensions"]]
    assert types[0] != "0x0000" and "server_name" in types
    if name == "openssl-tls12":
        assert "supported_versions" not in desc
    else:
        assert "0x0304" in desc["supported_versions"]
        assert desc["key_share_groups"]


def describe_body(body: bytes) -> tuple[dict, object]:  # type: ignore[type-arg]
    from tlsinspector.proxy.handshake import HandshakeMessage

    return describe(HandshakeMessage(1, body))


def test_report_003_wolfssl_hello_has_no_groups_and_no_sni() -> None:
    body, ch = hello_of(WOLFSSL_REPORT_003)
    assert ch.encode() == body
    assert ch.legacy_version == 0x0303
    assert len(ch.cipher_suites) == 10 and ch.cipher_suites[0] == 0xC027
    assert ch.compression_methods == b"\x00"
    assert [e.type for e in ch.extensions or ()] == [ext.SIGNATURE_ALGORITHMS]
    desc, _ = describe_body(body)
    assert "sni" not in desc and "supported_groups" not in desc
    assert desc["cipher_suites"][0] == "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256"
    assert desc["signature_algorithms"] == [
        "ecdsa_secp256r1_sha256", "ecdsa_sha1", "rsa_pkcs1_sha256", "rsa_pkcs1_sha1"]


def test_no_extensions_block_differs_from_empty_block() -> None:
    base = bytes.fromhex("0303") + bytes(32) + b"\x00" + bytes.fromhex("0002002f") + b"\x01\x00"
    none = parse_client_hello(base)
    empty = parse_client_hello(base + b"\x00\x00")
    assert none.extensions is None and empty.extensions == ()
    assert none.encode() == base and empty.encode() == base + b"\x00\x00"


def test_trailing_bytes_and_unknown_and_grease_extensions_survive() -> None:
    exts = bytes.fromhex("0a0a0000" "fe0d0003abcdef" "00000000")
    body = (bytes.fromhex("0303") + bytes(32) + b"\x00" + bytes.fromhex("00041a1a002f")
            + b"\x01\x00" + len(exts).to_bytes(2, "big") + exts + b"junk")
    ch = parse_client_hello(body)
    assert [e.type for e in ch.extensions or ()] == [0x0A0A, 0xFE0D, 0x0000]
    assert ch.trailing == b"junk"
    assert ch.encode() == body


def test_server_hello_and_hrr() -> None:
    sh_body = (bytes.fromhex("0303") + bytes(range(32)) + b"\x00" + bytes.fromhex("1301") + b"\x00"
               + bytes.fromhex("0006" "002b00020304"))
    sh = parse_server_hello(sh_body)
    assert sh.selected_version == 0x0304 and not sh.is_hrr and sh.encode() == sh_body
    hrr_body = (bytes.fromhex("0303") + HRR_RANDOM + b"\x00" + bytes.fromhex("1301") + b"\x00"
                + bytes.fromhex("000c" "002b00020304" "003300020017"))
    hrr = parse_server_hello(hrr_body)
    assert isinstance(hrr, ServerHello) and hrr.is_hrr and hrr.encode() == hrr_body
    from tlsinspector.proxy.handshake import HandshakeMessage

    desc, _ = describe(HandshakeMessage(2, hrr_body))
    assert desc["type"] == "hello_retry_request"
    assert desc["key_share_groups"] == ["secp256r1"]


@pytest.mark.parametrize("cut", [1, 10, 34, 35, 40, 44])
def test_truncated_hello_is_a_decode_error_with_alert(cut: int) -> None:
    body, _ = hello_of((FIXTURES / "openssl.bin").read_bytes())
    with pytest.raises(DecodeError) as e:
        parse_client_hello(body[:cut])
    assert e.value.alert == 50


def test_unparsable_hello_is_described_not_raised() -> None:
    from tlsinspector.proxy.handshake import HandshakeMessage

    desc, hello = describe(HandshakeMessage(1, b"\x03\x03\x00"))
    assert hello is None and desc["type"] == "client_hello" and "unparsed" in desc


# Hellos built field by field (RFC 8446 4.1.2, 4.1.3; RFC 5246 7.4.1.4): every one is
# well formed, so the parser must accept it, give back each field, and re-encode it
# byte for byte. Random bytes alone almost never parse, which left the round trip
# unchecked; these always reach it.
_exts = st.one_of(
    st.none(),  # no extensions block at all (TLS 1.0-era hellos), distinct from empty
    st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40)), max_size=8))
_sid = st.binary(max_size=32)


def _ext_block(exts: list[tuple[int, bytes]] | None) -> bytes:
    if exts is None:
        return b""
    body = b"".join(t.to_bytes(2, "big") + len(d).to_bytes(2, "big") + d for t, d in exts)
    return len(body).to_bytes(2, "big") + body


@given(st.integers(0, 0xFFFF), st.binary(min_size=32, max_size=32), _sid,
       st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=40),
       st.binary(min_size=1, max_size=4), _exts)
def test_every_well_formed_client_hello_parses_and_round_trips(
        version: int, rnd: bytes, sid: bytes, suites: list[int], comp: bytes,
        exts: list[tuple[int, bytes]] | None) -> None:
    data = (version.to_bytes(2, "big") + rnd + bytes([len(sid)]) + sid
            + (2 * len(suites)).to_bytes(2, "big") + b"".join(c.to_bytes(2, "big") for c in suites)
            + bytes([len(comp)]) + comp + _ext_block(exts))
    ch = parse_client_hello(data)
    assert (ch.legacy_version, ch.random, ch.session_id) == (version, rnd, sid)
    assert ch.cipher_suites == tuple(suites) and ch.compression_methods == comp
    got = None if ch.extensions is None else [(e.type, e.data) for e in ch.extensions]
    assert got == exts and ch.trailing == b""
    assert ch.encode() == data


@given(st.integers(0, 0xFFFF), st.binary(min_size=32, max_size=32), _sid,
       st.integers(0, 0xFFFF), st.integers(0, 255), _exts)
def test_every_well_formed_server_hello_parses_and_round_trips(
        version: int, rnd: bytes, sid: bytes, suite: int, comp: int,
        exts: list[tuple[int, bytes]] | None) -> None:
    data = (version.to_bytes(2, "big") + rnd + bytes([len(sid)]) + sid
            + suite.to_bytes(2, "big") + bytes([comp]) + _ext_block(exts))
    sh = parse_server_hello(data)
    assert (sh.legacy_version, sh.random, sh.session_id) == (version, rnd, sid)
    assert (sh.cipher_suite, sh.compression_method) == (suite, comp)
    got = None if sh.extensions is None else [(e.type, e.data) for e in sh.extensions]
    assert got == exts and sh.trailing == b""
    assert sh.encode() == data


@given(st.sampled_from(sorted(p.name for p in FIXTURES.glob("*.bin"))),
       st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), max_size=3))
def test_parser_contract_on_real_hellos_with_bytes_changed(name: str,
                                                           edits: list[tuple[int, int]]) -> None:
    # Real captures with a few bytes changed: a result that re-encodes to the same
    # bytes, or the project's DecodeError with the decode_error alert, nothing else.
    body = bytearray(hello_of((FIXTURES / name).read_bytes())[0])
    for pos, value in edits:
        if pos < len(body):
            body[pos] = value
    try:
        ch = parse_client_hello(bytes(body))
    except DecodeError as e:
        assert e.alert == 50
        return
    assert ch.encode() == bytes(body)


@given(st.binary(max_size=300))
def test_parser_contract_client_hello(data: bytes) -> None:
    # Random bytes: only the contract (no exception but DecodeError) is checked here;
    # the round trip is checked on the well-formed hellos above.
    try:
        ch = parse_client_hello(data)
    except DecodeError:
        return
    assert ch.encode() == data


@given(st.binary(max_size=300))
def test_parser_contract_server_hello(data: bytes) -> None:
    try:
        sh = parse_server_hello(data)
    except DecodeError:
        return
    assert sh.encode() == data


@given(st.binary(max_size=200), st.sampled_from(sorted(ext.DECODERS)),
       st.sampled_from(["client_hello", "server_hello", "hello_retry_request"]))
def test_extension_decoders_never_raise(data: bytes, ext_type: int, kind: str) -> None:
    ext.decode(ext_type, data, kind)  # type: ignore[arg-type]


def _ch(session_id: bytes = b"", exts: bytes | None = b"") -> bytes:
    # legacy_version, random, legacy_session_id, cipher_suites (TLS_AES_128_GCM_SHA256),
    # compression (null), then the extensions block as given (None: no block at all).
    return (bytes.fromhex("0303") + bytes(32) + vector(session_id, 1) + bytes.fromhex("00021301")
            + b"\x01\x00" + (b"" if exts is None else vector(exts, 2)))


def _sh(session_id: bytes = b"", exts: bytes = b"") -> bytes:
    return (bytes.fromhex("0303") + bytes(32) + vector(session_id, 1) + bytes.fromhex("1301")
            + b"\x00" + vector(exts, 2))


def test_legacy_session_id_is_at_most_32_bytes() -> None:
    # RFC 8446 4.1.2 / 4.1.3: opaque legacy_session_id<0..32> (and its echo).
    assert parse_client_hello(_ch(bytes(32))).session_id == bytes(32)
    assert parse_server_hello(_sh(bytes(32))).session_id == bytes(32)
    with pytest.raises(DecodeError, match="legacy_session_id of 33 bytes"):
        parse_client_hello(_ch(bytes(33)))
    with pytest.raises(DecodeError, match="legacy_session_id_echo of 33 bytes"):
        parse_server_hello(_sh(bytes(33)))


def test_extension_block_bounds_are_exact() -> None:
    one = bytes.fromhex("ff01 0001 00".replace(" ", ""))  # renegotiation_info, 1 byte
    ch = parse_client_hello(_ch(exts=one))
    assert ch.extensions == (Extension(0xFF01, b"\x00"),) and ch.trailing == b""
    # The block's length says more than the body has.
    body = _ch(exts=one)[:-1]
    with pytest.raises(DecodeError, match="extensions: length 5 exceeds the 4 bytes left"):
        parse_client_hello(body)
    # A block of 3 bytes: not even one extension header (type, length).
    with pytest.raises(DecodeError, match="extensions: 3 unexpected trailing bytes"):
        parse_client_hello(_ch(exts=one[:3]))
    # An extension whose length runs past the block: 4-byte header, 1 of 2 bytes left.
    with pytest.raises(DecodeError, match="extension data: need 2 bytes, 1 left"):
        parse_client_hello(_ch(exts=bytes.fromhex("ff01000200")))
    # Two extensions filling the block exactly, then bytes after the block.
    two = one + bytes.fromhex("00170000")
    ch = parse_client_hello(_ch(exts=two) + b"xy")
    assert [e.type for e in ch.extensions or ()] == [0xFF01, 0x17]
    assert ch.trailing == b"xy" and ch.encode() == _ch(exts=two) + b"xy"
    assert parse_client_hello(_ch(exts=None)).extensions is None


def test_duplicate_extension_finds_the_first_and_keeps_both() -> None:
    exts = bytes.fromhex("002b 0002 0304" "002b 0002 0303".replace(" ", ""))
    sh = parse_server_hello(_sh(exts=exts))
    assert sh.extension(0x2B) == Extension(0x2B, b"\x03\x04")
    assert sh.selected_version == 0x0304
    assert sh.encode() == _sh(exts=exts)
    assert sh.extension(0x33) is None


def test_selected_version_falls_back_to_legacy_version() -> None:
    # RFC 8446 4.2.1: the ServerHello's supported_versions holds one 2-byte version.
    assert parse_server_hello(_sh()).selected_version == 0x0303
    malformed = parse_server_hello(_sh(exts=bytes.fromhex("002b0003030403")))
    assert malformed.selected_version == 0x0303
    short = parse_server_hello(_sh(exts=bytes.fromhex("002b000103")))
    assert short.selected_version == 0x0303


def test_hellos_are_frozen_and_slotted() -> None:
    # STYLE 4: a fault returns new objects, never mutates what was logged.
    import dataclasses

    ch = parse_client_hello(_ch(exts=bytes.fromhex("00170000")))
    sh = parse_server_hello(_sh())
    assert ch.extensions is not None
    for obj, attr in ((ch, "session_id"), (sh, "cipher_suite"), (ch.extensions[0], "data")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, attr, b"")
        assert not hasattr(obj, "__dict__")


def test_equal_hello_parts_are_shared_across_hellos_and_fresh_ones_are_not() -> None:
    # Issue 19 (RSS per idle connection): the parsed hellos live as long as their
    # connection, so what repeats between connections is one object.
    body, first = hello_of((FIXTURES / "openssl.bin").read_bytes())
    second = parse_client_hello(body)
    assert second == first and second.encode() == body
    assert second.cipher_suites is first.cipher_suites
    assert first.extensions is not None and second.extensions is not None
    for a, b in zip(first.extensions, second.extensions, strict=True):
        fresh = a.type in hello.UNSHARED or len(a.data) > hello.SHARE_MAX_BODY
        assert (a is b) is not fresh, a.type
    assert first.extension(ext.KEY_SHARE) is not None  # a fresh one was compared
    # A different body is a different object with its own value.
    other = parse_client_hello(_ch(exts=_ext_block([(0xFF01, b"\x00")])[2:]))
    assert other.extensions == (Extension(0xFF01, b"\x00"),)
    assert other.cipher_suites == (0x1301,)


def test_the_shared_parts_table_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hello, "SHARE_MAX", 8)
    monkeypatch.setattr(hello, "_EXTENSIONS", {})
    monkeypatch.setattr(hello, "_SUITES", {})
    for i in range(50):  # a peer sending ever new bodies and cipher lists
        body = (bytes.fromhex("0303") + bytes(32) + b"\x00" + vector(i.to_bytes(2, "big"), 2)
                + b"\x01\x00" + _ext_block([(0xFF01, i.to_bytes(2, "big"))]))
        ch = parse_client_hello(body)
        assert ch.cipher_suites == (i,) and ch.extensions == (Extension(0xFF01,
                                                                        i.to_bytes(2, "big")),)
        assert ch.encode() == body
        assert len(hello._EXTENSIONS) <= 8 and len(hello._SUITES) <= 8


def test_sharing_bounds_are_exact_and_long_or_fresh_parts_parse_unshared() -> None:
    """The bounds written out (not read from the module): extension bodies and cipher
    suite vectors of up to 256 bytes are shared, longer ones not; the types whose
    bodies are fresh on every connection (session_ticket 35, pre_shared_key 41, cookie
    44, key_share 51, ECH 0xfe0d) never are. Vectors beyond the bound (up to 300 suites)
    parse as before, by the plain path."""
    def ch(suites: list[int], exts: list[tuple[int, bytes]]) -> bytes:
        return (bytes.fromhex("0303") + bytes(32) + b"\x00"
                + vector(b"".join(s.to_bytes(2, "big") for s in suites), 2) + b"\x01\x00"
                + _ext_block(exts))

    for n_suites, shared in ((128, True), (129, False), (300, False)):
        suites = [0x0A00 + i for i in range(n_suites)]
        body = ch(suites, [])
        a, b = parse_client_hello(body), parse_client_hello(body)
        assert a.cipher_suites == tuple(suites) and a.encode() == body
        assert (a.cipher_suites is b.cipher_suites) is shared, n_suites
    for ext_type, size, shared in ((0xFF01, 256, True), (0xFF01, 257, False),
                                   (35, 8, False), (41, 8, False), (44, 8, False),
                                   (51, 8, False), (0xFE0D, 8, False), (0x0023 + 1, 8, True)):
        body = ch([0x1301], [(ext_type, bytes(size))])
        a, b = parse_client_hello(body), parse_client_hello(body)
        assert a.extensions == (Extension(ext_type, bytes(size)),)
        assert a.extensions is not None and b.extensions is not None
        assert (a.extensions[0] is b.extensions[0]) is shared, (ext_type, size)
