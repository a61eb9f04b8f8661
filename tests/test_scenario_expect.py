"""``expect:`` entries are checked like the rest of a scenario file: a typo in an
outcome, a finding code or a key is a located error naming the allowed values, not a
run that silently never reproduces (a new user writes these from `check --list`)."""

from __future__ import annotations

import re

import pytest

from tlsinspector.proxy.diagnosis import RULE_SPECS
from tlsinspector.proxy.scenario import ScenarioError, load_scenario_text

GOOD = ("name: ok\nfaults:\n  - match: {from: server, index: 2}\n"
        "    action: set-record-version\n    version: 0x3030\n")


def refused(expect: str, field: str, *words: str) -> None:
    with pytest.raises(ScenarioError) as e:
        load_scenario_text(GOOD + "expect:\n" + expect)
    text = str(e.value)
    assert e.value.line == 8, text  # the line of the bad value, not of expect: (6)
    assert field in text, text
    for w in words:
        assert w in text, text


def test_an_unknown_outcome_names_the_allowed_ones() -> None:
    refused("  openssl:\n    outcome: failed\n", "expect.openssl.outcome", "'failed'", "ok",
            "error")


def test_an_unknown_finding_code_names_the_codes_and_suggests_one() -> None:
    refused("  go:\n    diagnosis: [missing_sni]\n", "expect.go.diagnosis[1]", "missing_sni",
            "did you mean 'missing-sni'", "record-version-invalid", "alert-<name>")


def test_an_unknown_key_in_an_entry_is_named() -> None:
    refused("  curl:\n    outcom: error\n", "expect.curl.outcom", "unknown key",
            "outcome, error, diagnosis")


def test_every_rule_code_and_alert_name_is_accepted() -> None:
    codes = sorted(s.code for s in RULE_SPECS if s.code != "alert-*")
    codes += ["alert-handshake-failure", "alert-decryption-failed", "alert-unknown-ca"]
    sc = load_scenario_text(GOOD + "expect:\n  openssl:\n    outcome: error\n"
                            "    error: 're:alert (40|70)'\n"
                            f"    diagnosis: [{', '.join(codes)}]\n  go:\n    outcome: ok\n")
    assert sc.expect is not None
    assert list(sc.expect["openssl"]["diagnosis"]) == codes  # type: ignore[index]
    assert sc.expect["go"]["outcome"] == "ok"  # type: ignore[index]


def test_an_alert_code_that_names_no_alert_is_refused() -> None:
    with pytest.raises(ScenarioError, match=re.escape("alert-handshake-fail")):
        load_scenario_text(GOOD + "expect:\n  go:\n    diagnosis: [alert-handshake-fail]\n")


def test_every_alert_code_diagnosis_writes_is_accepted() -> None:
    """Every code the fallback alert finding emits (named or, unnamed, its number) is a
    valid expect entry, so the ready entry `reproduce` prints pastes back as is."""
    from tlsinspector.proxy.diagnosis import alert_finding_code

    codes = [alert_finding_code(n) for n in range(256)]
    assert "alert-255" in codes and "alert-bad-record-mac" in codes
    sc = load_scenario_text(GOOD + "expect:\n  go:\n    diagnosis: [" + ", ".join(codes) + "]\n")
    assert sc.expect is not None
    assert list(sc.expect["go"]["diagnosis"]) == codes  # type: ignore[index]
    refused("  go:\n    diagnosis: [alert_Bad_Record_Mac]\n", "expect.go.diagnosis[1]",
            "did you mean 'alert-bad-record-mac'")


def test_check_list_names_every_expect_key_and_finding_code(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A new user writes expect: from `check --list`: every key the validator accepts and
    every finding code the diagnosis writes are listed there."""
    from tlsinspector.cli import main
    from tlsinspector.proxy.scenario_build import EXPECT_KEYS

    assert main(["check", "--list"]) == 0
    out = capsys.readouterr().out
    section = out[out.index("\nexpect:"):out.index("\nactions")]
    for key in EXPECT_KEYS:
        assert f"\n  {key} " in section, key
    for spec in RULE_SPECS:
        code = "alert-<name>" if spec.code == "alert-*" else spec.code
        assert f"\n    {code} " in section and spec.reference in section, code


def test_an_error_regular_expression_that_does_not_compile_is_located() -> None:
    refused("  go:\n    error: 're:tls: (bad'\n", "expect.go.error",
            "not a regular expression after 're:'", "missing )")


def test_a_client_name_outside_the_command_name_grammar_is_refused() -> None:
    """expect: keys name clients (a built-in kind or a --client-cmd NAME): the same
    grammar, so a control character or a typo'd shape never gets in."""
    with pytest.raises(ScenarioError) as e:
        load_scenario_text(GOOD + 'expect:\n  "go\\x1b[2J":\n    outcome: error\n')
    assert e.value.line == 7 and "\x1b" not in str(e.value), str(e.value)  # the key's line
    assert "a client name is" in str(e.value) and "--client-cmd NAME" in str(e.value)
    with pytest.raises(ScenarioError, match="a client name is"):
        load_scenario_text(GOOD + "expect:\n  Go: {outcome: error}\n")
    sc = load_scenario_text(GOOD + "expect:\n  my-curl_2: {outcome: error}\n")
    assert sc.expect is not None and "my-curl_2" in sc.expect


def test_check_list_says_what_an_ok_outcome_needs() -> None:
    # A --client-cmd that exited 0 (curl -o /dev/null -w %{http_code}: "200") was
    # judged "error": ok also needs an HTTP 200 answer in the output, said nowhere.
    from tlsinspector.proxy.scenario import catalog
    text = "\n".join(catalog())
    assert "ok is exit status 0 with an HTTP 200 answer" in text
    assert "a --client-cmd that only connects (openssl s_client) is error" in text
