"""The certificate-rejected rule on real certificates (proxy/diagnosis.py): real
OpenSSL conversations (Python's ssl over MemoryBIOs, tests/conversation.py) through
the sans-io engine, cut where a client that rejects the certificate stops, with the
alert it would send (RFC 8446 6.2, RFC 5246 7.2.2) or, with keys, no alert at all
(curl checks the name after the handshake and just closes).

The test certificate (lab/certs.py) is valid from its creation for 30 days and names
localhost, test.local and 127.0.0.1; the SNI chooses whether its name matches."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conversation import conversation
from tlsinspector.proxy.engine import Connection, Emit
from tlsinspector.proxy.keylog import KeyLog

BAD_CERTIFICATE = bytes.fromhex("1503030002022a")     # fatal bad_certificate (42)
HANDSHAKE_FAILURE = bytes.fromhex("15030300020228")   # fatal handshake_failure (40)
NOW = time.time() + 3600.0  # inside the test certificate's validity


def close_event(flights: list[tuple[str, bytes]], then: bytes | None = None,
                keylog: KeyLog | None = None) -> dict[str, Any]:
    """Feed the flights, then the client's alert (if any) and the client's close."""
    c = Connection("1", "127.0.0.1:1", "127.0.0.1:2", keylog=keylog)
    for side, data in flights:
        c.receive(side, data, NOW)  # type: ignore[arg-type]
    if then is not None:
        c.receive("client", then, NOW)
    c.eof("client", NOW)
    [close] = [o.event for o in c.finish(NOW) if isinstance(o, Emit)
               and o.event["event"] == "close"]
    return close


def rejected(close: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in close["diagnosis"] if f["code"] == "certificate-rejected"]


def test_client_alert_for_a_certificate_of_another_name_names_the_san_and_the_sni() -> None:
    # TLS 1.2: the Certificate travels in the clear (server record 2).
    flights = conversation("1.2", sni="other.example")[:2]
    [f] = rejected(close_event(flights, BAD_CERTIFICATE))
    assert f["summary"] == (
        "the client rejected the server's certificate (bad_certificate): SAN [localhost, "
        "test.local, 127.0.0.1] does not contain the SNI other.example")
    assert f["evidence"][0] == "client record 2: fatal alert bad_certificate (42)"
    assert f["evidence"][1].startswith(
        "server record 2: certificate chain of 1: subject CN=localhost, issuer "
        "CN=tlsinspector test CA, valid ")
    assert f["evidence"][2:] == ["certificate SAN [localhost, test.local, 127.0.0.1] does "
                                 "not contain the SNI other.example"]


def _expired_refusal_at(now: float) -> dict[str, Any]:
    """A TLS 1.2 client's fatal certificate_expired after the server's flight, as seen
    at ``now``: the one certificate-rejected finding of the close."""
    flights = conversation("1.2", sni="localhost")[:2]
    c = Connection("1", "127.0.0.1:1", "127.0.0.1:2")
    for side, data in flights:
        c.receive(side, data, now)  # type: ignore[arg-type]
    c.receive("client", bytes.fromhex("1503030002022d"), now)  # certificate_expired
    c.eof("client", now)
    [close] = [o.event for o in c.finish(now) if isinstance(o, Emit)
               and o.event["event"] == "close"]
    [f] = rejected(close)
    return f


def test_an_expired_certificate_says_when_it_expired() -> None:
    """The same refusal 40 days later: the 30-day certificate has expired (RFC 5280
    4.1.2.5), and the evidence says since when, counted from the connection."""
    f = _expired_refusal_at(NOW + 40 * 86400.0)
    assert "(certificate_expired): expired on " in f["summary"]
    assert f["evidence"][2].startswith("certificate expired on ")
    assert f["evidence"][2].endswith(" days before this connection)")


def test_a_certificate_not_yet_valid_says_so_and_to_check_the_clocks() -> None:
    """The same refusal three days before the certificate was made (valid from one day
    before, lab/certs.py): not yet valid (RFC 5280 4.1.2.5), which OpenSSL also
    reports as certificate_expired; a clock is wrong on one side or the other."""
    f = _expired_refusal_at(time.time() - 3 * 86400.0)
    assert "(certificate_expired): not valid before " in f["summary"]
    assert f["evidence"][2].startswith("certificate not valid before ")
    assert f["evidence"][2].endswith(" UTC (check both clocks)")
    assert not any("expired on" in x for x in f["evidence"])


def test_the_certificate_judged_is_the_last_one_the_server_sent() -> None:
    """A TLS 1.2 renegotiation brings a second Certificate (RFC 5246 7.4.2): the
    client's refusal is about that one. Here the second names the SNI, so the refusal
    is the chain's, not the SAN of the first."""
    c = Connection("1", "127.0.0.1:1", "127.0.0.1:2")
    for side, data in conversation("1.2", sni="other.example")[:2]:
        c.receive(side, data, NOW)  # type: ignore[arg-type]
    [first] = c.history.decrypted
    [msg] = first.messages
    leaf = dict(msg["chain"][0], san=["other.example"])
    c.history.decrypted.append(dataclasses.replace(first, index=9,
                                                   messages=({**msg, "chain": [leaf]},)))
    c.receive("client", BAD_CERTIFICATE, NOW)
    c.eof("client", NOW)
    [close] = [o.event for o in c.finish(NOW) if isinstance(o, Emit)
               and o.event["event"] == "close"]
    [f] = rejected(close)
    assert f["evidence"][1].startswith("server record 9: certificate chain of 1")
    assert "the chain is only the leaf" in f["summary"]
    assert not any("SAN" in e for e in f["evidence"])


def test_a_certificate_alert_without_a_visible_problem_blames_the_chain() -> None:
    """bad_certificate about a certificate whose own fields are fine, with its issuer
    sent (a chain of two): the receiver's trust store or the chain; a
    handshake_failure then is about something else (suites, groups) and is no
    certificate finding."""
    flights = conversation("1.2", sni="localhost", with_ca=True)[:2]
    [f] = rejected(close_event(flights, BAD_CERTIFICATE))
    assert f["summary"] == (
        "the client rejected the server's certificate (bad_certificate): its chain does not "
        "verify for the receiver (trust store, intermediate certificates, key usage)")
    assert f["evidence"][1].startswith("server record 2: certificate chain of 2: ")
    assert len(f["evidence"]) == 2
    assert rejected(close_event(flights, HANDSHAKE_FAILURE)) == []
    # An alert of no defined level (RFC 5246 7.2: warning 1, fatal 2) is no rejection.
    assert rejected(close_event(flights, bytes.fromhex("150303000203") + b"\x2a")) == []
    # The same handshake_failure about a certificate of another name is one.
    other = conversation("1.2", sni="other.example")[:2]
    [f] = rejected(close_event(other, HANDSHAKE_FAILURE))
    assert "(handshake_failure): SAN [" in f["summary"]


@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("alert", [42, 46, 48])  # bad_certificate, certificate_unknown, unknown_ca
def test_a_lone_leaf_refused_as_untrusted_says_the_intermediate_is_likely_missing(
        version: str, alert: int, tmp_path: Path) -> None:
    """The server sends only its leaf, issued by a CA it does not send, and the client
    refuses it as untrusted: the finding names the unsent issuer and both causes (a
    missing intermediate, or an untrusted CA). TLS 1.3 needs the keys to see the
    chain. The same refusal of a chain of two is the general chain finding."""
    keys = tmp_path / "keys.log"
    flights = conversation(version, sni="localhost", keylog=keys)[:2]
    log = KeyLog()
    log.feed(keys.read_text(), NOW)
    # The refusal in the clear (a TLS 1.3 client would seal it; the rule reads
    # decrypted and plaintext alerts alike).
    refusal = bytes.fromhex("1503030002") + bytes([2, alert])
    [f] = rejected(close_event(flights, refusal, keylog=log))
    issuer = "CN=tlsinspector test CA"
    assert f["summary"].endswith(
        f"the chain is only the leaf and its issuer {issuer} was not sent: an intermediate "
        "certificate is likely missing from the sender's configuration (send the "
        "intermediates after the leaf, RFC 8446 4.4.2, RFC 5246 7.4.2), or "
        f"{issuer} is a CA the receiver does not trust")
    assert f["evidence"][-1] == f"no certificate for the leaf's issuer {issuer} was sent"
    two = conversation(version, sni="localhost", keylog=keys, with_ca=True)[:2]
    log.feed(keys.read_text(), NOW)
    [g] = rejected(close_event(two, refusal, keylog=log))
    assert "only the leaf" not in g["summary"]
    assert "certificate chain of 2" in g["evidence"][1]


def test_client_that_closes_after_its_finished_rejected_the_certificate_itself(
        tmp_path: Path) -> None:
    """TLS 1.3 with keys: ClientHello, the server's flight (Certificate in server record
    4), the client's CCS and Finished, then the client closes without a request."""
    keys = tmp_path / "keys.log"
    flights = conversation("1.3", sni="other.example", keylog=keys)[:3]
    log = KeyLog()
    log.feed(keys.read_text())
    [f] = rejected(close_event(flights, keylog=log))
    assert f["summary"].startswith("the client closed right after the handshake without "
                                   "sending a request: it most likely rejected the server's "
                                   "certificate itself (no fatal alert; or it only wanted "
                                   "the handshake, as TLS scanners and health checks do): ")
    assert f["summary"].endswith("SAN [localhost, test.local, 127.0.0.1] does not contain "
                                 "the SNI other.example")
    assert f["evidence"][0].startswith("server record 4: certificate chain of 1: subject "
                                       "CN=localhost")
    assert f["evidence"][-1] == "client: Finished, then no application data before its close"
    # The client that did not get to its Finished (or had no reason) is no such finding.
    assert rejected(close_event(flights[:2], keylog=log)) == []
    # An address sent as the SNI (RFC 6066 3 allows none: testssl.sh does it, curl and
    # browsers do not) is no name evidence: 76 false findings in one testssl.sh run.
    (side, hello), *rest = flights
    assert b"other.example" in hello
    by_address = [(side, hello.replace(b"other.example", b"192.168.10.11")), *rest]
    assert rejected(close_event(by_address, keylog=log)) == []
    good_keys = tmp_path / "good.log"
    good = conversation("1.3", sni="localhost", keylog=good_keys)[:3]
    log = KeyLog()
    log.feed(good_keys.read_text())
    assert rejected(close_event(good, keylog=log)) == []


def test_a_client_that_sent_its_request_did_not_reject_the_certificate(
        tmp_path: Path) -> None:
    """The same name mismatch, but the client sent a request (small, and a bulk one of
    2 KB that the engine counts without opening): it accepted the certificate (a client
    that does not check names), so its close is no finding."""
    for request in (b"GET / HTTP/1.1\r\n\r\n", b"POST / HTTP/1.1\r\n\r\n" + b"x" * 2000):
        keys = tmp_path / f"keys-{len(request)}.log"
        flights = conversation("1.3", sni="other.example", keylog=keys, request=request)
        log = KeyLog()
        log.feed(keys.read_text())
        assert rejected(close_event(flights, keylog=log)) == [], request[:4]
