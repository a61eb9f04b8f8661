"""Faults on either leg with --intercept (issue 21 part 4): the ``leg:`` match key.

Each leg's engine sits on that leg's wire, between the peer and mitmproxy's TLS
layer (addons/intercept.py), so the fault catalog acts on the records the
client, the server and the inspector really exchange. Real peers: the shipped
leg scenarios reproduce their reports' client errors in
tests/test_intercept.py (with every interception scenario); here a fault
without ``leg`` acts on both legs and one with ``leg`` only on its own, the
transparent path refuses ``leg``, and ``check`` says which faults are valid
with ``--intercept``.
"""

from __future__ import annotations

import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tlsinspector.addons.runner import ca_files
from tlsinspector.cli import CONFIGS
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.inspector import InspectorProcess
from tlsinspector.lab.peers import client_command, run_command, start_server
from tlsinspector.proxy.faults import FaultPlanner
from tlsinspector.proxy.scenario import (
    ScenarioError,
    explain,
    leg_refusal,
    load_scenario,
    load_scenario_text,
)

BIN = Path(sys.executable).parent / "tlsinspector"
LEG_SCENARIOS = ("interception-alert-after-server-hello",
                 "interception-server-leg-record-version")

FRAGMENTS = """\
name: leg-fragments
intercept: {}
faults:
  - match: {from: client, index: 1}
    action: fragment
    size: 100
  - match: {leg: server, from: server, handshake: server_hello}
    action: fragment
    size: 40
  - match: {leg: client, from: server, index: 1}
    action: delay
    ms: 50
"""


def _records(events: list[dict[str, Any]], leg: str, side: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == "record" and e.get("leg") == leg
            and e["from"] == side]


def test_a_fault_without_leg_acts_on_both_legs_and_one_with_leg_on_its_own(
        certs: Certs, tmp_path: Path) -> None:
    """run --intercept --scenario: the ClientHello of each leg is fragmented (no leg:
    given), the server's ServerHello only on the server leg, the inspector's ServerHello
    delayed on the client leg; real clients of both TLS versions still complete their
    handshakes (fragments are legal, RFC 8446 5.1)."""
    ca_pem, ca_dir = ca_files(str(tmp_path / "ca"))
    trusting = replace(certs, ca_cert=ca_pem)
    scenario = tmp_path / "fragments.yaml"
    scenario.write_text(FRAGMENTS)
    with start_server("openssl", certs, tls="any", log_dir=tmp_path) as server, \
            InspectorProcess(server.addr, tmp_path / "legs.jsonl", [scenario], extra=[
                "--intercept", "--ca", str(ca_dir), "--upstream-ca",
                str(certs.ca_cert)]) as proxy, ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda kt: run_command(kt[0], *client_command(
            kt[0], "127.0.0.1", proxy.port, trusting, tls=kt[1]), timeout=20),
            (("curl", "1.3"), ("python", "1.2"))))
        events = proxy.wait_closes(2)
        output = proxy.output()
    assert all(r.ok for r in runs), [r.output[-300:] for r in runs]
    assert "Traceback" not in output
    for conn in ("1", "2"):
        evs = [e for e in events if e.get("conn") == conn]
        for leg in ("client", "server"):
            [hello] = [r for r in _records(evs, leg, "client") if r["index"] == 1]
            assert [f["action"] for f in hello["fault"]] == ["fragment"], (conn, leg)
        [sh] = [r for r in _records(evs, "server", "server") if r["index"] == 1]
        assert [f["action"] for f in sh["fault"]] == ["fragment"], conn
        # The client leg's ServerHello is the inspector's own: no leg: server fault there,
        # only the delay (held in the engine, sent on its timer: the handshake completes).
        faulted = [(r["index"], [f["action"] for f in r["fault"]])
                   for r in _records(evs, "client", "server") if "fault" in r]
        assert faulted == [(1, ["delay"])], conn
        [close] = [e for e in evs if e["event"] == "close"]
        assert close["legs"]["client"]["established"] and close["legs"]["server"]["established"]


def test_the_planner_of_a_leg_keeps_only_its_faults() -> None:
    s = load_scenario(CONFIGS / "interception-server-leg-record-version.yaml")
    both = load_scenario_text(FRAGMENTS, "f.yaml")
    client = FaultPlanner([s, both], 1, random.Random(1), leg="client")
    server = FaultPlanner([s, both], 1, random.Random(1), leg="server")
    assert [f.scenario for f in client.faults] == ["leg-fragments", "leg-fragments"]
    assert [f.scenario for f in server.faults] == [s.name, "leg-fragments", "leg-fragments"]
    assert [f.number for f in client.faults] == [1, 3]


@pytest.mark.parametrize("name", LEG_SCENARIOS)
def test_the_leg_scenarios_are_intercept_scenarios_with_a_leg(name: str) -> None:
    s = load_scenario(CONFIGS / f"{name}.yaml")
    assert s.intercept is not None and s.faults
    assert all(f.match.leg in ("client", "server") for f in s.faults)
    assert len(s.expect or {}) >= 3 and "github.com/" in s.description


def test_leg_without_intercept_is_refused_with_file_line_and_field(tmp_path: Path) -> None:
    text = "name: x\nfaults:\n  - match: {from: server, leg: client}\n    action: drop\n"
    with pytest.raises(ScenarioError) as e:
        load_scenario_text(text, "s.yaml")
    assert "s.yaml:3" in str(e.value) and "faults[1].match.leg" in str(e.value)
    assert "only with --intercept" in str(e.value)
    with pytest.raises(ScenarioError) as e:
        load_scenario_text("name: x\nintercept: {}\nfaults:\n  - match: {leg: middle}\n"
                           "    action: drop\n", "s.yaml")
    assert e.value.allowed is not None and set(e.value.allowed) == {"client", "server"}
    # run: an intercept scenario's leg faults need --intercept (exit 2 before any socket).
    path = CONFIGS / "interception-alert-after-server-hello.yaml"
    res = subprocess.run([str(BIN), "run", "--upstream", "127.0.0.1:9", "--scenario",
                          str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "only with --intercept" in res.stderr, res.stderr
    assert f"{path}:" in res.stderr


def test_check_says_which_faults_are_valid_with_intercept() -> None:
    plain = load_scenario(CONFIGS / "starttls-stripped.yaml")
    assert leg_refusal(plain.faults, intercept=True) is not None
    assert leg_refusal(plain.faults, intercept=False) is None
    text = "\n".join(explain(plain))
    assert "with --intercept: not valid: " in text and "STARTTLS" in text
    text = "\n".join(explain(load_scenario(CONFIGS / "record-version-3030.yaml")))
    assert "with --intercept: valid, on both legs" in text
    text = "\n".join(explain(load_scenario(CONFIGS / f"{LEG_SCENARIOS[0]}.yaml")))
    assert "intercept: valid, on the client leg" in text
    assert "on the client leg, carrying a encrypted_extensions" in text
    assert "the inspector's own keys of the leg" in text and "--keylog FILE" not in text
    with pytest.raises(ScenarioError, match="STARTTLS plaintext line"):
        load_scenario_text("name: x\nintercept: {}\nfaults:\n  - match: {plaintext: "
                           "{protocol: smtp}}\n    action: drop-line\n", "s.yaml")
    listing = subprocess.run([str(BIN), "check", "--list"], capture_output=True, text=True,
                             timeout=60)
    assert listing.returncode == 0 and "leg" in listing.stdout and "--intercept" in \
        listing.stdout


def test_a_server_abort_passed_on_is_not_the_inspectors_version_cap() -> None:
    """The client leg's history is the same (the client's hello, the inspector's
    protocol_version alert); the server leg decides: the server's own protocol_version
    during the inspector's handshake is interception-server-aborted (with the server
    leg's fault as evidence), never interception-version-capped."""
    from tests.test_diagnosis import ALERT_70, OPENSSL_TLS12, alert, ch_seen, codes, history
    from tlsinspector.proxy.history import FaultSeen, History
    from tlsinspector.proxy.policy import InterceptFacts, LegPolicy, Policy

    def client_leg(server_leg: History, policy: Policy) -> list[str]:
        h = history(ch=[ch_seen(OPENSSL_TLS12)], alerts=[alert("server", 1, ALERT_70)])
        h.intercept = InterceptFacts("client", policy, server_leg)
        return [c for c in codes(h) if c.startswith("interception-")]

    capped = Policy(name="cap", client=LegPolicy(None, "1.2"))
    server_leg = history(ch=[ch_seen(OPENSSL_TLS12)], alerts=[alert("server", 5, ALERT_70)],
                         faults=[FaultSeen("s", "set-record-version", "client", 2,
                                           "transcript-safe", {})])
    assert client_leg(server_leg, Policy(name="plain")) == ["interception-server-aborted"]
    assert client_leg(server_leg, capped) == ["interception-server-aborted"]
    # No alert from the server on its leg: the inspector's own cap, as before.
    assert client_leg(History(), capped) == ["interception-version-capped"]
    quiet = history(ch=[ch_seen(OPENSSL_TLS12)])
    assert client_leg(quiet, Policy(name="plain")) == ["interception-version-capped"]


def test_the_passed_on_alert_is_not_judged_as_the_clients_hello() -> None:
    """The inspector's protocol_version on the client leg passes on the server's
    rejection of the inspector's own handshake: "the server supports none of the
    versions the client offered" was the first finding (wolfSSL, Go, every client of
    configs/interception-server-leg-record-version.yaml), blaming the client."""
    from tests.test_diagnosis import ALERT_70, OPENSSL_TLS12, alert, ch_seen, codes, history
    from tlsinspector.proxy.history import FaultSeen
    from tlsinspector.proxy.policy import InterceptFacts, Policy

    server_leg = history(ch=[ch_seen(OPENSSL_TLS12)], alerts=[alert("server", 5, ALERT_70)],
                         faults=[FaultSeen("s", "set-record-version", "client", 2,
                                           "transcript-safe", {})])
    h = history(ch=[ch_seen(OPENSSL_TLS12)], alerts=[alert("server", 1, ALERT_70)])
    h.intercept = InterceptFacts("client", Policy(name="plain"), server_leg)
    assert codes(h) == ["interception-server-aborted"]
    # near miss: the server leg has no abort: the client leg's alert is judged itself
    h.intercept = InterceptFacts("client", Policy(name="plain"), history())
    assert codes(h)[0] == "protocol-version"


def test_a_server_the_inspector_refuses_gives_the_client_the_inspectors_alert(
        certs: Certs, tmp_path: Path) -> None:
    """--intercept without --upstream-ca: the inspector does not trust the test CA, so
    its own TLS stack refuses the server's certificate (unknown_ca, to the server).
    Each real client gets that alert, in the clear before any ServerHello, instead of
    a bare TCP close ("unexpected eof"); the client leg's first finding says the
    alert is the inspector's verdict on the server, the server leg's names the chain."""
    ca_pem, ca_dir = ca_files(str(tmp_path / "ca"))
    trusting = replace(certs, ca_cert=ca_pem)
    clients = ("openssl", "curl", "python", "go")
    with start_server("openssl", certs, tls="any", log_dir=tmp_path) as server, \
            InspectorProcess(server.addr, tmp_path / "refused.jsonl", [], extra=[
                "--intercept", "--ca", str(ca_dir)]) as proxy, ThreadPoolExecutor(2) as pool:
        runs = dict(zip(clients, pool.map(lambda kind: run_command(kind, *client_command(
            kind, "127.0.0.1", proxy.port, trusting), timeout=20), clients), strict=True))
        events = proxy.wait_closes(len(clients))
    said = {"openssl": "alert unknown ca", "curl": "alert unknown ca",
            "python": "ALERT_UNKNOWN_CA", "go": "unknown certificate authority"}
    for kind, res in runs.items():
        assert not res.ok and said[kind] in res.output, (kind, res.output[-400:])
    closes = [e for e in events if e["event"] == "close"]
    assert len(closes) == len(clients)
    for close in closes:
        client_leg = [d["code"] for d in close["diagnosis"] if d["leg"] == "client"]
        server_leg = [d["code"] for d in close["diagnosis"] if d["leg"] == "server"]
        assert client_leg[0] == "interception-server-refused", client_leg
        assert "alert-unknown-ca" not in client_leg  # the verdict is named once
        assert "certificate-rejected" in server_leg, server_leg
