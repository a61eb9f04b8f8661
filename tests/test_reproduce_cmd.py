"""reproduce --client-cmd: only the documented placeholders are substituted, by plain
string replacement (issue 12, item 6). Before, the argv went through str.format:
a JSON body or ``{0}`` was a traceback (exit 1) and ``{addr.__class__.__mro__}``
was expanded; bad quoting and a missing program were tracebacks too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tlsinspector.cli import CONFIGS
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.reproduce import ClientCommandError, client_argv, reproduce, server_name
from tlsinspector.proxy.scenario import load_scenario_text

BIN = Path(sys.executable).parent / "tlsinspector"
SUBST = {"addr": "127.0.0.1:5", "host": "127.0.0.1", "port": "5", "ca": "/ca.pem"}


@pytest.mark.parametrize(("cmd", "argv"), [
    ("curl -d '{\"a\":1}' https://{addr}/", ["curl", "-d", '{"a":1}', "https://127.0.0.1:5/"]),
    ("echo {0} {} {addr.__class__.__mro__} {addr!r} {port:>9}",
     ["echo", "{0}", "{}", "{addr.__class__.__mro__}", "{addr!r}", "{port:>9}"]),
    ("echo {host}:{port} --ca={ca} {unknown} }{", ["echo", "127.0.0.1:5", "--ca=/ca.pem",
                                                   "{unknown}", "}{"]),
    ("echo {{addr}}", ["echo", "{127.0.0.1:5}"]),
])
def test_only_documented_placeholders(cmd: str, argv: list[str]) -> None:
    assert client_argv(cmd, SUBST) == argv


def test_a_substituted_value_is_not_scanned_again() -> None:
    assert client_argv("echo {ca}", {**SUBST, "ca": "/x/{addr}"}) == ["echo", "/x/{addr}"]


@pytest.mark.parametrize(("cmd", "why"), [
    ("curl 'unbalanced", "cannot split the command: No closing quotation"),
    ("", "the command is empty"),
    ("no-such-program-tlsi --x", "program 'no-such-program-tlsi' not found"),
])
def test_bad_commands_are_exit_2(cmd: str, why: str) -> None:
    with pytest.raises(ClientCommandError, match=why):
        client_argv(cmd)
    res = subprocess.run([str(BIN), "reproduce", "record-version-3030", "--client-cmd", cmd],
                         capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert f"tlsinspector reproduce: --client-cmd: {why}" in res.stderr
    assert "Traceback" not in res.stderr


def test_live_client_cmd_gets_literal_braces(tmp_path: Path, certs: Certs) -> None:
    seen = tmp_path / "argv.json"
    script = f"import json, sys; json.dump(sys.argv[1:], open({str(seen)!r}, 'w'))"
    cmd = (f"{sys.executable} -c \"{script}\" '{{\"a\":1}}' {{0}} {{addr.__class__}} {{addr}}"
           " {name}")
    [v] = reproduce(CONFIGS / "slow-middlebox.yaml", [], client_cmd=cmd,
                    out_dir=tmp_path / "o", certs=certs, timeout=10)
    args = json.loads(seen.read_text())
    assert args[:3] == ['{"a":1}', "{0}", "{addr.__class__}"]
    assert args[3].startswith("127.0.0.1:") and args[3].split(":")[1].isdigit()
    assert args[4] == "localhost"  # the built-in server's name: SNI is never an address


def test_name_is_the_scenarios_sni_else_localhost() -> None:
    base = "name: n\nfaults:\n  - match: {from: server, index: 1}\n    action: drop\n"
    assert server_name(load_scenario_text(base, "n.yaml")) == "localhost"
    named = load_scenario_text(base + "client:\n  sni: api.internal\n", "n.yaml")
    assert server_name(named) == "api.internal"
    assert client_argv("echo -servername {name}", {**SUBST, "name": "api.internal"}) == [
        "echo", "-servername", "api.internal"]


def _scenario_with_custom_expect(path: Path, expect: str) -> Path:
    text = (CONFIGS / "strip-sni.yaml").read_text()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.replace("expect:   #", f"expect:\n  custom: {expect}\n  #", 1))
    return path


# Two reproduce runs one after the other, each starting a server and a proxy: on a
# loaded machine one took over 60 s, so 120 s for both ran out (the timeouts bound a hang).
@pytest.mark.timeout(330)
def test_relative_path_reused_out_and_literal_braces_from_another_directory(
        tmp_path: Path) -> None:
    # Issue 15 bugs 1-3, as a user meets them: a relative scenario path from outside
    # the repository, `--out DIR` given twice (the second run printed no timeline and
    # no diagnosis: the log was appended to and connection ids restarted), and curl's
    # own braces (-w '%{http_version}') in --client-cmd.
    _scenario_with_custom_expect(
        tmp_path / "rel" / "s.yaml",
        "{outcome: error, error: 'alert handshake failure', diagnosis: [missing-sni]}")
    cmd = ("curl -sS --max-time 10 -w 'v=%{http_version}' --cacert {ca} "
           "--resolve localhost:{port}:{host} https://localhost:{port}/")
    runs = [subprocess.run([str(BIN), "reproduce", "rel/s.yaml", "--client-cmd", cmd,
                            "--out", "out"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=150, stdin=subprocess.DEVNULL) for _ in range(2)]
    for res in runs:
        assert res.returncode == 0, res.stdout + res.stderr
        assert "Traceback" not in res.stderr and "cannot read" not in res.stderr
        assert "REPRODUCED" in res.stdout and "v=0" in res.stdout
        assert "[1] connect" in res.stdout and "diagnosis missing-sni" in res.stdout
    log = [json.loads(x) for x in (tmp_path / "out" / "inspector.jsonl").read_text().splitlines()]
    assert [e["event"] for e in log].count("connect") == 1, "the second run appended"


@pytest.mark.parametrize(("rc", "out", "err"), [
    (1, "", "tls: it's \x1b[31mbroken\x07 'quoted'\n"),
    (0, "HTTP/1.0 200 ok\n", ""),
    (1, "", ""),
])
def test_a_scenario_without_expect_suggests_the_entry_that_matches_this_run(
        rc: int, out: str, err: str) -> None:
    """A new user's scenario has no expect: section: the difference names what
    happened as a ready YAML entry (control characters left out, quotes doubled) that
    then reproduces the same run."""
    import yaml

    from tlsinspector.lab.peers import ClientResult
    from tlsinspector.lab.reproduce import check

    result = ClientResult("go", rc, out, err)
    events = [{"event": "close", "diagnosis": [{"code": "missing-sni"}]}]
    [diff] = check(None, result, events)
    entry = diff.split("expect: section: ", 1)[1]
    assert "\x1b" not in entry and "\x07" not in entry
    parsed = yaml.safe_load(entry)
    assert list(parsed) == ["go"]
    assert parsed["go"]["diagnosis"] == ["missing-sni"]
    assert check(parsed["go"], result, events) == []


@pytest.mark.timeout(120)
def test_custom_commands_get_a_key_log_the_inspector_follows(tmp_path: Path,
                                                              certs: Certs) -> None:
    """--client-cmd clients write keys too: SSLKEYLOGFILE in their environment (Python's
    ssl here) or the {keylog} placeholder (s_client -keylogfile); against a server of
    one's own that logs no keys, the TLS 1.3 certificate is then decrypted."""
    from tlsinspector.lab.peers import start_server

    py = (f"{sys.executable} -c \"import socket, ssl; "
          "c = ssl.create_default_context(cafile='{ca}'); "
          "s = socket.create_connection(('{host}', {port}), timeout=10); "
          "t = c.wrap_socket(s, server_hostname='localhost'); "
          "t.sendall(b'GET / HTTP/1.0\\\\r\\\\n\\\\r\\\\n'); t.recv(100)\"")
    ossl = ("openssl s_client -connect {addr} -servername localhost -CAfile {ca} -tls1_3 "
            "-keylogfile {keylog}")
    with start_server("openssl", certs, tls="1.3", log_dir=tmp_path) as server:
        verdicts = reproduce(CONFIGS / "no-fault-baseline.yaml", [],
                             client_cmd=[f"py={py}", f"ossl={ossl}"], server=server.addr,
                             out_dir=tmp_path / "o", certs=certs, timeout=20)
    assert [v.client for v in verdicts] == ["py", "ossl"]
    for v in verdicts:
        assert (tmp_path / "o" / f"keys-{v.client}.log").stat().st_size > 0, v.client
        certs_seen = [m for e in v.events if e["event"] in ("record", "decrypted")
                      for m in (e.get("decrypted") or {}).get("messages", [])
                      if m.get("type") == "certificate"]
        assert certs_seen, (v.client, v.client_output)


def test_client_said_keeps_the_error_line_that_came_before_the_last_lines() -> None:
    # curl's verification failure, then its closing chatter (a new user saw only the
    # chatter in reproduce's "client said" excerpt, not the line that matched).
    from tlsinspector.lab.reproduce import client_said

    curl = ("* TLSv1.3 (OUT), TLS alert, unknown CA (560):\n"
            "* SSL certificate problem: unable to get local issuer certificate\n"
            "* Closing connection 0\n\n"
            "curl: (60) see https://curl.se/docs/sslcerts.html\n"
            "More details here: https://curl.se/docs/sslcerts.html\n")
    assert client_said(curl) == (
        "* SSL certificate problem: unable to get local issuer certificate | ... | "
        "* Closing connection 0 | curl: (60) see https://curl.se/docs/sslcerts.html | "
        "More details here: https://curl.se/docs/sslcerts.html")
    # An error line among the last three: just the last three, as before.
    assert client_said("a\nb\nerror: x\nc\n") == "b | error: x | c"
    assert client_said("") == ""


def test_the_suggested_expect_entry_has_no_source_location() -> None:
    # Python's error lines end in "(_ssl.c:1006)": the suggestion was
    # "error: '... not valid for ''www.example.org''. (_ssl.c'".
    from tlsinspector.lab.peers import ClientResult
    from tlsinspector.lab.reproduce import suggest_expect
    out = ("ssl.SSLCertVerificationError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate "
           "verify failed: Hostname mismatch, certificate is not valid for "
           "'www.example.org'. (_ssl.c:1006)\n")
    res = ClientResult("python", 1, "", out)
    assert suggest_expect(res, []) == (
        "python: {outcome: error, error: 'Hostname mismatch, certificate is not valid "
        "for ''www.example.org''.'}")


@pytest.mark.parametrize("command", ["reproduce", "matrix"])
def test_an_out_that_cannot_be_a_folder_is_exit_2_before_anything_starts(
        command: str, tmp_path: Path) -> None:
    # Before: the servers and clients ran, then mkdir raised (a traceback, exit 1).
    afile = tmp_path / "afile"
    afile.write_text("")
    args = (["reproduce", "no-fault-baseline", "--client", "go"] if command == "reproduce"
            else ["matrix", str(CONFIGS), "--clients", "go"])
    for out, why in ((afile, "exists and is not a folder"),
                     (afile / "sub", "cannot make that folder: Not a directory")):
        res = subprocess.run([str(BIN), *args, "--out", str(out)], capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 2, res.stderr
        assert f"tlsinspector {command}: --out {out}: {why}" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr


def test_the_suggested_expect_entry_has_no_half_of_pythons_ssl_code() -> None:
    # "[SSL: DECRYPTION_FAILED_OR_BAD_RECORD_MAC] decryption failed or bad record mac":
    # the split on colons suggested "error: 'DECRYPTION_FAILED_OR_BAD_RECORD_MAC]
    # decryption failed or bad record mac'", with the bracket of "[SSL: ...]".
    from tlsinspector.lab.peers import ClientResult
    from tlsinspector.lab.reproduce import suggest_expect
    out = ("SSLError: [SSL: DECRYPTION_FAILED_OR_BAD_RECORD_MAC] decryption failed or bad "
           "record mac (_ssl.c:1006)\n")
    assert suggest_expect(ClientResult("python", 1, "", out), []) == (
        "python: {outcome: error, error: 'decryption failed or bad record mac'}")


def test_an_ok_expectation_missed_by_a_client_that_exited_0_says_why() -> None:
    # `curl -o /dev/null -w %{http_code}` printed "200" and exited 0, and the verdict
    # was only "outcome: expected ok, got error".
    from tlsinspector.lab.peers import ClientResult
    from tlsinspector.lab.reproduce import check
    quiet = ClientResult("mycurl", 0, "200", "")
    assert check({"outcome": "ok"}, quiet, []) == [
        "outcome: expected ok, got error (the client exited 0, but its output holds no "
        "HTTP 200 answer, which ok needs)"]
    failed = ClientResult("mycurl", 35, "", "curl: (35) alert handshake failure")
    assert check({"outcome": "ok"}, failed, []) == ["outcome: expected ok, got error"]


def test_an_expected_effect_without_a_fault_that_applied_is_not_reproduced() -> None:
    """reproduce said REPRODUCED for a scenario whose fault never matched (the client's
    output matched by itself): an expectation of an effect (an error, its text, a
    finding) needs a fault that applied on the client's connections; a plain ok
    (a client the faults leave alone) does not."""
    from tlsinspector.lab.reproduce import _applied, _effect_expected

    applied = {"event": "record", "fault": [{"scenario": "s", "action": "drop",
                                             "detail": {"dropped": 9}}]}
    not_applied = {"event": "record", "fault": [{"scenario": "s", "action": "drop",
                                                 "detail": {"not_applied": "no keys"}}]}
    timer = {"event": "timer", "fault": [{"scenario": "s", "action": "close",
                                          "detail": {"how": "rst"}}]}
    assert _applied(applied) and _applied(timer)
    assert not _applied(not_applied) and not _applied({"event": "record"})
    assert _effect_expected({"outcome": "error"}) and _effect_expected({})
    assert _effect_expected({"outcome": "ok", "error": "resumed=false"})
    assert _effect_expected({"outcome": "ok", "diagnosis": ["timeout"]})
    assert not _effect_expected({"outcome": "ok"})
