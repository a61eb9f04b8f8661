"""The CLI: help, scenarios, check, exit codes."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tlsinspector.cli import CONFIGS, _parser, main
from tlsinspector.proxy.scenario import load_scenario

BIN = Path(sys.executable).parent / "tlsinspector"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=60)


def test_help_explains_run_with_examples() -> None:
    res = run("run", "--help")
    assert res.returncode == 0
    for word in ("--listen", "--upstream", "--scenario", "--log", "127.0.0.1", "examples"):
        assert word in res.stdout


def test_run_without_upstream_is_a_usage_error() -> None:
    res = run("run", "--listen", "127.0.0.1:0")
    assert res.returncode == 2 and "--upstream" in res.stderr


def test_bad_listen_address_is_a_usage_error() -> None:
    res = run("run", "--listen", "nonsense", "--upstream", "x:1")
    assert res.returncode == 2 and "HOST:PORT" in res.stderr
    res = run("run", "--listen", "127.0.0.1:99999", "--upstream", "x:1")
    assert res.returncode == 2 and "with a port 0..65535, got '127.0.0.1:99999'" in res.stderr


def test_scenarios_lists_every_shipped_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenarios"]) == 0
    out = capsys.readouterr().out
    files = sorted(CONFIGS.glob("*.yaml"))
    assert len(files) >= 12
    for f in files:
        assert f.stem in out


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_check_accepts_every_shipped_scenario(path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ok" in out
    if load_scenario(path).faults:
        assert any(c in out for c in ("transcript-safe", "transcript-breaking", "needs-keys"))
    else:
        assert "no faults: a baseline run" in out


def test_check_rejects_a_broken_file_with_file_line_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfaults:\n  - match: {from: middle}\n    action: drop\n")
    res = run("check", str(bad))
    assert res.returncode == 2
    assert f"{bad}:3" in res.stderr and "from" in res.stderr and "client" in res.stderr


def test_run_rejects_a_broken_scenario_before_listening(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfaults:\n  - match: {}\n    action: dorp\n")
    res = run("run", "--upstream", "127.0.0.1:1", "--listen", "127.0.0.1:0", "--scenario", str(bad))
    assert res.returncode == 2 and "dorp" in res.stderr and "drop" in res.stderr


def test_check_exits_2_for_every_broken_table_entry(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The loader's table of broken scenarios, through the CLI: exit 2, file:line: field."""
    from tests.test_scenario import BROKEN

    assert len(BROKEN) >= 20
    for name, text, line, field, _fragments in BROKEN:
        f = tmp_path / f"{name}.yaml"
        f.write_text(text)
        assert main(["check", str(f)]) == 2, name
        err = capsys.readouterr().err
        where = f"{f}:{line}:" if line else f"{f}:"
        assert err.startswith(where) and field in err, (name, err)


def test_listening_is_announced_only_once_bound() -> None:
    """A port in use is an error and exit, never a "listening on" line."""
    import socket

    busy = socket.create_server(("127.0.0.1", 0))
    port = busy.getsockname()[1]
    try:
        res = run("run", "--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:1")
    finally:
        busy.close()
    assert res.returncode != 0
    assert "already in use" in res.stdout + res.stderr
    assert "listening on" not in res.stdout + res.stderr


def test_check_list_prints_every_match_key_and_action(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    from tlsinspector.proxy.actions import ACTIONS

    assert main(["check", "--list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("match keys")
    for name in ACTIONS:
        assert f"\n  {name}  [" in out


def test_check_without_a_file_or_list_is_a_usage_error(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    assert main(["check"]) == 2
    assert "--list" in capsys.readouterr().err


@pytest.mark.parametrize("listen", ["127.0.0.1:{port}", "*:{port}"])
def test_port_in_use_is_a_usage_error_in_listen_terms(listen: str) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        res = run("run", "--listen", listen.format(port=port), "--upstream", "127.0.0.1:9")
    assert res.returncode == 2
    assert f":{port}: the port is already in use" in res.stderr
    assert "--listen HOST:PORT" in res.stderr
    assert "--mode" not in res.stderr + res.stdout  # mitmproxy's advice is not ours
    assert "Traceback" not in res.stderr and "listening on" not in res.stdout


def test_an_address_not_on_this_host_is_a_usage_error() -> None:
    res = run("run", "--listen", "192.0.2.1:8443", "--upstream", "127.0.0.1:9")
    assert res.returncode == 2
    assert "cannot listen on 192.0.2.1:8443" in res.stderr and "--listen" in res.stderr


@pytest.mark.timeout(180)
def test_reproduce_removes_its_temporary_folder_unless_kept(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}

    def reproduce(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN), "reproduce", "record-version-3030", "--client",
                               "python", *extra], capture_output=True, text=True,
                              timeout=150, env=env, cwd=tmp_path)

    res = reproduce()
    assert res.returncode == 0 and "REPRODUCED" in res.stdout, res.stdout + res.stderr
    assert "logs: not kept" in res.stdout
    assert list(tmp_path.iterdir()) == []
    res = reproduce("--keep")
    assert res.returncode == 0
    [kept] = tmp_path.iterdir()
    assert kept.name.startswith("tlsinspector-record-version-3030-")
    assert f"logs: {kept}" in res.stdout and (kept / "inspector.jsonl").is_file()
    res = reproduce("--client", "go", "--out", "mine")  # --client repeated: both run
    assert res.returncode == 0, res.stdout + res.stderr
    assert {"python.client.txt", "go.client.txt"} <= {p.name for p in (tmp_path / "mine").iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([kept.name, "mine"])


def _actions(parser: argparse.ArgumentParser, path: str) -> list[tuple[str, argparse.Action]]:
    found = []
    for action in parser._actions:  # argparse has no public walk of its tree
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                command = argparse.Action([name], name, help=helps.get(name))
                found.append((f"{path} {name}", command))
                found += _actions(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            found.append((f"{path} {'/'.join(action.option_strings) or action.dest}", action))
    return found


def test_every_command_and_argument_has_help() -> None:
    actions = _actions(_parser(), "tlsinspector")
    assert len(actions) > 30  # the walk reaches every subcommand's arguments
    missing = [name for name, a in actions if not (a.help or "").strip()]
    assert missing == []


def test_client_cmd_help_names_every_placeholder() -> None:
    """A user learns {keylog} from --help too, not only from the README."""
    from tlsinspector.lab.reproduce import PLACEHOLDERS
    (client_cmd,) = [a for name, a in _actions(_parser(), "tlsinspector")
                     if name == "tlsinspector reproduce --client-cmd"]
    assert [p for p in PLACEHOLDERS if p not in (client_cmd.help or "")] == []


def test_a_port_taken_after_the_check_is_exit_2_too() -> None:
    """The race listen_problem cannot close: mitmproxy's own bind fails; still 2."""
    code = ("import sys; from tlsinspector.addons import runner; "
            "runner.listen_problem = lambda listen: None; "
            "sys.exit(runner.run(('127.0.0.1', int(sys.argv[1])), 'reverse', '127.0.0.1:9'))")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        res = subprocess.run([sys.executable, "-c", code, str(port)], capture_output=True,
                             text=True, timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "address already in use" in res.stdout + res.stderr


def test_run_refuses_a_scenario_that_needs_keys_without_keylog(tmp_path: Path) -> None:
    f = tmp_path / "inside.yaml"
    f.write_text("name: inside\nfaults:\n"
                 "  - match: {from: client, content_type: application_data}\n"
                 "    action: corrupt\n    offset: 0\n"
                 "  - match: {from: server, content_type: application_data, encrypted: true}\n"
                 "    action: insert-alert\n    level: warning\n    description: close_notify\n")
    res = run("run", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9", "--scenario",
              str(f))
    assert res.returncode == 2
    assert f"fault #2 of scenario inside ({f}:6, insert-alert)" in res.stderr
    assert "--keylog" in res.stderr
    check = run("check", str(f))
    assert check.returncode == 0 and "needs keys: fault #2 (run with --keylog FILE)" in check.stdout


def test_reproduce_without_client_takes_the_expect_sections_built_in_clients(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # The README's `reproduce record-version-3030` (a shipped name alone) refused with
    # "give --client KIND"; now it runs the built-in clients its expect: names, in that
    # order (a --client-cmd name there is not one). The run itself is stubbed: only
    # the choice of clients is under test here (test_peers_options runs real ones).
    import tlsinspector.lab.reproduce as rp

    got: list[list[str]] = []

    def fake(path: Path, clients: list[str], *args: object, **kw: object) -> list[object]:
        got.append(clients)
        return []

    monkeypatch.setattr(rp, "reproduce", fake)
    assert main(["reproduce", "record-version-3030"]) == 0
    kinds = ["go", "openssl", "curl", "gnutls", "python", "wolfssl"]
    assert list(load_scenario(CONFIGS / "record-version-3030.yaml").expect or {}) == kinds
    assert got == [kinds]
    assert f"the clients of the scenario's expect: section, {', '.join(kinds)}" in \
        capsys.readouterr().err
    mine = tmp_path / "mine.yaml"
    mine.write_text("name: mine\nexpect:\n  custom: {outcome: ok}\nfaults: []\n")
    assert main(["reproduce", str(mine)]) == 2
    assert "names no built-in client" in capsys.readouterr().err
    assert len(got) == 1


@pytest.mark.parametrize(("argv", "hint"), [
    (["reproduce", "record-version-3030", "--client", "opensl"], " (did you mean 'openssl'?)"),
    (["reproduce", "record-version-3030", "--client", "go,Curl"], " (did you mean 'curl'?)"),
    (["reproduce", "record-version-3030", "--client", "chrome"], " (did you mean 'chromium'?)"),
    (["matrix", "configs", "--clients", "go, wolfsl", "--out", "x"],
     " (did you mean 'wolfssl'?)"),
    (["reproduce", "record-version-3030", "--client", "zzz"], ""),
])
def test_an_unknown_client_suggests_the_closest(argv: list[str], hint: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # --client was the one unknown-name error without a did-you-mean (a scenario's
    # unknown action, key, server or client name all had one).
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"unknown client {argv[3].split(',')[-1].strip()!r}{hint}; allowed: go, " in err


@pytest.mark.parametrize("argv", [
    ["check", "record-version-303"],
    ["reproduce", "record-version-303"],
    ["run", "--upstream", "127.0.0.1:9", "--scenario", "record-version-303"],
])
def test_a_mistyped_scenario_name_is_named_with_the_closest_shipped_ones(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # A new user types a shipped scenario's name from memory: the closest names come
    # back (before, "cannot read the file: No such file or directory"), and nothing
    # starts listening.
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "record-version-303: no such file, and no shipped scenario of that name" in err
    assert "did you mean 'record-version-3030'" in err
    assert "`tlsinspector scenarios` lists the shipped ones" in err
    if argv[0] == "run":  # as run's other refusals (check and reproduce: FILE: reason)
        assert err.startswith("tlsinspector run: "), err


def test_an_argument_error_is_one_line_without_the_usage_block(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["run", "--listen", "127.0.0.1:99999"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err
    assert err.startswith("tlsinspector run: error: argument --listen: ")
    assert err.rstrip().endswith("(see tlsinspector run --help)")


def test_the_readmes_configs_path_works_outside_a_checkout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # The README says `check configs/strip-sni.yaml`; typed in another folder it named
    # no file ("cannot read the file"): it is the shipped scenario. A file of that
    # path that does exist still wins, and another missing name is still an error.
    monkeypatch.chdir(tmp_path)
    assert main(["check", "configs/strip-sni.yaml"]) == 0
    assert "scenario 'strip-sni'" in capsys.readouterr().out
    assert main(["check", "configs/no-such-scenario.yaml"]) == 2
    assert "cannot read the file" in capsys.readouterr().err
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "strip-sni.yaml").write_text("name: mine\nfaults: []\n")
    main(["check", "configs/strip-sni.yaml"])
    assert "scenario 'strip-sni'" not in capsys.readouterr().out


def test_an_expect_entry_for_no_built_in_client_is_noted_with_the_closest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # "expect: {kurl: ...}" passed check silently ("ok"): a --client-cmd NAME is
    # allowed there, so the typo only showed as a curl run with no expectation.
    typo = tmp_path / "typo.yaml"
    typo.write_text("name: t\nexpect:\n  kurl: {outcome: error}\n  go: {outcome: ok}\n"
                    "faults: []\n")
    assert main(["check", str(typo)]) == 0
    out = capsys.readouterr().out
    assert ("note: expect: 'kurl' is no built-in client (go, openssl, curl, gnutls, python, "
            "wolfssl, chromium): it applies only to a --client-cmd named kurl "
            "(did you mean 'curl'?)") in out
    assert "'go' is no built-in client" not in out
    alone = tmp_path / "alone.yaml"
    alone.write_text("name: t\nexpect:\n  kurl: {outcome: error}\nfaults: []\n")
    assert main(["reproduce", str(alone)]) == 2
    err = capsys.readouterr().err
    assert "names no built-in client to default to); expect: 'kurl'" in err
    assert "(did you mean 'curl'?)" in err


def test_scenarios_are_one_aligned_column(capsys: pytest.CaptureFixture[str]) -> None:
    # Names longer than the fixed 32 columns (interception-server-leg-record-version)
    # pushed their text out of line.
    assert main(["scenarios"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [load_scenario(p).name for p in sorted(CONFIGS.glob("*.yaml"))]
    width = max(map(len, names))
    assert width > 32
    for text, name in zip(lines, names, strict=True):
        assert text.startswith(name + " " * (width - len(name) + 1)), text
        assert text[width + 1] != " ", text
