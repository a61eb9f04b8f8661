"""Diagnosis rules on real hello and alert bytes: each rule fires with its evidence,
and stays silent on the near miss.

Hellos and alerts are real captures decoded with the project's codec:
report 003's wolfSSL ClientHello (tests/test_hello.py), the OpenSSL 3.0
ClientHellos in tests/fixtures/hellos/, and the OpenSSL 3.0 exchanges below
(s_client against a socket that kept the first record; that record sent to
s_server, whose answer was kept).
"""

from __future__ import annotations

import dataclasses
import random
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conversation import conversation
from tests.test_hello import WOLFSSL_REPORT_003
from tlsinspector.proxy import diagnosis, names
from tlsinspector.proxy.diagnosis import RULES, Finding, diagnose
from tlsinspector.proxy.engine import Connection, Emit, Output
from tlsinspector.proxy.faults import FaultPlanner
from tlsinspector.proxy.handshake import HandshakeReassembler
from tlsinspector.proxy.hello import (
    ClientHello,
    ServerHello,
    parse_client_hello,
    parse_server_hello,
)
from tlsinspector.proxy.history import AlertSeen, Anomaly, FaultSeen, HelloSeen, History, Side
from tlsinspector.proxy.records import Record, RecordFramer
from tlsinspector.proxy.scenario import load_scenario, load_scenario_text

HELLOS = Path(__file__).parent / "fixtures" / "hellos"
CONFIGS = Path(__file__).parent.parent / "configs"

# OpenSSL 3.0 s_client -tls1_2: record version 0x0301, SNI, supported_groups,
# TLS_EMPTY_RENEGOTIATION_INFO_SCSV, no renegotiation_info; ECDHE, DHE and RSA suites.
OPENSSL_TLS12 = (HELLOS / "openssl-tls12.bin").read_bytes()
# GnuTLS: renegotiation_info extension, no SCSV.
GNUTLS = (HELLOS / "gnutls.bin").read_bytes()

# OpenSSL 3.0 `s_client -tls1_1 -fallback_scsv -noservername`:
#   16 0301 0065                record: handshake, TLS 1.0, 101 bytes
#   01 000061 0302              ClientHello, legacy_version TLS 1.1 (no supported_versions)
#   0f67...2c                   random; 00 no session id
#   0014 c00a c014 0039 c009 c013 0033 0035 002f 00ff 5600
#                               10 suites, ending with the renegotiation SCSV and TLS_FALLBACK_SCSV
#   01 00                       compression null
#   0024 000b.. 000a.. 0023.. 0016.. 0017..   ec_point_formats, supported_groups, session_ticket,
#                               encrypt_then_mac, extended_master_secret
FALLBACK_CH = bytes.fromhex(
    "16030100650100006103020f67079bd22bee19e27c0e7f6504746f552dc439a30015206f3b13c990c5cc2c"
    "000014c00ac0140039c009c01300330035002f00ff560001000024000b000403000102000a000c000a001d"
    "0017001e00190018002300000016000000170000")
# openssl s_server (up to TLS 1.3) answering it: fatal inappropriate_fallback (86)
# "tls_early_post_process_client_hello:inappropriate fallback"
ALERT_86 = bytes.fromhex("15030200020256")

# OpenSSL 3.0 `s_client -tls1 -noservername`: legacy_version 0x0301, same suites minus
# TLS_FALLBACK_SCSV.
TLS10_CH = bytes.fromhex(
    "16030100630100005f0301a2209297f62d3897ecbc5a6605dae68e7425af73d66c32047403f9be80e34a08"
    "000012c00ac0140039c009c01300330035002f00ff01000024000b000403000102000a000c000a001d0017"
    "001e00190018002300000016000000170000")
# `s_server -tls1_2` answering it: fatal protocol_version (70) in a TLS 1.0 record,
# "tls_early_post_process_client_hello:unsupported protocol"
ALERT_70 = bytes.fromhex("15030100020246")

# `s_server -tls1_2` answering OPENSSL_TLS12, first record:
#   16 0303 0041 | 02 00003d 0303 | random (32) | 00 no session id
#   c030 TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 | 00 null compression
#   0015  ff01 0001 00 (renegotiation_info, empty: secure renegotiation)
#         000b 0004 03000102 (ec_point_formats) | 0023 0000 | 0017 0000
SERVER_HELLO_TLS12 = bytes.fromhex(
    "16030300410200003d030340a46d4278f7c57d338c94a7c0e13cb479a2f9c3dfb0e30436077ca5fb5143b8"
    "00c030000015ff01000100000b0004030001020023000000170000")
SERVER_HELLO_DONE = bytes.fromhex("16030300040e000000")

# Report 003: what smtp.gmail.com answered wolfSSL: fatal handshake_failure (40).
ALERT_40 = bytes.fromhex("15030300020228")


def _hello(stream: bytes) -> tuple[int, ClientHello | ServerHello]:
    """Record version and hello of a captured first record, through the codec."""
    [rec] = RecordFramer().feed(stream)
    assert isinstance(rec, Record)
    [msg] = HandshakeReassembler().feed(rec.payload, 1)
    hello = parse_client_hello(msg.body) if msg.msg_type == 1 else parse_server_hello(msg.body)
    return rec.version, hello


def ch_seen(stream: bytes, index: int = 1, renegotiation: bool = False,
            hello: ClientHello | None = None) -> HelloSeen:
    version, parsed = _hello(stream)
    assert isinstance(parsed, ClientHello)
    return HelloSeen("client", index, version, hello or parsed, renegotiation)


def sh_seen(stream: bytes = SERVER_HELLO_TLS12, index: int = 1) -> HelloSeen:
    version, parsed = _hello(stream)
    assert isinstance(parsed, ServerHello)
    return HelloSeen("server", index, version, parsed)


def alert(side: Side, index: int, raw: bytes, negotiated: int | None = None) -> AlertSeen:
    """An alert as the engine records it from the 7 bytes of a plaintext alert record."""
    return AlertSeen(side, index, raw[5], raw[6], int.from_bytes(raw[1:3], "big"), negotiated)


def history(*, ch: list[HelloSeen] | None = None, sh: list[HelloSeen] | None = None,
            alerts: list[AlertSeen] | None = None, anomalies: list[Anomaly] | None = None,
            faults: list[FaultSeen] | None = None, closed_by: str | None = "server",
            negotiated: int | None = None) -> History:
    h = History(client_hellos=ch or [], server_hellos=sh or [], alerts=alerts or [],
                anomalies=anomalies or [], faults=faults or [], closed_by=closed_by)
    if negotiated is None and sh:
        hello = sh[0].hello
        assert isinstance(hello, ServerHello)
        negotiated = hello.selected_version
    h.negotiated_version = negotiated
    return h


def codes(h: History) -> list[str]:
    return [f.code for f in diagnose(h)]


def finding(h: History, code: str) -> Finding:
    found = [f for f in diagnose(h) if f.code == code]
    assert len(found) == 1, codes(h)
    return found[0]


# -- report 003: handshake_failure for wolfSSL's ClientHello ------------------------


def test_report_003_hello_rejected_yields_missing_supported_groups_and_missing_sni() -> None:
    h = history(ch=[ch_seen(WOLFSSL_REPORT_003)], alerts=[alert("server", 1, ALERT_40)])
    assert codes(h) == ["missing-supported-groups", "missing-sni"]
    groups = finding(h, "missing-supported-groups")
    assert groups.evidence[0].startswith(
        "client record 1: ClientHello with no supported_groups extension, offering 10 suites "
        "that need a curve or group (TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256, ")
    assert "nothing else" in groups.evidence[0]
    assert groups.evidence[1] == "server record 1: fatal alert handshake_failure (40)"
    assert "RFC 8422 4" in groups.reference
    sni = finding(h, "missing-sni")
    assert sni.evidence == ["client record 1: ClientHello with no server_name extension",
                            "server record 1: fatal alert handshake_failure (40)"]
    assert sni.reference.startswith("RFC 6066 3")


def test_an_alert_of_no_defined_level_is_no_refusal_of_the_hello() -> None:
    """RFC 5246 7.2: levels are warning (1) and fatal (2); a handshake_failure with
    level 255 (a hostile or broken peer) does not make the hello's gaps the cause."""
    odd = AlertSeen("server", 1, 255, 40, 0x0303, None)
    assert codes(history(ch=[ch_seen(WOLFSSL_REPORT_003)], alerts=[odd])) == []


def test_report_003_through_the_engine() -> None:
    c = Connection("1", "c:1", "s:2")
    c.receive("client", WOLFSSL_REPORT_003, 1.0)
    c.receive("server", ALERT_40, 1.0)
    c.eof("server", 1.0)
    assert close_codes(c.finish(1.0)) == ["missing-supported-groups", "missing-sni"]


def test_handshake_failure_with_groups_and_sni_blames_neither() -> None:
    h = history(ch=[ch_seen(OPENSSL_TLS12)], alerts=[alert("server", 1, ALERT_40)])
    assert codes(h) == ["alert-handshake-failure"]
    assert "cipher suites" in finding(h, "alert-handshake-failure").summary


def test_missing_groups_with_non_ecc_suites_also_offered_says_so() -> None:
    # OpenSSL's hello offers DHE and RSA suites too: a server that accepts only ECDHE
    # (the strip-supported-groups scenario's Go server) still fails.
    _, parsed = _hello(OPENSSL_TLS12)
    assert isinstance(parsed, ClientHello)
    stripped = dataclasses.replace(parsed, extensions=tuple(
        e for e in parsed.extensions or () if e.type != 10))
    h = history(ch=[ch_seen(OPENSSL_TLS12, hello=stripped)],
                alerts=[alert("server", 1, ALERT_40)])
    f = finding(h, "missing-supported-groups")
    assert "offering 14 suites that need a curve" in f.evidence[0]
    assert f.evidence[0].endswith(" and 13 that do not")  # 7 DHE and 6 RSA suites
    assert "accepts only ECDHE" in f.summary
    assert "missing-sni" not in codes(h)  # the hello still carries server_name
    # Three suites are named; a fourth and more are "...".
    for n, shown in ((3, "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, "
                         "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, "
                         "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256) and nothing else"),
                     (4, "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, ...) and nothing else")):
        ecdhe = tuple(x for x in stripped.cipher_suites if x in (0xC02C, 0xC030, 0xCCA9,
                                                                  0xCCA8))
        few = dataclasses.replace(stripped, cipher_suites=ecdhe[:n])
        h.client_hellos = [ch_seen(OPENSSL_TLS12, hello=few)]
        evidence = finding(h, "missing-supported-groups").evidence[0]
        assert f"offering {n} suites that need a curve or group (" in evidence
        assert evidence.endswith(shown), evidence


def test_missing_groups_needs_an_ecc_suite_and_a_rejection_before_the_server_hello() -> None:
    _, parsed = _hello(WOLFSSL_REPORT_003)
    assert isinstance(parsed, ClientHello)
    rsa_only = dataclasses.replace(parsed, cipher_suites=(0x002F, 0x0035))
    h = history(ch=[ch_seen(WOLFSSL_REPORT_003, hello=rsa_only)],
                alerts=[alert("server", 1, ALERT_40)])
    assert "missing-supported-groups" not in codes(h)
    # A server that answered with a ServerHello picked its parameters: its later
    # handshake_failure has another cause.
    later = history(ch=[ch_seen(WOLFSSL_REPORT_003)], sh=[sh_seen(index=1)],
                    alerts=[alert("server", 2, ALERT_40)])
    assert "missing-supported-groups" not in codes(later)
    assert "missing-sni" not in codes(later)
    # A client's handshake_failure is not the server rejecting the hello.
    client = history(ch=[ch_seen(WOLFSSL_REPORT_003)], alerts=[alert("client", 2, ALERT_40)])
    assert codes(client) == ["alert-handshake-failure"]


# A TLS 1.2 ClientHello that ends after compression_methods (RFC 5246 7.4.1.2):
#   16 0301 0031                record: handshake, 49 bytes
#   01 00002d 0303              ClientHello, legacy_version TLS 1.2
#   00*32 | 00                  random; no session id
#   0006 c02f c030 c013         ECDHE suites only
#   01 00                       compression null; nothing after: no extensions block
NO_EXTENSIONS_CH = bytes.fromhex("16030100310100002d0303" + "00" * 32 + "00"
                                 "0006c02fc030c013" "0100")


# testssl.sh's probe for DSS suites: TLS 1.2, no SNI, only DHE_DSS / static DH suites:
#   16 0301 003b | 01 000037 0303 | random 00*32 | 00 no session id
#   0006 00a3 0032 00a1          TLS_DHE_DSS_WITH_AES_256_GCM_SHA384,
#                                TLS_DHE_DSS_WITH_AES_128_CBC_SHA,
#                                TLS_DH_RSA_WITH_AES_256_GCM_SHA384
#   01 00 | 0008 000a 0004 0002 001d   supported_groups: x25519
DSS_ONLY_CH = bytes.fromhex("160301003b010000370303" + "00" * 32 + "00" "000600a3003200a1"
                            "0100" "0008000a00040002001d")


def test_a_hello_of_only_dss_and_static_dh_suites_is_no_shared_cipher_not_sni() -> None:
    h = history(ch=[ch_seen(DSS_ONLY_CH)], alerts=[alert("server", 1, ALERT_40)])
    assert codes(h) == ["no-shared-cipher"]
    assert "DSS, static DH/ECDH" in finding(h, "no-shared-cipher").summary


def test_a_hello_without_any_extensions_is_said_so_not_missing_sni() -> None:
    h = history(ch=[ch_seen(NO_EXTENSIONS_CH)], alerts=[alert("server", 1, ALERT_40)])
    assert codes(h) == ["hello-without-extensions"]
    found = finding(h, "hello-without-extensions")
    assert found.evidence == [
        "client record 1: ClientHello 0x0303 with no extensions block",
        "server record 1: fatal alert handshake_failure (40)"]
    assert "SSL 3.0 / TLS 1.0-era" in found.summary
    assert found.reference.startswith("RFC 5246 7.4.1.2")
    # An empty block (two zero bytes of length) says the same, worded as such.
    empty = ch_seen(NO_EXTENSIONS_CH)
    assert isinstance(empty.hello, ClientHello)
    empty = dataclasses.replace(empty, hello=dataclasses.replace(empty.hello, extensions=()))
    h = history(ch=[empty], alerts=[alert("server", 1, ALERT_40)])
    assert codes(h) == ["hello-without-extensions"]
    assert "an empty extensions block" in finding(h, "hello-without-extensions").evidence[0]
    # The same hello with only a TLS 1.0 legacy_version: version-too-old is the cause.
    old = bytearray(NO_EXTENSIONS_CH)
    old[9:11] = b"\x03\x01"
    assert "hello-without-extensions" not in codes(
        history(ch=[ch_seen(bytes(old))], alerts=[alert("server", 1, ALERT_40)]))


def test_openssl3s_internal_error_to_a_tls10_hello_is_version_too_old() -> None:
    # `openssl s_client -tls1` to a default OpenSSL 3 s_server: fatal internal_error,
    # "tls_choose_sigalg:no suitable signature algorithm".
    h = history(ch=[ch_seen(TLS10_CH)], alerts=[alert("server", 1, bytes.fromhex(
        "15030100020250"))])
    assert codes(h) == ["version-too-old"]
    assert "no suitable signature algorithm" in finding(h, "version-too-old").summary


def test_a_refused_sslv2_format_hello_is_named_not_an_internal_error() -> None:
    v2 = Anomaly("client", None, "sslv2_client_hello", "SSLv2-compatible ClientHello",
                 "\x80.\x01\x03\x01")
    # OpenSSL 3's answer to an SSLv2-format hello: internal_error (80).
    h = history(anomalies=[v2], alerts=[alert("server", 1, bytes.fromhex("15030100020250"))])
    assert codes(h) == ["sslv2-client-hello"]
    found = finding(h, "sslv2-client-hello")
    assert found.evidence == ["client record 1: SSLv2-compatible ClientHello",
                              "server record 1: fatal alert internal_error (80)"]
    assert "RFC 6176" in found.reference
    # protocol_version to it is the same refusal, named once.
    h = history(anomalies=[v2], alerts=[alert("server", 1, bytes.fromhex("15030100020246"))])
    assert codes(h) == ["sslv2-client-hello"]
    # The server closed without an alert: refused all the same.
    assert codes(history(anomalies=[v2], closed_by="server")) == ["sslv2-client-hello"]
    # No answer at all (a hex dump of the hello alone): nothing refused it.
    assert codes(history(anomalies=[v2], closed_by="client")) == []
    # A server that took it (TLS 1.0-1.2 may, RFC 5246 E.2): no finding.
    h = history(anomalies=[v2], sh=[sh_seen()], closed_by="client")
    assert "sslv2-client-hello" not in codes(h)


def test_an_upstream_that_refused_is_named_with_its_address_and_error() -> None:
    h = history(closed_by="proxy")
    assert codes(h) == []
    h.upstream_error = ("127.0.0.1:1", "[Errno 111] Connection refused")
    found = finding(h, "upstream-unreachable")
    assert found.summary.startswith("the proxy could not connect to the upstream 127.0.0.1:1 "
                                    "([Errno 111] Connection refused): nothing listens")
    assert found.evidence == ["proxy: connecting to 127.0.0.1:1 failed: [Errno 111] "
                              "Connection refused"]
    assert found.reference.startswith("RFC 9293")
    h.upstream_error = ("10.0.0.9:443", "[Errno 110] Connection timed out")
    assert "a firewall drops the SYN" in finding(h, "upstream-unreachable").summary


def test_missing_sni_on_fatal_unrecognized_name_but_not_on_a_warning() -> None:
    fatal = bytes.fromhex("15030300020270")
    h = history(ch=[ch_seen(WOLFSSL_REPORT_003)], alerts=[alert("server", 1, fatal)])
    assert "missing-sni" in codes(h)
    warning = bytes.fromhex("15030300020170")
    h = history(ch=[ch_seen(WOLFSSL_REPORT_003)], sh=[sh_seen(index=2)],
                alerts=[alert("server", 1, warning)], closed_by="client")
    assert "missing-sni" not in codes(h)


def test_missing_sni_names_the_fault_that_removed_it() -> None:
    fault = FaultSeen("strip-sni", "remove-extensions", "client", 1, "transcript-breaking",
                      {"before": ["server_name", "supported_groups"],
                       "after": {"removed": ["server_name"]}},
                      {"extensions": (0,)}, {"extensions_removed": (0,)})
    h = history(ch=[ch_seen(WOLFSSL_REPORT_003)], alerts=[alert("server", 1, ALERT_40)],
                faults=[fault])
    assert finding(h, "missing-sni").evidence[0] == (
        "client record 1: ClientHello with no server_name extension (removed by fault "
        "strip-sni: remove-extensions on client record 1)")


def test_the_hello_judged_is_the_one_the_fault_delivered() -> None:
    """Through the engine: a fault strips server_name from OpenSSL's hello and the
    server refuses with unrecognized_name: the finding is about the hello the server
    received (no SNI, removed by the fault), not the one the client sent."""
    s = load_scenario_text("name: strip-sni\nfaults:\n  - match: {from: client, "
                           "handshake: client_hello}\n    action: remove-extensions\n"
                           "    extensions: [server_name]\n", "t.yaml")
    c = Connection("1", "c:1", "s:2", faults=FaultPlanner([s], 1, random.Random(1)))
    outs = c.receive("client", OPENSSL_TLS12, 1.0)
    outs += c.receive("server", bytes.fromhex("15030300020270"), 1.0)  # fatal, 112
    outs += c.eof("server", 1.0)
    found = {f["code"]: f for f in close_findings(outs + c.finish(1.0))}
    assert found["missing-sni"]["evidence"][0] == (
        "client record 1: ClientHello with no server_name extension (removed by fault "
        "strip-sni: remove-extensions on client record 1)")


# -- record versions and non-TLS bytes (report 000) ---------------------------------


def test_record_version_3030_is_ascii_00_with_go_error_text() -> None:
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen(index=1)],
                anomalies=[Anomaly("server", 2, "record_version", "record version 0x3030",
                                   0x3030)])
    f = finding(h, "record-version-invalid")
    assert f.evidence == [
        "server record 2: version 0x3030 (ASCII '00'); a Go peer reports "
        "'tls: received record with version 3030 when expecting version 303'"]
    assert "ASCII text" in f.summary and "out of sync" in f.summary
    assert f.reference == "RFC 8446 5.1; RFC 5246 6.2.1"


@pytest.mark.parametrize("negotiated", [0x0304, 0x0303])
def test_record_version_on_a_connection_that_completed_says_the_receiver_went_on(
        negotiated: int) -> None:
    """Go as a TLS 1.3 server takes a ChangeCipherSpec with version 0x3030 and the
    connection completes: the finding says the receiver did not check it (a TLS 1.3
    receiver must ignore it), not that the stream is corrupted; with a fatal alert
    it still says corrupted."""
    anomaly = Anomaly("client", 2, "record_version", "record version 0x3030", 0x3030)
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen(index=1)], anomalies=[anomaly],
                negotiated=negotiated)
    h.handshake_done = {"client": True, "server": True}
    f = finding(h, "record-version-invalid")
    assert "completed with no fatal alert" in f.summary and "out of sync" not in f.summary
    assert "'00' as ASCII" in f.summary
    assert ("RFC 8446 5.1" in f.summary) == (negotiated == 0x0304)
    h.alerts = [AlertSeen("server", 3, 2, 10, 0x0303, negotiated)]  # fatal unexpected_message
    f = finding(h, "record-version-invalid")
    assert "out of sync" in f.summary and "completed" not in f.summary


def test_record_version_before_the_server_hello_is_gos_first_record_error() -> None:
    h = history(ch=[ch_seen(OPENSSL_TLS12)],
                anomalies=[Anomaly("server", 1, "record_version", "", 0x3030)])
    assert finding(h, "record-version-invalid").evidence[0].endswith(
        "'tls: first record does not look like a TLS handshake'")


def test_a_client_record_version_is_judged_by_what_the_server_had_read_before_it() -> None:
    """Go's server (conn.go readRecordOrCCS) knows the version only from a ClientHello
    it read before the record: a bad record before the ClientHello, or the ClientHello's
    own record, is a "first record" error; a later one is compared with the version."""
    def go_error(index: int) -> str:
        h = history(ch=[ch_seen(OPENSSL_TLS12, index=2)], sh=[sh_seen(index=1)],
                    anomalies=[Anomaly("client", index, "record_version", "", 0x3030)])
        return finding(h, "record-version-invalid").evidence[0]

    first = "'tls: first record does not look like a TLS handshake'"
    assert go_error(1).endswith(first)
    assert go_error(2).endswith(first)
    assert go_error(3).endswith(
        "'tls: received record with version 3030 when expecting version 303'")
    # The same for a server record and the client that read a ServerHello before it.
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen(index=2)],
                anomalies=[Anomaly("server", 1, "record_version", "", 0x3030)])
    assert finding(h, "record-version-invalid").evidence[0].endswith(first)


def test_a_low_record_version_before_the_hello_is_no_go_first_record_error() -> None:
    """Go rejects a first record only for a version >= 0x1000 or a non-TLS content
    type (conn.go); 0x0200 on a handshake record passes that check, so no Go error
    text is claimed for it."""
    h = history(ch=[ch_seen(OPENSSL_TLS12)],
                anomalies=[Anomaly("server", 1, "record_version", "", 0x0200)])
    assert "Go peer" not in finding(h, "record-version-invalid").evidence[0]
    # The bound itself: 0x0fff passes Go's check, 0x1000 is refused.
    h.anomalies = [Anomaly("server", 1, "record_version", "", 0x0FFF)]
    assert "Go peer" not in finding(h, "record-version-invalid").evidence[0]
    h.anomalies = [Anomaly("server", 1, "record_version", "", 0x1000)]
    assert finding(h, "record-version-invalid").evidence[0].endswith(
        "'tls: first record does not look like a TLS handshake'")


def test_alert_hints_follow_their_codes() -> None:
    """insufficient_security (71, RFC 8446 6.2): the sender wants stronger parameters."""
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()],
                alerts=[AlertSeen("server", 2, 2, 71, 0x0303, 0x0303)])
    assert "requires stronger parameters" in finding(h, "alert-insufficient-security").summary


def test_a_record_version_is_shown_as_text_only_when_both_bytes_are_printable() -> None:
    """0x2020 is two spaces (printable ASCII, 0x20-0x7e), 0x0d0a a CR LF (control
    characters): only the first gets an ASCII reading in the evidence."""
    def evidence(version: int) -> str:
        h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen(index=1)],
                    anomalies=[Anomaly("server", 2, "record_version", "", version)])
        return finding(h, "record-version-invalid").evidence[0]

    assert evidence(0x2020).startswith("server record 2: version 0x2020 (ASCII '  ')")
    assert "ASCII" not in evidence(0x0D0A)
    assert "ASCII" not in evidence(0x7F7F)  # DEL is no printable character


def test_record_version_zero_is_invalid_too() -> None:
    """0x0000 is no version (RFC 5246 6.2.1: 0x0300..0x0303, RFC 8446 5.1: 0x0301..
    0x0304); garbage or a zeroed header from a broken middlebox starts with it."""
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen(index=1)],
                anomalies=[Anomaly("server", 2, "record_version", "record version 0x0000",
                                   0x0000)])
    assert finding(h, "record-version-invalid").evidence == [
        "server record 2: version 0x0000; a Go peer reports 'tls: received record with "
        "version 0 when expecting version 303'"]


def test_valid_and_dtls_record_versions_are_not_invalid() -> None:
    dtls = history(anomalies=[Anomaly("server", 2, "record_version", "", 0xFEFD)])
    assert "record-version-invalid" not in codes(dtls)
    clean = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], closed_by="client")
    assert codes(clean) == []
    lowered = FaultSeen("s", "set-record-version", "server", 2, "transcript-safe",
                        {"before": "0x0303", "after": "0x0301"}, {"version": 0x0301},
                        {"record_version": 0x0301})
    assert "record-version-invalid" not in codes(history(faults=[lowered]))


def test_a_tls_version_other_than_the_negotiated_one_is_named() -> None:
    """A server record after the ServerHello in TLS 1.0's version (0x0301) on a TLS 1.2
    connection: a valid version, the wrong one. Go, OpenSSL and curl refuse it with
    protocol_version; the diagnosis names the record, not 'the client refused the
    server's choice' (TLS 1.2 was offered). The client's own alert in 0x0301 (curl
    does that) is no mismatch: a refusal is judged by protocol-version itself."""
    c = Connection("1", "c:1", "s:2")
    c.receive("client", OPENSSL_TLS12, 1.0)
    c.receive("server", SERVER_HELLO_TLS12 + bytes.fromhex("16030100040e000000"), 1.0)
    c.receive("client", bytes.fromhex("15030100020246"), 1.0)
    c.eof("client", 1.0)
    assert [(a.side, a.index, a.value) for a in c.history.anomalies
            if a.kind.startswith("record_version")] == [("server", 2, 0x0301)]
    [f] = close_findings(c.finish(1.0))
    assert f["code"] == "protocol-version"
    assert "server record 2 carries 0x0301 after the ServerHello chose TLSv1.2" in f["summary"]
    assert "'received record with version 301 when expecting version 303'" in f["summary"]
    assert "server record 2: record version 0x0301" in f["evidence"]


@pytest.mark.parametrize(("side", "index", "version", "named"), [
    ("server", 2, 0x0301, True),     # after the ServerHello: the wrong version
    ("server", 1, 0x0301, False),    # the ServerHello's own record
    ("server", 2, 0x0303, False),    # the negotiated one
    ("client", 1, 0x0301, False),    # the ClientHello's record may carry any {03,XX}
    ("client", 2, 0x0302, True),
])
def test_a_fault_that_sets_another_tls_version_is_named(side: Side, index: int,
                                                         version: int, named: bool) -> None:
    fault = FaultSeen("v", "set-record-version", side, index, "transcript-safe",
                      {"before": "0x0303", "after": hex(version)}, {"version": version},
                      {"record_version": version})
    refusal = alert("client" if side == "server" else "server", 3,
                    bytes.fromhex("15030300020246"), 0x0303)
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], alerts=[refusal],
                faults=[fault])
    f = finding(h, "protocol-version")
    assert (f"{side} record {index} carries" in f.summary) == named
    assert any("(set by fault v)" in e for e in f.evidence) == named
    assert "record-version-invalid" not in codes(h)


def test_record_version_3030_injected_through_the_engine() -> None:
    """configs/record-version-3030.yaml on a real OpenSSL hello and ServerHello; the
    receiving Go client then aborts with protocol_version, as Go's conn.go does."""
    plan = FaultPlanner([load_scenario(CONFIGS / "record-version-3030.yaml")], 1,
                        random.Random(1))
    c = Connection("1", "c:1", "s:2", faults=plan)
    c.receive("client", OPENSSL_TLS12, 1.0)
    c.receive("server", SERVER_HELLO_TLS12 + SERVER_HELLO_DONE, 1.0)
    c.receive("client", bytes.fromhex("15030300020246"), 1.0)
    c.eof("client", 1.0)
    findings = close_findings(c.finish(1.0))
    assert [f["code"] for f in findings] == ["record-version-invalid", "protocol-version"]
    assert findings[0]["evidence"] == [
        "server record 2: version 0x3030 (ASCII '00') (set by fault record-version-3030); a Go "
        "peer reports 'tls: received record with version 3030 when expecting version 303'"]
    assert "record carried a version other than the negotiated one" in findings[1]["summary"]
    # The diagnosis does not know which stack aborted: it names none (a curl or
    # OpenSSL client gets the same alert and must not read "Go's crypto/tls").
    assert "Go" not in findings[1]["summary"]


def test_anomaly_and_fault_on_the_same_record_give_one_line() -> None:
    fault = FaultSeen("v", "set-record-version", "server", 2, "transcript-safe",
                      {"before": "0x0303", "after": "0x3030"}, {"version": 0x3030},
                      {"record_version": 0x3030})
    h = history(anomalies=[Anomaly("server", 2, "record_version", "", 0x3030)], faults=[fault])
    assert len(finding(h, "record-version-invalid").evidence) == 1


def test_plain_http_answer_from_the_server() -> None:
    preview = "HTTP/1.1 400 Bad Request..Server: nginx....<html>"
    h = history(ch=[ch_seen(OPENSSL_TLS12)],
                anomalies=[Anomaly("server", None, "non_tls",
                                   "plain HTTP where a TLS record was expected", preview)])
    f = finding(h, "non-tls-bytes")
    assert f.summary.startswith("plain HTTP on a TLS port: the server answered in plaintext")
    assert f.evidence[0].startswith("server: non-TLS bytes 'HTTP/1.1 400 Bad Request")
    # Before any ServerHello a Go client rejects the first record outright.
    assert f.evidence[0].endswith("'tls: first record does not look like a TLS handshake'")
    assert "no-server-hello" not in codes(h)  # the non-TLS answer explains it
    # After a TLS 1.2 ServerHello a Go client reads "HTTP/" as a record header whose
    # version is the bytes "TT" (0x5454), and names both versions (conn.go).
    h.server_hellos = [sh_seen()]
    assert finding(h, "non-tls-bytes").evidence[0].endswith(
        "'tls: received record with version 5454 when expecting version 303'")


def test_plain_http_from_the_client_and_non_http_garbage() -> None:
    client = history(anomalies=[Anomaly("client", None, "non_tls", "", "GET / HTTP/1.1..Host")])
    assert "plaintext client" in finding(client, "non-tls-bytes").summary
    garbage = history(anomalies=[Anomaly("server", None, "non_tls", "", "....")])
    f = finding(garbage, "non-tls-bytes")
    assert "HTTP" not in f.summary and "not TLS records" in f.summary
    assert "non-tls-bytes" not in codes(history())


@pytest.mark.parametrize(("preview", "named"), [
    ("220 m", "an SMTP or FTP greeting, 220"), ("220-mail.example ESMTP", "220"),
    ("* OK ", "an IMAP greeting, * OK"), ("+OK D", "a POP3 greeting, +OK")])
def test_a_plaintext_mail_greeting_answering_a_client_hello_names_the_port_mixup(
        preview: str, named: str) -> None:
    # curl https:// (implicit TLS) against an SMTP server: the server greets first in
    # plaintext (the 5-byte preview kept without --log-preview). It read "another
    # protocol on this port"; a client's plaintext greeting is no such finding.
    h = history(ch=[ch_seen(OPENSSL_TLS12)],
                anomalies=[Anomaly("server", None, "non_tls", "", preview)])
    f = finding(h, "non-tls-bytes")
    assert f.summary.startswith("the server greeted in plaintext (") and named in f.summary
    assert "implicit TLS is 465, 993, 995, 990" in f.summary
    client = history(anomalies=[Anomaly("client", None, "non_tls", "", preview)])
    assert "greeted" not in finding(client, "non-tls-bytes").summary


def test_replace_with_raw_fault_is_what_the_client_received() -> None:
    fault = FaultSeen("plain-http-reply", "replace-with-raw", "server", 1, "transcript-safe",
                      {"before": 1200, "after": 120, "preview": "HTTP/1.1 400 Bad Request\r\n"},
                      {"data": b"HTTP/1.1 400 Bad Request\r\n"},
                      {"raw": b"HTTP/1.1 400 Bad Request\r\n"})
    h = history(ch=[ch_seen(OPENSSL_TLS12)], faults=[fault], closed_by="proxy")
    f = finding(h, "non-tls-bytes")
    assert "server answered in plaintext" in f.summary
    assert "fault plain-http-reply" in f.evidence[0]


# -- alerts: decryption_failed_RESERVED (report 001), bad_record_mac, fallback -----


def test_alert_21_under_tls12_is_reserved() -> None:
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()],
                alerts=[alert("server", 4, bytes.fromhex("15030300020215"), 0x0303)])
    f = finding(h, "alert-decryption-failed-reserved")
    assert f.evidence == ["server record 4: fatal alert decryption_failed_RESERVED (21) "
                          "under TLSv1.2"]
    assert "MUST NOT" in f.summary and "bad_record_mac" in f.summary
    assert f.reference == "RFC 5246 7.2.2; RFC 4346 7.2.2"


def test_an_alert_level_without_a_name_is_shown_as_its_number() -> None:
    """RFC 5246 7.2: the level is one byte, warning (1) or fatal (2); a peer that sends
    another value (3 here, hostile or broken) is shown as that number, in decimal as
    an unnamed description is (names.name_of)."""
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()],
                alerts=[alert("server", 4, bytes.fromhex("15030300020315"), 0x0303)])
    assert finding(h, "alert-decryption-failed-reserved").evidence == [
        "server record 4: 3 alert decryption_failed_RESERVED (21) under TLSv1.2"]


def test_alert_21_before_negotiation_is_judged_by_the_record_version() -> None:
    tls11 = history(alerts=[alert("server", 1, bytes.fromhex("15030200020215"))])
    assert "alert-decryption-failed-reserved" in codes(tls11)
    tls10 = history(alerts=[alert("server", 1, bytes.fromhex("15030100020215"))])
    assert "alert-decryption-failed-reserved" not in codes(tls10)


def test_alert_21_under_ssl3_and_tls10_is_allowed_but_still_named() -> None:
    for version in (0x0300, 0x0301):
        h = history(alerts=[alert("server", 4, bytes.fromhex("15030100020215"), version)])
        assert codes(h) == ["alert-decryption-failed"], version


def test_alert_21_injected_by_a_fault_under_tls12() -> None:
    fault = FaultSeen("alert-decryption-failed-reserved", "replace-with-alert", "server", 3,
                      "transcript-safe", {"before": ["change_cipher_spec"], "alert": "fatal x",
                                          "level": 2, "code": 21},
                      {"level": 2, "description": 21})
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], faults=[fault])
    assert finding(h, "alert-decryption-failed-reserved").evidence[0].startswith(
        "server record 3: fatal alert decryption_failed_RESERVED (21) (put there by fault "
        "alert-decryption-failed-reserved: replace-with-alert on server record 3)")


def test_bad_record_mac_lists_the_causes() -> None:
    h = history(ch=[ch_seen(WOLFSSL_REPORT_003)], sh=[sh_seen()],
                alerts=[alert("server", 3, bytes.fromhex("15030300020214"), 0x0303)])
    f = finding(h, "bad-record-mac")
    for cause in ("corruption in transit", "mismatched keys", "STM32F4", "transcripts differ"):
        assert cause in f.summary
    assert "fault" not in f.summary
    assert f.evidence == ["server record 3: fatal alert bad_record_mac (20)"]


def test_bad_record_mac_explained_by_a_transcript_breaking_fault_only() -> None:
    mac = alert("server", 3, bytes.fromhex("15030300020214"), 0x0303)
    breaking = FaultSeen("t", "add-extension", "client", 1, "transcript-breaking",
                         {"before": 7, "after": {}}, {"type": 0x1234, "data": b""})
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], alerts=[mac], faults=[breaking])
    f = finding(h, "bad-record-mac")
    assert "the fault that altered the bytes explains it" in f.summary
    assert "fault t: add-extension on client record 1" in f.evidence
    safe = FaultSeen("d", "delay", "server", 1, "transcript-safe", {"ms": 300}, {"ms": 300})
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], alerts=[mac], faults=[safe])
    assert "explains" not in finding(h, "bad-record-mac").summary
    assert "bad-record-mac" not in codes(history(faults=[safe]))


def test_corrupted_encrypted_record_through_the_engine() -> None:
    """configs/alert-bad-record-mac.yaml on a real TLS 1.2 conversation (Python ssl):
    the client's bad_record_mac alert would be encrypted, so the fault is the evidence."""
    plan = FaultPlanner([load_scenario(CONFIGS / "alert-bad-record-mac.yaml")], 1,
                        random.Random(1))
    c = Connection("1", "c:1", "s:2", faults=plan)
    for side, data in conversation("1.2"):
        c.receive(side, data, 1.0)  # type: ignore[arg-type]
    c.eof("client", 1.0)
    findings = close_findings(c.finish(1.0))
    assert [f["code"] for f in findings] == ["bad-record-mac"]
    assert "not visible here" in findings[0]["summary"]
    assert findings[0]["evidence"][0].startswith("fault alert-bad-record-mac: corrupt on server")


def test_decrypt_error_names_the_fault_that_altered_the_transcript() -> None:
    decrypt_error = alert("server", 3, bytes.fromhex("15030300020233"), 0x0303)
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], alerts=[decrypt_error])
    f = finding(h, "alert-decrypt-error")
    assert "fault" not in f.summary
    assert f.evidence == ["server record 3: fatal alert decrypt_error (51)"]
    h.faults.append(FaultSeen("t", "add-extension", "client", 1, "transcript-breaking",
                              {"before": 7, "after": {}}, {"type": 0x1234, "data": b""}))
    # Issue 15 bug 7: the fault is the cause, named by finished-mismatch, which
    # explains the alert (it is no longer a separate alert-decrypt-error finding).
    assert codes(h) == ["finished-mismatch"]
    f = finding(h, "finished-mismatch")
    assert f.evidence == ["fault t: add-extension on client record 1 (transcript-breaking)",
                          "server record 3: fatal alert decrypt_error (51)"]
    assert "failed at Finished because a fault altered handshake bytes" in f.summary
    assert "with extended_master_secret (RFC 7627) the keys differ" in f.summary
    # TLS 1.3: the handshake keys themselves derive from the transcript (RFC 8446 7.1),
    # so the peers stop reading each other; a client that closes silently says so.
    h13 = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], negotiated=names.TLS1_3,
                  faults=h.faults, closed_by="client")
    f = finding(h13, "finished-mismatch")
    assert "under TLS 1.3 the handshake keys derive from the transcript" in f.summary
    assert f.evidence[-1] == "no visible alert: the connection closed with no data sent"


def test_fragmentation_is_blamed_only_when_the_receiver_gave_up() -> None:
    """configs/handshake-fragmented.yaml's finding: the server's hello split into
    records; the client (the receiver) closed without application data. A close by
    the server itself, or a client that went on to send data, is no such finding."""
    frag = FaultSeen("frag", "fragment", "server", 1, "transcript-safe",
                     {"records_before": 1, "records_after": 6, "size": 16}, {"size": 16},
                     {"records_after": 6})
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], faults=[frag],
                closed_by="client")
    f = finding(h, "fragmented-handshake-rejected")
    assert f.summary.startswith("the client gave up after handshake messages were split")
    assert f.evidence == ["fault frag: fragment on server record 1: split into 6 records",
                          "closed by client"]
    by_server = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], faults=[frag],
                        closed_by="server")
    assert "fragmented-handshake-rejected" not in codes(by_server)
    h.app_records["client"] = 1
    assert "fragmented-handshake-rejected" not in codes(h)


def test_data_records_are_counted_from_the_keys_only_for_the_side_they_opened() -> None:
    """TLS 1.3 with a key log that opened only the server's records: the client's data
    records are still counted from its sealed records (Finished, then two more), so a
    transcript-breaking fault is no finished-mismatch for this client; with its own
    records opened and no application data among them, it is."""
    from tlsinspector.proxy.history import DecryptedSeen

    breaking = FaultSeen("t", "add-extension", "client", 1, "transcript-breaking",
                         {"before": 7, "after": {}}, {"type": 0x1234, "data": b""})
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], negotiated=names.TLS1_3,
                faults=[breaking], closed_by="client")
    h.keys = True
    h.decrypted.append(DecryptedSeen("server", 3, "decrypted", 22))
    h.encrypted_after_peer["client"] = 3
    assert "finished-mismatch" not in codes(h)
    h.decrypted.append(DecryptedSeen("client", 2, "decrypted", 22))
    assert "finished-mismatch" in codes(h)


def test_a_last_record_the_keys_did_not_open_is_still_a_likely_alert() -> None:
    """TLS 1.2 with a key log: the client's last record is alert-sized and encrypted.
    Opened (decrypted), its alert is known and this guess is not made; pending or
    undecryptable (the key log had no keys for it), the guess stands and says why it
    is not named."""
    from tlsinspector.proxy.history import DecryptedSeen, EncryptedSeen

    for status, reason, guessed, why in (
            ("decrypted", "", False, ""),
            ("undecryptable", "authentication tag mismatch", True,
             "the logged keys do not open it (key-mismatch)"),
            ("undecryptable", "keys for CLIENT_TRAFFIC_SECRET_0 never arrived", True,
             "the key log has no keys for this connection"),
            ("pending", "", True, "the key log has no keys for this connection")):
        h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], closed_by="client")
        h.keys = True
        h.records = {"client": 5, "server": 4}
        h.last_encrypted["client"] = EncryptedSeen("client", 5, 21, 26)
        h.decrypted.append(DecryptedSeen("client", 5, status, 21 if status == "decrypted"
                                         else None, reason=reason))
        found = [f for f in diagnose(h) if f.code == "likely-encrypted-alert"]
        assert bool(found) is guessed, status
        if guessed:
            assert why in found[0].summary, (status, reason)
            assert found[0].evidence == [
                "client record 5: alert len=26 (an alert record, encrypted)"]



def test_an_encrypted_alert_from_each_side_is_the_close_notify_exchange() -> None:
    # `echo Q | openssl s_client -tls1_2` without keys: the client's close_notify and
    # the server's answering one are each side's last record, an encrypted alert. A
    # fatal alert is not answered (RFC 5246 7.2.2), a close_notify is (7.2.1): this
    # healthy close got two likely-encrypted-alert findings. One side alone still does.
    from tlsinspector.proxy.history import EncryptedSeen

    cases: list[tuple[tuple[Side, ...], list[str]]] = [
        (("client", "server"), []), (("client",), ["client"]), (("server",), ["server"])]
    for sides, guessed in cases:
        h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], closed_by="client")
        h.records = {"client": 5, "server": 8}
        for side in sides:
            h.last_encrypted[side] = EncryptedSeen(side, h.records[side], 21, 26)
        found = [f for f in diagnose(h) if f.code == "likely-encrypted-alert"]
        assert [f.summary.split("'")[0].split()[1] for f in found] == guessed, sides

def test_alerts_put_there_by_faults_count_as_rejections() -> None:
    # reply-alert answers the client as if the server had refused its hello.
    reply = FaultSeen("r", "reply-alert", "client", 1, "transcript-safe",
                      {"dropped": 1, "answered_sender": True,
                       "alert": "fatal handshake_failure", "level": 2, "code": 40},
                      {"level": 2, "description": 40})
    h = history(ch=[ch_seen(WOLFSSL_REPORT_003)], faults=[reply], closed_by="proxy")
    assert codes(h) == ["missing-supported-groups", "missing-sni"]
    assert finding(h, "missing-sni").evidence[1] == (
        "server: fatal alert handshake_failure (40) (put there by fault r: reply-alert on "
        "client record 1)")
    # replace-with-alert on the ServerHello's record: the client never saw that ServerHello.
    replace = FaultSeen("x", "replace-with-alert", "server", 1, "transcript-safe",
                        {"before": ["handshake"], "alert": "fatal handshake_failure",
                         "level": 2, "code": 40}, {"level": 2, "description": 40})
    h = history(ch=[ch_seen(WOLFSSL_REPORT_003)], sh=[sh_seen(index=1)], faults=[replace])
    assert codes(h) == ["missing-supported-groups", "missing-sni"]
    # the same fault on a later record is no rejection of the hello
    replace = dataclasses.replace(replace, index=2)
    h = history(ch=[ch_seen(WOLFSSL_REPORT_003)], sh=[sh_seen(index=1)], faults=[replace])
    assert codes(h) == ["alert-handshake-failure"]
    # The alert is the one the fault sent, and no peer is said to have found the
    # record malformed (ALERT_HINTS' meaning of decode_error).
    decode = FaultSeen("r", "reply-alert", "client", 1, "transcript-safe",
                       {"dropped": 1, "answered_sender": True,
                        "alert": "fatal decode_error", "level": 2, "code": 50},
                       {"level": 2, "description": 50})
    h = history(ch=[ch_seen(OPENSSL_TLS12)], faults=[decode], closed_by="proxy")
    assert codes(h) == ["alert-decode-error"]
    said = finding(h, "alert-decode-error")
    assert "malformed" not in said.summary and "could not be parsed" not in said.summary
    assert said.summary.startswith(
        "the client received a fatal decode_error alert that a configured fault sent in "
        "the server's name")


def test_inappropriate_fallback_from_real_openssl_exchange() -> None:
    h = history(ch=[ch_seen(FALLBACK_CH)], alerts=[alert("server", 1, ALERT_86)])
    assert codes(h) == ["inappropriate-fallback"]
    f = finding(h, "inappropriate-fallback")
    assert f.evidence == [
        "client record 1: ClientHello with TLS_FALLBACK_SCSV offering at most 0x0302 (TLSv1.1)",
        "server record 1: fatal alert inappropriate_fallback (86): the server supports a "
        "version above TLSv1.1"]
    assert f.reference == "RFC 7507 3"


def test_alert_86_without_the_scsv_is_not_explained_as_a_fallback() -> None:
    h = history(ch=[ch_seen(TLS10_CH)], alerts=[alert("server", 1, ALERT_86)])
    assert codes(h) == ["alert-inappropriate-fallback"]


def test_protocol_version_from_real_openssl_exchange() -> None:
    h = history(ch=[ch_seen(TLS10_CH)], alerts=[alert("server", 1, ALERT_70)])
    f = finding(h, "protocol-version")
    assert f.summary.startswith("the server supports none of the versions the client offered "
                                "(TLSv1.0)")
    assert f.evidence == [
        "server record 1: fatal alert protocol_version (70)",
        "client record 1: ClientHello, record version 0x0301, legacy_version 0x0301"]
    assert codes(h) == ["protocol-version"]
    assert "protocol-version" not in codes(history(ch=[ch_seen(TLS10_CH)]))


def test_protocol_version_from_the_client_names_the_servers_choice() -> None:
    h = history(ch=[ch_seen(TLS10_CH)], sh=[sh_seen()],
                alerts=[alert("client", 2, bytes.fromhex("15030300020246"), 0x0303)])
    f = finding(h, "protocol-version")
    assert f.summary == ("the client refused the server's choice TLSv1.2, which it did not "
                         "offer (TLSv1.0)")
    assert "server record 1: ServerHello, record version 0x0303, legacy_version 0x0303" in (
        f.evidence)


# -- renegotiation (report 002) ---------------------------------------------------


def test_renegotiation_hello_with_scsv_after_secure_renegotiation() -> None:
    # Report 002: the second ClientHello is built like the first: record version
    # TLS 1.0, the SCSV, no renegotiation_info; the initial ServerHello had one.
    h = history(ch=[ch_seen(OPENSSL_TLS12), ch_seen(OPENSSL_TLS12, 5, renegotiation=True)],
                sh=[sh_seen()], closed_by="server")
    f = finding(h, "renegotiation-scsv")
    assert f.evidence == [
        "client record 5: renegotiation ClientHello with TLS_EMPTY_RENEGOTIATION_INFO_SCSV, "
        "without renegotiation_info",
        "client record 5: record version 0x0301 (TLSv1.0) on a connection that negotiated "
        "0x0303 (TLSv1.2) (some servers answer protocol_version)",
        "server record 1: initial ServerHello with renegotiation_info: secure renegotiation "
        "was negotiated"]
    assert f.reference == "RFC 5746 3.5, 3.7, 4.4"


def test_scsv_in_an_initial_hello_or_renegotiation_info_in_a_renegotiation_is_fine() -> None:
    initial = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], closed_by="client")
    assert "renegotiation-scsv" not in codes(initial)
    proper = history(ch=[ch_seen(OPENSSL_TLS12), ch_seen(GNUTLS, 5, renegotiation=True)],
                     sh=[sh_seen()], closed_by="client")
    assert "renegotiation-scsv" not in codes(proper)


def test_encrypted_renegotiation_the_server_never_answered() -> None:
    note = "encrypted handshake record after the handshake"
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], closed_by="server",
                anomalies=[Anomaly("client", 6, "encrypted_renegotiation", note)])
    f = finding(h, "renegotiation")
    assert f.evidence[:3] == ["client record 6: encrypted handshake record after the handshake",
                              "no handshake record from the server followed",
                              "closed by server"]
    assert "renegotiating ClientHello" in f.summary


def test_encrypted_renegotiation_that_went_through_is_not_a_finding() -> None:
    anomalies = [Anomaly("client", 6, "encrypted_renegotiation", ""),
                 Anomaly("server", 5, "encrypted_renegotiation", "")]
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], closed_by="client",
                anomalies=anomalies)
    assert codes(h) == []
    # and a client that closed itself after its own renegotiation attempt is no refusal
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], closed_by="client",
                anomalies=anomalies[:1])
    assert codes(h) == []
    # An alert whose level is neither warning nor fatal (RFC 5246 7.2 defines 1 and 2;
    # a hostile peer can send any byte) does not make the renegotiation a failure;
    # a fatal one does.
    odd = AlertSeen("server", 7, 255, 40, 0x0303, 0x0303)
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], closed_by="client",
                anomalies=anomalies, alerts=[odd])
    assert "renegotiation" not in codes(h)
    h.alerts = [dataclasses.replace(odd, level=2)]
    assert "renegotiation" in codes(h)


def test_encrypted_renegotiation_through_the_engine() -> None:
    """A real TLS 1.2 conversation, then one more encrypted handshake record from the
    client (what a renegotiating ClientHello looks like on the wire) and the server ends."""
    flights = conversation("1.2")
    c = Connection("1", "c:1", "s:2")
    for side, data in flights[:-2]:  # up to the application data, before close_notify
        c.receive(side, data, 1.0)  # type: ignore[arg-type]
    c.receive("client", bytes.fromhex("1603030020") + bytes(range(32)), 1.0)
    c.eof("server", 1.0)
    assert close_codes(c.finish(1.0)) == ["renegotiation"]


# -- the connection ends early ----------------------------------------------------


def test_server_closed_without_answering() -> None:
    h = history(ch=[ch_seen(OPENSSL_TLS12)], closed_by="server")
    h.records = {"client": 1, "server": 0}
    f = finding(h, "no-server-hello")
    assert "the server closed without answering" in f.summary
    assert f.evidence == ["client record 1: ClientHello for 'example.com'",
                          "closed by server; records sent: client 1, server 0"]


def test_no_server_hello_near_misses() -> None:
    assert codes(history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()])) == []
    assert codes(history(ch=[ch_seen(OPENSSL_TLS12)], closed_by=None)) == []
    rejected = history(ch=[ch_seen(OPENSSL_TLS12)], alerts=[alert("server", 1, ALERT_40)])
    assert "no-server-hello" not in codes(rejected)
    assert codes(history(closed_by="server")) == []


def test_reset_after_client_hello_fault() -> None:
    fault = FaultSeen("reset-after-clienthello", "close", "client", 1, "transcript-safe",
                      {"how": "rst", "toward": "both"}, {"how": "rst", "toward": "both"},
                      {"closed": ("rst", "both")})
    h = history(ch=[ch_seen(OPENSSL_TLS12)], faults=[fault], closed_by="proxy")
    f = finding(h, "no-server-hello")
    assert "a fault closed the connection" in f.summary
    assert f.evidence[-1] == "fault reset-after-clienthello: close on client record 1"


def test_partial_record() -> None:
    why = "partial record at close (15 of 587 bytes)"
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()],
                anomalies=[Anomaly("server", 2, "partial_record", why)])
    f = finding(h, "partial-record")
    assert f.evidence == [f"server record 2: {why}"]
    assert "unexpected EOF" in f.summary
    assert "partial-record" not in codes(history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()]))


def test_fault_not_applied() -> None:
    why = "t fault #1 (corrupt, t.yaml:4): never matched (server sent 3 records)"
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], closed_by="client")
    assert codes(h) == []
    h.unapplied_faults.append(why)
    assert [f.to_json() for f in diagnose(h)] == [
        {"code": "fault-not-applied", "summary": f"a configured fault never applied: {why}",
         "evidence": [why], "reference": "tlsinspector scenario"}]


def test_applied_faults_are_not_findings_unless_the_outcome_surprises() -> None:
    breaking = FaultSeen("t", "add-extension", "client", 1, "transcript-breaking",
                         {"before": 7, "after": {}}, {"type": 0x1234, "data": b""})
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], faults=[breaking],
                closed_by="client")
    assert codes(h) == []
    h.app_records = {"client": 2, "server": 2}
    assert codes(h) == ["fault-outcome"]


# -- the rule table ---------------------------------------------------------------


def test_findings_come_in_rule_order() -> None:
    h = history(ch=[ch_seen(WOLFSSL_REPORT_003)], alerts=[alert("server", 1, ALERT_40)],
                anomalies=[Anomaly("server", 2, "partial_record", "cut")])
    h.unapplied_faults.append("x")
    got = codes(h)
    assert got == ["missing-supported-groups", "missing-sni", "partial-record",
                   "fault-not-applied"]
    names = [r.__name__ for r in RULES]
    order = ["missing_supported_groups", "missing_sni", "partial_record", "fault_not_applied"]
    assert [names.index(n) for n in order] == sorted(names.index(n) for n in order)


def test_every_rule_is_a_module_function_in_rules() -> None:
    for rule in RULES:
        assert getattr(diagnosis, rule.__name__) is rule
        assert rule.__doc__ and "Needs:" in rule.__doc__, rule.__name__
    assert len(set(RULES)) == len(RULES)


def test_every_rule_is_declared_once_with_code_reference_and_alerts() -> None:
    specs = diagnosis.RULE_SPECS
    assert [s.check for s in specs] == list(RULES)
    assert len({s.code for s in specs}) == len(specs)
    for s in specs:
        assert s.reference and s.code
    # "Which rule covers this alert" is data: the old hand-kept _covered sets.
    explained = {s.check.__name__: set(s.explains) for s in specs if s.explains}
    assert explained == {"reserved_alert": {21}, "missing_supported_groups": {40, 71, 109},
                         "sslv2_client_hello": {40, 50, 70, 80},
                         "hello_without_extensions": {40, 71, 109, 112},
                         "missing_sni": {40, 109, 112}, "bad_record_mac": {20},
                         "tls13_extension_missing": {109}, "malformed_hello": {50, 47},
                         "duplicate_extension": {10, 47, 50, 110}, "empty_record": {10, 50},
                         "heartbeat": {10}, "hello_too_long": {10, 40, 47, 50, 80},
                         "alert_before_client_hello": {10, 80}, "no_common_group": {40, 71, 109},
                         "inappropriate_fallback": {86}, "protocol_version": {70},
                         "unexpected_message": {10}, "certificate_required": {116},
                         "certificate_rejected": {42, 43, 44, 45, 46, 48},
                         # --intercept (issue 21)
                         "interception_ca_rejected": {42, 46, 48},
                         "interception_missing_intermediate": {42, 46, 48},
                         "interception_weak_key": {42, 46, 48},
                         "interception_version_capped": {70},
                         "interception_client_cert_not_forwarded": {116},
                         "version_too_old": {40, 71, 80}, "no_shared_cipher": {40, 71},
                         "downgrade_detected": {47, 86}, "finished_mismatch": {20, 40, 51},
                         "record_overflow": {22}}


def test_a_finding_carries_its_rules_declared_reference_and_code() -> None:
    h = history(ch=[ch_seen(WOLFSSL_REPORT_003)], alerts=[alert("server", 1, ALERT_40)])
    by_code = {s.code: s for s in diagnosis.RULE_SPECS}
    for f in diagnose(h):
        spec = by_code.get(f.code) or by_code["alert-*"]
        assert f.reference == spec.reference


def test_adding_a_rule_is_one_declaration(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new rule that explains handshake_failure silences other_fatal_alert's
    generic finding for it, with nothing else edited."""
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()],
                alerts=[alert("server", 3, ALERT_40)])
    assert codes(h) == ["alert-handshake-failure"]
    monkeypatch.setattr(diagnosis, "RULE_SPECS", [])

    @diagnosis.rule("my-rule", "RFC 8446 6.2", explains=frozenset({40}))
    def my_rule(h: History) -> Finding | None:
        """Needs: alerts."""
        return Finding("my-rule", "handshake_failure, explained", ["x"]) if h.alerts else None

    generic = [s for s in list(RULES_SPECS_BEFORE) if s.fallback]
    diagnosis.RULE_SPECS.extend(generic)
    found = diagnose(h)
    assert [f.code for f in found] == ["my-rule"]
    assert found[0].reference == "RFC 8446 6.2"


RULES_SPECS_BEFORE = tuple(diagnosis.RULE_SPECS)


def close_findings(outs: list[Output]) -> list[dict[str, Any]]:
    [close] = [o.event for o in outs if isinstance(o, Emit) and o.event["event"] == "close"]
    found: list[dict[str, Any]] = close["diagnosis"]
    return found


def close_codes(outs: list[Output]) -> list[str]:
    return [f["code"] for f in close_findings(outs)]


# -- never raise, whatever shape History has ----------------------------------------

_values = st.one_of(st.none(), st.integers(-1, 0x10000), st.text(max_size=8),
                    st.binary(max_size=4))
_sides = st.sampled_from(["client", "server"])
_anomalies = st.builds(Anomaly, _sides, st.one_of(st.none(), st.integers(0, 5)),
                       st.sampled_from(["record_version", "non_tls", "partial_record",
                                        "encrypted_renegotiation", "early_ccs", "odd"]),
                       st.text(max_size=8), _values)
_alerts = st.builds(AlertSeen, _sides, st.integers(0, 5), st.integers(0, 255),
                    st.integers(0, 255), st.integers(0, 0xFFFF),
                    st.one_of(st.none(), st.integers(0, 0xFFFF)))
_faults = st.builds(
    FaultSeen, st.text(max_size=4),
    st.sampled_from(["corrupt", "reply-alert", "set-record-version", "replace-with-raw",
                     "fragment", "truncate", "drop", "insert-record", "remove-extensions",
                     "odd"]),
    _sides, st.integers(0, 5),
    st.sampled_from(["", "transcript-safe", "transcript-breaking", "needs-keys"]),
    st.dictionaries(st.sampled_from(["before", "after", "records_after"]), _values),
    st.dictionaries(st.sampled_from(["level", "description", "version", "data",
                                     "content_type", "position", "length", "fix_length"]),
                    _values),
    st.fixed_dictionaries({}, optional={
        "extensions_removed": st.tuples(st.integers(0, 0xFFFF)),
        "record_version": st.integers(0, 0xFFFF), "raw": st.binary(max_size=40),
        "dropped": st.integers(0, 99), "records_after": st.integers(1, 9),
        "truncated": st.tuples(st.integers(0, 99), st.booleans()),
        "closed": st.tuples(st.sampled_from(["fin", "rst"]),
                            st.sampled_from(["client", "server", "both"])),
        "inserted": st.tuples(st.integers(0, 255), st.sampled_from(["before", "after"]))}),
    st.one_of(st.none(), st.text(max_size=5)))
_hellos = st.sampled_from([WOLFSSL_REPORT_003, OPENSSL_TLS12, GNUTLS, FALLBACK_CH, TLS10_CH])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_hellos, st.integers(1, 5), st.booleans()), max_size=3),
       st.booleans(), st.lists(_alerts, max_size=3), st.lists(_anomalies, max_size=4),
       st.lists(_faults, max_size=3), st.lists(st.text(max_size=5), max_size=2),
       st.sampled_from([None, "client", "server", "proxy"]),
       st.one_of(st.none(), st.integers(0, 0xFFFF)))
def test_diagnose_never_raises(hellos: list[tuple[bytes, int, bool]], with_sh: bool,
                               alerts: list[AlertSeen], anomalies: list[Anomaly],
                               faults: list[FaultSeen], unapplied: list[str],
                               closed_by: str | None, negotiated: int | None) -> None:
    h = history(ch=[ch_seen(raw, i, reneg) for raw, i, reneg in hellos],
                sh=[sh_seen()] if with_sh else [], alerts=alerts, anomalies=anomalies,
                faults=faults, closed_by=closed_by, negotiated=negotiated or None)
    h.unapplied_faults.extend(unapplied)
    for f in diagnose(h):
        assert f.code and f.summary and f.reference
        assert all(isinstance(e, str) for e in f.evidence)


# -- unexpected_message from a real server ------------------------------------------


def real_server_answer(first: bytes) -> bytes:
    """What a real OpenSSL server (Python ssl) writes back after ``first``."""
    import tempfile

    from tlsinspector.lab.certs import make_certs

    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:
        certs = make_certs(Path(tmp))
        sctx.load_cert_chain(certs.server_cert, certs.server_key)
    s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = sctx.wrap_bio(s_in, s_out, server_side=True)
    s_in.write(first)
    try:
        server.do_handshake()
    except ssl.SSLError as e:
        assert "UNEXPECTED_MESSAGE" in str(e)
    return s_out.read()


def test_unexpected_message_from_a_real_server_through_the_engine() -> None:
    # A Finished (type 20) where the server waits for a ClientHello: OpenSSL answers
    # fatal unexpected_message (RFC 8446 6.2: "inappropriate message").
    finished = bytes.fromhex("1603030010" "1400000c") + bytes(12)
    answer = real_server_answer(finished)
    assert answer == bytes.fromhex("1503030002020a")
    c = Connection("1", "c:1", "s:2")
    c.receive("client", finished, 1.0)
    c.receive("server", answer, 1.0)
    c.eof("server", 1.0)
    found = {f["code"]: f for f in close_findings(c.finish(1.0))}
    assert "unexpected-message" in found
    f = found["unexpected-message"]
    assert any("server record 1" in e and "unexpected_message" in e for e in f["evidence"])
    assert "RFC 8446 5" in f["reference"]


# -- renegotiation with real OpenSSL records ------------------------------------------


def relay_openssl_renegotiation(certs: Any, server_flag: str) -> list[tuple[str, bytes]]:
    """``openssl s_client`` renegotiating ("R") with ``openssl s_server -tls1_2
    <server_flag>``, through a recording TCP relay: every write, in order."""
    from tlsinspector.lab.peers import free_port, stop_process, wait_for_port

    port = free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-tls1_2", "-accept", str(port), "-cert",
         str(certs.server_cert), "-key", str(certs.server_key), server_flag],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from tests.relay import Relay

    try:
        wait_for_port("127.0.0.1", port, 20, server)
        relay = Relay(port, timeout=20)
        subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{relay.port}",
                        "-CAfile", str(certs.ca_cert), "-servername", "localhost"],
                       input=b"R\n", capture_output=True, timeout=30)
        relay.done.wait(30)
    finally:
        stop_process(server)
    return [(side, data) for side, data in relay.chunks]


def test_real_renegotiation_the_server_never_answered(certs: Any) -> None:
    """OpenSSL's own renegotiating ClientHello record (encrypted, TLS 1.2), then the
    server hangs up: the renegotiation finding names that record."""
    flights = relay_openssl_renegotiation(certs, "-client_renegotiation")
    c = Connection("1", "c:1", "s:2")
    outs: list[Output] = []
    for side, data in flights:
        outs += c.receive(side, data, 1.0)  # type: ignore[arg-type]
        noted = [o.event for o in outs if isinstance(o, Emit) and o.event.get("note")]
        if noted:
            break  # the client's renegotiation record went by: the server ends here
    [rec] = noted
    assert rec["from"] == "client" and rec["content_type"] == "handshake" and rec["encrypted"]
    c.eof("server", 1.0)
    f = {x["code"]: x for x in close_findings(c.finish(1.0))}["renegotiation"]
    assert f["evidence"][:3] == [
        f"client record {rec['index']}: encrypted handshake record after the handshake",
        "no handshake record from the server followed", "closed by server"]


def test_real_renegotiation_that_went_through_is_not_a_finding(certs: Any) -> None:
    flights = relay_openssl_renegotiation(certs, "-client_renegotiation")
    c = Connection("1", "c:1", "s:2")
    outs: list[Output] = []
    for side, data in flights:
        outs += c.receive(side, data, 1.0)  # type: ignore[arg-type]
    outs += c.eof("client", 1.0) + c.eof("server", 1.0)
    noted = [o.event for o in outs if isinstance(o, Emit) and o.event.get("note")]
    assert {e["from"] for e in noted} == {"client", "server"}  # both sides re-handshook
    assert "renegotiation" not in close_codes(c.finish(1.0))


def test_record_version_range_bounds_from_a_fault() -> None:
    # RFC 8446 5.1 / RFC 5246 6.2.1: record versions in use are 0x0300 (SSL 3.0) to
    # 0x0304; the 16-bit field's extremes outside that range are invalid.
    def flagged(version: int) -> bool:
        f = FaultSeen("s", "set-record-version", "server", 2, "transcript-safe",
                      {"before": "0x0303", "after": hex(version)}, {"version": version},
                      {"record_version": version})
        return "record-version-invalid" in codes(history(faults=[f]))

    assert [flagged(v) for v in (0x0000, 0x02FF, 0x0305, 0xFFFF)] == [True] * 4
    assert [flagged(v) for v in (0x0300, 0x0301, 0x0304)] == [False] * 3
    assert not flagged(0xFEFD)  # DTLS 1.2: not this rule's finding


@pytest.mark.parametrize("name,pattern,matches", [
    # RFC 6125 6.4.1: exact, case-insensitive; a trailing dot (absolute name) is ignored.
    ("example.com", "example.com", True),
    ("Example.COM", "example.com", True),
    ("example.com.", "example.com", True),
    ("example.com", "example.org", False),
    ("www.example.com", "example.com", False),
    # 6.4.3: "*." stands for exactly one left-most label.
    ("www.example.com", "*.example.com", True),
    ("example.com", "*.example.com", False),
    ("a.b.example.com", "*.example.com", False),
    (".example.com", "*.example.com", False),
])
def test_certificate_names_match_as_rfc_6125_says(name: str, pattern: str,
                                                  matches: bool) -> None:
    assert diagnosis._name_matches(name, pattern) is matches


def test_alert_hints_are_filed_under_their_rfc_codes() -> None:
    # RFC 8446 6.2: decrypt_error (51) is a failed signature or Finished check;
    # decode_error (50) a message that could not be parsed. Each hint sits under a
    # registered alert code, and no code is written twice in diagnosis.py's tables.
    import ast

    assert set(diagnosis.ALERT_HINTS) <= set(names.ALERT_DESCRIPTIONS)
    # Each hint says what its alert means (RFC 8446 6.2, RFC 5246 7.2.2, RFC 7301 3.2
    # for 120): a word of the meaning, so a hint moved to a neighbouring code fails.
    meaning = {22: "longer than allowed", 40: "no acceptable set of parameters",
               42: "rejected", 43: "unsupported type", 44: "revoked", 45: "expired",
               46: "could not be verified", 47: "out of range", 48: "CA", 49: "denied",
               50: "could not be parsed", 51: "Finished check", 71: "stronger",
               80: "internal error", 90: "cancelled", 109: "extension is missing",
               110: "did not offer", 112: "name", 116: "client certificate",
               120: "ALPN"}
    assert set(meaning) == set(diagnosis.ALERT_HINTS)
    for code, word in meaning.items():
        assert word in diagnosis.ALERT_HINTS[code], (code, names.alert_description_name(code))
    assert "Finished check failed" in diagnosis.ALERT_HINTS[51]
    assert "could not be parsed" in diagnosis.ALERT_HINTS[50]
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()],
                alerts=[alert("client", 3, bytes.fromhex("15030300020233"))])
    assert "Finished check failed" in finding(h, "alert-decrypt-error").summary
    tree = ast.parse(Path(diagnosis.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
            assert len(keys) == len(set(keys)), node.lineno


def test_key_mismatch_counts_each_side_and_shows_the_first_two_records(
        tmp_path: Path) -> None:
    """A key log from another run of the peers (the same client random, other secrets:
    RFC 8446 5.2, every AEAD open fails) through the engine: the finding counts the
    records per side and names only the first two, not every record of the connection."""
    from tlsinspector.proxy.keylog import KeyLog

    ours, theirs = tmp_path / "ours.log", tmp_path / "theirs.log"
    flights = conversation("1.3", keylog=ours)
    conversation("1.3", keylog=theirs)
    random_of = {line.split()[1] for line in ours.read_text().splitlines()
                 if line and not line.startswith("#")}
    other = {line.split()[1] for line in theirs.read_text().splitlines()
             if line and not line.startswith("#")}
    [mine], [wrong] = random_of, other
    log = KeyLog()
    log.feed(theirs.read_text().replace(wrong, mine))
    log.complete = True  # as analyze reads its key logs: nothing newer will come
    c = Connection("1", "c:1", "s:2", keylog=log)
    for side, data in flights:
        c.receive(side, data, 1.0)  # type: ignore[arg-type]
    c.eof("client", 1.0)
    [close] = [o.event for o in c.finish(1.0)
               if isinstance(o, Emit) and o.event["event"] == "close"]
    [f] = [d for d in close["diagnosis"] if d["code"] == "key-mismatch"]
    server, client = c.history.undecryptable["server"], c.history.undecryptable["client"]
    assert server >= 4 and client >= 2  # the server's flight, the client's Finished, ...
    assert f"({server} from the server, {client} from the client)" in f["summary"] \
        or f"({client} from the client, {server} from the server)" in f["summary"]
    assert len(f["evidence"]) == 2
    assert f["evidence"][0].startswith("server record 3: ")  # after ServerHello and CCS
    assert f["evidence"][1].startswith("server record 4: ")


def test_every_dataclass_of_diagnosis_is_slotted() -> None:
    # STYLE.md 4: records, findings and the rules' working values are slotted
    # dataclasses (one per alert, fault or finding of every connection: no __dict__).
    classes = [c for c in vars(diagnosis).values() if isinstance(c, type)
               and dataclasses.is_dataclass(c) and c.__module__ == diagnosis.__name__]
    assert {c.__name__ for c in classes} >= {"Finding", "_Alert"}
    for c in classes:
        assert "__slots__" in vars(c) and "__dict__" not in vars(c), c.__name__


@pytest.mark.parametrize(("length", "guessed"), [(18, False), (19, True), (20, False)])
def test_a_tls13_alert_is_recognised_by_its_exact_sealed_size(length: int,
                                                               guessed: bool) -> None:
    """TLS 1.3 hides the content type (RFC 8446 5.2): a client that answers the server's
    flight with one record of exactly an alert's sealed size (2 bytes + 1 type byte +
    16-byte AES-GCM tag = 19) most likely sent an alert; 18 or 20 bytes is no alert."""
    c = Connection("1", "c:1", "s:2")
    for side, data in conversation("1.3")[:2]:
        c.receive(side, data, 1.0)  # type: ignore[arg-type]
    c.receive("client", bytes.fromhex("170303") + length.to_bytes(2, "big") + bytes(length),
              1.0)
    c.eof("client", 1.0)
    found = [f for f in close_findings(c.finish(1.0)) if f["code"] == "likely-encrypted-alert"]
    assert bool(found) is guessed
    if guessed:
        assert found[0]["evidence"] == [
            "client record 2: application_data len=19 = an alert sealed with "
            "TLS_AES_256_GCM_SHA384"]


def test_a_fatal_alert_after_a_warning_is_still_named() -> None:
    """RFC 8446 6.1: user_canceled is a warning, often followed by a close; here a
    fatal internal_error (80) follows it: the warning gets no finding and does not
    hide the fatal alert after it."""
    warning = alert("client", 3, bytes.fromhex("1503030002015a"))   # warning 90
    fatal = alert("server", 4, bytes.fromhex("15030300020250"))     # fatal 80
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], alerts=[warning, fatal])
    assert codes(h) == ["alert-internal-error"]
    assert finding(h, "alert-internal-error").evidence == [
        "server record 4: fatal alert internal_error (80)"]


def test_an_inserted_change_cipher_spec_says_where_it_went() -> None:
    """The early-ccs evidence names the insert-record fault and its position."""
    ccs = FaultSeen("t", "insert-record", "server", 1, "transcript-breaking", {},
                    {"content_type": 20, "position": "before"},
                    {"inserted": (20, "before")})
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen(index=2)], faults=[ccs])
    assert finding(h, "early-ccs").evidence == [
        "fault t: insert-record on server record 1: change_cipher_spec inserted before"]


def test_data_both_ways_after_a_breaking_fault_is_a_surprise_despite_a_warning() -> None:
    """fault-outcome: a transcript-breaking fault, then application data both ways; a
    warning alert (close_notify, RFC 5246 7.2.1) ends nothing, a fatal one is the
    outcome the fault was expected to have."""
    add = FaultSeen("t", "add-extension", "client", 1, "transcript-breaking", {}, {}, {})
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], faults=[add],
                alerts=[AlertSeen("client", 9, 1, 0, 0x0303, 0x0303)])
    h.app_records = {"client": 2, "server": 3}
    assert finding(h, "fault-outcome").evidence[-1] == (
        "application records: client 2, server 3")
    h.alerts = [AlertSeen("client", 9, 2, 20, 0x0303, 0x0303)]
    assert "fault-outcome" not in codes(h)


def test_a_servers_alert_to_the_close_a_reply_alert_made_answers_that_close() -> None:
    """reply-alert closes both ways; OpenSSL's s_server answers the EOF mid-handshake
    with its own decode_error, which may reach the proxy before the client's close
    does. Either way it answers the close, and the fault's alert is the one named
    first, with its real name and without 'malformed'."""
    s = load_scenario_text("name: r\nfaults:\n  - match: {from: client, handshake: "
                           "client_hello}\n    action: reply-alert\n"
                           "    description: decode_error\n")
    for client_first in (False, True):
        c = Connection("1", "c:1", "s:2", faults=FaultPlanner([s], 1, random.Random(1)))
        outs = c.receive("client", OPENSSL_TLS12, 1.0)
        if client_first:
            outs += c.eof("client", 1.1)
        outs += c.receive("server", bytes.fromhex("15030300020232"), 1.2)
        outs += c.eof("server", 1.3)
        if not client_first:
            outs += c.eof("client", 1.4)
        found = close_findings(outs + c.finish(1.5))
        assert [f["code"] for f in found] == ["alert-decode-error"] * 2, client_first
        assert "a configured fault sent" in found[0]["summary"], client_first
        assert "had already closed its side" in found[1]["summary"], client_first
        assert not any("malformed" in f["summary"] for f in found), client_first


def _scanner_hello(suites: list[int], sni: bytes | None = None) -> bytes:
    """A TLS 1.2 ClientHello as scanners send them: these suites, supported_groups
    (x25519), signature_algorithms (rsa_pkcs1_sha256, ecdsa_secp256r1_sha256), and
    server_name only when given."""
    exts = bytes.fromhex("000a00040002001d" "000d0006000404010403")
    if sni is not None:
        entry = b"\x00" + len(sni).to_bytes(2, "big") + sni
        body = len(entry).to_bytes(2, "big") + entry
        exts = b"\x00\x00" + len(body).to_bytes(2, "big") + body + exts
    suite_bytes = b"".join(s.to_bytes(2, "big") for s in suites)
    hello = (b"\x03\x03" + bytes(32) + b"\x00" + len(suite_bytes).to_bytes(2, "big")
             + suite_bytes + b"\x01\x00" + len(exts).to_bytes(2, "big") + exts)
    msg = b"\x01" + len(hello).to_bytes(3, "big") + hello
    return b"\x16\x03\x01" + len(msg).to_bytes(2, "big") + msg


def test_a_narrow_offer_refused_is_likely_no_shared_cipher_not_missing_sni() -> None:
    # nmap ssl-enum-ciphers (by IP: no SNI) to an ECDSA-only OpenSSL 3 server: RSA key
    # exchange, 3DES, DHE, RC4 and the SCSV, refused with handshake_failure. It read
    # "missing-sni: the server probably requires SNI"; the server needs no SNI.
    nmap = _scanner_hello([0x002F, 0x000A, 0x0013, 0x0039, 0x0004, 0x00FF])
    h = history(ch=[ch_seen(nmap)], alerts=[alert("server", 1, ALERT_40)])
    assert codes(h) == ["no-shared-cipher"]
    found = finding(h, "no-shared-cipher")
    assert found.summary.startswith("likely no cipher suite in common")
    assert "no server_name: a server that requires SNI refuses it the same way" in found.summary
    assert found.evidence[-1] == "server record 1: fatal alert handshake_failure (40)"
    # The whole offer, signature algorithms too (tlsfuzzer's test-sig-algs is refused
    # for those with ECDHE_RSA suites): the server's lists are not on the wire.
    assert found.evidence[0] == (
        "client record 1: the refused ClientHello offers 5 suites (TLS_RSA_WITH_AES_128_CBC_SHA,"
        " TLS_RSA_WITH_3DES_EDE_CBC_SHA, TLS_DHE_DSS_WITH_3DES_EDE_CBC_SHA, ...), groups "
        "[x25519], no key_share, signature_algorithms [rsa_pkcs1_sha256, "
        "ecdsa_secp256r1_sha256]")
    # sslyze's one-suite probe (with SNI): TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 to an
    # RSA server; ECDHE_RSA only, or CCM/ARIA only, is as narrow.
    for suites in ([0xC02C], [0xC02F, 0xC030], [0xC0AC, 0xC05C, 0x1304]):
        h = history(ch=[ch_seen(_scanner_hello(suites, b"localhost"))],
                    alerts=[alert("server", 1, ALERT_40)])
        assert codes(h) == ["no-shared-cipher"], suites
        assert "server_name" not in finding(h, "no-shared-cipher").summary
    # What every real client offers (ECDHE with AES for RSA and for ECDSA, or TLS
    # 1.3's AES-GCM): without SNI still missing-sni (report 003's server).
    for suites in ([0xC02F, 0xC02B, 0x009C], [0x1301]):
        h = history(ch=[ch_seen(_scanner_hello(suites))], alerts=[alert("server", 1, ALERT_40)])
        assert codes(h) == ["missing-sni"], suites


def test_bad_record_mac_after_static_rsa_key_exchange_names_the_robot_probe() -> None:
    # sslyze --robot: a malformed ClientKeyExchange under TLS_RSA_WITH_AES_128_GCM_SHA256;
    # the server answers the client's Finished with bad_record_mac (RFC 5246 7.4.7.1).
    rsa = SERVER_HELLO_TLS12.replace(bytes.fromhex("00c030"), bytes.fromhex("00009c"), 1)
    assert rsa != SERVER_HELLO_TLS12
    mac = bytes.fromhex("15030300020214")
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen(rsa)],
                alerts=[alert("server", 4, mac)])
    assert "ROBOT / Bleichenbacher probes" in finding(h, "bad-record-mac").summary
    # ECDHE: no such hint.
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], alerts=[alert("server", 4, mac)])
    assert "ROBOT" not in finding(h, "bad-record-mac").summary


def test_a_tls13_server_refusing_right_after_its_server_hello_is_a_likely_alert() -> None:
    """Go's server answers a ClientHello whose ALPN it lacks with ServerHello, CCS and
    one alert sealed with its handshake keys (no_application_protocol), then closes;
    the client has sent nothing encrypted. That alert-sized record is the server's only
    encrypted one (EncryptedExtensions, 23 bytes at least, comes first otherwise)."""
    hello, flight = conversation("1.3")[:2]
    sh_len = 5 + int.from_bytes(flight[1][3:5], "big")
    c = Connection("1", "c:1", "s:2")
    c.receive("client", hello[1], 1.0)
    c.receive("server", flight[1][:sh_len + 6]  # ServerHello and ChangeCipherSpec
              + bytes.fromhex("1703030013") + bytes(19), 1.0)
    c.eof("server", 1.0)
    found = [f for f in close_findings(c.finish(1.0)) if f["code"] == "likely-encrypted-alert"]
    assert [f["evidence"] for f in found] == [
        ["server record 3: application_data len=19 = an alert sealed with "
         "TLS_AES_256_GCM_SHA384"]]


@pytest.mark.parametrize("client_left_first", [False, True])
def test_a_record_cut_by_its_receivers_close_is_no_partial_record(
        client_left_first: bool) -> None:
    """A client that leaves in the middle of a download (a fatal alert, a timeout,
    Ctrl-C) interrupts the server's write: the record the server was sending when
    the proxy closed toward it is cut, but nobody saw the stream end inside it. Only a
    sender whose own stream ended mid-record, the receiver still there, is one."""
    c = Connection("1", "c:1", "s:2")
    for side, data in conversation("1.3"):
        c.receive(side, data, 1.0)  # type: ignore[arg-type]
    if client_left_first:
        c.eof("client", 1.0)
    c.receive("server", bytes.fromhex("1703034000") + bytes(3000), 1.0)
    c.eof("server", 1.0)
    if not client_left_first:
        c.eof("client", 1.0)
    got = [f for f in close_findings(c.finish(1.0)) if f["code"] == "partial-record"]
    assert bool(got) is not client_left_first


def test_keys_that_never_arrived_are_no_key_mismatch() -> None:
    """run --keylog with a key log that lacks the connection (the client was not told
    to write it): a download's records wait for keys until the bound, then the rest
    are undecryptable because the keys never came. That is no mismatch ("the key log is
    from another run, or the bytes were changed in transit"): the note says it."""
    from tlsinspector.proxy.keylog import KeyLog

    c = Connection("1", "c:1", "s:2", keylog=KeyLog())
    outs: list[Output] = []
    for side, data in conversation("1.3", response=b"x" * 1_000_000):
        outs += c.receive(side, data, 1.0)  # type: ignore[arg-type]
    outs += c.eof("client", 1.0) + c.finish(1.0)
    events = [o.event for o in outs if isinstance(o, Emit)]
    assert any(e["event"] == "note" and "keys never arrived" in e["note"] for e in events)
    assert any(e.get("decrypted", {}).get("status") == "undecryptable" for e in events)
    [close] = [e for e in events if e["event"] == "close"]
    assert "key-mismatch" not in [d["code"] for d in close["diagnosis"]]


def test_name_and_alpn_refusals_show_what_the_client_asked_for() -> None:
    """unrecognized_name to a ClientHello that names a host (an SNI mismatch, not a
    missing SNI) and no_application_protocol (Go's server, RFC 7301 3.2): the
    finding shows the name or the ALPN list the server refused."""
    curl = ch_seen((HELLOS / "curl.bin").read_bytes())
    for description, asked in ((112, "server_name example.com"),
                               (120, "ALPN h2, http/1.1")):
        refusal = alert("server", 1, bytes.fromhex("150303000202") + bytes([description]))
        h = history(ch=[curl], alerts=[refusal])
        [f] = [x for x in diagnose(h) if x.code.startswith("alert-")]
        assert f.evidence[-1] == f"client record 1: the ClientHello asks for {asked}"
    refusal = alert("server", 1, bytes.fromhex("15030300020278"))
    h = history(ch=[ch_seen(OPENSSL_TLS12)], alerts=[refusal])
    assert finding(h, "alert-no-application-protocol").evidence[-1] == (
        "client record 1: the ClientHello asks for no ALPN")


# -- duplicate-extension ------------------------------------------------------------


def _with_repeat(stream: bytes, ext_type: int, times: int = 2) -> ClientHello | ServerHello:
    _, parsed = _hello(stream)
    exts = parsed.extensions or ()
    e = next(x for x in exts if x.type == ext_type)
    return dataclasses.replace(parsed, extensions=exts + (e,) * (times - 1))


def test_duplicate_extension_needs_the_repeat_and_the_refusal() -> None:
    hello = _with_repeat(OPENSSL_TLS12, 23)  # extended_master_secret twice
    assert isinstance(hello, ClientHello)
    refused = history(ch=[ch_seen(OPENSSL_TLS12, hello=hello)],
                      alerts=[AlertSeen("server", 1, 2, 47, 0x0303, None)])
    f = finding(refused, "duplicate-extension")
    assert f.evidence == [
        f"client record 1: ClientHello with extended_master_secret (23) 2 times "
        f"({len(hello.extensions or ())} extensions)",
        "server record 1: fatal alert illegal_parameter (47)"]
    assert "the client's stack" in f.summary and "RFC 8446 4.2" in f.reference
    assert "alert-illegal-parameter" not in codes(refused)  # explained
    # The same hello accepted (a ServerHello came, no alert): no finding.
    accepted = history(ch=[ch_seen(OPENSSL_TLS12, hello=hello)], sh=[sh_seen()],
                       closed_by="client")
    assert "duplicate-extension" not in codes(accepted)
    # No repeat: the alert stays an alert finding.
    plain = history(ch=[ch_seen(OPENSSL_TLS12)],
                    alerts=[AlertSeen("server", 1, 2, 47, 0x0303, None)])
    assert codes(plain) == ["alert-illegal-parameter"]
    # Three copies: counted as sent.
    three = _with_repeat(OPENSSL_TLS12, 23, 3)
    assert isinstance(three, ClientHello)
    h3 = history(ch=[ch_seen(OPENSSL_TLS12, hello=three)],
                 alerts=[AlertSeen("server", 1, 2, 50, 0x0303, None)])
    assert "extended_master_secret (23) 3 times" in finding(h3, "duplicate-extension").evidence[0]


def test_duplicate_extension_in_a_server_hello_refused_by_the_client() -> None:
    sh = _with_repeat(SERVER_HELLO_TLS12, 0xFF01)  # renegotiation_info twice
    assert isinstance(sh, ServerHello)
    seen = dataclasses.replace(sh_seen(), hello=sh)
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[seen],
                alerts=[AlertSeen("client", 2, 2, 47, 0x0303, 0x0303)], closed_by="client")
    f = finding(h, "duplicate-extension")
    assert f.evidence[0].startswith("server record 1: ServerHello with renegotiation_info "
                                    "(65281) 2 times")
    assert f.evidence[-1] == "client record 2: fatal alert illegal_parameter (47)"
    assert f.summary.startswith("the client refused a ServerHello")


def test_a_refused_upstream_does_not_point_only_at_upstream() -> None:
    # `run --mode regular` (CONNECT 127.0.0.1:1) said "check --upstream", an option
    # that mode has no use for: the client named the address.
    h = history(closed_by="proxy")
    h.upstream_error = ("127.0.0.1:1", "[Errno 111] Connection refused")
    summary = finding(h, "upstream-unreachable").summary
    assert "check the address (--upstream, or in regular, socks5 and transparent mode the " \
           "one the client asked for) and that the server runs" in summary


# -- heartbeat ------------------------------------------------------------------------


def test_a_heartbeat_answered_with_more_than_it_could_echo_is_the_leak() -> None:
    """The verdicts of the heartbeat rule on the (type, payload_length, record length)
    the engine decodes in the clear: a probe answered with a longer response is the
    Heartbleed leak; a well-formed request is no probe; a receiver that just closed is
    said so."""
    def beats(*items: tuple[Side, int, tuple[int, int, int]]) -> list[Anomaly]:
        return [Anomaly(side, index, "heartbeat", f"detail {index}", value)
                for side, index, value in items]

    probe = ("client", 2, (1, 16384, 3))
    leaked = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], closed_by="client",
                     anomalies=beats(probe, ("server", 6, (2, 16384, 16403))))
    f = finding(leaked, "heartbeat")
    assert "Heartbleed probe" in f.summary and "Heartbleed leak" in f.summary
    assert f.evidence == ["client record 2: detail 2", "server record 6: detail 6"]
    fine = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], closed_by="client",
                   anomalies=beats(("client", 2, (1, 16, 35)), ("server", 6, (2, 16, 35))))
    f = finding(fine, "heartbeat")
    assert "Heartbleed" not in f.summary and "answered with a heartbeat of its own" in f.summary
    closed = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], anomalies=beats(probe))
    assert finding(closed, "heartbeat").summary.endswith("and the server closed the connection")
