"""Every shipped scenario, end to end through `tlsinspector run`, with each real client.

The server is the one the scenario names (openssl s_server TLS 1.2/1.3, a Go
server restricted to ECDHE TLS 1.2 suites, a Python server that refuses
handshakes without SNI); each client's own error text is matched against the
scenario's expectation (the Go string for record-version-3030 exactly).
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tlsinspector.cli import CONFIGS
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.matrix import run_matrix
from tlsinspector.lab.peers import ALL_CLIENT_KINDS, CLIENT_KINDS
from tlsinspector.lab.reproduce import Verdict, reproduce
from tlsinspector.proxy.scenario import load_scenario

# Interception scenarios (no faults; the policy is the middlebox) run in
# tests/test_intercept.py.
# The STARTTLS scenarios (faults on the plaintext phase, issue 17) need a mail server,
# not an HTTPS one: tests/test_starttls_stripped.py runs them with real clients.
STARTTLS = {"starttls-stripped", "starttls-refused"}
SCENARIOS = sorted(p for p in CONFIGS.glob("*.yaml") if load_scenario(p).intercept is None
                   and not any(f.match.plaintext for f in load_scenario(p).faults))
# Faults that select clients by their hello (size, extensions): the clients whose
# hello does not match pass untouched.
SELECTIVE = ("large-clienthello-reset", "ech-grease-reset")
# The suite runs these scenarios (issue 15's) with two clients each, to keep its
# time small; `make matrix` runs every client of their expect: sections.
SUITE_CLIENTS = {
    "large-clienthello-reset": ("chromium", "go"),
    "ech-grease-reset": ("chromium", "curl"),
    "lb-idle-timeout-rst": ("openssl", "go"),
    "lb-idle-timeout-fin": ("openssl", "go"),
    "single-suite-server-lacks": ("go", "openssl"),
    "no-fault-baseline": ("go", "python"),
}

# The finding the close event must carry whenever the scenario made a client fail.
DIAGNOSIS = {
    "alert-bad-record-mac": "bad-record-mac",
    "alert-decryption-failed-reserved": "alert-decryption-failed-reserved",
    "ccs-injected-early": "early-ccs",
    "fallback-scsv": "inappropriate-fallback",
    "handshake-fragmented": "fragmented-handshake-rejected",
    "plain-http-reply": "non-tls-bytes",
    "record-version-3030": "record-version-invalid",
    "renegotiation-scsv": "renegotiation-scsv",
    "reset-after-clienthello": "no-server-hello",
    "slow-middlebox": None,
    "strip-sni": "missing-sni",
    "strip-supported-groups": "missing-supported-groups",
    "truncated-server-flight": "partial-record",
    "large-clienthello-reset": "no-server-hello",
    "ech-grease-reset": "no-server-hello",
    "single-suite-server-lacks": "no-shared-cipher",
    "no-fault-baseline": None,
    # A proxy-made RST or FIN after an idle period (a load balancer's idle timeout).
    "lb-idle-timeout-rst": "proxy-closed",
    "lb-idle-timeout-fin": "proxy-closed",
    # Issue 15: the diagnosis names the cause (run concurrently below).
    "delay-causes-timeout": "timeout",
    "downgrade-stripped-versions": "downgrade-detected",
    "drop-causes-timeout": "timeout",
    "finished-mismatch": "finished-mismatch",
    "no-shared-cipher": "no-shared-cipher",
    "plaintext-alert-injected": "injected-plaintext-alert",
    "proxy-reset-midstream": "proxy-closed",
    "ssl3-hello": "version-too-old",
    "record-overflow": "record-overflow",
}
# Scenarios whose clients run at the same time in one test (each client with its own
# server and inspector), to keep the suite short; the timeout ones with custom clients
# whose timeouts are short (the built-in ones wait 10-15 s).
CONCURRENT = {k for k in DIAGNOSIS if k in {
    "delay-causes-timeout", "downgrade-stripped-versions", "drop-causes-timeout",
    "finished-mismatch", "no-shared-cipher", "plaintext-alert-injected",
    "proxy-reset-midstream", "ssl3-hello", "record-overflow"}}
SHORT_TIMEOUT_CLIENTS = {
    "curl": "curl -sS --max-time 2 --cacert {ca} --resolve localhost:{port}:{host} "
            "https://localhost:{port}/",
    "python": f"{sys.executable} -c \"import socket, ssl; "
              "c = ssl.create_default_context(cafile='{ca}'); "
              "s = socket.create_connection(('{host}', {port}), timeout=2); "
              "c.wrap_socket(s, server_hostname='localhost')\"",
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("path", [p for p in SCENARIOS if p.stem not in CONCURRENT],
                         ids=lambda p: p.stem)
def test_scenario_reproduces_with_every_client(path: Path, certs: Certs, tmp_path: Path) -> None:
    # A scenario whose expectation names only some clients (renegotiation-scsv: only
    # s_client renegotiates on command) is run with those.
    scenario = load_scenario(path)
    expect = scenario.expect or {}
    kinds = list(SUITE_CLIENTS.get(path.stem, ())) or [
        k for k in ALL_CLIENT_KINDS if k in expect] or list(CLIENT_KINDS)
    verdicts = reproduce(path, kinds, out_dir=tmp_path, certs=certs)
    assert [v.client for v in verdicts] == kinds
    failures = {v.client: v.differences for v in verdicts if not v.reproduced}
    assert not failures, failures
    for v in verdicts:
        # A record carries the fault, or a timer event (after_ms, idle_ms) does; a
        # scenario whose fault only fires for some clients (by size, by extension)
        # leaves the others untouched.
        faults = [e for e in v.events if e["event"] in ("record", "timer") and "fault" in e]
        if path.stem in SELECTIVE:
            assert bool(faults) is (v.outcome == "error"), (v.client, faults)
        elif scenario.faults:
            assert faults, f"{v.client}: no record or timer event carries the fault"
        else:
            assert not faults  # the baseline changes nothing
        _ends_with_close(v.events)
        if v.outcome == "error" and DIAGNOSIS[path.stem] is not None:
            assert DIAGNOSIS[path.stem] in v.diagnosis_codes(), (v.client, v.diagnosis_codes())


def test_every_shipped_scenario_has_a_diagnosis_entry() -> None:
    assert set(DIAGNOSIS) == {p.stem for p in SCENARIOS}
    intercept = {p.stem for p in CONFIGS.glob("*.yaml") if load_scenario(p).intercept}
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(DIAGNOSIS) | STARTTLS | intercept


def _ends_with_close(events: list[dict[str, Any]]) -> None:
    """The close event is the connection's last, but for late `decrypted` events: a
    key written after the connection ended completes its record after the close
    (README, the `decrypted` event)."""
    closes = [i for i, e in enumerate(events) if e["event"] == "close"]
    assert closes, [e["event"] for e in events]
    after = [e["event"] for e in events[closes[-1] + 1:]]
    assert set(after) <= {"decrypted"}, after


def _check_verdict(stem: str, v: Verdict) -> None:
    assert v.reproduced, (stem, v.client, v.differences)
    assert any(e["event"] == "record" and "fault" in e for e in v.events), (stem, v.client)
    _ends_with_close(v.events)
    assert v.outcome == "error" and DIAGNOSIS[stem] == v.diagnosis_codes()[0], (
        stem, v.client, v.diagnosis_codes())


@pytest.mark.timeout(240)
def test_cause_scenarios_with_two_real_clients_each_concurrently(
        certs: Certs, tmp_path: Path) -> None:
    # Issue 15: each failure kind with two real clients, each client's error text (the
    # scenario's expect) and the diagnosis code that names the cause, first.
    # One inspector for the built-in clients of a scenario (they run one after the
    # other); one per custom command.
    runs: list[tuple[str, list[str], str | None]] = []
    for stem in sorted(CONCURRENT):
        expect = load_scenario(CONFIGS / f"{stem}.yaml").expect or {}
        # Two clients each in the suite (every client: `make matrix`).
        kinds = [k for k in CLIENT_KINDS if k in expect][:2]
        if kinds:
            assert len(kinds) == 2, stem
            runs.append((stem, kinds, None))
        else:  # a timeout: the same scenario with two clients whose timeout is 2 s
            assert "custom" in expect, stem
            runs += [(stem, [name], cmd) for name, cmd in SHORT_TIMEOUT_CLIENTS.items()]

    def one(run: tuple[str, list[str], str | None]) -> list[Verdict]:
        stem, kinds, cmd = run
        out = tmp_path / f"{stem}-{kinds[0]}"
        return reproduce(CONFIGS / f"{stem}.yaml", [] if cmd else kinds, client_cmd=cmd,
                         out_dir=out, certs=certs, timeout=30)

    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(one, runs))
    for (stem, kinds, cmd), verdicts in zip(runs, results, strict=True):
        assert len(verdicts) == len(kinds)
        for v in verdicts:
            _check_verdict(stem, v)
        if cmd is not None:
            assert {"curl": "timed out after 2",
                    "python": "The handshake operation timed out"}[kinds[0]] in (
                verdicts[0].client_output)

def test_go_error_for_record_version_3030_is_exact(certs: Certs, tmp_path: Path) -> None:
    [v] = reproduce(CONFIGS / "record-version-3030.yaml", ["go"], out_dir=tmp_path,
                    certs=certs)
    assert v.client_output.strip().splitlines()[-1] == (
        "tls: received record with version 3030 when expecting version 303")
    changed = [e for e in v.events if "fault" in e]
    assert changed[0]["from"] == "server" and changed[0]["index"] == 2
    assert changed[0]["fault"][0]["detail"] == {"before": "0x0303", "after": "0x3030"}


def test_unmet_expectation_exits_1_with_a_readable_difference(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text((CONFIGS / "slow-middlebox.yaml").read_text().replace(
        "curl: {outcome: ok}", "curl: {outcome: error, error: 'nope'}"))
    res = subprocess.run([str(Path(sys.executable).parent / "tlsinspector"), "reproduce",
                          str(wrong), "--client", "curl", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "NOT REPRODUCED" in res.stdout and "outcome: expected error, got ok" in res.stdout


@pytest.mark.timeout(120)
def test_a_client_the_scenario_cannot_use_is_skipped_not_a_failure(tmp_path: Path) -> None:
    """renegotiation-scsv needs s_client's R command: go is skipped (said so), the
    run still exits 0 because openssl reproduced it."""
    tool = str(Path(sys.executable).parent / "tlsinspector")
    both = subprocess.run([tool, "reproduce", "renegotiation-scsv", "--client", "openssl,go",
                           "--out", str(tmp_path / "a")], capture_output=True, text=True,
                          timeout=120)
    assert both.returncode == 0, both.stdout + both.stderr
    assert "SKIPPED: this scenario's renegotiation needs the openssl client" in both.stdout
    assert "NOT REPRODUCED" not in both.stdout


@pytest.mark.parametrize("tool", ["curl", "openssl"])
def test_client_cmd_runs_any_client(tool: str, certs: Certs, tmp_path: Path) -> None:
    cmd = {"curl": "curl -sS --max-time 10 --cacert {ca} --resolve localhost:{port}:{host} "
                   "https://localhost:{port}/",
           "openssl": "openssl s_client -connect {addr} -CAfile {ca} -servername localhost "
                      "-verify_return_error"}[tool]
    scen = tmp_path / "s.yaml"
    scen.write_text((CONFIGS / "record-version-3030.yaml").read_text())
    [v] = reproduce(scen, [], client_cmd=cmd, out_dir=tmp_path / "o", certs=certs)
    assert v.client == "custom" and v.outcome == "error"
    assert "wrong version number" in v.client_output
    assert any("fault" in e for e in v.events)


def test_matrix_writes_table_and_json(tmp_path: Path) -> None:
    picks = [CONFIGS / "strip-sni.yaml", CONFIGS / "slow-middlebox.yaml"]
    results = run_matrix(picks, ["python", "go"], tmp_path)
    assert len(results) == 4 and all(v.reproduced for v in results)
    table = (tmp_path / "matrix.md").read_text()
    assert "| strip-sni | error | error |" in table
    assert "| slow-middlebox | ok | ok |" in table
    data = json.loads((tmp_path / "matrix.json").read_text())
    assert {(d["scenario"], d["client"]) for d in data} == {
        (s, c) for s in ("strip-sni", "slow-middlebox") for c in ("python", "go")}


def test_matrix_shows_a_client_a_scenario_cannot_use_as_na() -> None:
    from tlsinspector.lab.matrix import markdown
    from tlsinspector.lab.reproduce import Verdict

    rows = [Verdict("renegotiation-scsv", "openssl", True, "error", ""),
            Verdict("renegotiation-scsv", "go", False, "skipped", "", ["needs openssl"])]
    table = markdown(rows, ["go", "openssl"])
    assert "| renegotiation-scsv | n/a | error |" in table
    assert "1 of 1 outcomes as expected." in table and "needs openssl" not in table


def test_matrix_tells_a_client_without_an_expect_entry_from_an_unexpected_outcome() -> None:
    """A scenario written for a custom client (a short timeout) has no entry for the
    built-in ones: their cells say so and are not counted as unexpected."""
    from tlsinspector.lab.matrix import markdown
    from tlsinspector.lab.reproduce import NO_EXPECTATION, Verdict

    rows = [Verdict("drop-causes-timeout", "go", False, "error", "",
                    [NO_EXPECTATION + "; what happened, as an entry ..."]),
            Verdict("drop-causes-timeout", "curl", False, "ok", "", ["outcome: expected error"]),
            Verdict("strip-sni", "go", True, "error", "")]
    table = markdown(rows, ["go", "curl"])
    assert "| drop-causes-timeout | error (no expect: entry) | ok **(unexpected)** |" in table
    assert "1 of 2 outcomes as expected; 1 with no expect: entry" in table
    assert "- drop-causes-timeout / curl: outcome: expected error" in table
    assert "drop-causes-timeout / go" not in table
