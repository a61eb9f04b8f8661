"""What a new user gets: one Debian package list, README commands that match what
CI runs, and nothing generic importable from the installed package."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def debian_packages() -> list[str]:
    lines = (ROOT / "packages.debian").read_text().splitlines()
    return [x.strip() for x in lines if x.strip() and not x.startswith("#")]


def test_one_debian_package_list_read_by_ci_make_and_readme() -> None:
    pkgs = debian_packages()
    # The peers the suite runs against and the transparent-mode tools.
    for need in ("openssl", "curl", "gnutls-bin", "golang-go", "libwolfssl-dev", "tshark",
                 "gcc", "make", "python3-venv", "iproute2", "iptables", "nftables"):
        assert need in pkgs
    assert len(pkgs) == len(set(pkgs))
    ci = (ROOT / ".ci" / "run").read_text()
    make = (ROOT / "Makefile").read_text()
    reads = "$(grep -v '^#' packages.debian)"
    ci_install = [x for x in ci.splitlines() if "apt-get install" in x]
    assert len(ci_install) == 1 and ci_install[0].endswith(reads)
    assert "$" + reads in make  # `make deps` ($$ in make is a shell $)
    readme_install = [x.strip() for x in README.splitlines() if "apt-get install" in x]
    assert readme_install == [f"sudo apt-get install --no-install-recommends {reads}"
                              "   # = make deps"]
    # No package named anywhere else: a second list would drift from this one.
    for name in ("gnutls-bin", "libwolfssl-dev", "nftables"):
        assert name not in ci and name not in make


def test_readme_mitmdump_line_is_local_and_uses_the_installed_addon() -> None:
    lines = [x for x in README.splitlines() if "mitmdump --mode" in x]
    assert lines
    for i, x in enumerate(README.splitlines()):
        if "mitmdump --mode" in x:
            cmd = x + README.splitlines()[i + 1]
            assert "--listen-host 127.0.0.1" in cmd
            assert '-s "$(.venv/bin/tlsinspector addon-path)"' in cmd


GENERIC_IMPORT = re.compile(r"^\s*(from|import)\s+(proxy|addons|lab|configs)\b", re.M)


def test_code_imports_only_through_the_namespace() -> None:
    """Installed, only ``tlsinspector.*`` exists: a bare ``import proxy`` works in the
    source tree (its root is on sys.path) and nowhere else."""
    offenders = []
    for folder in ("proxy", "addons", "lab", "tlsinspector", "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            if GENERIC_IMPORT.search(path.read_text()):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


#: pip's note about an index folder this machine's pip.conf names that does not
#: exist: the machine's configuration, not the project's build.
MACHINE_NOTE = re.compile(r"^WARNING: Location '[^']*' is ignored")


def pip_warnings(output: str) -> list[str]:
    """The warning lines of a pip install's output (setuptools' own included)."""
    return [x for x in output.splitlines()
            if re.search(r"warn|^\s*!!$", x, re.I) and not MACHINE_NOTE.match(x)]


def test_pip_warnings_finds_what_setuptools_prints() -> None:
    seen = ("  /tmp/x/editable_wheel.py:354: BuildBackendWarning: Editable installation.\n"
            "  !!\n"
            "SetuptoolsDeprecationWarning: License classifiers are deprecated.\n"
            "WARNING: Location 'file:///opt/x/simple/pip/' is ignored: it is neither a file\n"
            "Successfully installed tlsinspector\n")
    assert len(pip_warnings(seen)) == 3


@pytest.mark.timeout(300)
def test_editable_install_of_a_clean_copy_is_quiet(tmp_path: Path) -> None:
    """`make setup`'s install (pip install -e) prints no setuptools warning.
    Dependencies are not reinstalled (--no-deps): the build is what warned."""
    src = tmp_path / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    for d in ("tlsinspector", "proxy", "addons", "lab", "configs"):
        shutil.copytree(ROOT / d, src / d, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "v")],
                   check=True, timeout=120)
    res = subprocess.run([sys.executable, "-m", "pip", "--python", str(tmp_path / "v"),
                          "install", "--quiet", "--no-deps", "-e", "."], cwd=src,
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert pip_warnings(res.stdout + res.stderr) == []
