"""The diagnosis names the cause, not the alert it provoked (issue 15, item 6 and bugs
5, 6, 7, 11, 13), on real hello and alert bytes (tests/test_diagnosis.py) with the
timing and fault facts the engine records. The same kinds run live with two real
clients each in tests/test_scenarios_e2e.py (test_cause_scenarios_...)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from tests.test_diagnosis import (
    ALERT_40,
    OPENSSL_TLS12,
    TLS10_CH,
    WOLFSSL_REPORT_003,
    alert,
    ch_seen,
    codes,
    finding,
    history,
    sh_seen,
)
from tlsinspector.proxy.actions import ACTIONS, Effect
from tlsinspector.proxy.diagnosis import DOWNGRADE_SENTINELS
from tlsinspector.proxy.diagnosis import diagnose as diagnosis_of
from tlsinspector.proxy.history import AlertSeen, Anomaly, DecryptedSeen, EncryptedSeen, FaultSeen
from tlsinspector.proxy.keyschedule import suite
from tlsinspector.proxy.protection import sealed_length
from tlsinspector.proxy.records import Record


def _ssl3(stream: bytes) -> object:
    """The same ClientHello as an SSL 3.0 client (or sslyze's probe) sends it."""
    seen = ch_seen(stream)
    hello = dataclasses.replace(seen.hello, legacy_version=0x0300, extensions=None)
    return dataclasses.replace(seen, hello=hello, record_version=0x0300)


def test_ssl3_hello_refused_is_too_old_not_missing_sni_or_groups() -> None:
    # Bug 11: report 003's hello lacks SNI and groups too, but as SSL 3.0 neither is
    # the cause; the server's handshake_failure refuses the version.
    h = history(ch=[_ssl3(WOLFSSL_REPORT_003)], alerts=[alert("server", 1, ALERT_40)])
    assert codes(h) == ["version-too-old"]
    f = finding(h, "version-too-old")
    assert f.evidence[0].endswith("legacy_version 0x0300, no extensions")
    assert f.evidence[1] == "server record 1: fatal alert handshake_failure (40)"
    assert f.reference.startswith("RFC 7568")
    # near miss: the same refusal of a TLS 1.2 hello is not about the version
    assert "version-too-old" not in codes(
        history(ch=[ch_seen(WOLFSSL_REPORT_003)], alerts=[alert("server", 1, ALERT_40)]))


def test_a_silent_close_of_a_tls10_hello_is_too_old() -> None:
    h = history(ch=[ch_seen(TLS10_CH)], closed_by="server")
    assert "version-too-old" in codes(h)
    assert "version-too-old" not in codes(history(ch=[ch_seen(TLS10_CH)], closed_by="client"))


def _suites_fault(before: tuple[int, ...], after: tuple[int, ...]) -> FaultSeen:
    return FaultSeen("t", "set-cipher-suites", "client", 1, "transcript-breaking", {}, {},
                     {"extensions_removed": (), "extensions_added": (),
                      "suites_before": before, "suites_after": after})


def test_no_shared_cipher_shows_both_lists() -> None:
    seen = ch_seen(OPENSSL_TLS12)
    legacy = dataclasses.replace(seen.hello, cipher_suites=(0x000A,))
    fault = _suites_fault(seen.hello.cipher_suites, (0x000A,))
    h = history(ch=[dataclasses.replace(seen, hello=legacy)],
                alerts=[alert("server", 1, ALERT_40)], faults=[fault])
    assert codes(h) == ["no-shared-cipher"]
    f = finding(h, "no-shared-cipher")
    assert f.evidence[0] == ("client record 1: the ClientHello the server received offers 1 "
                             "suites: TLS_RSA_WITH_3DES_EDE_CBC_SHA")
    assert "the client itself offered" in f.evidence[1]
    assert "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" in f.evidence[1]
    # A long list is shown as its first ten names and the count.
    offered = seen.hello.cipher_suites  # OpenSSL sends no GREASE
    assert len(offered) > 10
    names_shown = f.evidence[1].split("suites: ", 1)[1].split(", ... (")[0].split(", ")
    assert len(names_shown) == 10
    assert f.evidence[1].endswith(f", ... ({len(offered)} in all)")
    # without a fault, only an offer no current server enables is blamed
    h.faults.clear()
    assert codes(h) == ["no-shared-cipher"]
    assert "no-shared-cipher" not in codes(
        history(ch=[ch_seen(OPENSSL_TLS12)], alerts=[alert("server", 1, ALERT_40)]))


def test_downgrade_sentinel_in_the_server_random_names_the_stripping_fault() -> None:
    sh = sh_seen()
    random = sh.hello.random[:24] + b"DOWNGRD\x01"
    sh = dataclasses.replace(sh, hello=dataclasses.replace(sh.hello, random=random))
    strip = FaultSeen("t", "remove-extensions", "client", 1, "transcript-breaking", {},
                      {"extensions": (43,)}, {"extensions_removed": (43,),
                                              "extensions_added": ()})
    illegal = AlertSeen("client", 2, 2, 47, 0x0303, 0x0303)
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh], alerts=[illegal], faults=[strip],
                closed_by="client")
    assert codes(h) == ["downgrade-detected"]
    f = finding(h, "downgrade-detected")
    assert "44 4f 57 4e 47 52 44 01" in f.evidence[0] and "negotiated TLS 1.2" in f.evidence[0]
    assert "fault t: remove-extensions on client record 1" in f.summary
    # The hello the server received, without supported_versions (RFC 8446 4.2.1).
    assert f.evidence[1].startswith("client record 1: ClientHello")
    assert f.evidence[1].endswith(", no supported_versions")
    assert set(DOWNGRADE_SENTINELS) == {b"DOWNGRD\x01", b"DOWNGRD\x00"}
    # A warning is no abort (RFC 8446 4.1.3: the client MUST abort, with a fatal alert).
    h.alerts, h.closed_by = [AlertSeen("client", 2, 1, 47, 0x0303, 0x0303)], "server"
    assert "downgrade-detected" not in codes(h)
    h.alerts, h.closed_by = [illegal], "client"
    # near miss: an ordinary random is no downgrade
    h.server_hellos = [sh_seen()]
    assert "downgrade-detected" not in codes(h)
    # A client that sent no alert is named only when it closed itself with no data:
    # a connection the server (or the proxy) closed says nothing of the client's check.
    h.server_hellos, h.alerts = [sh], []
    assert "downgrade-detected" in codes(h)
    for by in ("server", "proxy"):
        h.closed_by = by
        assert "downgrade-detected" not in codes(h), by
    # A server's own fatal alert is not the client's reaction to the sentinel.
    h.alerts = [AlertSeen("server", 3, 2, 80, 0x0303, 0x0303)]
    assert "downgrade-detected" not in codes(h)


def test_the_sentinel_is_no_cause_for_a_client_that_offered_only_tls12() -> None:
    # openssl s_client -tls1_2 against a TLS 1.3 server with an expired certificate:
    # the random carries DOWNGRD\x01 as RFC 8446 4.1.3 requires, the client never
    # checks it and aborts with certificate_expired: downgrade-detected came first.
    sh = sh_seen()
    random = sh.hello.random[:24] + b"DOWNGRD\x01"
    sh = dataclasses.replace(sh, hello=dataclasses.replace(sh.hello, random=random))
    expired = AlertSeen("client", 2, 2, 45, 0x0303, 0x0303)
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh], alerts=[expired], closed_by="client")
    assert "downgrade-detected" not in codes(h)
    h.alerts = []
    assert "downgrade-detected" not in codes(h)  # nor its silent close
    # near miss: the downgrade check's own alert (a middlebox before the inspector)
    h.alerts = [dataclasses.replace(expired, description=47)]
    assert "downgrade-detected" in codes(h)


def test_the_sentinel_is_no_cause_when_the_server_chose_above_the_clients_offer() -> None:
    """A ServerHello that selects TLS 1.2 (with the sentinel) for a client that offered
    TLS 1.0 at most (RFC 8446 4.1.3: only a client that offered more than the server
    chose checks it): the client refuses a version it never offered, no downgrade."""
    sh = sh_seen()
    random = sh.hello.random[:24] + b"DOWNGRD\x01"
    sh = dataclasses.replace(sh, hello=dataclasses.replace(sh.hello, random=random))
    refused = AlertSeen("client", 2, 2, 70, 0x0301, 0x0303)  # protocol_version
    h = history(ch=[ch_seen(TLS10_CH)], sh=[sh], alerts=[refused], closed_by="client")
    assert "downgrade-detected" not in codes(h)
    # near miss: the client offered TLS 1.2 and the server chose TLS 1.2: the check's
    # own question (is it a downgrade?) is asked
    h.client_hellos = [ch_seen(OPENSSL_TLS12)]
    h.alerts = [dataclasses.replace(refused, description=47)]
    assert "downgrade-detected" in codes(h)


def test_a_servers_protocol_version_after_its_hello_is_not_the_clients_refusal() -> None:
    """protocol_version from the client after the ServerHello: it refused the server's
    choice; the same alert from the server there is not that (RFC 8446 4.2.1)."""
    for side, refused in (("client", True), ("server", False)):
        a = AlertSeen(side, 2, 2, 70, 0x0303, 0x0303)
        h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], alerts=[a])
        summary = finding(h, "protocol-version").summary
        assert summary.startswith("the client refused the server's choice") is refused, side


def test_a_warning_alert_is_no_fatal_alert_finding() -> None:
    """RFC 5246 7.2: a warning (level 1) does not end the connection; only fatal alerts
    that no rule explains get an alert-* finding, at most three of them."""
    canceled = AlertSeen("client", 2, 1, 90, 0x0303, 0x0303)  # warning user_canceled
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], alerts=[canceled])
    assert not [c for c in codes(h) if c.startswith("alert-")]
    fatal = [AlertSeen("server", 2 + i, 2, d, 0x0303, 0x0303)
             for i, d in enumerate((50, 47, 51, 80))]  # decode, illegal, decrypt, internal
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], alerts=fatal)
    assert [c for c in codes(h) if c.startswith("alert-")] == [
        "alert-decode-error", "alert-illegal-parameter", "alert-decrypt-error"]


def test_each_sides_last_record_is_judged_as_a_likely_alert() -> None:
    """TLS 1.2 without keys: the client's last encrypted record is not its last record
    (record 4 of 5), or is not an alert record; the server's last is an encrypted alert
    record: the server's is named, whichever side is looked at first."""
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], closed_by="server")
    h.records = {"client": 5, "server": 6}
    client, server = EncryptedSeen("client", 4, 21, 26), EncryptedSeen("server", 6, 21, 26)
    for order in ({"client": client, "server": server}, {"server": server, "client": client}):
        h.last_encrypted = order
        [f] = [x for x in diagnosis_of(h) if x.code == "likely-encrypted-alert"]
        assert f.evidence == ["server record 6: alert len=26 (an alert record, encrypted)"]
    # The client's last record is its last one now, but application data, not an
    # alert record: no finding for it, and the server's alert is still judged after it.
    h.records = {"client": 4, "server": 6}
    h.last_encrypted = {"client": EncryptedSeen("client", 4, 23, 40), "server": server}
    [f] = [x for x in diagnosis_of(h) if x.code == "likely-encrypted-alert"]
    assert f.evidence == ["server record 6: alert len=26 (an alert record, encrypted)"]


def test_keys_that_do_not_open_the_last_record_are_not_called_missing() -> None:
    """A stripped ALPN under TLS 1.3 (GnuTLS): the peers derive different handshake
    keys, so the client's alert does not open with the logged ones. Both findings
    said opposite things ("did not decrypt with the logged keys", "the key log has
    no keys"); key-mismatch now names the fault, the likely alert the mismatch."""
    from tlsinspector.proxy.history import DecryptedSeen

    strip = FaultSeen("t", "remove-extensions", "client", 1, "transcript-breaking", {},
                      {"extensions": (16,)}, {"extensions_removed": (16,),
                                              "extensions_added": ()})
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], closed_by="client",
                faults=[strip])
    h.keys = True
    h.records = {"client": 2, "server": 6}
    h.last_encrypted = {"client": EncryptedSeen("client", 2, 21, 26)}
    h.decrypted = [DecryptedSeen("client", 2, "undecryptable", reason="authentication failed")]
    h.undecryptable = {"client": 1}
    [likely] = [x for x in diagnosis_of(h) if x.code == "likely-encrypted-alert"]
    assert likely.summary.endswith("the logged keys do not open it (key-mismatch)")
    mismatch = finding(h, "key-mismatch")
    assert "a fault changed handshake bytes" in mismatch.summary
    assert "fault t: remove-extensions on client record 1" in mismatch.evidence
    # near miss: no record of that side failed to open: the keys are just missing
    h.decrypted, h.undecryptable = [], {}
    [likely] = [x for x in diagnosis_of(h) if x.code == "likely-encrypted-alert"]
    assert likely.summary.endswith("the key log has no keys for this connection")
    assert "key-mismatch" not in codes(h)


def test_a_record_over_the_limit_is_record_overflow_first() -> None:
    """A header announcing 65535 bytes (a hostile or broken peer; a middlebox that
    merged records): the receiver refuses it as soon as it reads it, even when the
    sender has already half-closed, so record_overflow is the cause, not an answer."""
    from tlsinspector.proxy.history import Anomaly

    late = AlertSeen("server", 1, 2, 22, 0x0303, None, after_peer_left=True)
    part = Anomaly("client", 1, "partial_record", "partial record at close (105 of 65540 "
                   "bytes)", 65535)
    h = history(alerts=[late], anomalies=[part], closed_by="client")
    assert codes(h)[0] == "record-overflow", codes(h)
    f = finding(h, "record-overflow")
    assert f.evidence[0] == "client record 1: its header announces 65535 bytes"
    assert "alert-record-overflow" not in codes(h)
    # a whole record over the limit
    big = Anomaly("server", 4, "oversized", "record of 20000 bytes")
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], anomalies=[big],
                alerts=[AlertSeen("client", 2, 2, 22, 0x0303, 0x0303)], closed_by="client")
    assert codes(h)[0] == "record-overflow"
    assert finding(h, "record-overflow").evidence[0] == "server record 4: record of 20000 bytes"
    # Bytes a replace-with-raw fault sent whose header announces too much: every TLS
    # content type (20-24, heartbeat included, RFC 6520) is read as a record header.
    for ctype, framed in ((20, True), (24, True), (25, False)):
        raw = bytes([ctype, 3, 3]) + (20_000).to_bytes(2, "big") + b"x" * 10
        fault = FaultSeen("t", "replace-with-raw", "server", 2, "transcript-breaking", {},
                          {}, {"raw": raw})
        h = history(ch=[ch_seen(OPENSSL_TLS12)], faults=[fault], closed_by="client")
        assert ("record-overflow" in codes(h)) is framed, ctype
        assert ("non-tls-bytes" in codes(h)) is not framed, ctype
    # near miss: a short partial record is only cut short
    h = history(anomalies=[dataclasses.replace(part, value=100)], closed_by="client")
    assert "record-overflow" not in codes(h) and "partial-record" in codes(h)
    # a fault that sent one in place of the ServerHello (Go 'tls: oversized record
    # received with length 20000'): a TLS record, not "non-TLS bytes"
    raw = FaultSeen("t", "replace-with-raw", "server", 1, "transcript-safe", {}, {},
                    {"raw": b"\x16\x03\x03\x4e\x20" + b"\x02" * 20000})
    h = history(ch=[ch_seen(OPENSSL_TLS12)], faults=[raw],
                alerts=[AlertSeen("client", 2, 2, 22, 0x0301, None)], closed_by="client")
    assert codes(h)[0] == "record-overflow" and "non-tls-bytes" not in codes(h)
    assert finding(h, "record-overflow").evidence[0] == (
        "fault t: replace-with-raw on server record 1: sent a record whose header "
        "announces 20000 bytes")
    h.faults = [dataclasses.replace(raw, facts={"raw": b"HTTP/1.1 400 Bad Request\r\n"})]
    assert "non-tls-bytes" in codes(h)
    # the alert alone: a limit the peers negotiated
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()],
                alerts=[AlertSeen("client", 2, 2, 22, 0x0303, 0x0303)])
    assert "record_size_limit" in finding(h, "record-overflow").summary


def _timed(h: object, **kw: object) -> object:
    for k, v in kw.items():
        setattr(h, k, v)
    return h


def test_timeout_after_a_drop_outranks_the_servers_late_alert() -> None:
    # Bug 6: the server's decode_error came after the client's FIN and was blamed.
    drop = FaultSeen("t", "drop", "server", 1, "transcript-breaking", {}, {},
                     {"dropped": 700}, at=100.02)
    late = AlertSeen("server", 2, 2, 50, 0x0303, None, after_peer_left=True)
    h = history(ch=[ch_seen(OPENSSL_TLS12)], alerts=[late], faults=[drop], closed_by="client")
    _timed(h, started_at=100.0, eof_at={"client": 102.0, "server": 102.1})
    # no-server-hello as without the late alert (which answers the close, not the hello).
    assert codes(h) == ["timeout", "no-server-hello", "alert-decode-error"]
    f = finding(h, "timeout")
    assert f.summary.startswith("the client gave up after 2.0 s of silence")
    assert "a middlebox kept the server's answer from it (fault t)" in f.summary
    assert f.evidence[0] == ("the client received nothing for 2.0 s (nothing since the "
                             "connection opened) and closed at +2.00 s")
    assert f.evidence[1] == ("fault t: drop on server record 1: 700 bytes from the server "
                             "dropped")
    assert "sent after the client had already closed" in finding(h, "alert-decode-error").summary


def test_a_client_that_closed_at_once_after_a_drop_did_not_time_out() -> None:
    """Dropped NewSessionTickets: the client had its response and closed at once, as it
    meant to; it never waited for the tickets. That read 'the client gave up after 0.0 s
    of silence (its own timeout): a middlebox kept the server's answer from it'."""
    drop = FaultSeen("t", "drop", "server", 7, "transcript-breaking", {}, {},
                     {"dropped": 250}, at=100.05)
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], faults=[drop],
                closed_by="client")
    _timed(h, started_at=100.0, eof_at={"client": 100.1}, last_to={"client": 100.08})
    assert "timeout" not in codes(h)
    _timed(h, started_at=100.0, eof_at={"client": 105.0}, last_to={"client": 100.08})
    assert "timeout" in codes(h)


def test_timeout_after_several_drops_counts_them_and_their_bytes() -> None:
    drops = [FaultSeen("t", "drop", "server", i, "transcript-breaking", {}, {},
                       {"dropped": 100 * i}, at=100.01 * i) for i in (1, 2, 3)]
    h = history(ch=[ch_seen(OPENSSL_TLS12)], faults=drops, closed_by="client")
    _timed(h, started_at=100.0, eof_at={"client": 102.0})
    assert finding(h, "timeout").evidence[1] == (
        "fault t: drop on server record 1 (and 2 more records): 600 bytes from the server "
        "dropped")
    h.faults = drops[:2]
    assert finding(h, "timeout").evidence[1] == (
        "fault t: drop on server record 1 (and 1 more records): 300 bytes from the server "
        "dropped")


def test_timeout_after_a_delay_names_the_delay_still_holding_the_bytes() -> None:
    delay = FaultSeen("t", "delay", "server", 1, "transcript-safe", {}, {"ms": 5000},
                      {"delayed": 5.0}, at=100.5)
    h = history(ch=[ch_seen(OPENSSL_TLS12)], faults=[delay], closed_by="client")
    _timed(h, started_at=100.0, eof_at={"client": 102.5}, last_to={"client": 100.1})
    f = finding(h, "timeout")
    assert "received nothing for 2.4 s (last bytes to it at +0.10 s)" in f.evidence[0]
    assert f.evidence[1].startswith("fault t: delay on server record 1: held for 5 s")
    # delivered before the client left: latency, not a timeout
    h.eof_at, h.last_to, h.server_hellos = {"client": 106.0}, {"client": 105.5}, [sh_seen()]
    assert "timeout" not in codes(h)


def test_a_record_cut_under_its_length_field_is_a_timeout_when_the_receiver_gives_up(
        ) -> None:
    """truncate without fix_length and no close: the client waits for the rest of the
    record until its own timeout (Go "context deadline exceeded"). That is a timeout
    naming the fault, not "the stream ended inside a record ... unexpected EOF"; with
    the stream ended by a close fault (truncated-server-flight) it still is that."""
    cut = FaultSeen("t", "truncate", "server", 2, "transcript-breaking", {}, {"length": 100},
                    {"truncated": (100, False)}, at=100.01)
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], faults=[cut],
                closed_by="client")
    _timed(h, started_at=100.0, eof_at={"client": 110.0}, last_to={"client": 100.01})
    assert "partial-record" not in codes(h)
    assert finding(h, "timeout").evidence[1] == (
        "fault t: truncate on server record 2: cut to 100 bytes, length field unchanged: "
        "the client waited for the rest of that record")
    h.closed_by = "proxy"
    assert "partial-record" in codes(h)


def test_a_handshake_message_cut_under_a_fixed_length_is_a_timeout_not_bad_record_mac(
        ) -> None:
    """truncate with fix_length: the record arrives whole, the Certificate message in it
    does not (its length says 374 bytes, 96 came), so the client waits for the rest
    until its own timeout (Go "context deadline exceeded", curl's 15 s). No MAC was
    checked: no bad-record-mac. The same cut of a record whose bytes the fault could
    not read (protected, not resealed) says nothing of a message."""
    cut = FaultSeen("t", "truncate", "server", 2, "transcript-breaking", {},
                    {"length": 100, "fix_length": True},
                    {"truncated": (100, True), "message_cut": (11, 374, 96)}, at=100.01)
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], faults=[cut],
                closed_by="client")
    _timed(h, started_at=100.0, eof_at={"client": 110.0}, last_to={"client": 100.01})
    assert "bad-record-mac" not in codes(h)
    assert finding(h, "timeout").evidence[1] == (
        "fault t: truncate on server record 2: cut to 100 bytes, length field fixed: its "
        "certificate message declares 374 bytes and 96 of them arrived, so the client "
        "waited for the rest of that message")
    h.faults = [dataclasses.replace(cut, protected=True)]
    assert "timeout" not in codes(h)
    assert "bad-record-mac" in codes(h)


@pytest.mark.parametrize(("payload", "keep", "cut"), [
    (bytes.fromhex("0b000005") + b"12345", 6, (11, 5, 2)),         # inside the message
    (bytes.fromhex("0b000005") + b"12345", 2, (11, 5, 0)),         # inside its header
    (bytes.fromhex("0b000001") + b"1" + bytes.fromhex("0e000000"), 5, None),  # between
    (bytes.fromhex("0b000001") + b"1" + bytes.fromhex("0c000003") + b"abc", 10,
     (12, 3, 1)),                                                   # the second one
    (bytes.fromhex("0b0000ff") + b"12345", 6, None),   # continued in the next record
    (bytes.fromhex("ff000005") + b"12345", 6, None),   # not a handshake message (ciphertext)
])
def test_truncate_with_a_fixed_length_names_the_message_it_cut(
        payload: bytes, keep: int, cut: tuple[int, int, int] | None) -> None:
    e = Effect([Record(22, 0x0303, payload)])
    ACTIONS["truncate"].run(e, {"length": keep, "fix_length": True})
    assert e.facts.get("message_cut") == cut
    e = Effect([Record(22, 0x0303, payload)])
    ACTIONS["truncate"].run(e, {"length": keep, "fix_length": False})
    assert "message_cut" not in e.facts


def test_a_silent_server_is_a_timeout_from_one_second_unless_the_client_refused() -> None:
    """No fault to blame: the client that sent its hello and heard nothing is named as
    timing out after a silence of one second (diagnosis.SILENCE) or more; before that,
    or when the client itself sent a fatal alert (it refused something), it is not. A
    warning alert (e.g. user_canceled) is no refusal."""
    def h(silence: float, *alerts: AlertSeen) -> object:
        return _timed(history(ch=[ch_seen(OPENSSL_TLS12)], closed_by="client",
                              alerts=list(alerts)),
                      started_at=100.0, eof_at={"client": 100.0 + silence})

    assert "timeout" in codes(h(1.0))  # type: ignore[arg-type]
    assert "timeout" not in codes(h(0.9))  # type: ignore[arg-type]
    canceled = AlertSeen("client", 2, 1, 90, 0x0303, None)
    assert "timeout" in codes(h(3.0, canceled))  # type: ignore[arg-type]
    refused = AlertSeen("client", 2, 2, 40, 0x0303, None)
    assert "timeout" not in codes(h(3.0, refused))  # type: ignore[arg-type]


def test_proxy_reset_mid_stream_is_named() -> None:
    # Bug 13: nothing was named when the proxy itself reset the connection.
    rst = FaultSeen("t", "close", "client", 5, "transcript-safe", {}, {},
                    {"closed": ("rst", "both")})
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], faults=[rst], closed_by="proxy")
    h.handshake_done = {"client": True, "server": True}
    assert codes(h) == ["proxy-closed"]
    f = finding(h, "proxy-closed")
    assert "mid-stream, after the handshake" in f.summary and "RST" in f.summary
    assert f.evidence[0] == "fault t: close on client record 5: RST toward both"
    # The first close ended the connection; a later one (another scenario's) is not it.
    fin = FaultSeen("u", "close", "server", 6, "transcript-safe", {}, {},
                    {"closed": ("fin", "client")})
    h.faults = [rst, fin]
    assert finding(h, "proxy-closed").evidence[0] == (
        "fault t: close on client record 5: RST toward both")


def test_plaintext_alert_injected_into_an_encrypted_stream_is_named() -> None:
    # Bug 13: the peer failed on a forged plaintext alert and nothing said so.
    inject = FaultSeen("t", "insert-alert", "server", 6, "transcript-safe", {},
                       {"level": 2, "description": 40}, {"inserted": (21, "before")},
                       protected=True, alert_encrypted=True)
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], faults=[inject],
                closed_by="client")
    assert codes(h)[0] == "injected-plaintext-alert"
    f = finding(h, "injected-plaintext-alert")
    assert "after the server's records were encrypted" in f.evidence[0]
    assert f.evidence[1:] == []
    # The receiver's (the client's) fatal alert is its reaction, listed after the
    # fault; the server's own alert is not a reaction to what the client received.
    h.alerts = [AlertSeen("client", 7, 2, 10, 0x0303, 0x0303),
                AlertSeen("server", 8, 2, 80, 0x0303, 0x0303)]
    assert finding(h, "injected-plaintext-alert").evidence[1:] == [
        "client record 7: fatal alert unexpected_message (10)"]
    h.alerts = []
    # near miss: the same alert before encryption is an ordinary forged refusal
    h.faults = [dataclasses.replace(inject, protected=False, alert_encrypted=False)]
    assert "injected-plaintext-alert" not in codes(h)
    # near miss: sealed inside the encryption (configs/interception-alert-after-server-hello
    # .yaml) it is a protected alert, not a plaintext one
    h.faults = [dataclasses.replace(inject, sealed=True)]
    assert "injected-plaintext-alert" not in codes(h)


def test_finished_mismatch_names_the_hello_rewrite() -> None:
    # Bug 7: the server's alert was explained as "no acceptable set of parameters".
    add = FaultSeen("t", "add-extension", "client", 1, "transcript-breaking", {},
                    {"type": 0xFE99}, {"extensions_removed": (), "extensions_added": (0xFE99,)})
    for desc in (20, 40, 51):
        late = AlertSeen("server", 5, 2, desc, 0x0303, 0x0303)
        h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], alerts=[late],
                    faults=[add])
        assert codes(h)[0] == "finished-mismatch", (desc, codes(h))
        assert "alert-handshake-failure" not in codes(h)


def test_finished_mismatch_under_tls13_when_only_a_late_alert_is_visible() -> None:
    # A ClientHello rewrite under TLS 1.3 (ALPN stripped), GnuTLS client: its own
    # alert is encrypted, it closes, and the server's bad_record_mac answers that
    # close. The cause is still the transcript, not "no alert seen".
    strip = FaultSeen("t", "remove-extensions", "client", 1, "transcript-breaking", {},
                      {"extensions": (16,)}, {"extensions_removed": (16,),
                                              "extensions_added": ()})
    late = AlertSeen("server", 5, 2, 20, 0x0303, 0x0304, after_peer_left=True)
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], alerts=[late], faults=[strip],
                closed_by="client", negotiated=0x0304)
    assert codes(h)[0] == "finished-mismatch", codes(h)
    # The summary says why under TLS 1.3 (the negotiated version as the engine records
    # it: a number parsed from the ServerHello, not the module's constant object).
    h.negotiated_version = int.from_bytes(b"\x03\x04", "big")
    summary = finding(h, "finished-mismatch").summary
    assert "under TLS 1.3 the handshake keys derive from the transcript" in summary
    assert "extended_master_secret" not in summary
    # near miss: the same alert as the cause (sent before the client left) is judged
    # by the alert rules: bad_record_mac is a Finished alert too
    h.alerts = [dataclasses.replace(late, after_peer_left=False)]
    assert "finished-mismatch" in codes(h)


def test_a_fragmented_ciphertext_is_bad_record_mac_not_a_reassembly_failure() -> None:
    # `fragment` matched by content_type: handshake also hits the encrypted Finished
    # under TLS 1.2: the client fails its MAC on the pieces (Go 'bad record MAC'),
    # though it reassembled the plaintext 1-byte records before it.
    def frag(index: int, pieces: int, protected: bool) -> FaultSeen:
        return FaultSeen("t", "fragment", "server", index, "transcript-safe", {},
                         {"size": 1}, {"records_after": pieces}, protected=protected)
    plain = [frag(i, 100, False) for i in range(1, 5)]
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], closed_by="client",
                faults=[*plain, frag(6, 40, True)])
    assert codes(h)[0] == "bad-record-mac", codes(h)
    assert "fragmented-handshake-rejected" not in codes(h)
    f = finding(h, "bad-record-mac")
    assert "split an encrypted record's ciphertext" in f.summary
    assert f.evidence == ["fault t: fragment on server record 6: encrypted record split "
                          "into 40 records of ciphertext"]
    # near miss: the client gave up on the plaintext fragments alone (wolfSSL -306)
    h.faults = plain
    assert codes(h) == ["fragmented-handshake-rejected"]
    # near miss: fragmented inside the encryption and re-sealed: no ciphertext split
    h.faults = [*plain, dataclasses.replace(frag(6, 40, True), sealed=True)]
    assert "bad-record-mac" not in codes(h)


def test_fault_outcome_does_not_count_tls13_sealed_handshake_as_data() -> None:
    # Bug 5: under TLS 1.3 the client's Finished and its alert are application_data
    # records; they were counted as "application data flowed both ways".
    add = FaultSeen("t", "add-extension", "client", 1, "transcript-breaking", {}, {}, {})
    sh = sh_seen()
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh], faults=[add], closed_by="client",
                negotiated=0x0304)
    alert_len = sealed_length(suite(sh.hello.cipher_suite), 2, False)
    h.app_records = {"client": 2, "server": 4}
    h.encrypted_after_peer = {"client": 2, "server": 1}
    h.records = {"client": 3, "server": 5}
    h.last_encrypted = {"client": EncryptedSeen("client", 3, 23, alert_len)}
    assert "fault-outcome" not in codes(h)
    h.encrypted_after_peer = {"client": 3, "server": 2}
    h.last_encrypted = {}
    assert "fault-outcome" in codes(h)


def test_a_sealed_alert_sized_last_record_is_not_data_in_a_long_connection() -> None:
    """The same judgement past 256 records (indices CPython does not share between
    objects): the client's last record, alert-sized, is its alert, not data."""
    add = FaultSeen("t", "add-extension", "client", 1, "transcript-breaking", {}, {}, {})
    sh = sh_seen()
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh], faults=[add], closed_by="client",
                negotiated=0x0304)
    alert_len = sealed_length(suite(sh.hello.cipher_suite), 2, False)
    last = int("300")  # computed: not the literal object the records count holds
    h.records = {"client": 300, "server": 5}
    h.encrypted_after_peer = {"client": 2, "server": 1}
    h.last_encrypted = {"client": EncryptedSeen("client", last, 23, alert_len)}
    assert "fault-outcome" not in codes(h)


def test_an_alert_sent_after_the_peer_left_is_never_the_cause() -> None:
    # "Alerts a peer sends after the other side has left do not outrank the cause":
    # a bad_record_mac or unexpected_message answering the client's FIN is listed
    # after the cause, as an alert-* finding that says it answers the close.
    for desc, code in ((20, "bad-record-mac"), (10, "unexpected-message")):
        late = AlertSeen("server", 3, 2, desc, 0x0303, 0x0303, after_peer_left=True)
        h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()], alerts=[late],
                    closed_by="client")
        found = codes(h)
        assert code not in found, found
        assert found[-1].startswith("alert-")
        assert "had already closed its side" in finding(h, found[-1]).summary


def test_a_bad_record_version_the_receiver_may_have_refused_is_not_called_unchecked(
        ) -> None:
    """TLS 1.3 without keys: the server's record with version 0x3030 after the
    handshake, then the client's last record has an alert's sealed size (curl: "wrong
    version number", its alert encrypted). The finding said the connection completed
    with no fatal alert and the receiver did not check the version; it cannot know."""
    from tests.conversation import conversation
    from tlsinspector.proxy.engine import Connection, Emit

    def close_of(client_tail: bytes) -> dict[str, Any]:
        c = Connection("1", "c:1", "s:2")
        flights = conversation("1.3")
        for side, data in flights[:3]:  # the hellos, the server's flight, client Finished
            c.receive(side, data, 1.0)  # type: ignore[arg-type]
        c.receive("server", bytes.fromhex("1730300020") + bytes(32), 1.0)
        if client_tail:
            c.receive("client", client_tail, 1.0)
        c.eof("server", 1.0)
        c.eof("client", 1.0)
        [close] = [o.event for o in c.finish(1.0)
                   if isinstance(o, Emit) and o.event["event"] == "close"]
        [f] = [x for x in close["diagnosis"] if x["code"] == "record-version-invalid"]
        return f

    summary = close_of(bytes.fromhex("1703030013") + bytes(19))["summary"]
    assert "whether the receiver refused it is not visible" in summary
    assert "did not check" not in summary
    assert "did not check" in close_of(b"")["summary"]


def test_a_hello_refused_after_a_fault_rewrote_it_names_the_fault() -> None:
    # A duplicated supported_groups added by add-extension: OpenSSL answers
    # illegal_parameter. The finding said "compare the offer with the server's
    # configuration", as if the client's own hello were refused.
    illegal = bytes.fromhex("1503030002022f")
    h = history(ch=[ch_seen(OPENSSL_TLS12)], alerts=[alert("server", 1, illegal)])
    assert "compare the offer" in finding(h, "alert-illegal-parameter").summary
    h.faults.append(FaultSeen("dup", "add-extension", "client", 1, "transcript-breaking",
                              {"before": 7, "after": {}}, {"type": 10, "data": b""}))
    f = finding(h, "alert-illegal-parameter")
    assert "a fault changed the client's hello" in f.summary
    assert "compare the offer" not in f.summary
    assert "fault dup: add-extension on client record 1" in f.evidence
    assert f.evidence[-1].startswith("client record 1: the refused ClientHello offers ")


def test_a_hello_refused_after_a_half_close_is_the_refusal() -> None:
    # A hello sent with a half-close (printf ... | nc, a client's shutdown(SHUT_WR)):
    # the server's illegal_parameter (or unrecognized_name for its SNI) came after the
    # client's FIN, and it answers the hello, not the close: the refusal is the finding
    # (it read "no ServerHello and no alert before the client closed", then the alert
    # "sent after the client had already closed ... not the cause"). A decode_error
    # then still answers the close.
    for code, name in ((47, "alert-illegal-parameter"), (112, "alert-unrecognized-name")):
        late = AlertSeen("server", 1, 2, code, 0x0303, 0x0303, after_peer_left=True)
        h = history(ch=[ch_seen(OPENSSL_TLS12)], alerts=[late], closed_by="client")
        assert codes(h) == [name]
        assert "already closed" not in finding(h, name).summary
    reaction = AlertSeen("server", 1, 2, 50, 0x0303, 0x0303, after_peer_left=True)
    h = history(ch=[ch_seen(OPENSSL_TLS12)], alerts=[reaction], closed_by="client")
    assert codes(h) == ["no-server-hello", "alert-decode-error"]
    summary = finding(h, "no-server-hello").summary
    assert "no ServerHello and no alert before the client closed:" in summary
    quiet = history(ch=[ch_seen(OPENSSL_TLS12)], closed_by="client")
    assert "no ServerHello and no alert:" in finding(quiet, "no-server-hello").summary


def test_a_tls13_close_after_both_finished_decrypted_is_after_the_handshake() -> None:
    # lb-idle-timeout-rst with Go: both TLS 1.3 Finished decrypted from the key log,
    # then the idle timer's RST before any application data. proxy-closed said
    # "during the handshake": handshake_done is set from TLS 1.2's record types only.
    rst = FaultSeen("lb", "close", "server", 0, "transcript-safe", {}, {},
                    {"closed": ("rst", "both")})
    h = history(ch=[ch_seen(OPENSSL_TLS12)], faults=[rst], closed_by="proxy",
                negotiated=0x0304)
    h.keys = True
    fin = ({"type": "finished", "length": 32},)
    h.decrypted = [DecryptedSeen("server", 6, "decrypted", 22, fin)]
    assert "during the handshake" in finding(h, "proxy-closed").summary
    h.decrypted.append(DecryptedSeen("client", 3, "decrypted", 22, fin))
    assert "mid-stream, after the handshake" in finding(h, "proxy-closed").summary


def test_a_timer_fault_is_named_by_its_timer_not_a_record_0() -> None:
    # The idle timer's close was evidence "fault lb: close on server record 0".
    rst = FaultSeen("lb", "close", "server", 0, "transcript-safe", {}, {},
                    {"closed": ("rst", "both"), "timer": {"idle_ms": 1000}})
    h = history(ch=[ch_seen(OPENSSL_TLS12)], faults=[rst], closed_by="proxy")
    assert rst.text() == "fault lb: close on its timer (idle_ms 1000)"
    assert finding(h, "proxy-closed").evidence[0] == (
        "fault lb: close on its timer (idle_ms 1000): RST toward both")


def test_a_flood_of_early_change_cipher_specs_is_not_one_line_each() -> None:
    # A server answering with 3000 ChangeCipherSpec records: early-ccs listed 32
    # evidence lines (the history's cap), one per record.
    def ccs(i: int) -> Anomaly:
        return Anomaly("server", i, "early_ccs", "ChangeCipherSpec before the ServerHello")
    h = history(ch=[ch_seen(OPENSSL_TLS12)], closed_by="client")
    for i in range(1, 3001):
        h.add(h.anomalies, ccs(i))
    assert finding(h, "early-ccs").evidence == [
        "server record 1: ChangeCipherSpec before the ServerHello",
        "server record 2: ChangeCipherSpec before the ServerHello",
        "server record 3: ChangeCipherSpec before the ServerHello",
        "... and at least 29 more such records"]
    h.anomalies = [ccs(1), ccs(2), ccs(3), ccs(4)]
    assert finding(h, "early-ccs").evidence[-1] == "... and 1 more such record"


def test_a_tls13_hello_with_one_common_group_refused_is_no_common_group() -> None:
    """openssl s_client -groups P-384 against s_server -groups X25519: handshake_failure
    before any ServerHello, for a hello offering every standard TLS 1.3 suite and one
    (common) group. It was only alert-handshake-failure. Two groups or more (the offer
    is shown to compare, test_diagnosis_real), or a hello missing a standard suite, not."""
    from tlsinspector.proxy.hello import ClientHello, Extension
    from tlsinspector.proxy.history import HelloSeen

    def hello(groups: list[int], suites: tuple[int, ...] = (0x1301, 0x1302, 0x1303)
              ) -> HelloSeen:
        body = b"".join(g.to_bytes(2, "big") for g in groups)
        exts = (Extension(43, b"\x02\x03\x04"),
                Extension(10, len(body).to_bytes(2, "big") + body))
        return HelloSeen("client", 1, 0x0301,
                         ClientHello(0x0303, bytes(32), b"", suites, b"\x00", exts))

    refusal = alert("server", 1, bytes.fromhex("15030300020228"))
    f = finding(history(ch=[hello([0x0018])], alerts=[refusal]), "no-common-group")
    assert "offers only secp384r1" in f.summary and "HelloRetryRequest" in f.summary
    assert f.evidence == ["client record 1: ClientHello offers 1 group: secp384r1",
                          "server record 1: fatal alert handshake_failure (40)"]
    for other in (hello([0x001D, 0x0017]), hello([0x0018], (0x1301,))):
        assert "no-common-group" not in codes(history(ch=[other], alerts=[refusal]))
