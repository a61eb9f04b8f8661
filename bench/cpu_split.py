"""Where the proxy's CPU goes, kernel included: perf (by binary) and py-spy (by Python file).

    .venv/bin/python bench/cpu_split.py [--kind KIND] [--work bulk|hs] [--seconds 8]

KIND is one of bench/quick.py's paths (inspector, inspector-no-app-records,
mitmproxy, haproxy, ...).

cProfile (bench/profile_proxy.py) sees Python calls only and inflates them; this
samples the running proxy twice under the same workload (a 256 MB curl download
from ``openssl s_server -WWW``, or ``openssl s_time -new -tls1_3``):

1. ``perf record`` (kernel and user stacks): the share of the proxy's CPU samples in
   the kernel (by top kernel function: the socket copies, epoll, TCP) and in each
   user-space binary (libpython, uvloop, orjson, libc);
2. ``py-spy record --nonblocking`` (only the Python stacks, no kernel): the share
   of samples whose innermost frame of ours, mitmproxy's or asyncio's is where the
   time is, by owner, and the proxy's CPU seconds for the workload
   (``/proc/PID/stat``), so shares convert to CPU per GB or per handshake.

Needs perf (Debian linux-perf, installed on first use as quick.py does for haproxy)
and py-spy (the ``test`` extra); run as root (perf -p).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quick import cpu_seconds, proxy, www_server  # noqa: E402

from tlsinspector.lab.certs import make_certs  # noqa: E402

PY_OWNERS = (  # innermost frame's file: first match wins
    # No Python frame below the loop's run: uvloop's C code (libuv, the syscalls).
    ("event loop's C code (uvloop, syscalls)", ("asyncio/runners.py", "run_forever",
                                                "run_until_complete")),
    ("ours: engine (proxy/)", ("tlsinspector/proxy/", "wt-perf/proxy/")),
    ("ours: log (logfile, coalescer)", ("addons/logfile.py", "coalesce.py")),
    ("ours: layer and hot relay (addons/)", ("tlsinspector/addons/", "wt-perf/addons/")),
    ("mitmproxy: hook dispatch", ("mitmproxy/addonmanager.py", "mitmproxy/hooks.py",
                                  "mitmproxy/addons/")),
    ("mitmproxy: connection handler, layers", ("mitmproxy/",)),
    ("asyncio streams, tasks (Python)", ("asyncio/",)),
    ("other Python", ("",)),
)


def py_owner(frame: str) -> str:
    for name, needles in PY_OWNERS:
        if any(n in frame for n in needles):
            return name
    return "other Python"


def workload(kind: str, port: int, ca: Path, seconds: int) -> None:
    if kind == "bulk":
        subprocess.run(["curl", "-sS", "--fail", "-o", "/dev/null", "--cacert", str(ca),
                        "--max-time", "300", f"https://localhost:{port}/bulk"],
                       check=True, timeout=320)
    else:
        procs = [subprocess.Popen(["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new",
                                   "-tls1_3", "-CAfile", str(ca), "-time", str(seconds)],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                 for _ in range(2)]
        n = 0
        for pr in procs:
            out, _ = pr.communicate(timeout=seconds + 60)
            line = next(x for x in out.splitlines() if "connections in" in x and "real" in x)
            n += int(line.split()[0])
        print(f"handshakes: {n}")


def sampled(sampler: list[str], p: subprocess.Popen[bytes], a: argparse.Namespace, port: int,
            ca: Path) -> tuple[float, int]:
    """Run the workload under ``sampler`` attached to the proxy: (CPU s, handshakes)."""
    s = subprocess.Popen(sampler, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # the sampler attaches (no event to wait for from perf or py-spy)
    cpu0 = cpu_seconds(p.pid)
    workload(a.work, port, ca, a.seconds)
    cpu = cpu_seconds(p.pid) - cpu0
    s.send_signal(signal.SIGINT)
    s.wait(timeout=120)
    return cpu, 0


def perf_split(data: Path, sort: str = "dso,sym") -> list[tuple[str, float]]:
    out = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort",
                          sort, "--stdio", "-q", "-g", "none", "--percent-limit", "0.3"],
                         capture_output=True, text=True, timeout=300).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith("%"):
            rows.append((" ".join(parts[1:]), float(parts[0].rstrip("%"))))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", default="inspector")
    ap.add_argument("--work", default="bulk", choices=("bulk", "hs"))
    ap.add_argument("--seconds", type=int, default=8)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tlsinspector-cpusplit-"))
    certs = make_certs(tmp / "certs")
    www = tmp / "www"
    www.mkdir()
    (www / "bulk").write_bytes(os.urandom(1 << 20) * 256)
    # Its key log is the file inspector-keylog follows (--kind inspector-keylog), written
    # for every kind, so the server costs the same.
    server, sport = www_server(certs, www, tmp)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if shutil.which("perf") is None:  # as quick.py installs haproxy and socat
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "linux-perf"],
                       check=True, timeout=600, stdout=subprocess.DEVNULL)
    try:
        upstream = f"127.0.0.1:{sport}"
        p, port = proxy(a.kind, upstream, tmp)
        try:
            workload("hs" if a.work == "hs" else "bulk", port, certs.ca_cert, 2)  # warm-up
            data = tmp / "perf.data"
            cpu, _ = sampled(["perf", "record", "-F", "4999", "-g", "-o", str(data), "-p",
                              str(p.pid)], p, a, port, certs.ca_cert)
            print(f"## {a.kind}, {a.work}: perf, proxy CPU {cpu:.2f} s during the workload\n")
            kernel = sum(v for k, v in perf_split(data) if k.startswith("[kernel"))
            print(f"kernel share of samples: {kernel:.1f}%; by binary:")
            for k, v in perf_split(data, "dso")[:8]:
                print(f"  {v:5.1f}%  {k}")
            print("by function:")
            for k, v in perf_split(data)[:30]:
                print(f"  {v:5.1f}%  {k}")
            if a.kind.startswith("inspector") or a.kind == "mitmproxy":
                raw = tmp / "spy.txt"
                cpu, _ = sampled([pyspy, "record", "--nonblocking", "-r", "1000", "-f", "raw",
                                  "-o", str(raw), "-p", str(p.pid)], p, a, port, certs.ca_cert)
                shutil.copy(raw, Path(tempfile.gettempdir()) / f"cpu_split-{a.kind}-{a.work}.txt")
                by: collections.Counter[str] = collections.Counter()
                inner_by: collections.Counter[str] = collections.Counter()
                total = 0
                for line in raw.read_text().splitlines():
                    stack, _, count = line.rpartition(" ")
                    frames = stack.split(";")
                    n = int(count)
                    total += n
                    inner = next((f for f in reversed(frames) if "/" in f), frames[-1])
                    by[py_owner(inner)] += n
                    inner_by[inner] += n
                print(f"\n## {a.kind}, {a.work}: py-spy (Python stacks, idle samples "
                      f"excluded), proxy CPU {cpu:.2f} s\n")
                for k, v in by.most_common():
                    print(f"  {v / max(1, total):6.1%}  {k}")
                print("\n  innermost frames:")
                for k, v in inner_by.most_common(25):
                    print(f"  {v / max(1, total):6.1%}  {k}")
        finally:
            p.terminate()
            p.wait(timeout=30)
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
