"""Built-in peers configured by the scenario (client: / server: h2) and reproduce's
client and port options, with real clients through the real inspector.

The two runs are independent and go concurrently (threads): one reproduce with
the h2 server, ALPN, resumption and two named --client-cmd commands on pinned
ports; one CLI run that combines --client and --client-cmd and must judge each
by its own expect entry.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tlsinspector.lab.certs import Certs
from tlsinspector.lab.peers import free_port
from tlsinspector.lab.reproduce import (
    ClientCommandError,
    Ports,
    Verdict,
    named_commands,
    reproduce,
)
from tlsinspector.proxy.scenario import ScenarioError, load_scenario_text

BIN = Path(sys.executable).parent / "tlsinspector"

H2 = """name: h2-resume
server: h2
client: {alpn: [h2, http/1.1], resume: true, timeout: 10}
expect:
  go: {outcome: ok, error: 're:alpn=h2 proto=HTTP/2.0 resumed=false'}
  curl: {outcome: ok, error: 'proto=HTTP/2'}
  s1: {outcome: error, error: 'ALPN protocol: h2'}
  custom: {outcome: error, error: 'boom'}
faults: []
"""
PY11 = """name: py-alpn
client: {alpn: [http/1.1], resume: true, sni: localhost, tls: '1.3'}
expect:
  python: {outcome: ok, error: 'resumed=True'}
  gnutls: {outcome: ok, error: 'This is a resumed session'}
  mine: {outcome: error, error: 'refused to run'}
faults:   # legal for any stack: the server's first three records in one TCP write
  - match: {from: server, index: 1}
    action: coalesce
    records: 3
    into: write
"""


def _h2(tmp: Path, certs: Certs, ports: Ports) -> list[Verdict]:
    path = tmp / "h2.yaml"
    path.write_text(H2)
    s1 = ("s1=openssl s_client -connect {addr} -CAfile {ca} -alpn h2 -servername "
          "localhost")
    boom = f"{sys.executable} -c 'import sys; print(\"boom\"); sys.exit(3)'"
    return reproduce(path, ["go", "curl"], [s1, boom], out_dir=tmp / "h2",
                     certs=certs, ports=ports)


def _cli(tmp: Path) -> subprocess.CompletedProcess[str]:
    path = tmp / "py.yaml"
    path.write_text(PY11)
    mine = f"mine={sys.executable} -c 'print(\"refused to run\"); raise SystemExit(1)'"
    return subprocess.run([str(BIN), "reproduce", str(path), "--client", "python,gnutls",
                           "--client-cmd", mine, "--out", str(tmp / "py")],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(180)
def test_scenario_configured_peers_alpn_h2_resumption_and_named_commands(
        certs: Certs, tmp_path: Path) -> None:
    ports = Ports(free_port(), free_port())
    with ThreadPoolExecutor(2) as ex:
        h2 = ex.submit(_h2, tmp_path, certs, ports)
        cli = ex.submit(_cli, tmp_path)
        verdicts, res = h2.result(), cli.result()
    assert [v.client for v in verdicts] == ["go", "curl", "s1", "custom"]
    assert {v.client: v.differences for v in verdicts if not v.reproduced} == {}
    # The go client resumed on its second connection (the first is a full handshake).
    go = next(v for v in verdicts if v.client == "go")
    assert "resumed=true" in go.client_output and "proto=HTTP/2.0" in go.client_output
    # The pinned ports were used: the inspector listened on one, the server on the other.
    events = [json.loads(x) for x in (tmp_path / "h2" / "inspector.jsonl").read_text()
              .splitlines()]
    connects = [e for e in events if e["event"] == "connect"]
    assert {e["server"] for e in connects} == {f"127.0.0.1:{ports.server}"}
    assert len(connects) == 4   # go connects twice (resumption), curl and s1 once
    # (the failing custom command never connects)
    # The CLI run judged python and the named command each by its own entry.
    assert res.returncode == 0, res.stdout + res.stderr
    assert "== py-alpn with python: client ok" in res.stdout
    assert "== py-alpn with gnutls: client ok" in res.stdout
    assert "== py-alpn with mine: client error" in res.stdout
    assert res.stdout.count("REPRODUCED") == 3
    logged = [json.loads(x) for x in (tmp_path / "py" / "inspector.jsonl").read_text()
              .splitlines()]
    coalesced = [e for e in logged if e["event"] == "record" and "fault" in e]
    assert coalesced and all(e["from"] == "server" and e["index"] == 1 for e in coalesced)


def test_named_commands_and_their_errors() -> None:
    assert named_commands(["a=x y", "x y", "x z"]) == [("a", "x y"), ("custom", "x y"),
                                                       ("custom2", "x z")]
    assert named_commands("curl -w '%{http_version}' {addr}") == [
        ("custom", "curl -w '%{http_version}' {addr}")]
    with pytest.raises(ClientCommandError, match="already used"):
        named_commands(["go=x"])
    with pytest.raises(ClientCommandError, match="already used"):
        named_commands(["a=x", "a=y"])


@pytest.mark.parametrize(("client", "field", "fragment"), [
    ("{alpn: []}", "client.alpn", "protocol names"),
    ("{alpn: ['a,b']}", "client.alpn", "without commas"),
    ("{tls: 1.4}", "client.tls", "unknown tls"),
    ("{timeout: 0}", "client.timeout", "expected seconds"),
    ("{wait_ms: -1}", "client.wait_ms", "out of range"),
    ("{resume: yes please}", "client.resume", "expected a boolean"),
    ("{snii: x}", "client.snii", "did you mean 'sni'"),
    # client.sni goes into every built-in client's argv: curl's --resolve and URL,
    # chromium's --host-resolver-rules (before: accepted, curl then failed with
    # "Couldn't parse CURLOPT_RESOLVE entry" while openssl sent it as it was).
    ("{sni: 'localhost:1/x?'}", "client.sni", "not a host name"),
    ("{sni: 'a, MAP * evil'}", "client.sni", "not a host name"),
    ("{sni: -servername}", "client.sni", "not a host name"),
    ("{sni: 'a..b'}", "client.sni", "not a host name"),
])
def test_a_bad_client_section_is_located(client: str, field: str, fragment: str) -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario_text(f"name: t\nclient: {client}\nfaults: []\n", "t.yaml")
    assert (info.value.line, info.value.field) == (2, field)
    assert fragment in str(info.value)


def test_reproduce_cli_ports_must_be_ports(tmp_path: Path) -> None:
    res = subprocess.run([str(BIN), "reproduce", "no-fault-baseline", "--client", "go",
                          "--listen", "70000"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "not a port" in res.stderr
    # No client given and none in expect: to default to (test_cli covers the default).
    bare = tmp_path / "bare.yaml"
    bare.write_text("name: bare\nfaults: []\n")
    res = subprocess.run([str(BIN), "reproduce", str(bare)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and "--client" in res.stderr


def test_check_shows_the_client_section() -> None:
    from tlsinspector.proxy.scenario import explain
    lines = explain(load_scenario_text(PY11))
    assert "client: alpn=['http/1.1'], resume=True, sni=localhost, tls=1.3" in lines


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["openssl", "gnutls"])
def test_an_idle_wait_starts_when_the_handshake_is_done_not_at_the_start(kind: str) -> None:
    # A stand-in process whose "handshake" takes 1 s (a loaded machine's s_client):
    # the request must come stdin_delay after the client's handshake line, or the
    # scenario's idle period (lb-idle-timeout-*) shrinks by the slow start. The sleep
    # is the slow start under test, not a synchronisation.
    from tlsinspector.lab.peers import HANDSHAKE_DONE, run_command
    line = HANDSHAKE_DONE[kind].decode()
    script = ("import sys, time; time.sleep(1.0); t = time.monotonic(); "
              f"print({line!r}, flush=True); sys.stdin.readline(); "
              "print('idle %.3f' % (time.monotonic() - t), flush=True)")
    result = run_command(kind, [sys.executable, "-c", script], b"GET\n", timeout=20,
                         stdin_delay=0.5)
    assert result.returncode == 0, result.stderr
    idle = float(result.stdout.split("idle ")[1])
    assert idle >= 0.5, result.stdout


@pytest.mark.timeout(60)
def test_the_go_client_offers_exactly_the_alpn_list_h2_alone_too(certs: Certs) -> None:
    # A real s_server that selects only http/1.1: an offer of h2 alone meets no
    # protocol (its fatal no_application_protocol, RFC 7301 3.2), an offer of h2 and
    # http/1.1 gets http/1.1. net/http on its own offers http/1.1 beside h2 both times.
    from tlsinspector.lab.peers import ClientOptions, client_command, run_command, wait_for_port
    port = free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", str(port), "-cert", str(certs.server_cert),
         "-key", str(certs.server_key), "-alpn", "http/1.1", "-www", "-naccept", "2"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port, 30, server)  # type: ignore[arg-type]
        said = {}
        for alpn in (("h2",), ("h2", "http/1.1")):
            cmd, stdin = client_command("go", "127.0.0.1", port, certs,
                                        options=ClientOptions(alpn=alpn, timeout=10.0))
            said[alpn] = run_command("go", cmd, stdin, timeout=30)
    finally:
        server.kill()
        server.wait(timeout=10)
    h2, both = said[("h2",)], said[("h2", "http/1.1")]
    assert both.returncode == 0 and "alpn=http/1.1 proto=HTTP/1." in both.stdout, both
    assert h2.returncode == 1 and "no application protocol" in h2.stderr, h2


STALL = """name: stall-short-timeout
server: tls13
client: {timeout: 2}
expect:
  openssl: {outcome: error, error: '[killed after 2.0s]', diagnosis: [timeout]}
faults:
  - match: {from: server, index: 1}
    action: delay
    ms: 4000
"""


@pytest.mark.timeout(90)
def test_client_timeout_ends_the_clients_without_a_timeout_option(
        certs: Certs, tmp_path: Path) -> None:
    # s_client (and gnutls-cli, the same path) has no handshake timeout of its own:
    # client.timeout used to be ignored for it (s_client completed the handshake held
    # 4 s, or waited for the run's 30 s), so a timeout scenario did not reproduce.
    path = tmp_path / "stall.yaml"
    path.write_text(STALL)
    verdicts = reproduce(path, ["openssl"], [], out_dir=tmp_path / "out", certs=certs)
    assert {v.client: v.differences for v in verdicts} == {"openssl": []}
    # It was ended after its 2 s, while the delay still held the server's answer.
    events = [json.loads(x) for x in (tmp_path / "out" / "inspector.jsonl").read_text()
              .splitlines()]
    closes = [e for e in events if e["event"] == "close"]
    assert len(closes) == 1 and closes[0]["by"] == "client"
