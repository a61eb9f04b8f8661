"""The interception rules of proxy/diagnosis.py, sans-io: a client leg's History with
the interception facts (proxy/policy.py) and a server leg that is a real OpenSSL
exchange (Python's ssl over MemoryBIOs) through the engine.

tests/test_intercept.py runs the same rules live with mitmproxy's TLS layers."""

from __future__ import annotations

import dataclasses
import ssl
import tempfile
from pathlib import Path

from tests.test_diagnosis import (
    ALERT_70,
    HELLOS,
    OPENSSL_TLS12,
    alert,
    ch_seen,
    finding,
    history,
    sh_seen,
)
from tlsinspector.lab.certs import make_certs
from tlsinspector.proxy.diagnosis import diagnose
from tlsinspector.proxy.engine import Connection
from tlsinspector.proxy.history import FaultSeen, History
from tlsinspector.proxy.policy import InterceptFacts, LegPolicy, Policy


def server_leg_refusing_a_client_without_certificate() -> History:
    """The inspector's server leg when the server requires a client certificate and
    the inspector presents none: a real TLS 1.2 OpenSSL server (verify_mode
    CERT_REQUIRED) and client (no certificate), their bytes through the engine."""
    with tempfile.TemporaryDirectory(prefix="tlsinspector-cr-") as tmp:
        certs = make_certs(Path(tmp))
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(certs.server_cert, certs.server_key)
        sctx.load_verify_locations(certs.ca_cert)
        cctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    sctx.verify_mode = ssl.CERT_REQUIRED
    for ctx in (sctx, cctx):
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = cctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = sctx.wrap_bio(s_in, s_out, server_side=True)
    conn = Connection("1", "127.0.0.1:1", "127.0.0.1:2")
    refused = False
    for _ in range(20):
        for obj in (client, server):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                refused = refused or obj is server
        for side, bio, peer in (("client", c_out, s_in), ("server", s_out, c_in)):
            data = bio.read()
            if data:
                conn.receive(side, data, 1.0)  # type: ignore[arg-type]
                peer.write(data)
        if refused and not s_out.pending and not c_out.pending:
            break
    assert refused
    conn.eof("server", 1.0)
    conn.finish(1.0)
    return conn.history


def client_leg(policy: Policy, server_leg: History) -> History:
    """The client leg: the client's hello, then the server's alert passed on to it."""
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()],
                alerts=[alert("server", 5, bytes.fromhex("15030300020228"))])
    h.intercept = InterceptFacts("client", policy, server_leg)
    return h


def test_client_certificate_the_inspector_cannot_present_is_named() -> None:
    server_leg = server_leg_refusing_a_client_without_certificate()
    f = finding(client_leg(Policy(), server_leg), "interception-client-cert-not-forwarded")
    # OpenSSL's flight: ServerHello, Certificate, ServerKeyExchange, CertificateRequest,
    # ServerHelloDone, one record each; then its alert (RFC 5246 7.4.6: no certificate).
    assert f.evidence[0] == "server leg, server record 4: CertificateRequest"
    assert f.evidence[2] == "server leg, server record 6: fatal alert handshake_failure (40)"
    # The first refusal is the one named: a second one after it (a stack that answers
    # the inspector's next record with its alert again) changes nothing.
    again = dataclasses.replace(server_leg.alerts[-1], index=7)
    twice = dataclasses.replace(server_leg, alerts=[*server_leg.alerts, again])
    assert finding(client_leg(Policy(), twice), "interception-client-cert-not-forwarded"
                   ).evidence == f.evidence
    # A policy that gives the inspector a client certificate: then the certificate
    # was presented, and this is not the cause.
    with_cert = Policy(client_cert="client.pem")
    assert "interception-client-cert-not-forwarded" not in [
        x.code for x in diagnose(client_leg(with_cert, server_leg))]
    # The client-leg rules read only a client leg's facts: the same History marked as
    # the server leg (whose own rules are others) gets no such finding.
    as_server = client_leg(Policy(), server_leg)
    as_server.intercept = InterceptFacts("server", Policy(), server_leg)
    assert not [x.code for x in diagnose(as_server) if x.code.startswith("interception-")]


def test_a_server_requiring_a_client_certificate_is_named_on_a_leg_of_its_own() -> None:
    """The same real exchange as a connection of its own: TLS 1.2 OpenSSL sends an
    empty client Certificate (RFC 5246 7.4.6) and the server answers handshake_failure,
    which names nothing; the CertificateRequest and the empty chain do."""
    f = finding(server_leg_refusing_a_client_without_certificate(), "certificate-required")
    assert f.evidence == ["server record 4: CertificateRequest",
                          "client record 2: Certificate with an empty chain",
                          "server record 6: fatal alert handshake_failure (40)"]


def test_version_cap_says_what_the_server_itself_chose() -> None:
    """The inspector refused the client's TLS 1.0 while the server leg negotiated
    TLS 1.2: the evidence names the server's choice."""
    from tests.test_diagnosis import TLS10_CH

    policy = Policy(name="cap", client=LegPolicy("1.2", "1.2"))
    h = history(ch=[ch_seen(TLS10_CH)], alerts=[alert("server", 1, ALERT_70)])
    h.intercept = InterceptFacts("client", policy, history(sh=[sh_seen()]))
    f = finding(h, "interception-version-capped")
    assert f.evidence[-1] == "server leg: the server chose 0x0303 (TLSv1.2)"
    assert f.evidence[1] == "server record 1: fatal alert protocol_version (70)"
    # The refusal named is the first: a second one after it changes nothing.
    h.alerts = [alert("server", 1, ALERT_70), alert("server", 2, ALERT_70)]
    assert finding(h, "interception-version-capped").evidence == f.evidence
    assert "caps the client leg at TLS 1.2" in f.summary
    # The refusal is the inspector's (the server of the client leg): a protocol_version
    # from the client itself is the client refusing, not the cap.
    h.alerts = [alert("client", 2, ALERT_70)]
    assert "interception-version-capped" not in [x.code for x in diagnose(h)]


def test_alpn_the_inspector_did_not_pass_on_names_the_servers_choice_bounded() -> None:
    """curl offers h2 and http/1.1; the inspector's answer on the client leg (a TLS 1.2
    ServerHello) has no ALPN while the real server chose a protocol on the server leg
    (RFC 7301 3.1). The server's choice is peer-controlled: shown to 40 characters."""
    import dataclasses

    from tests.test_diagnosis import HELLOS, SERVER_HELLO_TLS12, _hello
    from tlsinspector.proxy.hello import Extension, ServerHello
    from tlsinspector.proxy.history import HelloSeen

    chosen = "x-" + "p" * 48
    name = chosen.encode()
    alpn = Extension(16, (len(name) + 1).to_bytes(2, "big") + bytes([len(name)]) + name)
    version, sh = _hello(SERVER_HELLO_TLS12)
    assert isinstance(sh, ServerHello)
    with_alpn = dataclasses.replace(sh, extensions=(*(sh.extensions or ()), alpn))
    server_leg = history(sh=[HelloSeen("server", 1, version, with_alpn)])
    h = history(ch=[ch_seen((HELLOS / "curl.bin").read_bytes())], sh=[sh_seen()],
                closed_by="client")
    h.intercept = InterceptFacts("client", Policy(), server_leg)
    f = finding(h, "interception-alpn-not-offered")
    assert f.summary.endswith(f"the server itself speaks {chosen[:40]}...")
    assert f.evidence[-1] == f"server leg: the server agreed on {chosen[:40]}..."
    assert f.evidence[0].startswith("client record 1: ALPN offer h2, http/1.1")
    # Why: the default policy passes ALPN on (client.alpn: true), so it failed to pass
    # the server's choice; a policy with client.alpn false never selects one.
    assert "(it did not pass the server's choice on)" in f.summary
    h.intercept = InterceptFacts("client", Policy(client_alpn=False), server_leg)
    assert "(the policy never selects one)" in finding(h, "interception-alpn-not-offered").summary


def test_alpn_the_server_chose_in_tls13_encrypted_extensions_is_named() -> None:
    """TLS 1.3 carries the server's ALPN choice in EncryptedExtensions (RFC 8446
    4.3.1), decrypted on the server leg with the inspector's keys: the finding names
    it as it does a TLS 1.2 ServerHello's."""
    from tlsinspector.proxy import protected_messages
    from tlsinspector.proxy.handshake import HandshakeReassembler, encode_message
    from tlsinspector.proxy.history import DecryptedSeen

    alpn = bytes.fromhex("0010" "0005" "0003" "026832")  # ALPN: ["h2"] (RFC 7301 3.1)
    [ee] = HandshakeReassembler().feed(
        encode_message(8, len(alpn).to_bytes(2, "big") + alpn), 3)
    fields = protected_messages.decode(ee, 0x0304).fields
    server_leg = history(sh=[sh_seen()])
    server_leg.decrypted.append(DecryptedSeen("server", 3, "decrypted", 22, (fields,)))
    h = history(ch=[ch_seen((HELLOS / "curl.bin").read_bytes())], sh=[sh_seen()],
                closed_by="client")
    h.intercept = InterceptFacts("client", Policy(), server_leg)
    f = finding(h, "interception-alpn-not-offered")
    assert f.evidence[-1] == "server leg: the server agreed on h2"
    assert f.summary.endswith("the server itself speaks h2")


def inspector_leg(sni: str, refusal: bytes) -> History:
    """A client leg whose TLS 1.2 server is the inspector: a real conversation (the
    inspector's certificate names localhost, test.local and 127.0.0.1) up to the server's
    flight, then the client's fatal alert."""
    import time

    from tests.conversation import conversation

    now = time.time() + 3600.0  # inside the certificate's validity
    c = Connection("1", "127.0.0.1:1", "127.0.0.1:2")
    for side, data in conversation("1.2", sni=sni)[:2]:
        c.receive(side, data, now)  # type: ignore[arg-type]
    c.receive("client", refusal, now)
    c.eof("client", now)
    c.finish(now)
    return c.history


UNKNOWN_CA = bytes.fromhex("15030300020230")       # fatal unknown_ca (48)
BAD_CERTIFICATE = bytes.fromhex("1503030002022a")  # fatal bad_certificate (42)


def test_a_client_refusing_a_certificate_that_names_its_sni_distrusts_the_ca() -> None:
    h = inspector_leg("localhost", UNKNOWN_CA)
    h.intercept = InterceptFacts("client", Policy(), History())
    f = finding(h, "interception-ca-rejected")
    assert f.evidence == [
        "client record 2: fatal alert unknown_ca (48)",
        f.evidence[1]]
    assert f.evidence[1].startswith("inspector (server) record 2: certificate chain of 1: "
                                    "subject CN=localhost, issuer CN=tlsinspector test CA")
    assert "(issuer CN=tlsinspector test CA)" in f.summary
    # The inspector's own leaf is not blamed again as a server's lone leaf missing
    # its intermediate (certificate-rejected said so beside it).
    assert [x.code for x in diagnose(h)] == ["interception-ca-rejected"]
    # Without the interception facts (the transparent path) it is no such finding.
    assert "interception-ca-rejected" not in [x.code for x in diagnose(
        inspector_leg("localhost", UNKNOWN_CA))]


def test_a_client_that_closes_silently_after_the_handshake_distrusts_the_ca() -> None:
    """With keys, a client that sends no alert (curl, Go check the certificate and just
    close) refused it when it closed without a request; a connection the server closed
    says nothing of the client's trust."""
    h = inspector_leg("localhost", b"")
    h.keys = True
    h.intercept = InterceptFacts("client", Policy(), History())
    assert h.closed_by == "client" and not h.alerts
    assert "interception-ca-rejected" in [x.code for x in diagnose(h)]
    h.closed_by = "server"
    assert "interception-ca-rejected" not in [x.code for x in diagnose(h)]


def test_an_sni_the_inspector_did_not_forward_is_named_only_when_it_was_not() -> None:
    """The client asked for other.example; the inspector's certificate (copied from the
    server's default one) does not name it. Named when the server leg's ClientHello had
    no server_name (report 003's wolfSSL hello), not when it had one."""
    from tests.test_diagnosis import WOLFSSL_REPORT_003

    h = inspector_leg("other.example", BAD_CERTIFICATE)
    h.intercept = InterceptFacts("client", Policy(), history(ch=[ch_seen(WOLFSSL_REPORT_003)]))
    f = finding(h, "interception-sni-not-forwarded")
    assert f.evidence[:2] == ["client record 1: ClientHello for other.example",
                              "server leg, inspector record 1: ClientHello without server_name"]
    h.intercept = InterceptFacts("client", Policy(), history(ch=[ch_seen(OPENSSL_TLS12)]))
    assert "interception-sni-not-forwarded" not in [x.code for x in diagnose(h)]


def test_the_server_aborted_the_inspectors_handshake_only_before_its_end() -> None:
    """The server's fatal internal_error (80) on the server leg, passed on to the client:
    during that leg's handshake it rejected the inspector's own handshake; once the
    server had finished its handshake it is no such rejection. A client's alert on the
    server leg is never the server's."""
    fatal_80 = bytes.fromhex("15030300020250")
    server_leg = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()],
                         alerts=[alert("server", 3, fatal_80)])
    h = history(ch=[ch_seen(OPENSSL_TLS12)], sh=[sh_seen()],
                alerts=[alert("server", 3, fatal_80)])
    h.intercept = InterceptFacts("client", Policy(), server_leg)
    f = finding(h, "interception-server-aborted")
    assert f.evidence == ["server leg, server record 3: fatal alert internal_error (80)",
                          "client leg, the inspector passed it on: server record 3: fatal "
                          "alert internal_error (80)"]
    assert "(a fault on the server leg" not in f.summary
    # A fault on the server leg changed what the inspector sent: the summary says so
    # and the evidence names it.
    server_leg.faults = [FaultSeen("t", "remove-extensions", "client", 1,
                                   "transcript-breaking", {}, {"extensions": (10,)},
                                   {"extensions_removed": (10,), "extensions_added": ()})]
    f = finding(h, "interception-server-aborted")
    assert "(a fault on the server leg changed what the inspector sent it)" in f.summary
    assert f.evidence[2] == "server leg: fault t: remove-extensions on client record 1"
    server_leg.faults = []
    server_leg.handshake_done["server"] = True
    assert "interception-server-aborted" not in [x.code for x in diagnose(h)]
    server_leg.handshake_done["server"] = False
    server_leg.alerts = [alert("client", 3, fatal_80)]
    assert "interception-server-aborted" not in [x.code for x in diagnose(h)]
