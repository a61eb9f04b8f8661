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
from pathlib import Path

import pytest

from tlsinspector.cli import CONFIGS
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.matrix import run_matrix
from tlsinspector.lab.peers import CLIENT_KINDS
from tlsinspector.lab.reproduce import reproduce
from tlsinspector.proxy.scenario import load_scenario

# The STARTTLS scenarios (faults on the plaintext phase, issue 17) need a mail server,
# not an HTTPS one: tests/test_starttls_stripped.py runs them with real clients.
STARTTLS = {"starttls-stripped", "starttls-refused"}
SCENARIOS = sorted(p for p in CONFIGS.glob("*.yaml")
                   if not any(f.match.plaintext for f in load_scenario(p).faults))

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
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_scenario_reproduces_with_every_client(path: Path, certs: Certs, tmp_path: Path) -> None:
    # A scenario whose expectation names only some clients (renegotiation-scsv: only
    # s_client renegotiates on command) is run with those.
    expect = load_scenario(path).expect or {}
    kinds = [k for k in CLIENT_KINDS if k in expect] or list(CLIENT_KINDS)
    verdicts = reproduce(path, kinds, out_dir=tmp_path, certs=certs)
    assert [v.client for v in verdicts] == kinds
    failures = {v.client: v.differences for v in verdicts if not v.reproduced}
    assert not failures, failures
    for v in verdicts:
        faults = [e for e in v.events if e["event"] == "record" and "fault" in e]
        assert faults, f"{v.client}: no record carries the fault"
        assert v.events[-1]["event"] == "close"
        if v.outcome == "error":
            assert DIAGNOSIS[path.stem] in v.diagnosis_codes(), (v.client, v.diagnosis_codes())


def test_every_shipped_scenario_has_a_diagnosis_entry() -> None:
    assert set(DIAGNOSIS) == {p.stem for p in SCENARIOS}
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(DIAGNOSIS) | STARTTLS


def test_go_error_for_record_version_3030_is_exact(certs: Certs, tmp_path: Path) -> None:
    [v] = reproduce(CONFIGS / "record-version-3030.yaml", ["go"], out_dir=tmp_path,
                    certs=certs)
    assert v.client_output.strip().splitlines()[-1] == (
        "tls: received record with version 3030 when expecting version 303")
    changed = [e for e in v.events if "fault" in e]
    assert changed[0]["from"] == "server" and changed[0]["index"] == 2
    assert changed[0]["fault"]["detail"] == {"before": "0x0303", "after": "0x3030"}


def test_unmet_expectation_exits_1_with_a_readable_difference(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text((CONFIGS / "slow-middlebox.yaml").read_text().replace(
        "curl: {outcome: ok}", "curl: {outcome: error, error: 'nope'}"))
    res = subprocess.run([str(Path(sys.executable).parent / "tlsinspector"), "reproduce",
                          str(wrong), "--client", "curl", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "NOT REPRODUCED" in res.stdout and "outcome: expected error, got ok" in res.stdout


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
