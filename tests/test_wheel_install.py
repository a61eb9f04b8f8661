"""The wheel, installed the way a user installs it (not editable), into a fresh venv,
used from a folder outside the source tree.

The venv is created without system site packages; the wheel goes in with
--no-deps and the dependencies (mitmproxy, cryptography, ...) come from this
project's venv through a path entry, so nothing is downloaded or rebuilt. A path
entry is not a site directory: the project venv's own .pth files (its editable
install of the source tree) are not processed, so ``tlsinspector`` can only come
from the wheel.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.proxyproc import free_port, wait_port
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.tlsserver import HelloServer

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "tlsinspector", "proxy", "addons", "lab", "configs")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(the wheel, the fresh venv's python, its site-packages)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        s = ROOT / name
        if s.is_dir():
            shutil.copytree(s, src / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(s, src / name)
    # Offline: the build backend is the project venv's setuptools (a test extra).
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                          "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"),
                          str(src)],
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    wheel = next((tmp / "dist").glob("tlsinspector-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    res = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                          "--quiet", "--no-deps", "--no-index", str(wheel)],
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True,
                               timeout=60).stdout.strip())
    (site / "zz-project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return wheel, python, site


@pytest.fixture()
def away(tmp_path: Path) -> Path:
    d = tmp_path / "elsewhere"
    d.mkdir()
    assert not d.resolve().is_relative_to(ROOT)
    return d


def test_the_wheel_holds_one_namespace_with_its_data(
        installed: tuple[Path, Path, Path]) -> None:
    wheel, _, site = installed
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"tlsinspector"}
    for member in ("tlsinspector/configs/record-version-3030.yaml",
                   "tlsinspector/lab/go/client.go", "tlsinspector/lab/wolfssl/client.c",
                   "tlsinspector/addons/inspector.py", "tlsinspector/proxy/py.typed"):
        assert member in names
    # site-packages gained the package and its metadata, nothing generic.
    entries = {p.name for p in site.iterdir()}
    assert not entries & {"proxy", "addons", "lab", "configs"}
    assert "tlsinspector" in entries and (site / "tlsinspector").is_dir()
    assert not (site / "tlsinspector" / "proxy").is_symlink()
    assert not [e for e in entries if e.startswith("__editable__")]


def _cli(python: Path, away: Path, *args: str,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python.parent / "tlsinspector"), *args], cwd=away,
                          capture_output=True, text=True, timeout=timeout)


def test_scenarios_check_and_addon_path_work_outside_the_tree(
        installed: tuple[Path, Path, Path], away: Path) -> None:
    _, python, site = installed
    res = _cli(python, away, "scenarios")
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.splitlines()) >= 12 and "record-version-3030" in res.stdout
    res = _cli(python, away, "check", "record-version-3030")
    assert res.returncode == 0 and "ok, scenario 'record-version-3030'" in res.stdout
    res = _cli(python, away, "addon-path")
    addon = Path(res.stdout.strip())
    assert addon.is_file() and addon.is_relative_to(site / "tlsinspector")
    # And the code that runs is the wheel's, not the source tree's.
    res = subprocess.run([str(python), "-c", "import tlsinspector.proxy.engine as e, "
                          "tlsinspector.addons.runner as r; print(e.__file__, r.__file__)"],
                         cwd=away, capture_output=True, text=True, timeout=60)
    for f in res.stdout.split():
        assert Path(f).is_relative_to(site), f


@pytest.mark.timeout(300)
def test_reproduce_with_go_and_wolfssl(installed: tuple[Path, Path, Path], away: Path) -> None:
    _, python, _ = installed
    res = _cli(python, away, "reproduce", "record-version-3030", "--client", "go,wolfssl",
               "--out", str(away / "out"), timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "== record-version-3030 with go: client error" in res.stdout
    assert "== record-version-3030 with wolfssl: client ok" in res.stdout
    assert res.stdout.count("REPRODUCED") == 2


def test_mitmdump_with_the_installed_addon_relays_tls(installed: tuple[Path, Path, Path],
                                                      away: Path, certs: Certs) -> None:
    _, python, _ = installed
    addon = _cli(python, away, "addon-path").stdout.strip()
    server = HelloServer(certs.server_cert, certs.server_key)
    server.start()
    port, log = free_port(), away / "log.jsonl"
    # mitmdump as the venv's interpreter runs it (--no-deps put no script in bin/).
    cmd = [str(python), "-c", "from mitmproxy.tools.main import mitmdump; mitmdump()",
           "--mode", f"reverse:tcp://127.0.0.1:{server.port}", "--listen-host", "127.0.0.1",
           "-p", str(port), "-s", addon, "--set", f"tlsinspector_log={log}",
           "--set", "connection_strategy=lazy"]
    out = away / "mitmdump.out"
    with open(out, "wb") as o:
        proc = subprocess.Popen(cmd, cwd=away, stdout=o, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        wait_port(port, proc, lambda: out.read_text(errors="replace"))
        ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200 OK")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        server.close()
    evs = [json.loads(x) for x in log.read_text().splitlines()]
    kinds = [e["event"] for e in evs]
    assert kinds[0] == "connect" and kinds[-1] == "close"
    hellos = [m for e in evs for m in e.get("messages", []) if m["type"] == "client_hello"]
    assert hellos and hellos[0]["sni"] == "localhost"
    assert evs[-1]["bytes"]["client"] > 0 and evs[-1]["bytes"]["server"] > 0
