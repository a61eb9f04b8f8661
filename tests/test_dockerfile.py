"""The Dockerfile performs the README's install: run its steps in a fresh venv.

No Docker engine runs here, so the test replays the image build by hand: it
copies exactly what the Dockerfile COPYs into an empty folder and runs the
Dockerfile's `make setup` there, then the installed CLI.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def dockerfile_steps() -> tuple[list[tuple[str, str]], list[str]]:
    copies, runs = [], []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            *srcs, dst = shlex.split(line)[1:]
            copies += [(s, dst) for s in srcs]
        elif line.startswith("RUN make"):
            runs.append(line[len("RUN "):])
    return copies, runs


def test_readme_and_dockerfile_agree() -> None:
    _, runs = dockerfile_steps()
    assert runs == ["make setup PY=python3"]
    readme = (ROOT / "README.md").read_text()
    assert readme.splitlines()[2].strip().startswith("make demo")
    assert "make test" in readme.splitlines()[3]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\nmake test\n" in ci


@pytest.mark.timeout(600)
def test_dockerfile_install_steps_work_in_a_fresh_folder(tmp_path: Path) -> None:
    copies, runs = dockerfile_steps()
    for src, _dst in copies:
        s = ROOT / src
        if s.is_dir():
            shutil.copytree(s, tmp_path / src, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(s, tmp_path / src)
    for run in runs:
        argv = shlex.split(run)
        argv = [a if not a.startswith("PY=") else f"PY={sys.executable}" for a in argv]
        res = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=540)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    res = subprocess.run([str(tmp_path / ".venv" / "bin" / "tlsinspector"), "scenarios"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 0 and "record-version-3030" in res.stdout
