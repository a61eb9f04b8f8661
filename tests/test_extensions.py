"""proxy/extensions.py: code points against the IANA table, the decoders on real and
hand-built bodies (the meaning depends on the message, RFC 8446 4.2), and the
readers/writers hello rewrites use."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conversation import conversation
from tlsinspector.proxy import extensions as ext
from tlsinspector.proxy import names
from tlsinspector.proxy.handshake import HandshakeReassembler
from tlsinspector.proxy.hello import parse_client_hello, parse_server_hello
from tlsinspector.proxy.pcapng import CaptureWriter, header_blocks
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


# -- the decoders against tshark's dissection of the same real hellos ---------------------
# Golden ClientHellos of five real stacks (tests/fixtures/hellos) and the ServerHellos of
# two real Python-ssl (OpenSSL) handshakes go into one capture; tshark's own TLS
# dissector reads each extension's fields and every decoded value must agree: list
# lengths, order and values show every vector width and loop of the decoders.
FIXTURES = Path(__file__).parent / "fixtures" / "hellos"
GOLDEN = ["curl", "openssl", "gnutls", "python", "openssl-tls12"]
TSHARK = {  # our extension code -> tshark field(s)
    "types": "tls.handshake.extension.type",
    "lens": "tls.handshake.extension.len",
    "hs_type": "tls.handshake.type",
    ext.SERVER_NAME: "tls.handshake.extensions_server_name",
    ext.ALPN: "tls.handshake.extensions_alpn_str",
    ext.SUPPORTED_GROUPS: "tls.handshake.extensions_supported_group",
    ext.EC_POINT_FORMATS: "tls.handshake.extensions_ec_point_format",
    ext.SIGNATURE_ALGORITHMS: "tls.handshake.sig_hash_alg",
    ext.SUPPORTED_VERSIONS: "tls.handshake.extensions.supported_version",
    ext.PSK_KEY_EXCHANGE_MODES: "tls.extension.psk_ke_mode",
    "ks_group": "tls.handshake.extensions_key_share_group",
    "ks_len": "tls.handshake.extensions_key_share_key_exchange_length",
    ext.STATUS_REQUEST: "tls.handshake.extensions_status_request_type",
    ext.RECORD_SIZE_LIMIT: "tls.record_size_limit",
}


def _tshark_hellos(tmp_path: Path) -> tuple[list[tuple[str, bytes]], list[dict[object, list[str]]]]:
    """The hello bodies (kind, body) written to one capture, and tshark's fields of each."""
    hellos: list[tuple[str, bytes]] = []
    cap = header_blocks()
    for i, name in enumerate(GOLDEN):
        stream = (FIXTURES / f"{name}.bin").read_bytes()
        writer = CaptureWriter(("127.0.0.1", 40000 + i), ("127.0.0.1", 443), isn=1)
        cap += writer.data("client", False, stream, 1.0 + i)
        hellos.append(("client_hello", _first_message(stream)))
    for i, version in enumerate(("1.3", "1.2")):
        server_flight = next(b for who, b in conversation(version) if who == "server")
        body = _first_message(server_flight)
        # The ServerHello alone in its own record (TLS 1.2 packs the Certificate after it).
        msg = b"\x02" + len(body).to_bytes(3, "big") + body
        writer = CaptureWriter(("127.0.0.1", 41000 + i), ("127.0.0.1", 443), isn=1)
        cap += writer.data("client", True, b"\x16\x03\x03" + len(msg).to_bytes(2, "big") + msg,
                           10.0 + i)
        hellos.append(("server_hello", body))
    (tmp_path / "hellos.pcapng").write_bytes(cap)
    fields = [f for f in TSHARK.values()]
    res = subprocess.run(["tshark", "-r", str(tmp_path / "hellos.pcapng"), "-Y",
                          "tls.handshake.type == 1 or tls.handshake.type == 2", "-T", "fields",
                          "-E", "occurrence=a", "-E", "aggregator=;", "-E", "separator=|",
                          *[a for f in fields for a in ("-e", f)]],
                         capture_output=True, text=True, timeout=60, check=True)
    rows = []
    for line in res.stdout.splitlines():
        values = line.split("|")
        rows.append({key: (v.split(";") if v else []) for key, v in zip(TSHARK, values,
                                                                         strict=True)})
    return hellos, rows


def _first_message(stream: bytes) -> bytes:
    rec = next(r for r in RecordFramer().feed(stream) if isinstance(r, Record))
    return HandshakeReassembler().feed(rec.payload, 1)[0].body


def test_decoded_extensions_of_real_hellos_equal_tshark(tmp_path: Path) -> None:
    hellos, rows = _tshark_hellos(tmp_path)
    assert len(rows) == len(hellos) == 7
    seen: set[int] = set()
    for (kind, body), theirs in zip(hellos, rows, strict=True):
        assert theirs["hs_type"] == ["1" if kind == "client_hello" else "2"]
        hello = (parse_client_hello(body) if kind == "client_hello"
                 else parse_server_hello(body))
        exts = hello.extensions or ()
        assert [str(e.type) for e in exts] == theirs["types"]
        assert [str(len(e.data)) for e in exts] == theirs["lens"]
        for e in exts:
            ours = ext.decode(e.type, e.data, kind)
            seen.add(e.type)
            expected = _expected(e.type, theirs, kind)
            if expected is not _UNCHECKED:
                assert ours == expected, (kind, names.extension_name(e.type))
    # Every decoder tshark can check was checked on at least one real hello.
    assert seen >= {ext.SERVER_NAME, ext.ALPN, ext.SUPPORTED_GROUPS, ext.EC_POINT_FORMATS,
                    ext.SIGNATURE_ALGORITHMS, ext.SUPPORTED_VERSIONS, ext.KEY_SHARE,
                    ext.PSK_KEY_EXCHANGE_MODES, ext.STATUS_REQUEST, ext.RECORD_SIZE_LIMIT,
                    ext.PADDING, ext.RENEGOTIATION_INFO}


_UNCHECKED = object()


def _expected(code: int, t: dict[object, list[str]], kind: str) -> object:
    """What tshark's fields say extension ``code`` holds, in our log's terms."""
    def h(v: str) -> int:
        return int(v, 16) if v.startswith("0x") else int(v)

    if code == ext.SERVER_NAME:
        return t[code] if kind == "client_hello" else []
    if code == ext.ALPN:
        return t[code]
    if code == ext.SUPPORTED_GROUPS:
        return [names.group_name(h(g)) for g in t[code]]
    if code == ext.EC_POINT_FORMATS:
        return [names.name_of(names.EC_POINT_FORMATS, h(f), 2) for f in t[code]]
    if code == ext.SIGNATURE_ALGORITHMS:
        return [names.signature_scheme_name(h(s)) for s in t[code]]
    if code == ext.SUPPORTED_VERSIONS:
        versions = [names.hex4(h(v)) for v in t[code]]
        return versions if kind == "client_hello" else versions[0]
    if code == ext.PSK_KEY_EXCHANGE_MODES:
        return [names.name_of(names.PSK_KEY_EXCHANGE_MODES, h(m), 2) for m in t[code]]
    if code == ext.KEY_SHARE:
        return [{"group": names.group_name(h(g)), "length": int(n)}
                for g, n in zip(t["ks_group"], t["ks_len"], strict=True)]
    if code == ext.STATUS_REQUEST:
        return {"status_type": names.name_of(names.CERTIFICATE_STATUS_TYPES,
                                             h(t[code][0]), 2)}
    if code == ext.RECORD_SIZE_LIMIT:
        return h(t[code][0])
    if code == ext.PADDING:  # the body's length, as tshark's extension length says
        i = [h(x) for x in t["types"]].index(code)
        return {"length": int(t["lens"][i])}
    if code == ext.RENEGOTIATION_INFO:  # an initial handshake: an empty renegotiated_connection
        return ""
    return _UNCHECKED


def test_empty_and_short_bodies_where_rfc_requires_content() -> None:
    # RFC 6066 3: a client's server_name holds a non-empty ServerNameList; only the
    # server's acknowledgement is empty.
    assert "error" in ext.decode(ext.SERVER_NAME, b"", "client_hello")  # type: ignore[operator]
    assert ext.decode(ext.SERVER_NAME, b"", "encrypted_extensions") == []
    # RFC 8446 4.2.1: a ServerHello selects exactly one version, never none.
    with pytest.raises(ValueError):
        ext.write_supported_versions([], "server_hello")
    # RFC 8446 4.2.3: signature_algorithms_cert (50) has signature_algorithms' syntax.
    body = bytes.fromhex("0004 0804 0403".replace(" ", ""))
    assert ext.decode(50, body, "client_hello") == ext.decode(
        ext.SIGNATURE_ALGORITHMS, body, "client_hello") == [
        "rsa_pss_rsae_sha256", "ecdsa_secp256r1_sha256"]


def test_message_kind_compared_by_value_not_identity() -> None:
    # A kind built at run time (e.g. from a handshake type name) is an equal string but
    # not the interned literal: every decoder and reader must branch the same way.
    def runtime(kind: str) -> ext.Kind:
        return "".join(list(kind))  # type: ignore[return-value]

    bodies = {
        ext.KEY_SHARE: {"client_hello": b"\x00\x06\x00\x1d\x00\x02ab",
                        "server_hello": b"\x00\x1d\x00\x02ab",
                        "hello_retry_request": b"\x00\x1d"},
        ext.PRE_SHARED_KEY: {"server_hello": b"\x00\x00",
                             "client_hello": b"\x00\x0a\x00\x04abcd" + bytes(4)
                             + b"\x00\x21\x20" + bytes(32)},
        ext.SUPPORTED_VERSIONS: {"client_hello": b"\x02\x03\x04", "server_hello": b"\x03\x04"},
        ext.SERVER_NAME: {"client_hello": b"", "server_hello": b""},
    }
    for code, by_kind in bodies.items():
        for kind, body in by_kind.items():
            k: ext.Kind = kind  # type: ignore[assignment]
            assert runtime(k) is not k
            assert ext.decode(code, body, runtime(k)) == ext.decode(code, body, k)
    for kind in ("client_hello", "server_hello"):
        k = kind  # type: ignore[assignment]
        body = ext.write_supported_versions([0x0304], k)
        assert ext.write_supported_versions([0x0304], runtime(k)) == body
        assert ext.read_supported_versions(body, runtime(k)) == (0x0304,)


def test_non_ascii_sni_and_alpn_keep_their_bytes_visible() -> None:
    # A client that sends a UTF-8 host name instead of its A-label (IDNA), or a
    # hostile one: "\ufffd" for every byte lost what was sent; each byte is \xNN now.
    from tlsinspector.proxy.extensions import ALPN, decode, host_name
    from tlsinspector.proxy.render import escape
    name = "bücher.example".encode()
    body = (len(name) + 3).to_bytes(2, "big") + b"\x00" + len(name).to_bytes(2, "big") + name
    assert decode(0, body, "client_hello") == ["b\\xc3\\xbccher.example"]
    assert host_name(body) == "b\\xc3\\xbccher.example"
    assert escape(host_name(body) or "") == "b\\\\xc3\\\\xbccher.example"
    proto = b"h2\xe2\x80\xae"
    alpn = (len(proto) + 1).to_bytes(2, "big") + bytes([len(proto)]) + proto
    assert decode(ALPN, alpn, "client_hello") == ["h2\\xe2\\x80\\xae"]
