"""Diagnosis of real failures, with no fault configured: the proxy changes nothing."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.proxyproc import Proxy
from tests.test_hello import WOLFSSL_REPORT_003
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.peers import run_client, start_server


def close_event(proxy: Proxy) -> dict:  # type: ignore[type-arg]
    return next(e for e in proxy.wait_closes(1) if e["event"] == "close")


def test_server_that_really_requires_sni(certs: Certs, tmp_path: Path) -> None:
    with start_server("python", certs, require_sni="localhost", log_dir=tmp_path) as srv, \
            Proxy(srv.addr, tmp_path / "log.jsonl") as proxy:
        res = run_client("python", "127.0.0.1", proxy.port, certs, sni=None)
        assert not res.ok and "HANDSHAKE_FAILURE" in res.output
        close = close_event(proxy)
    codes = [d["code"] for d in close["diagnosis"]]
    assert codes[0] == "missing-sni"
    assert any("no server_name" in e for e in close["diagnosis"][0]["evidence"])


def test_client_that_really_sends_no_supported_groups(certs: Certs, tmp_path: Path) -> None:
    # The wolfSSL ClientHello of report 003, byte for byte, to a Go server that
    # only accepts ECDHE suites under TLS 1.2 (as smtp.gmail.com did).
    with start_server("go", certs, tls="1.2", ecdhe_only=True, log_dir=tmp_path) as srv, \
            Proxy(srv.addr, tmp_path / "log.jsonl") as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(WOLFSSL_REPORT_003)
            s.settimeout(10)
            answer = s.recv(100)
        assert answer == bytes.fromhex("15030300020228")  # fatal handshake_failure
        close = close_event(proxy)
    codes = [d["code"] for d in close["diagnosis"]]
    assert "missing-supported-groups" in codes and "missing-sni" in codes
    assert not any("fault" in c for c in codes)


def test_client_hello_without_any_extensions_is_not_called_missing_sni(
        certs: Certs, tmp_path: Path) -> None:
    # A TLS 1.2 hello that ends after compression_methods (an SSL 3.0 / TLS 1.0-era
    # stack, or extensions turned off) to a Go server that accepts only ECDHE suites:
    # with no supported_groups it has no curve for ECDHE and refuses the hello.
    from tests.test_diagnosis import NO_EXTENSIONS_CH
    with start_server("go", certs, tls="1.2", ecdhe_only=True, log_dir=tmp_path) as srv, \
            Proxy(srv.addr, tmp_path / "log.jsonl") as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(NO_EXTENSIONS_CH)
            s.settimeout(10)
            answer = s.recv(100)
        assert answer == bytes.fromhex("15030300020228")  # fatal handshake_failure
        close = close_event(proxy)
    codes = [d["code"] for d in close["diagnosis"]]
    assert codes == ["hello-without-extensions"]
    assert close["diagnosis"][0]["evidence"][0] == (
        "client record 1: ClientHello 0x0303 with no extensions block")


def test_reply_alert_decode_error_is_named_as_sent(certs: Certs, tmp_path: Path) -> None:
    # The fault answers the client's hello with decode_error in the server's name:
    # the client reports decode_error, and the finding names that alert and the fault,
    # not a peer that found a message malformed.
    scenario = tmp_path / "reply.yaml"
    scenario.write_text("name: reply-decode\nfaults:\n"
                        "  - match: {from: client, handshake: client_hello}\n"
                        "    action: reply-alert\n    description: decode_error\n")
    with start_server("openssl", certs, log_dir=tmp_path) as srv, \
            Proxy(srv.addr, tmp_path / "log.jsonl", [scenario]) as proxy:
        res = run_client("openssl", "127.0.0.1", proxy.port, certs)
        assert not res.ok and "alert decode error" in res.output
        close = close_event(proxy)
    # OpenSSL's s_server, closed before any byte, may answer the EOF with its own
    # decode_error, before or after the client's close reaches the proxy: either way
    # a reaction to the close the fault made, listed after the fault's alert.
    found, *reaction = [d for d in close["diagnosis"] if d["code"].startswith("alert-")]
    assert found["code"] == "alert-decode-error"
    assert "decode_error alert that a configured fault sent" in found["summary"]
    assert "reply-decode: reply-alert" in found["evidence"][0]
    assert all("had already closed its side" in d["summary"] for d in reaction)
    assert not any("malformed" in d["summary"] for d in close["diagnosis"])


def test_sslv2_format_hello_refused_by_openssl_is_named(certs: Certs, tmp_path: Path) -> None:
    # What TLS scanners send to probe for SSL 2.0 (RFC 5246 E.2): a 2-byte header,
    # CLIENT-HELLO (1), version 0x0301, cipher specs, no session id, a challenge.
    specs = bytes.fromhex("010080 030080 070080 060040 020080 040080 00002f 000035")
    body = (b"\x01\x03\x01" + len(specs).to_bytes(2, "big") + b"\x00\x00\x00\x10"
            + specs + bytes(range(16)))
    hello = (0x8000 | len(body)).to_bytes(2, "big") + body
    with start_server("openssl", certs, log_dir=tmp_path) as srv, \
            Proxy(srv.addr, tmp_path / "log.jsonl") as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(hello)
            s.settimeout(10)
            answer = s.recv(100)
        assert answer[:1] in (b"\x15", b"")  # an alert, or just the close
        close = close_event(proxy)
    codes = [d["code"] for d in close["diagnosis"]]
    assert codes == ["sslv2-client-hello"], close["diagnosis"]


def test_tls10_client_refused_by_openssl3_with_internal_error_is_version_too_old(
        certs: Certs, tmp_path: Path) -> None:
    # OpenSSL 3 at its default security level answers a TLS 1.0 hello with
    # internal_error ("no suitable signature algorithm"), not protocol_version.
    with start_server("openssl", certs, log_dir=tmp_path) as srv, \
            Proxy(srv.addr, tmp_path / "log.jsonl") as proxy:
        res = subprocess.run(["openssl", "s_client", "-connect", proxy.addr, "-tls1",
                              "-cipher", "DEFAULT@SECLEVEL=0"], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=30)
        assert res.returncode != 0
        close = close_event(proxy)
    codes = [d["code"] for d in close["diagnosis"]]
    assert codes == ["version-too-old"], close["diagnosis"]


def test_scanner_probe_of_dss_suites_without_sni_is_no_shared_cipher(
        certs: Certs, tmp_path: Path) -> None:
    # testssl.sh -S probes DSS and static DH suites with a hello without SNI; the
    # server (no DSA key) has none of them: the cause is the suites, not the SNI.
    from tests.test_diagnosis import DSS_ONLY_CH
    with start_server("openssl", certs, log_dir=tmp_path) as srv, \
            Proxy(srv.addr, tmp_path / "log.jsonl") as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(DSS_ONLY_CH)
            s.settimeout(10)
            answer = s.recv(100)
        assert answer[:1] == b"\x15" and answer[-1:] == b"\x28"  # fatal handshake_failure
        close = close_event(proxy)
    assert [d["code"] for d in close["diagnosis"]] == ["no-shared-cipher"], close["diagnosis"]


def test_a_tls13_hello_without_signature_algorithms_is_named_not_missing_sni(
        certs: Certs, tmp_path: Path) -> None:
    # A TLS 1.3 ClientHello with ALPN (holding ESC, BEL, CR LF) but no
    # signature_algorithms and no SNI: OpenSSL 3 answers missing_extension (RFC 8446
    # 9.2). It read "missing-sni: the server probably requires SNI"; and a stripped
    # signature_algorithms (remove-extensions) only "a required extension is missing".
    def ext(t: int, body: bytes) -> bytes:
        return t.to_bytes(2, "big") + len(body).to_bytes(2, "big") + body
    proto = b"\x1b[31mh2\x07\r\n"
    exts = (ext(16, (len(proto) + 1).to_bytes(2, "big") + bytes([len(proto)]) + proto)
            + ext(43, bytes.fromhex("020304")) + ext(10, bytes.fromhex("0002001d"))
            + ext(51, bytes.fromhex("0024001d0020") + bytes(32)))
    body = (b"\x03\x03" + bytes(32) + b"\x00" + bytes.fromhex("00021301") + b"\x01\x00"
            + len(exts).to_bytes(2, "big") + exts)
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    hello = b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs
    with start_server("openssl", certs, tls="1.3", log_dir=tmp_path) as srv, \
            Proxy(srv.addr, tmp_path / "log.jsonl") as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(hello)
            s.settimeout(10)
            answer = s.recv(100)
        assert answer == bytes.fromhex("1503030002026d")  # fatal missing_extension
        close = close_event(proxy)
        shown = proxy.out_path.read_bytes()
    [found] = close["diagnosis"]
    assert found["code"] == "tls13-extension-missing"
    assert "offers TLS 1.3 without signature_algorithms" in found["summary"]
    assert found["evidence"][0].endswith(", no signature_algorithms")
    assert b"alpn=\\x1b[31mh2\\x07\\x0d\\x0a" in shown and b"\x1b" not in shown


def test_a_refused_hello_shows_its_offer_to_compare_with_the_server(
        certs: Certs, tmp_path: Path) -> None:
    # No group in common (client X25519 and P-256, server P-384 only): OpenSSL answers
    # handshake_failure before any ServerHello. The finding said only "no acceptable
    # set of parameters"; the server's lists are not on the wire, the offer is.
    with start_server("openssl", certs, tls="1.3", log_dir=tmp_path,
                      extra=["-groups", "P-384"]) as srv, \
            Proxy(srv.addr, tmp_path / "log.jsonl") as proxy:
        res = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{proxy.port}",
                              "-groups", "X25519:P-256", "-servername", "localhost"],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=20)
        assert "alert handshake failure" in res.stdout + res.stderr
        close = close_event(proxy)
    [found] = close["diagnosis"]
    assert found["code"] == "alert-handshake-failure"
    assert "compare the offer with the server's configuration" in found["summary"]
    offer = found["evidence"][1]
    assert offer.startswith("client record 1: the refused ClientHello offers ")
    assert "groups [x25519, secp256r1], key_share [x25519], signature_algorithms [" in offer


def test_a_client_that_gives_up_after_a_hello_retry_request(certs: Certs,
                                                            tmp_path: Path) -> None:
    # A TLS 1.3 hello with an x25519 key share and secp384r1 listed too (as nmap's
    # ssl-enum-ciphers sends), to a server with P-384 only: the server asks for a
    # secp384r1 share (HelloRetryRequest) and the client, which cannot retry, closes.
    # The log ended with the server's reply to that close and no cause.
    def ext(t: int, body: bytes) -> bytes:
        return t.to_bytes(2, "big") + len(body).to_bytes(2, "big") + body
    exts = (ext(43, bytes.fromhex("020304")) + ext(10, bytes.fromhex("0004001d0018"))
            + ext(13, bytes.fromhex("000404030503"))
            + ext(51, bytes.fromhex("0024001d0020") + bytes(range(1, 33))))
    body = (b"\x03\x03" + bytes(32) + b"\x00" + bytes.fromhex("00021302") + b"\x01\x00"
            + len(exts).to_bytes(2, "big") + exts)
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    with start_server("openssl", certs, tls="1.3", log_dir=tmp_path,
                      extra=["-groups", "P-384"]) as srv, \
            Proxy(srv.addr, tmp_path / "log.jsonl") as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs)
            s.settimeout(10)
            assert s.recv(5)[:1] == b"\x16"  # the HelloRetryRequest's record
        close = close_event(proxy)
    found = close["diagnosis"][0]
    assert found["code"] == "hello-retry-abandoned"
    assert found["evidence"][:3] == [
        "server record 1: HelloRetryRequest asking for a key share of secp384r1",
        "client record 1: ClientHello offers groups [x25519, secp384r1]",
        "the client closed without a second ClientHello"]


def test_a_malformed_client_hello_is_named_as_such(certs: Certs, tmp_path: Path) -> None:
    # testssl.sh's probe of a ClientHello whose extensions length overruns the message:
    # OpenSSL answers decode_error, which read "a message could not be parsed:
    # malformed, or altered in transit", while the inspector had seen it arrive so.
    # And tlsfuzzer's test-truncating-of-client-hello: bytes after the extensions.
    start = b"\x03\x03" + bytes(32) + b"\x00" + bytes.fromhex("0002c02f") + b"\x01\x00"
    cases = {start + bytes.fromhex("0040000a00040002001d"):
             "client_hello unparsed: extensions: length 64 exceeds the 8 bytes left",
             start + bytes.fromhex("0008000a00040002001d") + b"\x00\x00\x00":
             "client_hello with 3 bytes after its last field"}
    with start_server("openssl", certs, log_dir=tmp_path) as srv, \
            Proxy(srv.addr, tmp_path / "log.jsonl") as proxy:
        for body in cases:
            hs = b"\x01" + len(body).to_bytes(3, "big") + body
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
                s.sendall(b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs)
                s.settimeout(10)
                assert s.recv(100) == bytes.fromhex("15030300020232")  # fatal decode_error
        closes = [e for e in proxy.wait_closes(2) if e["event"] == "close"]
    for close in closes:
        [found] = close["diagnosis"]
        assert found["code"] == "malformed-hello"
        assert "not altered in transit" in found["summary"]
        assert found["evidence"][1:] == ["server record 1: fatal alert decode_error (50)"]
    assert sorted(c["diagnosis"][0]["evidence"][0] for c in closes) == sorted(
        f"client record 1: {why}" for why in cases.values())


def test_the_servers_close_notify_answering_a_clients_close_is_no_likely_alert(
        certs: Certs, tmp_path: Path) -> None:
    # A TLS 1.2 client that closes after its handshake without close_notify (what
    # sslyze does after each probe): OpenSSL's s_server answers the EOF with an
    # encrypted close_notify. That was "likely-encrypted-alert: rerun with --keylog".
    import ssl
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with start_server("openssl", certs, tls="1.2", log_dir=tmp_path) as srv, \
            Proxy(srv.addr, tmp_path / "log.jsonl") as proxy:
        raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        tls = ctx.wrap_socket(raw, server_hostname="localhost")
        tls.close()  # no close_notify: just the TCP FIN
        close = close_event(proxy)
    assert close["by"] == "client" and close["records"]["server"] >= 1
    assert close["diagnosis"] == []


def test_a_client_whose_stack_sends_an_alert_instead_of_a_hello(certs: Certs,
                                                                tmp_path: Path) -> None:
    # Python's ssl limited to TLS 1.0 under OpenSSL 3's default security level: "no
    # ciphers available", and OpenSSL sends internal_error as its first record. It
    # read "unexpected-message" (the server's answer) as the cause.
    script = ("import ssl, socket, sys\n"
              "c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\n"
              "c.minimum_version = c.maximum_version = ssl.TLSVersion.TLSv1\n"
              "c.check_hostname, c.verify_mode = False, ssl.CERT_NONE\n"
              "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=10)\n"
              "c.wrap_socket(s)\n")
    with start_server("openssl", certs, log_dir=tmp_path) as srv, \
            Proxy(srv.addr, tmp_path / "log.jsonl") as proxy:
        res = subprocess.run([sys.executable, "-c", script, str(proxy.port)],
                             capture_output=True, text=True, timeout=20)
        assert "NO_CIPHERS_AVAILABLE" in res.stderr
        close = close_event(proxy)
    assert [d["code"] for d in close["diagnosis"]] == ["alert-before-client-hello"]
    first, *answer = close["diagnosis"][0]["evidence"]
    assert first == "client record 1: fatal alert internal_error (80)"
    # The server's answer, unless the proxy had closed toward it before it came.
    assert answer in ([], ["server record 1: fatal alert unexpected_message (10)"])


def test_a_hello_of_only_groups_no_server_has_is_no_common_group(
        certs: Certs, tmp_path: Path) -> None:
    # tlsfuzzer's test-tls13-unrecognised-groups (by IP: no SNI): supported_groups of
    # GOST and unassigned codes only; OpenSSL answers handshake_failure. That read
    # "missing-sni: the server probably requires SNI".
    def ext(t: int, body: bytes) -> bytes:
        return t.to_bytes(2, "big") + len(body).to_bytes(2, "big") + body
    exts = (ext(43, bytes.fromhex("020304")) + ext(10, bytes.fromhex("00060022002a0222"))
            + ext(13, bytes.fromhex("000404030804")) + ext(51, bytes.fromhex("0000")))
    body = (b"\x03\x03" + bytes(32) + b"\x00" + bytes.fromhex("00021301") + b"\x01\x00"
            + len(exts).to_bytes(2, "big") + exts)
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    with start_server("openssl", certs, tls="1.3", log_dir=tmp_path) as srv, \
            Proxy(srv.addr, tmp_path / "log.jsonl") as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs)
            s.settimeout(10)
            assert s.recv(100) == bytes.fromhex("15030300020228")  # fatal handshake_failure
        close = close_event(proxy)
    [found] = close["diagnosis"]
    assert found["code"] == "no-common-group"
    assert found["evidence"][0] == ("client record 1: ClientHello offers 3 groups: "
                                    "GC256A, 0x002a, 0x0222")


def test_a_tls13_only_client_to_a_tls12_server_blames_the_servers_maximum(
        certs: Certs, tmp_path: Path) -> None:
    # It read "the client is too old or limited to old versions" for a client that
    # offers only TLS 1.3.
    import ssl
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    with start_server("openssl", certs, tls="1.2", log_dir=tmp_path) as srv, \
            Proxy(srv.addr, tmp_path / "log.jsonl") as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw:
            try:
                ctx.wrap_socket(raw, server_hostname="localhost")
            except ssl.SSLError as e:
                assert "PROTOCOL_VERSION" in str(e)
            else:
                raise AssertionError("the TLS 1.2 server accepted a TLS 1.3-only client")
        close = close_event(proxy)
    [found] = close["diagnosis"]
    assert found["code"] == "protocol-version"
    assert "(TLSv1.3): the client requires TLS 1.3 and the server's maximum is below it" \
        in found["summary"]
    assert "too old" not in found["summary"].split("server's maximum")[0]


def test_a_server_that_closes_after_the_hello_is_named_when_the_client_answers_the_close(
        tmp_path: Path) -> None:
    """A server that reads the ClientHello and closes without a byte (an SNI filter, a
    crash). OpenSSL clients (s_client, Python's ssl) answer the EOF with a decode_error
    alert; before, that alert made no-server-hello step aside and the only finding was
    'alert-decode-error: ... not the cause; look at why the server left'."""
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)

    def silent_server() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            conn.recv(65536)

    t = threading.Thread(target=silent_server, daemon=True)
    t.start()
    try:
        with Proxy(f"127.0.0.1:{listener.getsockname()[1]}", tmp_path / "log.jsonl") as proxy:
            res = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{proxy.port}"],
                                 input="", capture_output=True, text=True, timeout=30)
            assert "unexpected eof" in res.stderr, res.stderr
            close = close_event(proxy)
    finally:
        t.join(timeout=30)
        listener.close()
    codes = [d["code"] for d in close["diagnosis"]]
    assert codes == ["no-server-hello", "alert-decode-error"], close["diagnosis"]
    assert "the server closed without answering" in close["diagnosis"][0]["summary"]


@pytest.mark.parametrize("server", ["openssl", "go", "gnutls"])
def test_a_hello_with_a_duplicated_extension_is_named(server: str, certs: Certs,
                                                      tmp_path: Path) -> None:
    """A second extended_master_secret in OpenSSL's own ClientHello (a fault adds it):
    each real server refuses the hello (OpenSSL illegal_parameter, Go 1.19
    unexpected_message, GnuTLS unsupported_extension), and the finding names the repeated
    extension and the fault, with the server's alert as evidence."""
    scenario = tmp_path / "dup.yaml"
    scenario.write_text("name: duplicate-ems\nfaults:\n"
                        "  - match: {from: client, handshake: client_hello}\n"
                        "    action: add-extension\n    type: extended_master_secret\n")
    with start_server(server, certs, log_dir=tmp_path) as srv, \
            Proxy(srv.addr, tmp_path / "log.jsonl", [scenario]) as proxy:
        res = run_client("openssl", "127.0.0.1", proxy.port, certs)
        assert not res.ok
        close = close_event(proxy)
    found = {d["code"]: d for d in close["diagnosis"]}
    assert list(found)[0] == "duplicate-extension", list(found)
    ev = found["duplicate-extension"]["evidence"]
    assert "extended_master_secret (23) 2 times" in ev[0] and ev[0].startswith("client record 1")
    assert "add-extension" in " ".join(ev)
    alert = {"openssl": "illegal_parameter", "go": "unexpected_message",
             "gnutls": "unsupported_extension"}[server]
    assert any(e.startswith("server") and f"fatal alert {alert}" in e for e in ev), ev
    assert not any(c.startswith("alert-") for c in found)  # the alert is explained


@pytest.mark.parametrize("server", ["go", "gnutls", "openssl"])
def test_an_empty_handshake_record_before_the_hello(server: str, certs: Certs,
                                                    tmp_path: Path) -> None:
    """A zero-length handshake record (RFC 8446 5.1 forbids it) inserted before
    OpenSSL's ClientHello: Go and GnuTLS refuse it with unexpected_message and the
    finding names the record and the fault before the generic unexpected-message;
    OpenSSL skips it and the handshake completes, which is no empty-record finding."""
    scenario = tmp_path / "empty.yaml"
    scenario.write_text("name: empty-handshake\nfaults:\n"
                        "  - match: {from: client, index: 1}\n"
                        "    action: insert-record\n    content_type: handshake\n"
                        "    position: before\n")
    with start_server(server, certs, log_dir=tmp_path) as srv, \
            Proxy(srv.addr, tmp_path / "log.jsonl", [scenario]) as proxy:
        res = run_client("openssl", "127.0.0.1", proxy.port, certs)
        close = close_event(proxy)
    codes = [d["code"] for d in close["diagnosis"]]
    if server == "openssl":
        assert res.ok and "empty-record" not in codes, codes
        return
    assert not res.ok and "alert unexpected message" in res.output
    assert codes[:2] == ["empty-record", "unexpected-message"], codes
    assert close["diagnosis"][0]["evidence"] == [
        "fault empty-handshake: insert-record on client record 1: a zero-length handshake "
        "record inserted before it", "server record 1: fatal alert unexpected_message (10)"]


def test_an_empty_handshake_record_a_client_sends_itself(certs: Certs,
                                                          tmp_path: Path) -> None:
    """No fault: the client's own bytes hold a zero-length handshake record, then a
    real ClientHello (OpenSSL's), to a Go server, which refuses it."""
    from tests.test_diagnosis import OPENSSL_TLS12
    with start_server("go", certs, log_dir=tmp_path) as srv, \
            Proxy(srv.addr, tmp_path / "log.jsonl") as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(bytes.fromhex("1603010000") + OPENSSL_TLS12)
            s.settimeout(10)
            answer = s.recv(100)
        assert answer[:1] == b"\x15" and answer[-1] == 10  # fatal unexpected_message
        close = close_event(proxy)
    [first, *_] = close["diagnosis"]
    assert first["code"] == "empty-record"
    assert first["evidence"][0] == "client record 1: zero-length handshake record"
    assert "the client's stack" in first["summary"]


@pytest.mark.parametrize("server", ["openssl", "go", "gnutls"])
def test_a_heartbleed_probe_is_named_and_the_refusal_judged(server: str, certs: Certs,
                                                            tmp_path: Path) -> None:
    """A scanner's Heartbleed probe (CVE-2014-0160): OpenSSL's TLS 1.2 ClientHello, then
    in the clear a heartbeat request announcing 16384 payload bytes in a 3-byte record.
    No server here negotiated heartbeats (RFC 6520 2): each aborts, and the finding
    names the probe and says the server did not leak."""
    from tests.test_diagnosis import OPENSSL_TLS12
    probe = bytes.fromhex("1803030003014000")  # TLS 1.2, as negotiated
    with start_server(server, certs, log_dir=tmp_path) as srv, \
            Proxy(srv.addr, tmp_path / "log.jsonl") as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(OPENSSL_TLS12 + probe)
            s.settimeout(10)
            got = b""
            while chunk := s.recv(65536):
                got += chunk
        close = close_event(proxy)
    found = {d["code"]: d for d in close["diagnosis"]}
    hb = found["heartbeat"]
    assert hb["evidence"][0] == ("client record 2: heartbeat request announcing 16384 "
                                 "payload bytes in a record of 3 bytes"), hb
    assert list(found)[0] == "heartbeat"  # the cause, before the alert it provoked
    assert "Heartbleed probe" in hb["summary"] and hb["summary"].endswith(
        "not vulnerable to this probe"), hb["summary"]
    assert hb["evidence"][1].endswith("fatal alert unexpected_message (10)"), hb
    assert b"\x18\x03" not in got  # no heartbeat came back


# A ClientHello whose handshake header announces 0xffffff bytes, 41 of them sent
# a fuzzer's or scanner's probe (type, length, version, random, no session id, one
# suite, null compression).
LONG_HELLO_BODY = bytes.fromhex("01ffffff0303") + bytes(32) + bytes.fromhex("000002c02f0100")
LONG_HELLO = bytes.fromhex("160301002d") + LONG_HELLO_BODY


@pytest.mark.parametrize(("server", "answer"), [
    ("openssl", "fatal alert illegal_parameter (47)"),
    ("go", "fatal alert internal_error (80)"),
    ("gnutls", None)])
def test_a_hello_announcing_sixteen_megabytes(server: str, answer: str | None, certs: Certs,
                                              tmp_path: Path) -> None:
    """OpenSSL refuses it with illegal_parameter ("excessive message size"), Go with
    internal_error; GnuTLS waits for the rest until the client gives up (here a
    half-close): the finding names the announced length and each outcome."""
    assert len(LONG_HELLO_BODY) == 0x2D  # the record's length: the header and 41 bytes
    with start_server(server, certs, log_dir=tmp_path) as srv, \
            Proxy(srv.addr, tmp_path / "log.jsonl") as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(LONG_HELLO)
            if answer is None:
                s.shutdown(socket.SHUT_WR)
            s.settimeout(10)
            while s.recv(65536):
                pass
        close = close_event(proxy)
    found = {d["code"]: d for d in close["diagnosis"]}
    f = found["hello-too-long"]
    assert list(found)[0] == "hello-too-long", list(found)
    assert f["evidence"][0] == "client record 1: client_hello header announces 16777215 bytes"
    if answer is not None:
        assert f["evidence"][1] == f"server record 1: {answer}"
        assert "the server refused it before it was complete" in f["summary"]
        assert not any(c.startswith("alert-") for c in found)
    else:
        assert "the server waited for the rest until the client gave up" in f["summary"]
