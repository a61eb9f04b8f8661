"""The CLI: help, scenarios, check, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tlsinspector.cli import CONFIGS, main

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
    assert any(c in out for c in ("transcript-safe", "transcript-breaking", "needs-keys"))


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
    assert "address already in use" in res.stdout + res.stderr
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
