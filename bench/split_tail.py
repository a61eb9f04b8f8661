"""Where a relay's CPU per GB goes: user space or the kernel, and the handshake latency
tail from a sample large enough to have one (issue 19's last rows).

    .venv/bin/python bench/split_tail.py [--rounds 3] [--mb 256] [--latency 1000]
        [--only haproxy,mitmproxy,inspector,inspector-no-app-records]

Per round and per path (interleaved, fresh relay each time): one curl download of
``--mb`` MB from ``openssl s_server -WWW`` through the relay, the relay's user and
system CPU seconds per GB from /proc (``utime``, ``stime``), then ``--latency``
sequential TLS 1.3 handshakes (Python ssl, connect + handshake, as quick.py's
latency row but with enough samples that p99 is not the second-worst of 150).
``direct`` is the same client against the server itself. Prints per-path medians,
and p50/p90/p99/p99.9 over all rounds' samples pooled.

The point of the split: a relay that copies every byte through user space pays the
kernel's receive and send copies (system time) whatever it does in user space; the
user-space column is what the relay's own code costs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import quick  # noqa: E402
from quick import proxy  # noqa: E402

from tlsinspector.lab.certs import make_certs  # noqa: E402
from tlsinspector.lab.peers import free_port, wait_for_port  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def user_sys(pid: int) -> tuple[float, float]:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(f[11]) / TICK, int(f[12]) / TICK


def download(port: int, ca: Path, name: str) -> tuple[int, float]:
    out = subprocess.run(
        ["curl", "-sS", "--fail", "-o", "/dev/null", "--cacert", str(ca), "--max-time", "120",
         "-w", "%{size_download} %{speed_download}", f"https://localhost:{port}/{name}"],
        capture_output=True, text=True, timeout=150, check=True)
    size, speed = out.stdout.split()
    return int(size), float(speed) / 1e6


def handshake_times(port: int, ca: Path, n: int) -> list[float]:
    return quick.handshake_times(port, ca, n, tls13_only=True)


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mb", type=int, default=256)
    ap.add_argument("--latency", type=int, default=1000)
    ap.add_argument("--only", default="haproxy,mitmproxy,inspector,inspector-no-app-records")
    a = ap.parse_args()
    kinds = ["direct", *a.only.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="tlsinspector-split-"))
    try:
        certs = make_certs(tmp / "certs")
        www = tmp / "www"
        www.mkdir()
        (www / "bulk").write_bytes(os.urandom(1 << 20) * a.mb)
        sport = free_port()
        server = subprocess.Popen(
            ["openssl", "s_server", "-accept", str(sport), "-cert", str(certs.server_cert),
             "-key", str(certs.server_key), "-WWW", "-quiet", "-naccept", "1000000"],
            cwd=www, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        wait_for_port("127.0.0.1", sport, 30, server)  # type: ignore[arg-type]
        rows: dict[str, dict[str, list[float]]] = {
            k: {"user": [], "sys": [], "mbps": []} for k in kinds}
        lat: dict[str, list[float]] = {k: [] for k in kinds}
        try:
            for i in range(a.rounds):
                for kind in kinds:
                    print(f"{time.strftime('%H:%M:%S')} round {i + 1}: {kind} "
                          f"(load {os.getloadavg()[0]:.1f})", file=sys.stderr)
                    p, port = (None, sport) if kind == "direct" else proxy(
                        kind, f"127.0.0.1:{sport}", tmp)
                    try:
                        handshake_times(port, certs.ca_cert, 20)  # warm
                        u0, s0 = user_sys(p.pid) if p else (0.0, 0.0)
                        size, mbps = download(port, certs.ca_cert, "bulk")
                        u1, s1 = user_sys(p.pid) if p else (0.0, 0.0)
                        gb = size / 1e9
                        rows[kind]["user"].append((u1 - u0) / gb)
                        rows[kind]["sys"].append((s1 - s0) / gb)
                        rows[kind]["mbps"].append(mbps)
                        lat[kind] += handshake_times(port, certs.ca_cert, a.latency)
                    finally:
                        if p:
                            p.terminate()
                            p.wait(timeout=10)
        finally:
            server.terminate()
            server.wait(timeout=10)
        d50, d99 = pct(lat["direct"], 0.5), pct(lat["direct"], 0.99)
        print("\n| path | bulk MB/s | user CPU s per GB | system CPU s per GB | total | "
              "handshake p50 ms | p90 | p99 | p99.9 | p50 over direct | p99 over direct |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for k in kinds:
            m = {x: statistics.median(v) for x, v in rows[k].items()}
            cpu = ("-", "-", "-") if k == "direct" else (
                f"{m['user']:.3f}", f"{m['sys']:.3f}", f"{m['user'] + m['sys']:.3f}")
            print(f"| {k} | {m['mbps']:.0f} | {cpu[0]} | {cpu[1]} | {cpu[2]} | "
                  f"{pct(lat[k], 0.5):.2f} | {pct(lat[k], 0.9):.2f} | {pct(lat[k], 0.99):.2f} | "
                  f"{pct(lat[k], 0.999):.2f} | {pct(lat[k], 0.5) - d50:+.2f} | "
                  f"{pct(lat[k], 0.99) - d99:+.2f} |")
        print(f"\n{a.rounds} rounds, {a.mb} MB per download, {a.latency} handshakes per round "
              f"per path ({len(lat['direct'])} pooled); CPU: medians of the rounds "
              f"(clock tick {1000 // TICK} ms).")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
