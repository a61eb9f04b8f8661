"""Where the proxy's CPU goes: cProfile of ``tlsinspector run`` (or bare mitmdump)
under a bulk download and under ``openssl s_time -new``.

    .venv/bin/python bench/profile_proxy.py [--kind inspector|mitmproxy]
        [--bulk-mb 256] [--hs-seconds 5] [--extra "--no-app-records"] [--intercept]
        [--keylog] [--save DIR]

With ``--intercept`` both kinds terminate TLS on both legs: bare ``mitmdump
--mode reverse:tls://`` (mitmproxy's own interception) against ``tlsinspector run
--intercept``, certificates from one interception CA the clients trust.

Prints the functions by own time and a summary by area (mitmproxy's connection
handler and layer dispatch, hook dispatch through addons, our layer and engine,
the log, asyncio/uvloop, the kernel's read/write as seen from Python) for each
workload. With ``--keylog`` the server writes a key log that the proxy follows
(``run --keylog``), as in bench/keylog_cost.py. BENCHMARKS.md records what it said.
"""

from __future__ import annotations

import argparse
import os
import pstats
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tlsinspector.lab.certs import make_certs  # noqa: E402
from tlsinspector.lab.peers import free_port, wait_for_port  # noqa: E402

AREAS = (  # first match wins: (area, substrings of "file:function")
    ("startup (imports, option and CA setup)", ("importlib", "compile>", "marshal", "exec>",
                                                "__build_class__", "dataclasses.py",
                                                "typing.py", "re/_", "sre_", "inspect.py",
                                                "load_pem", "crypt>", "posix.stat",
                                                "open_code", "create_dynamic", "core.py:")),
    ("log (JSONL, coalescer, render)", ("logfile.py", "coalesce.py", "render.py", "orjson")),
    ("our engine (proxy/)", ("/proxy/engine.py", "/proxy/records.py", "/proxy/messages.py",
                             "/proxy/history.py", "/proxy/outbox.py", "/proxy/handshake.py",
                             "/proxy/hello.py", "/proxy/extensions.py", "/proxy/names.py",
                             "/proxy/phases.py", "/proxy/diagnosis.py", "/proxy/fingerprint.py",
                             "/proxy/certificate.py", "/proxy/faults.py", "/proxy/actions.py")),
    ("our layer (addons/)", ("addons/inspector.py", "addons/hotpath.py", "addons/limits.py",
                             "addons/mitm_internals.py", "addons/intercept.py",
                             "addons/certmaker.py")),
    ("TLS (OpenSSL via pyOpenSSL, certificates)", ("OpenSSL/", "cryptography/", "mitmproxy/certs",
                                                   "mitmproxy/tls.py",
                                                   "mitmproxy/proxy/layers/tls.py",
                                                   "mitmproxy/addons/tlsconfig.py")),
    ("hook dispatch (addonmanager, addons)", ("addonmanager.py", "mitmproxy/addons/",
                                              "hooks.py", "ctx", "optmanager.py")),
    ("mitmproxy layers and commands", ("mitmproxy/proxy/layer", "mitmproxy/proxy/commands",
                                       "mitmproxy/proxy/events", "mitmproxy/proxy/context",
                                       "mitmproxy/proxy/tunnel", "mitmproxy/connection.py",
                                       "mitmproxy/proxy/mode")),
    ("mitmproxy connection handler", ("mitmproxy/proxy/server.py", "asyncio_utils")),
    ("logging module", ("logging/", "mitmproxy/log.py", "termlog")),
    ("socket/ssl I/O (kernel time from Python)", ("method 'write'", "method 'send'",
                                                  "method 'recv'", "method 'read'",
                                                  "sendall", "method 'flush'")),
    ("asyncio streams/loop", ("asyncio/", "uvloop", "run_until_complete", "method 'run'")),
)


def area(key: tuple[str, int, str]) -> str:
    text = f"{key[0]}:{key[2]}"
    for name, needles in AREAS:
        if any(n in text for n in needles):
            return name
    return "other"


def summary(path: Path, top: int, per: int = 0) -> str:
    """``per``: the number of connections, to say the CPU per connection too."""
    st = pstats.Stats(str(path))
    raw = st.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1.0
    by: dict[str, float] = {}
    for key, v in raw.items():
        by[area(key)] = by.get(area(key), 0.0) + v[2]
    lines = [f"total own time {total:.2f} s"]
    if per:
        work = total - by.get("startup (imports, option and CA setup)", 0.0)
        lines[0] += (f"; without startup {work:.2f} s = {1000 * work / per:.2f} ms CPU per "
                     f"connection ({per} connections)")
    for name, t in sorted(by.items(), key=lambda x: -x[1]):
        lines.append(f"  {t / total:6.1%}  {t:7.2f} s  {name}")
    lines.append("  top functions by own time:")
    rows = sorted(raw.items(), key=lambda kv: -kv[1][2])[:top]
    for key, v in rows:
        where = f"{Path(key[0]).name}:{key[1]}({key[2]})"
        lines.append(f"  {v[2] / total:6.1%}  {v[1]:>9} calls  {where}")
    return "\n".join(lines)


def start_proxy(kind: str, upstream: str, tmp: Path, out: Path, extra: list[str],
                intercept: tuple[Path, Path] | None = None, steady: bool = False
                ) -> tuple[subprocess.Popen[bytes], int]:
    """``intercept``: (the interception CA folder, the CA that signed the server)."""
    port = free_port()
    if kind == "mitmproxy" and intercept:
        argv = ["mitmdump", "--mode", f"reverse:tls://{upstream}", "-p", str(port),
                "--listen-host", "127.0.0.1", "--set", f"confdir={intercept[0]}", "--set",
                f"ssl_verify_upstream_trusted_ca={intercept[1]}", "-q"]
        code = ("import sys; from mitmproxy.tools.main import mitmdump; "
                f"sys.argv = {argv!r}; run = mitmdump")
    elif kind == "mitmproxy":
        argv = ["mitmdump", "--mode", f"reverse:tcp://{upstream}", "-p", str(port),
                "--listen-host", "127.0.0.1", "--set", "connection_strategy=lazy",
                "--ignore-hosts", ".*", "-q"]
        code = ("import sys; from mitmproxy.tools.main import mitmdump; "
                f"sys.argv = {argv!r}; run = mitmdump")
    else:
        argv = ["run", "--listen", f"127.0.0.1:{port}", "--upstream", upstream, "--log",
                str(tmp / "p.jsonl"), "--quiet", *extra]
        if intercept:
            argv += ["--intercept", "--ca", str(intercept[0]), "--upstream-ca",
                     str(intercept[1])]
        code = f"from tlsinspector.cli import main; run = lambda: main({argv!r})"
    # CPU time (time.process_time), not wall time: time blocked in epoll is not the
    # proxy's work, and the machine is shared (a busy neighbour stretches wall time).
    # ``steady``: profile only between SIGUSR1 and SIGUSR2 (after a warm-up, so
    # imports, option parsing and the first certificates are left out).
    script = out.with_suffix(".py")
    script.write_text(
        "import cProfile, signal, time\n"
        "pr = cProfile.Profile(time.process_time)\n"
        "def _on(*_):\n"
        "    pr.enable()\n"
        "def _off(*_):\n"
        "    pr.disable()\n"
        f"    pr.dump_stats({str(out)!r})\n"
        "signal.signal(signal.SIGUSR1, _on)\n"
        "signal.signal(signal.SIGUSR2, _off)\n"
        + ("" if steady else "pr.enable()\n") +
        "try:\n"
        f"    {code}\n"
        "    run()\n"
        "except SystemExit:\n"
        "    pass\n"
        "finally:\n"
        "    pr.disable()\n"
        + ("" if steady else f"    pr.dump_stats({str(out)!r})\n"))
    cmd = [sys.executable, str(script)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # a shared machine may take long to import mitmproxy; never leave it running
        wait_for_port("127.0.0.1", port, 120, p)  # type: ignore[arg-type]
    except BaseException:
        p.kill()
        p.wait(timeout=10)
        raise
    return p, port


def stop(p: subprocess.Popen[bytes]) -> None:
    p.send_signal(signal.SIGINT)
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=10)


def bulk(a: argparse.Namespace, upstream: str, tmp: Path, extra: list[str],
         intercept: tuple[Path, Path] | None, client_ca: Path) -> None:
    """One curl download through the proxy, profiled."""
    prof = tmp / "bulk.prof"
    p, port = start_proxy(a.kind, upstream, tmp, prof, extra, intercept)
    t = time.perf_counter()
    subprocess.run(["curl", "-sS", "--fail", "-o", "/dev/null", "--cacert",
                    str(client_ca), "--max-time", "300",
                    f"https://localhost:{port}/bulk"], check=True, timeout=320)
    wall = time.perf_counter() - t
    stop(p)
    print(f"## bulk: {a.bulk_mb} MB through {a.kind} {a.extra} in {wall:.1f} s "
          "(under cProfile)\n")
    print(summary(prof, a.top))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", default="inspector", choices=("inspector", "mitmproxy"))
    ap.add_argument("--bulk-mb", type=int, default=256)
    ap.add_argument("--hs-seconds", type=int, default=5)
    ap.add_argument("--extra", default="", help="more `tlsinspector run` arguments")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--only", choices=("bulk", "hs"), help="one workload only")
    ap.add_argument("--save", metavar="DIR", help="keep the .prof files there")
    ap.add_argument("--keylog", action="store_true",
                    help="the server writes a key log and the proxy follows it (--keylog)")
    ap.add_argument("--intercept", action="store_true",
                    help="terminate both legs (tlsinspector --intercept against "
                         "mitmdump --mode reverse:tls://)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tlsinspector-profile-"))
    certs = make_certs(tmp / "certs")
    intercept = None
    client_ca = certs.ca_cert
    if a.intercept:
        from tlsinspector.addons.runner import ca_files

        client_ca, ca_dir = ca_files(str(tmp / "ca"))
        intercept = (ca_dir, certs.ca_cert)
    www = tmp / "www"
    www.mkdir()
    (www / "bulk").write_bytes(os.urandom(1 << 20) * a.bulk_mb)
    sport = free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", str(sport), "-cert", str(certs.server_cert),
         "-key", str(certs.server_key), "-WWW", "-quiet", "-naccept", "100000",
         *(["-keylogfile", str(tmp / "server-keys.log")] if a.keylog else [])],
        cwd=www, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", sport, 30, server)  # type: ignore[arg-type]
        upstream = f"127.0.0.1:{sport}"
        extra = shlex.split(a.extra)
        if a.keylog:
            extra += ["--keylog", str(tmp / "server-keys.log")]
        if a.only != "hs":
            bulk(a, upstream, tmp, extra, intercept, client_ca)
        if a.only == "bulk":
            return
        # Handshakes: openssl s_time -new, profiled after a warm-up of 2 s.
        prof = tmp / "hs.prof"
        p, port = start_proxy(a.kind, upstream, tmp, prof, extra, intercept, steady=True)
        s_time = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-tls1_3",
                  "-CAfile", str(client_ca), "-time"]
        subprocess.run([*s_time, "2"], capture_output=True, timeout=60, check=True)
        p.send_signal(signal.SIGUSR1)
        out = subprocess.run([*s_time, str(a.hs_seconds)], capture_output=True, text=True,
                             timeout=a.hs_seconds + 60).stdout
        p.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not prof.exists() and time.monotonic() < deadline:
            time.sleep(0.1)  # the proxy writes the profile from its signal handler
        stop(p)
        line = next((x for x in out.splitlines() if "connections in" in x and "real" in x), "")
        print(f"\n## handshakes: openssl s_time -new -tls1_3 for {a.hs_seconds} s through "
              f"{a.kind} {a.extra}: {line.strip()}\n")
        print(summary(prof, a.top, int(line.split()[0]) if line else 0))
        if a.save:
            Path(a.save).mkdir(parents=True, exist_ok=True)
            shutil.copy(prof, Path(a.save) / f"hs-{a.kind}.prof")
    finally:
        server.terminate()
        server.wait(timeout=10)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    main()
