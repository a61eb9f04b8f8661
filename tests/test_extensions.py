"""proxy/extensions.py: code points against the IANA table, the decoders on real and
hand-built bodies (the meaning depends on the message, RFC 8446 4.2), and the
readers/writers hello rewrites use."""

from __future__ import annotations

import pytest

from tests.conversation import conversation
from tlsinspector.proxy import extensions as ext
from tlsinspector.proxy import names
from tlsinspector.proxy.handshake import HandshakeReassembler
from tlsinspector.proxy.hello import parse_client_hello
from tlsinspector.proxy.records import Record, RecordFramer
from tlsinspector.proxy.wire import DecodeError


def test_code_points_are_the_iana_numbers() -> None:
    for const in ("SERVER_NAME", "STATUS_REQUEST", "SUPPORTED_GROUPS", "EC_POINT_FORMATS",
                  "SIGNATURE_ALGORITHMS", "PADDING", "ENCRYPT_THEN_MAC",
                  "EXTENDED_MASTER_SECRET", "RECORD_SIZE_LIMIT", "SESSION_TICKET",
                  "PRE_SHARED_KEY", "EARLY_DATA", "SUPPORTED_VERSIONS", "COOKIE",
                  "PSK_KEY_EXCHANGE_MODES", "KEY_SHARE", "RENEGOTIATION_INFO"):
        assert names.code_of("extension", const.lower()) == getattr(ext, const), const
    assert ext.ALPN == names.code_of("extension", "application_layer_protocol_negotiation")


def test_pre_shared_key_of_a_real_resumed_client_hello() -> None:
    # RFC 8446 4.2.11: identities (identity, obfuscated_ticket_age) and binders.
    [(_, first), *_] = conversation("1.3", resume=True)
    rec = next(r for r in RecordFramer().feed(first) if isinstance(r, Record))
    [msg] = HandshakeReassembler().feed(rec.payload, 1)
    psk = parse_client_hello(msg.body).extension(ext.PRE_SHARED_KEY)
    assert psk is not None
    assert ext.decode(ext.PRE_SHARED_KEY, psk.data, "client_hello") == {
        "identities": 1, "binders": 1}
    # Two of each, hand-built: the counts follow the lists.
    ident = b"\x00\x02ab" + bytes(4)
    binder = b"\x20" + bytes(32)
    two = (len(ident * 2).to_bytes(2, "big") + ident * 2
           + len(binder * 2).to_bytes(2, "big") + binder * 2)
    assert ext.decode(ext.PRE_SHARED_KEY, two, "client_hello") == {
        "identities": 2, "binders": 2}
    # In a ServerHello: the selected identity only.
    assert ext.decode(ext.PRE_SHARED_KEY, b"\x00\x01", "server_hello") == {
        "selected_identity": 1}


def test_early_data_empty_or_with_max_size() -> None:
    assert ext.decode(ext.EARLY_DATA, b"", "client_hello") is True
    assert ext.decode(ext.EARLY_DATA, bytes.fromhex("00004000"), "encrypted_extensions") == {
        "max_early_data_size": 0x4000}


def test_supported_versions_read_and_write_depend_on_the_message() -> None:
    assert ext.read_supported_versions(b"\x04\x03\x04\x03\x03", "client_hello") == (
        0x0304, 0x0303)
    assert ext.read_supported_versions(b"\x03\x04", "server_hello") == (0x0304,)
    assert ext.write_supported_versions([0x0304, 0x0303], "client_hello") == (
        b"\x04\x03\x04\x03\x03")
    assert ext.write_supported_versions([0x0304], "server_hello") == b"\x03\x04"
    assert ext.write_supported_versions([0x0304], "hello_retry_request") == b"\x03\x04"
    with pytest.raises(ValueError):
        ext.write_supported_versions([0x0304, 0x0303], "server_hello")
    with pytest.raises(DecodeError):
        ext.read_supported_versions(b"\x03\x04\x00", "server_hello")


def test_server_names_read_write_and_host_name() -> None:
    entries = ((1, b"other"), (0, b"example.com"), (0, b"second"))
    body = ext.write_server_names(entries)
    assert body[:2] == (len(body) - 2).to_bytes(2, "big")
    assert body[2:5] == b"\x01\x00\x05"
    assert ext.read_server_names(body) == entries
    assert ext.host_name(body) == "example.com"  # the first name_type 0 entry
    assert ext.host_name(ext.write_server_names([(1, b"x")])) is None
    assert ext.host_name(b"\x00") is None  # malformed: None, not an exception
    # The server's acknowledgement is empty (RFC 6066 3); a client's is not.
    assert ext.decode(ext.SERVER_NAME, b"", "server_hello") == []
    assert ext.decode(ext.SERVER_NAME, body, "client_hello") == [
        "6f74686572", "example.com", "second"]


def test_key_share_depends_on_the_message() -> None:
    # RFC 8446 4.2.8: client_shares list; ServerHello one share; HRR the group only.
    share = b"\x00\x1d\x00\x20" + bytes(32)
    assert ext.decode(ext.KEY_SHARE, len(share).to_bytes(2, "big") + share,
                      "client_hello") == [{"group": "x25519", "length": 32}]
    assert ext.decode(ext.KEY_SHARE, share, "server_hello") == [
        {"group": "x25519", "length": 32}]
    assert ext.decode(ext.KEY_SHARE, b"\x00\x17", "hello_retry_request") == {
        "selected_group": "secp256r1"}


def test_small_decoders_and_unknown_values_in_two_hex_digits() -> None:
    assert ext.decode(ext.EC_POINT_FORMATS, b"\x02\x00\x07", "client_hello") == [
        "uncompressed", "0x07"]
    assert ext.decode(ext.PSK_KEY_EXCHANGE_MODES, b"\x02\x01\x09", "client_hello") == [
        "psk_dhe_ke", "0x09"]
    assert ext.decode(ext.STATUS_REQUEST, b"\x01\x00\x00\x00\x00", "client_hello") == {
        "status_type": "ocsp"}
    assert ext.decode(ext.STATUS_REQUEST, b"\x07", "client_hello") == {"status_type": "0x07"}
    assert ext.decode(ext.STATUS_REQUEST, b"", "server_hello") == {}
    assert ext.decode(ext.COOKIE, b"\x00\x03abc", "hello_retry_request") == {"length": 3}
    assert ext.decode(ext.EXTENDED_MASTER_SECRET, b"", "client_hello") is True
    bad = ext.decode(ext.EXTENDED_MASTER_SECRET, b"\x00", "client_hello")
    assert isinstance(bad, dict) and "empty body" in str(bad["error"])
    assert ext.decode(ext.SUPPORTED_VERSIONS, b"\x03\x04", "server_hello") == "0x0304"
