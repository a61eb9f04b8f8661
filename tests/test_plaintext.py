"""proxy/plaintext.py: the plaintext phase of STARTTLS protocols, sans-io (issue 17).

Conversations are the bytes real peers send (aiosmtpd/Postfix-style SMTP, Dovecot
IMAP and POP3, PostgreSQL 15, OpenSSL's s_client for FTP/XMPP/LDAP, MySQL 8's
greeting), fed whole, one byte at a time and with the first TLS bytes in the
same read; the switch must land on the same byte every time, and no argument
(user name, password, message text) may reach an event.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conversation import conversation
from tests.userplan import ProtocolOnlyPlan
from tlsinspector.proxy.engine import Connection, Emit, Send
from tlsinspector.proxy.faults import FaultPlanner
from tlsinspector.proxy.plaintext import PROTOCOLS, Session, detect
from tlsinspector.proxy.scenario import load_scenario_text

HELLO = b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"     # the start of a ClientHello
SHELLO = b"\x16\x03\x03\x00\x02\x02\x00"
SECRET = b"s3cret-PW"

SMTP = [
    ("server", b"220 mail.example ESMTP Postfix\r\n"),
    ("client", b"EHLO client.example\r\n"),
    ("server", b"250-mail.example\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n"),
    ("client", b"STARTTLS\r\n"),
    ("server", b"220 2.0.0 Ready to start TLS\r\n"),
    ("client", HELLO),
    ("server", SHELLO),
]
# Refused, then a client that goes on in plaintext with AUTH LOGIN and a message.
SMTP_PLAIN = [
    ("server", b"220 mail.example ESMTP\r\n"),
    ("client", b"EHLO c\r\n"),
    ("server", b"250-mail.example\r\n250-AUTH LOGIN PLAIN\r\n250 STARTTLS\r\n"),
    ("client", b"STARTTLS\r\n"),
    ("server", b"454 4.7.0 TLS not available\r\n"),
    ("client", b"AUTH LOGIN\r\n"),
    ("server", b"334 VXNlcm5hbWU6\r\n"),
    ("client", b"dXNlcg==\r\n"),
    ("server", b"334 UGFzc3dvcmQ6\r\n"),
    ("client", b"czNjcmV0LVBX\r\n"),         # base64 of the password
    ("server", b"235 2.7.0 Authentication successful\r\n"),
    ("client", b"MAIL FROM:<a@b>\r\n"),
    ("server", b"250 OK\r\n"),
    ("client", b"DATA\r\n"),
    ("server", b"354 End data with <CR><LF>.<CR><LF>\r\n"),
    ("client", b"Subject: " + SECRET + b"\r\n\r\nbody " + SECRET + b"\r\n.\r\n"),
    ("server", b"250 OK queued\r\n"),
    ("client", b"QUIT\r\n"),
]
IMAP = [
    ("server", b"* OK [CAPABILITY IMAP4rev1 SASL-IR STARTTLS LOGINDISABLED] Dovecot ready.\r\n"),
    ("client", b"a1 CAPABILITY\r\n"),
    ("server", b"* CAPABILITY IMAP4rev1 STARTTLS\r\na1 OK Pre-login capabilities listed.\r\n"),
    ("client", b"a2 STARTTLS\r\n"),
    ("server", b"a2 OK Begin TLS negotiation now.\r\n"),
    ("client", HELLO),
]
IMAP_LOGIN = [
    ("server", b"* OK IMAP4rev1 ready\r\n"),
    ("client", b"a1 LOGIN user {9}\r\n"),
    ("server", b"+ OK\r\n"),
    ("client", SECRET + b"\r\n"),
    ("server", b"a1 OK logged in\r\n"),
    ("client", b"a2 FETCH 1 BODY[]\r\n"),
    ("server", b"* 1 FETCH (BODY[] {22}\r\nLOGIN " + SECRET + b" x\r\n)\r\na2 OK\r\n"),
]
POP3 = [
    ("server", b"+OK Dovecot ready.\r\n"),
    ("client", b"CAPA\r\n"),
    ("server", b"+OK\r\nCAPA\r\nTOP\r\nSTLS\r\nUSER\r\n.\r\n"),
    ("client", b"STLS\r\n"),
    ("server", b"+OK Begin TLS negotiation now.\r\n"),
    ("client", HELLO),
]
POP3_PLAIN = [
    ("server", b"+OK ready\r\n"),
    ("client", b"USER someone\r\n"),
    ("server", b"+OK\r\n"),
    ("client", b"PASS " + SECRET + b"\r\n"),
    ("server", b"+OK logged in\r\n"),
    ("client", b"RETR 1\r\n"),
    ("server", b"+OK 20 octets\r\nPASS " + SECRET + b"\r\n.\r\n"),
]
FTP = [
    ("server", b"220 ProFTPD Server ready.\r\n"),
    ("client", b"FEAT\r\n"),
    ("server", b"211-Features:\r\n AUTH TLS\r\n PBSZ\r\n211 End\r\n"),
    ("client", b"AUTH TLS\r\n"),
    ("server", b"234 AUTH TLS successful\r\n"),
    ("client", HELLO),
]
XMPP = [
    ("client", b"<?xml version='1.0'?><stream:stream to='example.net' "
               b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"),
    ("server", b"<?xml version='1.0'?><stream:stream from='example.net' id='x'>"
               b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>"
               b"<required/></starttls></stream:features>"),
    ("client", b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
    ("server", b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
    ("client", HELLO),
]
# OpenSSL s_client -starttls ldap: ExtendedRequest 1.3.6.1.4.1.1466.20037, message 1.
LDAP_REQ = bytes.fromhex("301d02010177188016312e332e362e312e342e312e313436362e3230303337")
LDAP_OK = bytes.fromhex("300c02010178070a010004000400")
LDAP = [("client", LDAP_REQ), ("server", LDAP_OK), ("client", HELLO)]
PG = [("client", bytes.fromhex("0000000804d2162f")), ("server", b"S"), ("client", HELLO)]
PG_REFUSED = [
    ("client", bytes.fromhex("0000000804d2162f")), ("server", b"N"),
    ("client", (34).to_bytes(4, "big") + b"\x00\x03\x00\x00user\x00someone\x00database"
               b"\x00db\x00\x00"),
    ("server", b"R\x00\x00\x00\x08\x00\x00\x00\x03"),
    ("client", b"p\x00\x00\x00\x0e" + SECRET + b"\x00"),
    ("server", b"R\x00\x00\x00\x08\x00\x00\x00\x00"),
]
MYSQL_GREETING = (b"\x4a\x00\x00\x00\x0a8.0.35\x00\x08\x00\x00\x00" + b"abcdefgh" + b"\x00"
                  + b"\xff\xff" + b"\xff\x02\x00" + b"\xff\xdf" + b"\x15" + bytes(10)
                  + b"ijklmnopqrstu\x00" + b"caching_sha2_password\x00")
MYSQL_GREETING = len(MYSQL_GREETING[4:]).to_bytes(3, "little") + MYSQL_GREETING[3:]
MYSQL = [("server", MYSQL_GREETING),
         ("client", b"\x20\x00\x00\x01" + (0x0008AA05 | 0x0800).to_bytes(4, "little")
          + bytes(28)),
         ("client", HELLO), ("server", SHELLO)]

TLS_STARTS = {  # conversation -> (protocol, plaintext bytes client, server)
    "smtp": (SMTP, "smtp"), "imap": (IMAP, "imap"), "pop3": (POP3, "pop3"),
    "ftp": (FTP, "ftp"), "xmpp": (XMPP, "xmpp"), "ldap": (LDAP, "ldap"),
    "postgres": (PG, "postgres"), "mysql": (MYSQL, "mysql"),
}


def run(conv: list[tuple[str, bytes]], chunk: int | None = None, forced: str | None = None,
        merge_tls: bool = False) -> tuple[Session, list[dict[str, Any]],
                                          dict[str, bytes], dict[str, bytes]]:
    """Feed a conversation; (session, events, forwarded plaintext, bytes for TLS) per side."""
    s = Session(forced)
    events: list[dict[str, Any]] = []
    fwd = {"client": b"", "server": b""}
    rest = {"client": b"", "server": b""}
    steps = list(conv)
    if merge_tls:  # the accept and the first TLS bytes in one read (server side)
        steps = _merged(steps)
    for side, data in steps:
        pieces = [data] if chunk is None else [data[i:i + chunk]
                                               for i in range(0, len(data), chunk)]
        for piece in pieces:
            fed = s.feed(side, piece)  # type: ignore[arg-type]
            events += [u.line.to_json() for u in fed.units if u.line is not None]
            fwd[side] += fed.forward
            rest[side] += fed.rest or b""
    return s, events, fwd, rest


def _merged(conv: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    out = list(conv)
    for i in range(len(out) - 1):
        if out[i][0] == "server" and out[i + 1][0] == "server":
            out[i:i + 2] = [("server", out[i][1] + out[i + 1][1])]
            break
    return out


def test_the_registry_declares_every_protocol_once() -> None:
    assert list(PROTOCOLS) == ["smtp", "lmtp", "imap", "pop3", "ftp", "xmpp", "ldap",
                               "postgres", "mysql"]
    for spec in PROTOCOLS.values():
        assert spec.reference and spec.doc and spec.ports


def test_smtp_lines_and_the_exact_switch() -> None:
    s, events, fwd, rest = run(SMTP)
    assert s.protocol == "smtp"
    assert [e.get("verb") or e.get("status") for e in events] == [
        "220", "EHLO", "250-", "250-", "250-", "250", "STARTTLS", "220"]
    assert events[4]["words"] == ["STARTTLS"] and events[4]["starttls"] == "offered"
    # The EHLO reply's first line is the server's domain (RFC 5321 4.1.1.1): no capability.
    assert "words" not in events[2] and events[3]["words"] == ["PIPELINING"]
    assert events[6]["starttls"] == "requested" and events[7]["starttls"] == "accepted"
    # The reply's words after its enhanced status code (RFC 3463): "2.0.0" took one of
    # the four, and "TLS" was cut.
    assert events[7]["words"] == ["Ready", "to", "start", "TLS"]
    assert rest == {"client": HELLO, "server": SHELLO}
    assert fwd["client"] + rest["client"] == b"".join(d for w, d in SMTP if w == "client")
    assert s.offset == {"client": len(b"EHLO client.example\r\nSTARTTLS\r\n"),
                        "server": sum(len(d) for w, d in SMTP[:5] if w == "server")}


def test_every_protocol_switches_on_the_same_byte_whole_bytewise_and_merged() -> None:
    for name, (conv, proto) in TLS_STARTS.items():
        whole = run(conv)
        for variant in (run(conv, chunk=1), run(conv, merge_tls=True), run(conv, forced=proto)):
            assert variant[0].offset == whole[0].offset, name
            assert variant[3] == whole[3], name
            assert [e for e in variant[1]] == whole[1], name
        s, events, fwd, rest = whole
        assert s.protocol == proto, name
        assert rest["client"].startswith(HELLO), (name, rest)
        assert s.done == {"client": True, "server": True}, name
        kinds = [e.get("starttls") for e in events]
        assert "requested" in kinds, name
        assert name == "mysql" or "accepted" in kinds, name
        for side in ("client", "server"):  # nothing lost, nothing twice
            sent = b"".join(d for w, d in conv if w == side)
            assert fwd[side] + rest[side] == sent, (name, side)


def test_smtp_refused_then_plaintext_never_logs_credentials_or_mail() -> None:
    s, events, fwd, rest = run(SMTP_PLAIN)
    assert rest == {"client": b"", "server": b""}
    assert [e.get("starttls") for e in events if e.get("starttls")] == [
        "offered", "requested", "refused"]
    text = repr(events)
    for secret in (SECRET, b"czNjcmV0LVBX", b"dXNlcg==", b"VXNlcm5hbWU6", b"Subject"):
        assert secret.decode() not in text
    hidden = [e for e in events if "hidden" in e]
    assert [e["hidden"] for e in hidden] == ["credentials", "credentials", "message body"]
    verbs = [e["verb"] for e in events if "verb" in e]
    assert verbs == ["EHLO", "STARTTLS", "AUTH", "MAIL", "DATA", ".", "QUIT"]


def test_imap_literals_and_login_arguments_stay_out_of_the_log() -> None:
    s, events, _, _ = run(IMAP_LOGIN)
    assert s.protocol == "imap"
    text = repr(events)
    assert SECRET.decode() not in text and "user" not in text
    # The literal {9} (the password) belongs to the LOGIN command: one unit.
    assert [e.get("verb") for e in events if e["from"] == "client"] == ["LOGIN", "FETCH"]
    # The FETCH literal (a message with "LOGIN" in it) is one unit, not commands.
    assert len([e for e in events if e["from"] == "server"]) == 4


def test_pop3_and_postgres_credentials_and_bodies_stay_out() -> None:
    for conv in (POP3_PLAIN, PG_REFUSED):
        s, events, _, rest = run(conv)
        assert SECRET.decode() not in repr(events) and "someone" not in repr(events)
        assert rest == {"client": b"", "server": b""}
    assert [e.get("verb") for e in run(PG_REFUSED)[1] if e["from"] == "client"] == [
        "SSLRequest", "StartupMessage", "PasswordMessage"]


def test_not_a_starttls_protocol_goes_to_the_record_path_whole() -> None:
    for side, data in (("client", b"GET / HTTP/1.1\r\n\r\n"), ("server", b"SSH-2.0-x\r\n"),
                       ("client", HELLO), ("client", b"\x80\x2e\x01\x03\x01")):
        s = Session()
        fed = s.feed(side, data)  # type: ignore[arg-type]
        assert fed.rest == data and fed.forward == b"" and not fed.units
        assert not s.active
    # A few bytes are held while they could still start a PostgreSQL request.
    s = Session()
    assert s.feed("client", b"\x00\x00").rest is None
    assert s.feed("client", b"\x00\x08\x04\xd2\x16\x2f").forward == bytes.fromhex(
        "0000000804d2162f")


def test_detect_names_the_protocol_from_the_first_bytes() -> None:
    assert detect("server", b"* OK ready\r\n", True) == "imap"
    assert detect("server", b"+OK ready\r\n", True) == "pop3"
    assert detect("server", b"220 x ESMTP\r\n", True) == "smtp"
    assert detect("server", MYSQL_GREETING, True) == "mysql"
    assert detect("server", b"SSH-2.0\r\n", True) == ""
    assert detect("client", b"<?xml", False) == "xmpp"
    assert detect("client", HELLO, False) == ""
    assert Session().feed("server", b"220 ProFTPD FTP Server\r\n").units[0].line.protocol \
        == "ftp"  # type: ignore[union-attr]


def test_a_huge_line_is_cut_and_skipped_in_bounded_memory() -> None:
    s = Session()
    s.feed("server", b"220 x\r\n")
    for _ in range(100):
        fed = s.feed("client", b"A" * 4096)
        assert len(fed.forward) == 4096
    assert s.held() < 64 << 10
    fed = s.feed("client", b"tail\r\nQUIT\r\n")
    assert [u.line.verb for u in fed.units if u.line] == ["QUIT"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["client", "server"]), st.binary(max_size=64)),
                max_size=12),
       st.sampled_from([None, *PROTOCOLS]))
def test_any_bytes_are_forwarded_once_and_never_raise(
        steps: list[tuple[str, bytes]], forced: str | None) -> None:
    s = Session(forced)
    out = {"client": b"", "server": b""}
    for side, data in steps:
        fed = s.feed(side, data)  # type: ignore[arg-type]
        out[side] += fed.forward + (fed.rest or b"")
    for side in ("client", "server"):
        out[side] += s.end(side)  # type: ignore[arg-type]
        sent = b"".join(d for w, d in steps if w == side)
        assert out[side] == sent


# -- through the engine -------------------------------------------------------------


def engine_run(conv: list[tuple[str, bytes]], scenario: str | None = None
               ) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    plan = None
    if scenario is not None:
        plan = FaultPlanner([load_scenario_text(scenario)], 1, random.Random(1))
    c = Connection("1", "c:1", "s:2", faults=plan)
    outs = list(c.start(0.0))
    for side, data in conv:
        outs += c.receive(side, data, 1.0)  # type: ignore[arg-type]
    outs += c.eof("client", 2.0) + c.eof("server", 2.0) + c.finish(2.0)
    got = {"client": b"", "server": b""}
    for o in outs:
        if isinstance(o, Send):
            got[o.to] += o.data
    return [o.event for o in outs if isinstance(o, Emit)], got


def test_engine_logs_plaintext_then_records_from_the_right_byte() -> None:
    events, got = engine_run(SMTP)
    kinds = [e["event"] for e in events]
    assert kinds[:9] == ["connect"] + ["plaintext"] * 8
    records = [e for e in events if e["event"] == "record"]
    assert [(r["from"], r["index"]) for r in records] == [("client", 1), ("server", 1)]
    assert records[0]["after_plaintext"] == sum(len(d) for w, d in SMTP[:5] if w == "client")
    assert records[1]["after_plaintext"] == sum(len(d) for w, d in SMTP[:5] if w == "server")
    assert got["server"] == b"".join(d for w, d in SMTP if w == "client")
    assert got["client"] == b"".join(d for w, d in SMTP if w == "server")
    assert not [e for e in events if e["event"] == "non_tls"]


STRIP = """name: strip
description: x
faults:
  - match: {plaintext: {protocol: smtp, from: server, contains: 250-STARTTLS}}
    action: replace-text
    find: STARTTLS
    replace: XXXXXXXA
"""
REFUSE = """name: refuse
description: x
faults:
  - match: {plaintext: {from: client, contains: STARTTLS}}
    action: reply-error
"""


def test_engine_rewrites_the_capability_as_esmtp_inspection_did() -> None:
    events, got = engine_run(SMTP[:3], STRIP)
    assert b"250-XXXXXXXA\r\n" in got["client"] and b"STARTTLS" not in got["client"]
    faulted = [e for e in events if e.get("fault")]
    assert len(faulted) == 1 and faulted[0]["words"] == ["STARTTLS"]
    assert faulted[0]["fault"][0]["detail"] == {"before": "STARTTLS", "after": "XXXXXXXA"}


def test_engine_answers_starttls_itself_and_the_session_is_not_fooled() -> None:
    conv = [*SMTP[:4], ("client", b"MAIL FROM:<a@b>\r\n"), ("server", b"250 OK\r\n")]
    events, got = engine_run(conv, REFUSE)
    assert b"STARTTLS" not in got["server"]          # the server never saw it
    assert got["client"].endswith(b"454 4.7.0 TLS not available due to temporary reason"
                                  b"\r\n250 OK\r\n")
    # The server's 250 answers MAIL, not STARTTLS: the connection stays plaintext.
    assert [e.get("starttls") for e in events if e["event"] == "plaintext"
            and e.get("starttls") in ("accepted", "refused")] == []
    assert not [e for e in events if e["event"] in ("record", "non_tls")]


def test_a_client_that_does_not_wait_for_the_greeting() -> None:
    """gnutls-cli --starttls-proto sends its first command at once."""
    for first, proto in ((b"a CAPABILITY\r\n", "imap"), (b"FEAT\r\n", "ftp"),
                         (b"EHLO x\r\n", "smtp")):
        for chunk in (None, 1):
            s, events, fwd, rest = run([("client", first)], chunk=chunk)
            assert s.protocol == proto and fwd["client"] == first and rest["client"] == b""
    for other in (b"GET / HTTP/1.1\r\n\r\n", b"SSH-2.0-OpenSSH\r\n", b"hello world\r\n"):
        for chunk in (None, 1):
            s, events, fwd, rest = run([("client", other)], chunk=chunk)
            assert rest["client"] == other and not events, other


# -- diagnosis (proxy/diagnosis.py, the STARTTLS block) ---------------------------------


def _codes(events: list[dict[str, Any]]) -> dict[str, str]:
    [close] = [e for e in events if e["event"] == "close"]
    return {d["code"]: d["summary"] for d in close["diagnosis"]}


def test_diagnosis_refused_then_plaintext_says_so_loudly() -> None:
    found = _codes(engine_run(SMTP_PLAIN)[0])
    assert set(found) == {"starttls-refused"}
    assert "refused by the server" in found["starttls-refused"]
    assert "IN PLAINTEXT" in found["starttls-refused"]


def test_diagnosis_offered_but_not_used() -> None:
    conv = [*SMTP[:3], ("client", b"AUTH PLAIN AHVzZXIAczNjcmV0\r\n"),
            ("server", b"235 ok\r\n"), ("client", b"MAIL FROM:<a@b>\r\n")]
    found = _codes(engine_run(conv)[0])
    assert list(found) == ["starttls-not-used"]
    assert found["starttls-not-used"].startswith("PLAINTEXT SESSION")
    assert "credentials included" in found["starttls-not-used"]
    # Negotiated normally: no STARTTLS finding at all.
    assert not [c for c in _codes(engine_run(SMTP)[0]) if c.startswith("starttls")]


def test_diagnosis_names_a_masked_capability_and_the_proxys_own_rewrite() -> None:
    masked = [SMTP[0], SMTP[1], ("server", b"250-mail\r\n250-XXXXXXXA\r\n250 8BITMIME\r\n"),
              ("client", b"MAIL FROM:<a@b>\r\n")]
    found = _codes(engine_run(masked)[0])
    assert "middlebox" in found["starttls-capability-altered"]
    events = engine_run(SMTP[:3], STRIP)[0]
    found = _codes(events)
    assert "proxy's own fault" in found["starttls-capability-altered"]
    assert "never asked" in found["starttls-capability-altered"]
    # The evidence names a plaintext line (no "server record 0") and the change as
    # key=value, not a Python dict.
    [close] = [e for e in events if e["event"] == "close"]
    [ev] = [d["evidence"] for d in close["diagnosis"]
            if d["code"] == "starttls-capability-altered"]
    assert "on a server plaintext line: " in ev[0] and "record 0" not in ev[0]
    assert ev[0].endswith("before=STARTTLS after=XXXXXXXA"), ev[0]
    # The line as the server wrote it: "250-STARTTLS", not "250- STARTTLS".
    assert ": 250-STARTTLS -> " in ev[0], ev[0]


def test_diagnosis_tls_on_a_starttls_port_and_the_reverse() -> None:
    events, got = engine_run([SMTP[0], ("client", HELLO), ("server", b"500 what?\r\n")])
    found = _codes(events)
    assert "implicit TLS" in found["tls-plaintext-mismatch"]
    assert got["server"] == HELLO  # forwarded as it came
    record = [e for e in events if e["event"] == "record"]
    assert record and record[0]["messages"][0]["type"] == "client_hello"
    alert = b"\x15\x03\x03\x00\x02\x02\x46"
    events, _ = engine_run([("client", b"EHLO x\r\n"), ("server", alert)])
    assert "plaintext smtp client on a TLS port" in _codes(events)["tls-plaintext-mismatch"]


def test_a_fault_after_the_tail_of_a_huge_line_still_applies() -> None:
    """A read that starts with the end of a line too long to keep (skipped, not a
    unit) and then holds the command a fault refuses: the tail goes on exactly once,
    the command is refused, and nothing else changes on the wire."""
    huge = b"NOOP " + b"A" * (20 << 10)  # over MAX_UNIT (16 KiB): cut, its rest skipped
    conv = [*SMTP[:3], ("client", huge), ("client", b"tail\r\nSTARTTLS\r\n")]
    events, got = engine_run(conv, REFUSE)
    assert got["server"] == b"".join(d for w, d in SMTP[:3] if w == "client") + huge \
        + b"tail\r\n"
    assert got["client"].endswith(b"\r\n454 4.7.0 TLS not available due to temporary "
                                  b"reason\r\n")
    [refused] = [e for e in events if e.get("fault")]
    assert refused["verb"] == "STARTTLS" and refused["fault"][0]["action"] == "reply-error"


def test_a_record_fault_changes_nothing_of_the_plaintext_log_in_any_chunking() -> None:
    """A scenario with only record faults holds no plaintext line: each line is logged
    once as it completes, whatever the reads, exactly as with no scenario at all."""
    record_only = ("name: r\ndescription: x\nfaults:\n"
                   "  - match: {from: server, index: 99}\n    action: drop\n")
    bytewise = [(w, d[i:i + 1]) for w, d in SMTP for i in range(len(d))]
    want, _ = engine_run(SMTP)
    lines = [e for e in want if e["event"] == "plaintext"]
    assert len(lines) == 8
    for conv in (SMTP, bytewise):
        events, got = engine_run(conv, record_only)
        assert got["server"] == b"".join(d for w, d in SMTP if w == "client")
        assert [{k: v for k, v in e.items() if k != "ts"} for e in events
                if e["event"] == "plaintext"] == [
            {k: v for k, v in e.items() if k != "ts"} for e in lines]


@pytest.mark.parametrize("first", [b"2", b"\x16", b"\x16\x03"])
def test_server_bytes_held_while_undetected_go_on_once_the_client_speaks_tls(
        first: bytes) -> None:
    """A server's first bytes too few to name a protocol are held; the client's
    ClientHello shows the connection is TLS: they go on then, once, before the rest,
    and count once in the close event."""
    conv = [("server", first), *conversation("1.3")]
    events, got = engine_run(conv)
    for side in ("client", "server"):
        assert got["client" if side == "server" else "server"] == b"".join(
            d for w, d in conv if w == side)
    assert events[-1]["bytes"]["server"] == sum(len(d) for w, d in conv if w == "server")


def test_a_starttls_request_rewritten_but_delivered_is_still_answered() -> None:
    """A fault that changes the client's STARTTLS line but still delivers a request
    (here in lower case, which SMTP verbs allow: RFC 5321 2.4): the server's 220
    accepts it and the records follow from the right byte, as with no fault."""
    lower = ("name: case\ndescription: x\nfaults:\n"
             "  - match: {plaintext: {from: client, contains: STARTTLS}}\n"
             "    action: replace-text\n    find: STARTTLS\n    replace: starttls\n")
    want, _ = engine_run(SMTP)
    events, got = engine_run(SMTP, lower)
    assert b"starttls\r\n" in got["server"]

    def shape(evs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(e["event"], e.get("verb"), e.get("status"), e.get("starttls"),
                 e.get("after_plaintext")) for e in evs]
    assert shape(events) == shape(want)
    assert ("plaintext", None, "220", "accepted", None) in shape(events)


class _RecordsOnlyPlan(ProtocolOnlyPlan):
    """A fault plan of a user's own (engine.FaultPlan, the protocol alone): without
    wants_plaintext it never asks for plaintext lines to be held."""

    def on_plaintext(self, unit: Any, number: int) -> None:
        raise AssertionError("no plaintext line is held for this plan")


def test_a_plan_without_wants_plaintext_holds_no_plaintext() -> None:
    c = Connection("1", "c:1", "s:2", faults=_RecordsOnlyPlan())  # type: ignore[arg-type]
    c.start(0.0)
    for side, data in SMTP[:4]:
        cut = len(data) // 2  # half a line goes on at once: nothing waits for its end
        for part in (data[:cut], data[cut:]):
            sent = c.receive(side, part, 1.0)  # type: ignore[arg-type]
            assert b"".join(o.data for o in sent if isinstance(o, Send)) == part


def test_a_plaintext_fault_with_times_applies_that_many_times() -> None:
    """`times: 1` on a plaintext match: the first EHLO's reply line is rewritten, the
    same line in the reply to a second EHLO is not."""
    once = ("name: once\ndescription: x\nfaults:\n"
            "  - match: {plaintext: {from: server, contains: 250-STARTTLS}, times: 1}\n"
            "    action: replace-text\n    find: STARTTLS\n    replace: XXXXXXXA\n")
    reply = b"250-mail.example\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
    conv = [SMTP[0], ("client", b"EHLO a\r\n"), ("server", reply),
            ("client", b"EHLO b\r\n"), ("server", reply)]
    events, got = engine_run(conv, once)
    assert got["client"].count(b"250-XXXXXXXA\r\n") == 1
    assert got["client"].endswith(reply)
    assert len([e for e in events if e.get("fault")]) == 1


def test_a_plaintext_match_from_the_server_never_touches_the_clients_lines() -> None:
    # `from: server`: the server's 250-STARTTLS capability is rewritten; the client's
    # own STARTTLS command, which contains the same word, is not.
    server_only = ("name: s\ndescription: x\nfaults:\n"
                   "  - match: {plaintext: {from: server, contains: STARTTLS}}\n"
                   "    action: replace-text\n    find: STARTTLS\n    replace: XXXXXXXA\n")
    events, got = engine_run(SMTP[:4], server_only)
    assert b"250-XXXXXXXA\r\n" in got["client"]
    assert got["server"].endswith(b"\r\nSTARTTLS\r\n")
    assert [e["status"] for e in events if e.get("fault")] == ["250-"]


def test_a_plaintext_match_on_one_protocol_never_touches_another() -> None:
    # `protocol: smtp` leaves an IMAP session alone; `protocol: imap` refuses its
    # STARTTLS in IMAP's own words (RFC 9051 6.2.1: a tagged NO).
    refuse = ("name: r\ndescription: x\nfaults:\n"
              "  - match: {plaintext: {protocol: %s, from: client, contains: STARTTLS}}\n"
              "    action: reply-error\n")
    conv = IMAP[:4]
    _, got = engine_run(conv, refuse % "smtp")
    assert got["server"] == b"".join(d for w, d in conv if w == "client")
    events, got = engine_run(conv, refuse % "imap")
    assert got["client"].endswith(b"a2 NO [UNAVAILABLE] STARTTLS not available\r\n")
    assert b"STARTTLS\r\n" not in got["server"]


def test_bytes_held_while_the_other_side_names_the_protocol_are_forwarded() -> None:
    """Hypothesis found it: a server byte held during detection, then a client '<'
    that names XMPP; the server's byte was treated as already forwarded and lost."""
    s = Session(None)
    assert s.feed("server", b"\x00").forward == b""
    assert s.feed("client", b"<").forward == b"<"
    assert s.end("server") == b"\x00"
    s = Session(None)
    s.feed("server", b"\x00")
    s.feed("client", b"<")
    fed = s.feed("server", b"\x01")
    assert fed.forward + (fed.rest or b"") + s.end("server") == b"\x00\x01"


def test_plaintext_times_counts_one_per_line_and_probability_is_drawn() -> None:
    """`times: 2` rewrites the first two of three matching lines; `probability: 0.999`
    (seeded) applies a plaintext fault as it does a record's (a draw below p)."""
    reply = b"250-mail.example\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
    conv = [SMTP[0]] + [x for n in "abc" for x in (("client", f"EHLO {n}\r\n".encode()),
                                                    ("server", reply))]
    fault = ("name: t\nfaults:\n  - match: {plaintext: {from: server, contains: "
             "250-STARTTLS}, %s}\n    action: replace-text\n    find: STARTTLS\n"
             "    replace: XXXXXXXA\n")
    _, got = engine_run(conv, fault % "times: 2")
    assert got["client"].count(b"250-XXXXXXXA\r\n") == 2
    _, got = engine_run(conv, fault % "probability: 0.999")
    assert got["client"].count(b"250-XXXXXXXA\r\n") == 3


def test_faults_after_a_dropped_line_are_not_consulted_not_even_drawn() -> None:
    """Faults apply in order to what the previous ones left; a dropped line leaves
    nothing, so the faults after the drop are not consulted for it: a probability
    fault draws nothing there, wherever it is in the list (the first fault after the
    drop used to draw, the later ones not). Its first draw (random.Random(1): 0.134,
    below 0.5) is for the next line it matches, which it rewrites (the second draw,
    0.847, would not)."""
    conv = [SMTP[0], ("client", b"EHLO a\r\n"), ("server", b"250 mail.example\r\n"),
            ("client", b"EHLO b\r\n"), ("server", b"250 mail.example\r\n")]
    scenario = ("name: t\nfaults:\n"
                "  - match: {plaintext: {from: client, contains: EHLO a}}\n"
                "    action: drop-line\n"
                "  - match: {plaintext: {from: client, contains: EHLO}, probability: 0.5}\n"
                "    action: replace-text\n    find: EHLO\n    replace: HELO\n")
    events, got = engine_run(conv, scenario)
    assert got["server"] == b"HELO b\r\n"
    assert [f["action"] for e in events for f in e.get("fault", [])] == [
        "drop-line", "replace-text"]


def test_only_a_plaintext_fault_that_never_matched_its_protocols_lines_is_reported() -> None:
    """fault-not-applied names the plaintext fault that saw smtp lines and matched none;
    the one that fired is not named, and on a connection with no plaintext phase (TLS
    from the first byte) neither could have applied, so neither is."""
    scenario = ("name: t\nfaults:\n"
                "  - match: {plaintext: {from: server, contains: 250-STARTTLS}}\n"
                "    action: replace-text\n    find: STARTTLS\n    replace: XXXXXXXA\n"
                "  - match: {plaintext: {from: client, contains: NOPE}}\n"
                "    action: drop-line\n")

    def not_applied(conv: list[tuple[str, bytes]]) -> list[str]:
        events, _ = engine_run(conv, scenario)
        [close] = [e for e in events if e["event"] == "close"]
        return [x for d in close["diagnosis"] if d["code"] == "fault-not-applied"
                for x in d["evidence"]]

    assert not_applied(SMTP[:4]) == [
        "t fault #2 (drop-line, <string>:7): never matched a smtp line"]
    assert not_applied(conversation("1.3")[:2]) == []
