"""The Dockerfile's two targets, replayed by hand (no Docker engine runs here).

The runtime target's install steps run in an empty folder exactly as written
(the COPY sources copied, the RUN lines run by bash with the same ENV, the
container paths moved under the test's folder); the steps that need root or an
image (apt-get, useradd, removing /src) are named and checked, not run. Then
the resulting venv must be a lean, non-editable install: the CLI works, the
scenarios and the addon are inside it, and no test tool is installed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.test_packaging import debian_packages, pip_warnings

ROOT = Path(__file__).resolve().parent.parent
TEST_TOOLS = ("pytest", "mypy", "ruff", "hypothesis", "pytest-timeout", "types-PyYAML")


@dataclass
class Stage:
    name: str
    base: str
    steps: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, argument)

    def args(self, instruction: str) -> list[str]:
        return [a for i, a in self.steps if i == instruction]


def stages() -> dict[str, Stage]:
    """The Dockerfile's stages by name, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arg = line.partition(" ")
        arg = " ".join(arg.split())
        if instruction == "FROM":
            base, _, name = arg.partition(" AS ")
            stage = out[name] = Stage(name, base)
        else:
            assert stage is not None, f"{instruction} before FROM"
            stage.steps.append((instruction, arg))
    return out


def apt_packages(run: str) -> list[str]:
    words = run.split("apt-get install", 1)[1].split("&&")[0].split()
    return [w for w in words if not w.startswith("-")]


def test_targets_runtime_and_lab() -> None:
    s = stages()
    assert set(s) == {"runtime", "lab"}
    rt, lab = s["runtime"], s["lab"]
    # PID 1 is tini, which forwards docker stop's SIGTERM to the proxy (and reaps
    # the lab's child processes); the proxy handles it (tests/test_shutdown.py).
    assert rt.args("ENTRYPOINT") == ['["tini", "--", "tlsinspector"]']
    # gcc and libc6-dev: `pip install .` compiles proxy/scan.py (setup.py, mypyc).
    assert any(apt_packages(r) == ["tini", "gcc", "libc6-dev"]
               for r in rt.args("RUN") if "apt-get install" in r)
    for st in (rt, lab):
        users = st.args("USER")
        assert users and users[-1] not in ("root", "0"), f"{st.name} runs as root"
    assert "useradd" in " ".join(rt.args("RUN"))
    # The install is a plain `pip install .` (no -e, no extras: no test tools).
    installs = [r for r in rt.args("RUN") if "pip" in r]
    assert len(installs) == 1 and 'pip" install --no-cache-dir --quiet . ' in installs[0] + " "
    assert " -e " not in installs[0] and "[test]" not in installs[0]
    # The lab adds the real peers `reproduce` and `matrix` run, all from packages.debian.
    assert lab.base == "runtime"
    lab_pkgs = [p for r in lab.args("RUN") if "apt-get install" in r for p in apt_packages(r)]
    for need in ("openssl", "curl", "gnutls-bin", "golang-go", "libwolfssl-dev", "gcc"):
        assert need in lab_pkgs
    assert set(lab_pkgs) <= set(debian_packages())


def test_readme_shows_both_targets() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docker build --target runtime -t tlsinspector ." in readme
    assert "docker build --target lab -t tlsinspector-lab ." in readme
    assert "docker run --rm tlsinspector-lab reproduce" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\nmake test\n" in ci


#: Runtime steps that need root, apt or the image itself: checked above, not run.
SYSTEM_STEPS = ("apt-get update", "rm -rf /src && useradd")


@pytest.mark.timeout(600)
def test_runtime_install_steps_give_a_lean_venv(tmp_path: Path) -> None:
    rt = stages()["runtime"]
    root = tmp_path / "image"

    def inside(path: str) -> Path:
        return root / path.lstrip("/")

    env = {**os.environ}
    # `python3` is this interpreter (the image's is 3.11 too).
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "python3").symlink_to(sys.executable)
    env["PATH"] = f"{shim}:{env['PATH']}"
    env.pop("VIRTUAL_ENV", None)
    workdir = inside("/")
    skipped, output = [], ""
    for instruction, arg in rt.steps:
        if instruction == "ENV" and not arg.startswith("PATH="):
            name, _, value = arg.partition("=")
            env[name] = str(inside(value))
        elif instruction == "WORKDIR":
            workdir = inside(arg)
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction == "COPY":
            *srcs, dst = shlex.split(arg)
            for src in srcs:
                s, d = ROOT / src, workdir / dst
                if s.is_dir():
                    shutil.copytree(s, d / src if dst == "./" else d, symlinks=True,
                                    ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    d.mkdir(parents=True, exist_ok=True)
                    shutil.copy(s, d)
        elif instruction == "RUN":
            if arg.startswith(SYSTEM_STEPS):
                skipped.append(arg)
                continue
            res = subprocess.run(["bash", "-euo", "pipefail", "-c", arg], cwd=workdir, env=env,
                                 capture_output=True, text=True, timeout=540)
            assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
            output += res.stdout + res.stderr
    assert len(skipped) == 2  # exactly the two system steps, nothing else left out
    assert pip_warnings(output) == []  # a quiet install: no setuptools warnings

    venv = inside("/opt/tlsinspector")
    pip = subprocess.run([str(venv / "bin" / "pip"), "list", "--format=json"],
                         capture_output=True, text=True, timeout=120, env=env)
    installed = {p["name"].lower() for p in json.loads(pip.stdout)}
    assert "tlsinspector" in installed and "mitmproxy" in installed
    assert installed.isdisjoint(t.lower() for t in TEST_TOOLS), installed
    for tool in ("pytest", "mypy", "ruff"):
        assert not (venv / "bin" / tool).exists()
    site = next((venv / "lib").glob("python3.*/site-packages"))
    assert not list(site.glob("__editable__*"))  # a real install, not a link to /src
    assert not {"proxy", "addons", "lab", "configs"} & {p.name for p in site.iterdir()}
    # The image ships analyze's capture loop compiled (setup.py), in the namespace.
    assert list((site / "tlsinspector" / "proxy").glob("scan.*.so"))
    assert not list(site.glob("scan*"))
    # The image removes /src; the venv must not need it.
    shutil.rmtree(inside("/src"))
    away = tmp_path / "elsewhere"
    away.mkdir()
    res = subprocess.run([str(venv / "bin" / "tlsinspector"), "scenarios"], cwd=away,
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0 and "record-version-3030" in res.stdout, res.stderr
    res = subprocess.run([str(venv / "bin" / "tlsinspector"), "addon-path"], cwd=away,
                         capture_output=True, text=True, timeout=60, env=env)
    assert Path(res.stdout.strip()).is_file()
    assert Path(res.stdout.strip()).is_relative_to(site)
