"""Scenario files that used to escape the exit-2 promise (issue 12, item 5).

Before: a mapping nested 300 deep in ``expect:`` was a RecursionError traceback
(exit 1), /dev/zero was read until MemoryError, a FIFO with no writer hung
forever and a 100 MB file was accepted after 56 s and 506 MiB.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.proxyproc import free_port
from tlsinspector.proxy.scenario import MAX_FILE, ScenarioError, load_scenario

BIN = Path(sys.executable).parent / "tlsinspector"
GOOD = ("name: ok\nfaults:\n  - match: {from: server, index: 2}\n"
        "    action: set-record-version\n    version: 0x3030\n")


def check(path: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), "check", str(path)], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)


def assert_refused(path: Path | str, reason: str) -> None:
    res = check(path)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith(f"{path}"), res.stderr
    assert reason in res.stderr, res.stderr
    with pytest.raises(ScenarioError, match=re.escape(reason)):
        load_scenario(path)


def test_deep_nesting_in_expect(tmp_path: Path) -> None:
    f = tmp_path / "deep.yaml"
    f.write_text(GOOD + "expect:\n  go:\n" + "".join("  " * (i + 2) + f"k{i}:\n"
                                                       for i in range(300)) + "  " * 302 + "x\n")
    assert_refused(f, "YAML nested more than 32 levels deep")


def test_deep_flow_nesting(tmp_path: Path) -> None:
    f = tmp_path / "flow.yaml"
    f.write_text(GOOD + "expect: " + "[" * 2000 + "]" * 2000 + "\n")
    assert_refused(f, "YAML nested")


def test_alias_bomb(tmp_path: Path) -> None:
    f = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    f.write_text(GOOD + "expect:\n" + "".join(f"  {x}\n" for x in lines))
    assert_refused(f, "YAML expands to more than 100000 nodes (aliases of aliases?)")


def test_many_faults_without_aliases_are_not_called_an_alias_bomb(tmp_path: Path) -> None:
    # 20,000 plain faults (under MAX_FILE) read "(aliases of aliases?)": there are none.
    f = tmp_path / "many.yaml"
    f.write_text("name: t\nfaults:\n" + "  - match: {from: server}\n    action: drop\n" * 20000)
    assert_refused(f, "YAML expands to more than 100000 nodes (a scenario file is a few "
                      "faults; split a larger one into several)")


def test_too_large(tmp_path: Path) -> None:
    f = tmp_path / "big.yaml"
    f.write_text(GOOD + "# " + "x" * MAX_FILE + "\n")
    assert_refused(f, f"a scenario file is at most {MAX_FILE}")


def test_fifo_without_writer_does_not_hang(tmp_path: Path) -> None:
    f = tmp_path / "fifo.yaml"
    os.mkfifo(f)
    assert_refused(f, "not a regular file (a FIFO)")
    res = subprocess.run([str(BIN), "run", "--upstream", "127.0.0.1:1", "--listen",
                          f"127.0.0.1:{free_port()}", "--scenario", str(f)],
                         capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert res.returncode == 2 and "not a regular file (a FIFO)" in res.stderr


@pytest.mark.parametrize(("path", "kind"), [("/dev/zero", "a device or socket"),
                                            ("/tmp", "a directory")])
def test_devices_and_directories(path: str, kind: str) -> None:
    assert_refused(path, f"not a regular file ({kind})")


def test_ordinary_file_still_loads(tmp_path: Path) -> None:
    f = tmp_path / "ok.yaml"
    f.write_text(GOOD + "# " + "x" * (MAX_FILE - len(GOOD) - 10) + "\n")
    assert load_scenario(f).name == "ok"
    assert check(f).returncode == 0
