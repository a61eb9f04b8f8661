"""What a new user gets: one Debian package list, README commands that match what
CI runs, and nothing generic importable from the installed package."""

from __future__ import annotations

import re
from pathlib import Path

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
