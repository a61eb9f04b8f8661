"""`tlsinspector analyze --hex` and `tlsinspector replay`: report 003 end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_hello import WOLFSSL_REPORT_003
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.peers import start_server

BIN = Path(sys.executable).parent / "tlsinspector"
REPORT_003 = Path(__file__).parent / "fixtures" / "report_003.txt"
ECDHE_SUITES_003 = [
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA", "TLS_ECDHE_ECDSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA", "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA"]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=60,
                          input=stdin)


def events(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_report_003_as_pasted_decodes_and_diagnoses(tmp_path: Path) -> None:
    log = tmp_path / "out.jsonl"
    res = run("analyze", "--hex", str(REPORT_003), "--log", str(log))
    assert res.returncode == 0, res.stderr
    evs = events(log)
    records = [e for e in evs if e["event"] == "record"]
    assert [(r["from"], r["content_type"]) for r in records] == [("client", "handshake"),
                                                                 ("server", "alert")]
    (ch,) = records[0]["messages"]
    assert ch["type"] == "client_hello" and ch["legacy_version"] == "0x0303"
    assert ch["cipher_suites"] == ECDHE_SUITES_003
    assert [x["type"] for x in ch["extensions"]] == ["signature_algorithms"]
    assert "supported_groups" not in ch and "sni" not in ch
    assert records[0]["source"] == {"lines": [5, 10]}
    assert records[1]["alert"] == {"level": "fatal", "description": "handshake_failure",
                                   "code": 40}
    close = evs[-1]
    assert close["event"] == "close"
    codes = [d["code"] for d in close["diagnosis"]]
    assert codes[:2] == ["missing-supported-groups", "missing-sni"]
    refs = {d["code"]: d["reference"] for d in close["diagnosis"]}
    assert "RFC 8422" in refs["missing-supported-groups"] and "RFC 6066" in refs["missing-sni"]
    # The terminal: the same view as the live proxy, the suites by name, the guesses said.
    out = res.stdout
    assert "C->S #1 handshake 0x0303 len=79 | client_hello" in out
    assert "S->C #1 alert 0x0303 len=2 | ALERT fatal handshake_failure (40)" in out
    assert all(s in out for s in ECDHE_SUITES_003)
    assert "supported_groups: absent" in out and "server_name: absent" in out
    assert "lines 5-10: 84 bytes from the client (guessed: starts with a ClientHello)" in out
    assert "diagnosis missing-supported-groups" in out and "diagnosis missing-sni" in out


def test_hex_from_stdin_quiet_prints_the_diagnosis() -> None:
    res = run("analyze", "--hex", "-", "--quiet", stdin=REPORT_003.read_text())
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert [x.split(":")[0] for x in lines] == ["diagnosis missing-supported-groups",
                                                "diagnosis missing-sni"]


@pytest.mark.parametrize("content,message", [
    (b"just words, no bytes\n", "no hex bytes found"),
    (b"16 03 03 00 4f 01 00 \xe2\x80\x9czz\xe2\x80\x9d 4b\n", "is not a hex byte"),
    (b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00" + bytes(16), "binary file, not a hex dump"),
])
def test_bad_hex_input_exits_2_with_a_message(tmp_path: Path, content: bytes,
                                              message: str) -> None:
    f = tmp_path / "in.txt"
    f.write_bytes(content)
    res = run("analyze", "--hex", str(f))
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr


def test_missing_file_and_no_input_are_usage_errors(tmp_path: Path) -> None:
    res = run("analyze", "--hex", str(tmp_path / "nope.txt"))
    assert res.returncode == 2 and "cannot read" in res.stderr and "Traceback" not in res.stderr
    res = run("analyze")
    assert res.returncode == 2 and "CAPTURE" in res.stderr


def test_replay_to_ecdhe_only_go_server_gets_the_reports_alert(certs: Certs,
                                                               tmp_path: Path) -> None:
    log = tmp_path / "replay.jsonl"
    with start_server("go", certs, tls="1.2", ecdhe_only=True, log_dir=tmp_path) as srv:
        res = run("replay", "--hex", str(REPORT_003), "--server", srv.addr,
                  "--log", str(log))
    assert res.returncode == 0, res.stderr
    assert "server answered 7 bytes: 15 03 03 00 02 02 28\n" in res.stdout
    evs = events(log)
    sent = next(e for e in evs if e["event"] == "record" and e["from"] == "client")
    assert sent["source"] == {"replayed": len(WOLFSSL_REPORT_003)}
    codes = [d["code"] for d in evs[-1]["diagnosis"]]
    assert "missing-supported-groups" in codes and "missing-sni" in codes


def test_replay_to_a_server_that_accepts_gets_a_server_hello(certs: Certs,
                                                            tmp_path: Path) -> None:
    # GnuTLS with an RSA certificate takes ECDHE_RSA without supported_groups (RFC
    # 8422 4 lets it assume a curve); OpenSSL 3.0 and Go refuse ("no shared cipher").
    log = tmp_path / "replay.jsonl"
    with start_server("gnutls", certs, tls="1.2", log_dir=tmp_path) as srv:
        res = run("replay", "--hex", str(REPORT_003), "--server", srv.addr,
                  "--log", str(log), "--timeout", "20")
    assert res.returncode == 0, res.stderr
    assert "server answered" in res.stdout and "16 03 03" in res.stdout
    evs = events(log)
    types = [m["type"] for e in evs if e["event"] == "record" and e["from"] == "server"
             for m in e.get("messages", ())]
    assert types[0] == "server_hello" and "server_hello_done" in types
    sh = next(m for e in evs if e["event"] == "record"
              for m in e.get("messages", ()) if m["type"] == "server_hello")
    assert sh["cipher_suite"].startswith("TLS_ECDHE_RSA_")


def test_replay_to_nothing_listening_exits_2(tmp_path: Path) -> None:
    from tlsinspector.lab.peers import free_port

    res = run("replay", "--hex", str(REPORT_003), "--server", f"127.0.0.1:{free_port()}")
    assert res.returncode == 2 and "cannot connect" in res.stderr
    assert "Traceback" not in res.stderr


def test_replay_from_a_jsonl_log_says_to_use_the_runs_pcap(tmp_path: Path) -> None:
    """A log keeps a hello's decoded fields, not its bytes: refused with the way out."""
    log = tmp_path / "run.jsonl"
    res = run("analyze", "--hex", str(REPORT_003), "--log", str(log), "--quiet")
    assert res.returncode == 0 and log.read_text().startswith('{"event"')
    for conn in (["--conn", "1"], []):  # without --conn too (it said "give --hex FILE, ...")
        res = run("replay", str(log), *conn, "--server", "127.0.0.1:9")
        assert res.returncode == 2 and "Traceback" not in res.stderr
        assert "is a JSON Lines log" in res.stderr and "--pcap" in res.stderr


def draft_only_hello() -> bytes:
    """A ClientHello as a 2018 pre-release client sent it: supported_versions lists
    only TLS 1.3 drafts 28 and 23 (0x7f1c, 0x7f17), x25519, SNI localhost."""
    def ext(t: int, body: bytes) -> bytes:
        return t.to_bytes(2, "big") + len(body).to_bytes(2, "big") + body
    name = b"localhost"
    exts = (ext(0, (len(name) + 3).to_bytes(2, "big") + b"\x00"
                + len(name).to_bytes(2, "big") + name)
            + ext(43, bytes.fromhex("047f1c7f17")) + ext(10, bytes.fromhex("0002001d"))
            + ext(51, bytes.fromhex("0024001d0020") + bytes(range(32)))
            + ext(13, bytes.fromhex("000404030804")))
    body = (b"\x03\x03" + bytes(32) + b"\x00" + bytes.fromhex("00041301c02f") + b"\x01\x00"
            + len(exts).to_bytes(2, "big") + exts)
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs


def test_a_hello_of_only_tls13_drafts_is_named_and_diagnosed(certs: Certs,
                                                             tmp_path: Path) -> None:
    # 0x7f1c printed raw ("versions=['0x7f1c', '0x7f17']"), and the refusal read "the
    # client is too old": it offered only pre-standard TLS 1.3, which OpenSSL 3 refuses
    # with protocol_version.
    hexfile, log = tmp_path / "draft.txt", tmp_path / "replay.jsonl"
    hexfile.write_text("client:\n" + draft_only_hello().hex(" ") + "\n")
    with start_server("openssl", certs, log_dir=tmp_path) as srv:
        res = run("replay", "--hex", str(hexfile), "--server", srv.addr, "--log", str(log))
    assert res.returncode == 0, res.stderr
    assert "versions=['0x7f1c (TLSv1.3-draft28)', '0x7f17 (TLSv1.3-draft23)']" in res.stdout
    assert "supported_versions: 0x7f1c (TLSv1.3-draft28), 0x7f17 (TLSv1.3-draft23)" \
        in res.stdout
    [found] = [d for d in events(log)[-1]["diagnosis"] if d["code"] == "protocol-version"]
    assert found["summary"].startswith("the client offered only pre-standard TLS 1.3 drafts "
                                       "(TLSv1.3-draft28, TLSv1.3-draft23)")
    assert "too old" not in found["summary"]
    assert ("client record 1: ClientHello, record version 0x0301, legacy_version 0x0303, "
            "supported_versions [0x7f1c (TLSv1.3-draft28), 0x7f17 (TLSv1.3-draft23)]"
            in found["evidence"])
    # The JSONL log keeps the stable hex strings.
    ch = next(e for e in events(log) if e["event"] == "record")["messages"][0]
    assert ch["supported_versions"] == ["0x7f1c", "0x7f17"]


def test_file_names_are_escaped_in_errors(tmp_path: Path) -> None:
    """A customer's attachment name may hold ESC: every error that names a path
    escapes it, as check does for scenario files (before: written raw to stderr)."""
    evil = tmp_path / "report\x1b]0;T\x07\x1b[2J.txt"
    evil.write_bytes(REPORT_003.read_bytes())
    gone = str(tmp_path / "no\x1b[2Jdir" / "x")
    log = tmp_path / "ok.jsonl"
    assert run("analyze", "--hex", str(REPORT_003), "--log", str(log)).returncode == 0
    for res in (run("analyze", str(evil)),                      # text, not a capture
                run("analyze", "--hex", gone),                  # cannot read
                run("analyze", "--hex", str(evil), "--log", gone + ".jsonl"),
                run("report", gone + ".jsonl", "-o", str(tmp_path / "r.html")),
                run("report", str(log), "-o", gone + ".html"),
                run("run", "--listen", "127.0.0.1:1", "--upstream", "127.0.0.1:1",
                    "--keylog", gone + "/keys.log")):
        assert res.returncode == 2, res.stderr
        assert "\x1b" not in res.stderr and "\x07" not in res.stderr, res.stderr
        assert "\\x1b" in res.stderr, res.stderr


def test_analyze_log_is_opened_like_run_log(tmp_path: Path) -> None:
    """analyze --log refuses a symlink (its target untouched) and a FIFO (before: the
    target was appended to, and a FIFO hung until the timeout)."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "out.jsonl"
    link.symlink_to(victim)
    res = run("analyze", "--hex", str(REPORT_003), "--log", str(link))
    assert res.returncode == 2 and "is a symbolic link" in res.stderr, res.stderr
    assert victim.read_text() == "precious\n"
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    res = run("analyze", "--hex", str(REPORT_003), "--log", str(fifo))
    assert res.returncode == 2 and "FIFO" in res.stderr, res.stderr


@pytest.mark.parametrize("label", ["server:", "Here is the received message;"])
def test_a_pasted_plaintext_answer_is_non_tls_not_a_silent_server(tmp_path: Path,
                                                                  label: str) -> None:
    """Report 003's hello, then the server's answer pasted as hex: a plain 'HTTP/1.1 400'
    (what a Go client reports as 'first record does not look like a TLS handshake').
    Before, that run was skipped as 'no TLS record' and the diagnosis was no-server-hello,
    'the client gave up first (a timeout?)'; live and from a capture it is non-tls-bytes."""
    answer = " ".join(f"{b:02x}" for b in b"HTTP/1.1 400 Bad Request\r\n\r\n")
    hexfile = tmp_path / "paste.txt"
    hexfile.write_text(REPORT_003.read_text().split("Here is the received message")[0]
                       + f"\n{label}\n\n{answer}\n")
    log = tmp_path / "out.jsonl"
    res = run("analyze", "--hex", str(hexfile), "--log", str(log))
    assert res.returncode == 0, res.stderr
    evs = events(log)
    assert [(e["from"], e["length"]) for e in evs if e["event"] == "non_tls"] == [("server", 28)]
    [close] = [e for e in evs if e["event"] == "close"]
    codes = [d["code"] for d in close["diagnosis"]]
    assert codes[0] == "non-tls-bytes" and "no-server-hello" not in codes, codes
