"""The README's JSON Lines schema is the log's: every field a real log has is
documented, and every documented field shows up in a real log (or is listed
below as rare, with the reason and the test that produces it).

The log comes from real peers: a scenario with a fault between an OpenSSL
server and the Python and curl clients (handshakes both ways, an alert, a
fault, a diagnosis), plaintext sent to a TLS server (non_tls), and an
unreachable upstream (error).
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.proxyproc import Proxy, free_port
from tlsinspector import CONFIGS
from tlsinspector.lab.reproduce import reproduce
from tlsinspector.lab.tlsserver import HelloServer

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()

#: Fields whose value is data with its own shape, not schema: not descended into.
OPAQUE = {"value": "an extension's decoded body, shaped by the extension",
          "detail": "a fault's before/after values, shaped by the action"}

#: Documented fields this test's connections do not produce, and why.
RARE: dict[str, dict[str, str]] = {
    "record": {
        "records": "a handshake message spanning records (test_engine, handshake-fragmented)",
        "unparsed": "a record cut short at close or a hello that does not decode "
                    "(test_engine, test_diagnosis)",
        "fragment": "a handshake message continued in a later record (handshake-fragmented)",
        "have": "inside fragment", "want": "inside fragment",
        "note": "an encrypted handshake record after the handshake (renegotiation)",
        "held": "only while a hello-rewriting fault waits for the whole hello (strip-sni)",
        "oversized": "a record longer than RFC 8446 5.1 allows (test_engine_fuzz)",
        "record_size_limit": "offered by NSS/Firefox, not by the test's clients",
        "pre_shared_key": "session resumption (TLS 1.3 PSK)",
        "status_request": "OCSP stapling requests (curl --cert-status)",
        "trailing_bytes": "bytes after a hello's last field (test_hello)",
        "decrypted": "with --keylog only (tests/test_keys_live.py)",
        "status": "with --keylog only (tests/test_keys_live.py)",
        "reason": "with --keylog only (tests/test_keys_live.py)",
        "inner_type": "with --keylog only (tests/test_keys_live.py)",
        "epoch": "with --keylog only (tests/test_keys_live.py)",
        "seq": "with --keylog only (tests/test_keys_live.py)",
        "san_total": "a certificate with more than 50 names (test_engine_keys)",
        "error": "a certificate that does not parse (test_protected_messages)",
        "certificate_types": "a TLS 1.2 CertificateRequest (client certificates: "
                             "test_engine, in_the_clear)",
        "certificate_authorities": "a TLS 1.2 CertificateRequest (test_engine, in_the_clear)",
        "lifetime_hint": "a TLS 1.2 NewSessionTicket in the clear (test_engine, in_the_clear)",
        "ticket_length": "a NewSessionTicket (test_engine, in_the_clear)",
        "record_count": "a handshake message spanning more than 1024 records (test_handshake)",
        "cipher_suites_count": "a hello offering more than 512 suites (test_handshake)",
        "after_plaintext": "a side's first record after STARTTLS (test_starttls_real)",
        "undelivered": "sent after a fault closed the stream toward the receiver (test_faults)",
    },
    "plaintext": {"*": "STARTTLS protocols before TLS (tests/test_starttls_real.py, "
                       "test_plaintext.py)"},
    "non_tls": {"preview": "only with --log-preview (test_security)",
                "undelivered": "sent after a fault closed the stream toward the receiver "
                               "(test_faults)"},
    "error": {"kind": "fd_limit only near the open-file limit (test_limits)"},
    "close": {"reason": "only when the proxy closed on its own: --idle-timeout (test_limits)",
              "held": "only when a delay still held bytes at the close (test_inspector_basic, "
                      "test_inspector_layer)"},
    "note": {"note": "run --keylog when a connection's keys never arrive (test_cli_flags, "
                     "test_engine_keys); analyze without a SYN (test_offline)"},
    "intercept": {"*": "run --intercept only (tests/test_intercept.py validates its logs)"},
    "analyze": {"*": "offline commands only (tests/test_offline.py, test_capture.py)"},
    "replay": {"*": "offline commands only (tests/test_offline.py)"},
    "decrypted": {"*": "keys that arrive after their records, with --keylog only "
                        "(tests/test_keys_live.py)"},
    "fragments": {"*": "runs of tiny handshake fragments (test_handshake, handshake-fragmented)"},
    "repeated": {"*": "floods of identical tiny records (test_handshake)"},
    "held_limit": {"*": "only when --max-held bites (test_limits)"},
    "timer": {"*": "only for after_ms / idle_ms faults (test_match_keys, the "
                   "lb-idle-timeout scenarios in test_scenarios_e2e)"},
    "released": {"*": "records a fault that needs keys held for them (test_engine_keyhold, "
                      "test_keyhold_live)"},
    "log_gap": {"*": "only after the log was unwritable (test_reliability's disk-full test)"},
    "internal_error": {"*": "only when the engine itself fails (test_engine, "
                            "test_inspector_layer plant the failure)"},
}


def documented() -> tuple[set[str], dict[str, set[str]]]:
    """(fields every event has, {event: its fields}) from the README's section."""
    section = README.split("## The JSON Lines log", 1)[1].split("\n## ", 1)[0]
    intro, *bullets = re.split(r"\n- ", section)
    common = set(re.findall(r"`(\w+)`", intro.split("every event", 1)[1]))
    events: dict[str, set[str]] = {}
    for bullet in bullets:
        head, _, body = bullet.partition(":")
        body = body.split("\n\n", 1)[0]  # the bullet ends at the paragraph break
        names = set(re.findall(r"`(\w+)`", body))
        for braces in re.findall(r"\{([^}]*)\}", body):
            names |= {n.strip() for n in braces.split(",")}
        for event in re.findall(r"`(\w+)`", head):
            events[event] = names
    return common, events


def keys(value: Any) -> set[str]:
    """Every key at any depth (inside lists too), not descending into OPAQUE ones."""
    found: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            found.add(k)
            if k not in OPAQUE:
                found |= keys(v)
    elif isinstance(value, list):
        for v in value:
            found |= keys(v)
    return found


@pytest.fixture(scope="module")
def log_events(tmp_path_factory: pytest.TempPathFactory, certs: Any) -> list[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("schema")
    verdicts = reproduce(CONFIGS / "record-version-3030.yaml", ["python", "curl"],
                         out_dir=tmp / "fault", certs=certs)
    assert all(v.reproduced for v in verdicts), [v.differences for v in verdicts]
    events = [e for v in verdicts for e in v.events]
    server = HelloServer(certs.server_cert, certs.server_key)
    server.start()
    try:
        with Proxy(f"127.0.0.1:{server.port}", tmp / "plain.jsonl") as proxy:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
                s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                s.recv(4096)
            # A fatal handshake_failure alert record (RFC 8446 6): the record event's
            # alert fields, whatever the real clients above happened to send.
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
                s.sendall(bytes.fromhex("15030300020228"))
                s.shutdown(socket.SHUT_WR)
                while s.recv(4096):
                    pass
            events += proxy.wait_closes(2)
    finally:
        server.close()
    with Proxy(f"127.0.0.1:{free_port()}", tmp / "down.jsonl") as proxy:
        # mitmproxy picks the layer on the first bytes: send the start of a record.
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(b"\x16\x03\x01")
            assert s.recv(64) == b""  # the proxy closes: nothing to relay to
        events += proxy.wait_closes(1)
    return events


def test_readme_schema_parses() -> None:
    common, events = documented()
    assert common == {"event", "ts", "conn"}
    assert {"connect", "record", "non_tls", "error", "log_gap", "close"} <= set(events)
    assert {"from", "messages", "ja4", "cipher_suite", "have", "level"} <= events["record"]
    assert events["close"] >= {"by", "sni", "client", "server", "code", "evidence"}


def test_every_logged_field_is_documented_and_every_documented_one_logged(
        log_events: list[dict[str, Any]]) -> None:
    common, events = documented()
    seen: dict[str, set[str]] = {}
    for ev in log_events:
        seen.setdefault(ev["event"], set()).update(keys(ev))
    assert {"connect", "record", "close", "non_tls", "error"} <= set(seen)
    undocumented = {name: sorted(fields - common - events.get(name, set()))
                    for name, fields in seen.items()}
    assert {k: v for k, v in undocumented.items() if v} == {}
    never_seen = {}
    for name, fields in events.items():
        rare = RARE.get(name, {})
        if "*" in rare:
            continue
        missing = fields - seen.get(name, set()) - set(rare)
        if missing:
            never_seen[name] = sorted(missing)
    assert never_seen == {}
    # A rare field that the run does produce is no longer rare: take it off the list.
    assert {(n, f) for n, r in RARE.items() for f in r if f in seen.get(n, set())} == set()
