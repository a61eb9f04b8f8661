"""Decoders of the messages only visible decrypted: fields, summaries, and totality."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsinspector.lab.certs import make_certs
from tlsinspector.proxy import handshake as hs
from tlsinspector.proxy import protected_messages as pm
from tlsinspector.proxy.protected_messages import decode
from tlsinspector.proxy.wire import vector


def der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(Encoding.DER)


def msg(t: int, body: bytes) -> hs.HandshakeMessage:
    return hs.HandshakeMessage(t, body, (1,))


def test_certificate_tls13_and_tls12(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    leaf, ca = der(certs.rsa_cert), der(certs.ca_cert)
    # TLS 1.3: context, then entries with per-entry extensions (RFC 8446 4.4.2).
    entries = (vector(leaf, 3) + vector(b"\x00\x05\x00\x00", 2)  # status_request, empty
               + vector(ca, 3) + vector(b"", 2))
    d = decode(msg(hs.CERTIFICATE, vector(b"", 1) + vector(entries, 3)), 0x0304)
    assert d.unparsed is None
    assert d.fields["chain_length"] == 2
    first = d.fields["chain"][0]
    assert first["subject_cn"] == "localhost" and first["key_type"] == "RSA"
    assert first["key_size"] == 2048 and first["san"] == ["localhost", "test.local", "127.0.0.1"]
    assert first["signature_algorithm"] == "ecdsa_with_sha256"
    assert first["extensions"] == [{"type": "status_request", "length": 0}]
    assert d.fields["chain"][1]["self_signed"] is True
    assert d.summary.startswith(
        "certificate chain=2 [CN=localhost, SAN=localhost,test.local,127.0.0.1, RSA 2048, "
        "expires ")
    assert d.summary.endswith("] <- [CN=tlsinspector test CA]")
    assert d.raw == msg(hs.CERTIFICATE, vector(b"", 1) + vector(entries, 3)).raw
    # TLS 1.2: a plain list (RFC 5246 7.4.2).
    d12 = decode(msg(hs.CERTIFICATE, vector(vector(der(certs.server_cert), 3), 3)), 0x0303)
    assert d12.fields["chain"][0]["key_type"] == "EC secp256r1"
    assert "chain=1" in d12.summary and d12.unparsed is None


def test_garbage_certificate_is_described_not_raised() -> None:
    d = decode(msg(hs.CERTIFICATE, vector(vector(b"\x30\x03abc", 3), 3)), 0x0303)
    assert d.unparsed is None and "error" in d.fields["chain"][0]
    assert "unparsed certificate" in d.summary


def test_small_messages() -> None:
    ee = decode(msg(hs.ENCRYPTED_EXTENSIONS, vector(bytes.fromhex("0010000500030268 32"
                                                                    .replace(" ", "")), 2)),
                0x0304)
    assert ee.fields["extensions"] == [{"type": "application_layer_protocol_negotiation",
                                        "length": 5, "value": ["h2"]}]
    # Named like every other message: the terminal read "decrypted: handshake
    # extensions=[none]", with no message name.
    assert ee.summary == "encrypted_extensions extensions=[application_layer_protocol_negotiation]"
    cv = decode(msg(hs.CERTIFICATE_VERIFY, b"\x08\x04" + vector(bytes(256), 2)), 0x0304)
    assert cv.fields == {"type": "certificate_verify", "length": 260,
                         "algorithm": "rsa_pss_rsae_sha256", "signature_length": 256}
    fin = decode(msg(hs.FINISHED, bytes(48)), 0x0304)
    assert fin.summary == "finished verify_data=48"
    ku = decode(msg(hs.KEY_UPDATE, b"\x01"), 0x0304)
    assert ku.fields["request_update"] == "update_requested"
    nst = decode(msg(hs.NEW_SESSION_TICKET, (7200).to_bytes(4, "big") + b"\x01\x02\x03\x04"
                     + vector(b"\x00", 1) + vector(bytes(100), 2) + vector(b"", 2)), 0x0304)
    assert (nst.fields["lifetime"], nst.fields["age_add"], nst.fields["ticket_length"]) == \
        (7200, 0x01020304, 100)
    nst12 = decode(msg(hs.NEW_SESSION_TICKET, (300).to_bytes(4, "big") + vector(bytes(9), 2)),
                   0x0303)
    assert nst12.fields["lifetime_hint"] == 300 and nst12.fields["ticket_length"] == 9
    cr = decode(msg(hs.CERTIFICATE_REQUEST, vector(b"", 1)
                    + vector(bytes.fromhex("000d000400020804"), 2)), 0x0304)
    assert cr.fields["signature_algorithms"] == ["rsa_pss_rsae_sha256"]
    cr12 = decode(msg(hs.CERTIFICATE_REQUEST, vector(b"\x01\x40", 1) + vector(b"\x04\x01", 2)
                      + vector(vector(b"x", 2), 2)), 0x0303)
    assert cr12.fields["certificate_types"] == [1, 64]
    assert cr12.fields["certificate_authorities"] == 1
    # The line names them (it printed "types=[1, 64]"); the log keeps the numbers.
    assert cr12.summary == ("certificate_request types=[rsa_sign, ecdsa_sign] algorithms=1 "
                            "cas=1")


def test_truncated_is_unparsed_with_reason() -> None:
    d = decode(msg(hs.KEY_UPDATE, b""), 0x0304)
    assert d.unparsed and "request_update" in d.unparsed
    assert d.fields["unparsed"] == d.unparsed
    d = decode(msg(hs.FINISHED, b""), 0x0304)
    assert d.unparsed is None  # an empty verify_data is still a Finished, of length 0


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([0, 1, 2, 4, 8, 11, 13, 15, 20, 24, 99]), st.binary(max_size=300),
       st.sampled_from([0x0303, 0x0304]))
def test_any_body_never_raises(t: int, body: bytes, version: int) -> None:
    d = decode(msg(t, body), version)
    assert d.raw == bytes((t,)) + len(body).to_bytes(3, "big") + body
    assert isinstance(d.summary, str) and "\n" not in d.summary


def _alpn_ee(proto: bytes) -> hs.HandshakeMessage:
    alpn = vector(vector(proto, 1), 2)
    return msg(hs.ENCRYPTED_EXTENSIONS, vector(b"\x00\x10" + vector(alpn, 2), 2))


def test_cache_bounded_many_distinct_messages_decode_right() -> None:
    """More distinct cached-kind messages than the cache holds, twice over (the second
    round finds them evicted or cached): each is what the uncached decoder says."""
    pm._decode_cached.cache_clear()
    ee = [_alpn_ee(b"p%03d" % i) for i in range(pm.CACHE_SIZE * 2 + 5)]
    cr = [msg(hs.CERTIFICATE_REQUEST, vector(bytes((i,)), 1)
              + vector(bytes.fromhex("000d000400020804"), 2)) for i in range(40)]
    for _ in range(2):
        for m in ee + cr:
            got, want = decode(m, 0x0304), pm._decode(m, 0x0304)
            assert (got.fields, got.summary, got.raw, got.unparsed, got.msg_type) == \
                (want.fields, want.summary, want.raw, want.unparsed, want.msg_type)
    assert decode(ee[7], 0x0304).fields["extensions"][0]["value"] == ["p007"]
    assert pm._decode_cached.cache_info().currsize == pm.CACHE_SIZE  # bounded
    # Too large to cache: decoded each time, never kept.
    big = msg(hs.CERTIFICATE, vector(vector(bytes(pm.CACHE_BODY), 3), 3))
    before = pm._decode_cached.cache_info()
    assert decode(big, 0x0303).fields["chain"][0]["length"] == pm.CACHE_BODY
    assert pm._decode_cached.cache_info().currsize == before.currsize
    assert pm._decode_cached.cache_info().misses == before.misses


def test_cache_hit_gives_fresh_containers(tmp_path: Path) -> None:
    """A caller that changes what it got (an event, the history) does not change what
    the next connection gets from the cache; unparsed messages are cached as unparsed."""
    certs = make_certs(tmp_path)
    m = msg(hs.CERTIFICATE, vector(b"", 1) + vector(vector(der(certs.rsa_cert), 3)
                                                     + vector(b"", 2), 3))
    first = decode(m, 0x0304)
    first.fields["chain"][0]["subject_cn"] = "changed"
    first.fields["chain"].append({"x": 1})
    first.fields["chain_length"] = 99
    again = decode(m, 0x0304)
    assert again.fields == pm._decode(m, 0x0304).fields
    assert again.fields["chain"][0]["subject_cn"] == "localhost"
    assert again.fields["chain"] is not first.fields["chain"]
    bad = msg(hs.ENCRYPTED_EXTENSIONS, b"\x00\x05\x00")
    assert decode(bad, 0x0304).unparsed == decode(bad, 0x0304).unparsed == \
        pm._decode(bad, 0x0304).unparsed is not None
