"""proxy/render.py: the terminal view escapes every byte a peer controls (issue 12, item 3).

An SNI with a newline once forged a whole "[1] close by client" line, and ESC
sequences, BEL, NUL, CR and backspace reached the terminal. Checked at unit
level and live: a raw ClientHello built with the project's own codec, carrying
such an SNI and ALPN, sent over a socket through a running proxy, and a SOCKS5
request for such a host name.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from tlsinspector.lab.certs import Certs
from tlsinspector.lab.inspector import InspectorProcess
from tlsinspector.lab.peers import start_server
from tlsinspector.proxy.handshake import CLIENT_HELLO, encode_message
from tlsinspector.proxy.hello import ClientHello, Extension
from tlsinspector.proxy.render import escape, line

EVIL_SNI = b"ok\x1b]0;pwned\x07\x1b[2J\r\n[1] close by client: forged\x00\x08x"
EVIL_ALPN = b"h2\x1b[31m\nred"
SAFE_SNI = r"ok\x1b]0;pwned\x07\x1b[2J\x0d\x0a[1] close by client: forged\x00\x08x"
SAFE_ALPN = r"h2\x1b[31m\x0ared"
CONTROL = {chr(c) for c in range(32)} - {"\n"} | {"\x7f"}


def evil_hello() -> bytes:
    name = b"\x00" + len(EVIL_SNI).to_bytes(2, "big") + EVIL_SNI
    alpn = bytes((len(EVIL_ALPN),)) + EVIL_ALPN
    hello = ClientHello(0x0303, bytes(32), b"", (0x1301,), b"\x00", (
        Extension(0, len(name).to_bytes(2, "big") + name),
        Extension(16, len(alpn).to_bytes(2, "big") + alpn)))
    msg = encode_message(CLIENT_HELLO, hello.encode())
    return b"\x16\x03\x01" + len(msg).to_bytes(2, "big") + msg


def test_escape() -> None:
    assert escape("plain.example:443") == "plain.example:443"
    assert escape("a\x1b[2J\r\n\x00\x07\x08\x7f\\b") == r"a\x1b[2J\x0d\x0a\x00\x07\x08\x7f\\b"
    assert escape("\u202eevil\x9b") == r"\u202eevil\x9b"


def test_record_line_with_hostile_sni_and_alpn_unit() -> None:
    ev = {"event": "record", "conn": "1", "from": "client", "index": 1,
          "content_type": "handshake", "version": "0x0301", "length": 90, "encrypted": False,
          "messages": [{"type": "client_hello", "length": 86, "legacy_version": "0x0303",
                        "sni": EVIL_SNI.decode(), "alpn": [EVIL_ALPN.decode()],
                        "cipher_suites": ["TLS_AES_128_GCM_SHA256"],
                        "extensions": [{"type": "server_name"}], "ja4": "t00i"}]}
    assert line(ev) == (
        "[1] C->S #1 handshake 0x0301 len=90 | client_hello legacy_version=0x0303 "
        f"sni={SAFE_SNI} alpn={SAFE_ALPN} suites=1 groups=- exts=server_name ja4=t00i")



def test_a_malformed_server_name_is_null_in_the_log_and_said_on_the_line(
        tmp_path: Path) -> None:
    """An empty server_name body: its parse error stays in the extension's entry; the
    hello has no sni (a string in docs/events.schema.json: it was the error object),
    the close's is null, and the line says malformed (it printed the error dict)."""
    from dataclasses import replace as dc_replace

    from tests.events_schema import log_problems
    from tests.test_diagnosis import OPENSSL_TLS12
    from tlsinspector.proxy.engine import Connection, Emit
    from tlsinspector.proxy.handshake import CLIENT_HELLO, encode_message
    from tlsinspector.proxy.hello import Extension, parse_client_hello

    body = OPENSSL_TLS12[9:]
    ch = parse_client_hello(body)
    assert ch.extensions is not None
    exts = tuple(Extension(0, b"") if e.type == 0 else e for e in ch.extensions)
    if not any(e.type == 0 for e in exts):
        exts = (Extension(0, b""), *exts)
    msg = encode_message(CLIENT_HELLO, dc_replace(ch, extensions=exts).encode())
    record = bytes([22, 3, 1]) + len(msg).to_bytes(2, "big") + msg
    c = Connection("1", "c:1", "s:2")
    evs = [o.event for o in [*c.receive("client", record, 1.0), *c.finish(2.0)]
           if isinstance(o, Emit)]
    [hello] = [e["messages"][0] for e in evs if e["event"] == "record"]
    assert "sni" not in hello
    assert [x for x in hello["extensions"] if x["type"] == "server_name"][0]["value"]["error"]
    assert [e["sni"] for e in evs if e["event"] == "close"] == [None]
    log = tmp_path / "sni.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for e in evs))
    assert log_problems(log) == []
    [rec] = [e for e in evs if e["event"] == "record"]
    assert " sni=(malformed) " in line(rec)


def test_a_fragment_whose_message_header_is_incomplete_says_so() -> None:
    # A 2-byte handshake record ("01 00": half a message header): want is null in the
    # log; the view printed "[fragment 2/None]".
    ev = {"event": "record", "conn": "1", "from": "client", "index": 1,
          "content_type": "handshake", "version": "0x0301", "length": 2, "encrypted": False,
          "fragment": {"have": 2, "want": None}}
    assert line(ev) == "[1] C->S #1 handshake 0x0301 len=2 [fragment 2/?]"
    ev["fragment"] = {"have": 2, "want": 40}
    assert line(ev).endswith("[fragment 2/40]")
    run = {"event": "fragments", "conn": "1", "from": "client", "first_index": 1,
           "last_index": 2, "count": 2, "bytes": 3, "content_type": "handshake",
           "held": False, "have": 3, "want": None}
    assert line(run).endswith("3 bytes [fragment 3/?]")

def test_connect_and_error_lines_escape_host_names() -> None:
    ev = {"event": "connect", "conn": "2", "client": "127.0.0.1:5", "mode": "socks5",
          "server": "evil\x1b[2J\r\nx:443"}
    assert line(ev) == r"[2] connect 127.0.0.1:5 -> evil\x1b[2J\x0d\x0ax:443 (socks5)"
    err = {"event": "error", "conn": "2", "message": "upstream a\nb:1 unreachable"}
    assert line(err) == r"[2] ERROR upstream a\x0ab:1 unreachable"


def _wait_for(proxy: InspectorProcess, text: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while text not in (out := proxy.output()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{text!r} not printed; output: {out[-2000:]!r}")
        time.sleep(0.02)  # polling the proxy's terminal output
    return out


def test_live_hello_with_hostile_sni_prints_one_escaped_line(tmp_path: Path,
                                                             certs: Certs) -> None:
    server = start_server("openssl", certs, log_dir=tmp_path)
    try:
        with InspectorProcess(server.addr, tmp_path / "log.jsonl") as proxy:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
                s.sendall(evil_hello())
                s.recv(4096)  # the server answers (an alert) or closes
            proxy.wait_closes(1)
            out = _wait_for(proxy, "close by")
            [ev] = [e for e in proxy.events() if e["event"] == "record" and e["from"] == "client"]
    finally:
        server.stop()
    hello = ev["messages"][0]
    assert hello["sni"] == EVIL_SNI.decode() and hello["alpn"] == [EVIL_ALPN.decode()]
    expected = (f"[1] C->S #1 handshake 0x0301 len={ev['length']} | client_hello "
                f"legacy_version=0x0303 sni={SAFE_SNI} alpn={SAFE_ALPN} suites=1 groups=- "
                f"exts=server_name,application_layer_protocol_negotiation ja4={hello['ja4']}")
    assert expected in out.splitlines()
    assert not CONTROL & set(out), [c for c in out if c in CONTROL]
    # The forged close line exists only inside the escaped SNI, never on its own.
    assert not [x for x in out.splitlines() if x.startswith("[1] close by client: forged")]
    json.dumps(ev)  # the JSONL itself stayed valid


def test_live_socks5_host_name_is_escaped(tmp_path: Path) -> None:
    host = b"evil\x1b[2J\x07\r\n[9] forged"
    with InspectorProcess("127.0.0.1:1", tmp_path / "log.jsonl",
                          extra=["--mode", "socks5"]) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(b"\x05\x01\x00")
            assert s.recv(2) == b"\x05\x00"
            s.sendall(b"\x05\x01\x00\x03" + bytes((len(host),)) + host + (443).to_bytes(2, "big"))
            # The upstream opens at once (eager connect, issue 17) and this host name
            # does not resolve: SOCKS5 "host unreachable" (RFC 1928 6), and the
            # connection is logged with the name, escaped.
            assert s.recv(10)[:2] == b"\x05\x04"
        out = _wait_for(proxy, "(socks5)")
    assert r"-> evil\x1b[2J\x07\x0d\x0a[9] forged:443 (socks5)" in out
    assert not CONTROL & set(out)
    assert not [x for x in out.splitlines() if x.startswith("[9] forged")]


def test_a_record_of_many_messages_names_the_first_and_counts_the_rest() -> None:
    # A peer's 16 KiB handshake record of zeros parses as 4096 empty hello_requests:
    # the JSONL event keeps them all, the terminal line names 16 and counts the rest.
    from tlsinspector.proxy.engine import Connection, Emit
    from tlsinspector.proxy.render import MESSAGES_SHOWN
    c = Connection("1", "127.0.0.1:1", "127.0.0.1:2")
    outs = c.receive("client", bytes.fromhex("1603014000") + bytes(16384), 1.0)
    [ev] = [o.event for o in outs if isinstance(o, Emit) and o.event["event"] == "record"]
    assert len(ev["messages"]) == 4096
    text = line(ev)
    assert text.count("hello_request(0)") == MESSAGES_SHOWN == 16
    assert text.endswith(" ; ... 4080 more messages")
    assert len(text) < 1000
    # A record of up to MESSAGES_SHOWN messages is named whole.
    few = dict(ev, messages=ev["messages"][:MESSAGES_SHOWN])
    assert "more messages" not in line(few) and line(few).count("hello_request(0)") == 16


def test_a_timer_fault_is_one_fault_line_not_raw_json() -> None:
    # lb-idle-timeout-rst printed `[1] timer {"ts": 1795923794.68, "fault": [...]}`,
    # the fallback JSON dump, where every other fault reads "| FAULT name: action".
    ev = {"event": "timer", "ts": 1.5, "conn": "1",
          "fault": [{"scenario": "lb-idle-timeout-rst", "action": "close",
                     "detail": {"idle_ms": 1000, "how": "rst", "toward": "both"},
                     "class": "transcript-safe"}]}
    assert line(ev) == ("[1] TIMER | FAULT lb-idle-timeout-rst: close "
                        "idle_ms=1000 how=rst toward=both")


def test_a_faults_detail_reads_as_key_value_pairs_not_a_python_repr() -> None:
    """`{'before': [399], 'after': 20, 'length_field': 'fixed'}` read as Python; the
    detail is key=value, lists joined by commas, tables nested in parentheses, and
    a peer's bytes in it are escaped like every other string."""
    ev = {"event": "record", "ts": 1.0, "conn": "2", "from": "client", "index": 1,
          "content_type": "handshake", "version": "0x0301", "length": 20,
          "fault": [{"scenario": "cut", "action": "truncate",
                     "detail": {"before": [399], "after": 20, "length_field": "fixed",
                                "sni": "a\x1bb", "why": {"code": 50, "names": ["x", "y"]}},
                     "class": "transcript-breaking"},
                    {"scenario": "s", "action": "drop", "class": "transcript-breaking"}]}
    text = line(ev)
    assert text.endswith(" | FAULT cut: truncate before=399 after=20 length_field=fixed "
                         "sni=a\\x1bb why=(code=50 names=x,y) | FAULT s: drop"), text
    assert "{" not in text and "'" not in text


def test_internal_errors_and_gaps_have_lines_of_their_own() -> None:
    """No raw JSON for an engine bug, a capture gap or a log gap (the fallback dump)."""
    bug = {"event": "internal_error", "ts": 1.0, "conn": "3", "side": "server",
           "error": "ValueError: \x07bad", "traceback": ["engine.py:10 f", "wire.py:3 g"],
           "action": "passthrough"}
    assert line(bug) == ("[3] INTERNAL ERROR (server): ValueError: \\x07bad; passthrough "
                         "(at engine.py:10 f,wire.py:3 g)")
    gap = {"event": "gap", "ts": 1.0, "conn": "4", "from": "client", "offset": 100,
           "missing": 1460, "note": "bytes missing from the capture"}
    assert line(gap) == ("[4] C->S GAP 1460 bytes missing at offset 100: "
                         "bytes missing from the capture")
    lost = {"event": "log_gap", "ts": 1.0, "lost_events": 7, "error": "No space left"}
    assert line(lost) == "[-] LOG GAP 7 events lost: No space left"


def test_an_alert_with_no_name_is_said_to_be_unassigned() -> None:
    """A peer's alert 255 of level 7 read "7 255 (255)"; a named one is unchanged."""
    from tlsinspector.proxy.diagnosis import _Alert

    ev = {"event": "record", "ts": 1.0, "conn": "5", "from": "server", "index": 1,
          "content_type": "alert", "version": "0x0303", "length": 2,
          "alert": {"level": "7", "description": "255", "code": 255}}
    assert line(ev).endswith(" | ALERT level 7 unassigned alert 255")
    ev["alert"] = {"level": "fatal", "description": "handshake_failure", "code": 40}
    assert line(ev).endswith(" | ALERT fatal handshake_failure (40)")
    assert _Alert("server", 1, 2, 255, 0x0303).text() == (
        "server record 1: fatal alert with the unassigned code 255")
    assert _Alert("server", 1, 2, 40, 0x0303).text() == (
        "server record 1: fatal alert handshake_failure (40)")
