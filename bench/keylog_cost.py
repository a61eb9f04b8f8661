"""What ``--keylog`` costs the live proxy: CPU per handshake and per GB, with and without.

    .venv/bin/python bench/keylog_cost.py [--rounds 5] [--seconds 3] [--bulk-mb 128]
        [--clients 1] [--no-bulk]

Steadier than handshakes/s on a shared machine: the proxy's own CPU time (from
/proc, user + system) over a run of ``openssl s_time -new`` (TLS 1.3, then 1.2)
divided by the handshakes it completed, and over one curl download divided by
its size. ``inspector`` and ``inspector-keylog`` (the same build with
``--keylog`` on the key log the server writes; the server writes it in both, so
its cost is the same) are interleaved round by round, each round with a fresh
proxy, and the ratio keylog / inspector is taken per round, then the median.
bench/quick.py gives the throughput view (handshakes/s, MB/s) of the same pair.
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

from quick import cpu_seconds, proxy  # noqa: E402

from tlsinspector.lab.certs import make_certs  # noqa: E402
from tlsinspector.lab.peers import free_port, wait_for_port  # noqa: E402

KINDS = ("inspector", "inspector-keylog")


def s_time(port: int, ca: Path, tls: str, seconds: int, clients: int) -> int:
    """Full handshakes completed by ``clients`` parallel ``openssl s_time -new`` runs."""
    cmd = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-time",
           str(seconds), f"-tls{tls.replace('.', '_')}", "-CAfile", str(ca)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(clients)]
    total = 0
    for pr in procs:
        out, _ = pr.communicate(timeout=seconds + 30)
        line = next(x for x in out.splitlines() if "connections in" in x and "real" in x)
        total += int(line.split()[0])
    return total


def one(kind: str, upstream: str, tmp: Path, ca: Path, a: argparse.Namespace
        ) -> dict[str, float]:
    p, port = proxy(kind, upstream, tmp)
    res: dict[str, float] = {}
    try:
        for tls in ("1.3", "1.2"):
            cpu0, t0 = cpu_seconds(p.pid), time.perf_counter()
            n = s_time(port, ca, tls, a.seconds, a.clients)
            cpu = cpu_seconds(p.pid) - cpu0
            res[f"hs{tls}"] = n / (time.perf_counter() - t0)
            res[f"cpu{tls}"] = cpu * 1000 / max(1, n)
        if not a.no_bulk:
            cpu0 = cpu_seconds(p.pid)
            out = subprocess.run(
                ["curl", "-sS", "--fail", "-o", "/dev/null", "--cacert", str(ca),
                 "--max-time", "120", "-w", "%{size_download} %{speed_download}",
                 f"https://localhost:{port}/bulk"],
                capture_output=True, text=True, timeout=150, check=True)
            size, speed = out.stdout.split()
            res["mbps"] = float(speed) / 1e6
            res["gb"] = (cpu_seconds(p.pid) - cpu0) / (int(size) / 1e9)
    finally:
        p.terminate()
        p.wait(timeout=10)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--bulk-mb", type=int, default=128)
    ap.add_argument("--no-bulk", action="store_true")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tlsinspector-keycost-"))
    try:
        certs = make_certs(tmp / "certs")
        www = tmp / "www"
        www.mkdir()
        if not a.no_bulk:
            (www / "bulk").write_bytes(os.urandom(1 << 20) * a.bulk_mb)
        sport = free_port()
        server = subprocess.Popen(
            ["openssl", "s_server", "-accept", str(sport), "-cert", str(certs.server_cert),
             "-key", str(certs.server_key), "-WWW", "-quiet", "-naccept", "1000000",
             "-keylogfile", str(tmp / "server-keys.log")],
            cwd=www, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        try:
            wait_for_port("127.0.0.1", sport, 30, server)  # type: ignore[arg-type]
            rows: dict[str, list[dict[str, float]]] = {k: [] for k in KINDS}
            for i in range(a.rounds):
                for kind in KINDS:
                    rows[kind].append(one(kind, f"127.0.0.1:{sport}", tmp, certs.ca_cert, a))
                    print(f"{time.strftime('%H:%M:%S')} round {i + 1}: {kind} "
                          + " ".join(f"{k}={v:.3g}" for k, v in rows[kind][-1].items())
                          + f" (load {os.getloadavg()[0]:.1f})", file=sys.stderr)
        finally:
            server.terminate()
            server.wait(timeout=10)
        report(rows)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


LABELS = {"cpu1.3": "proxy CPU ms per TLS 1.3 handshake", "cpu1.2": "per TLS 1.2 handshake",
          "hs1.3": "handshakes/s TLS 1.3", "hs1.2": "handshakes/s TLS 1.2",
          "gb": "proxy CPU s per GB", "mbps": "bulk MB/s"}


def report(rows: dict[str, list[dict[str, float]]]) -> None:
    """Medians, per-round ratios and their median; for the CPU measures also the
    ratio of the best rounds (the least disturbed by other work: CPU time only
    grows with contention for caches and cores)."""
    keys = [k for k in LABELS if k in rows[KINDS[0]][0]]
    print("| measure | inspector (median) | inspector-keylog (median) "
          "| keylog / inspector per round | median ratio | ratio of the best rounds |")
    print("|---|---|---|---|---|---|")
    for k in keys:
        base = [r[k] for r in rows[KINDS[0]]]
        keyed = [r[k] for r in rows[KINDS[1]]]
        per = [y / x for x, y in zip(base, keyed, strict=True) if x]
        best = "-"
        if k.startswith("cpu") or k == "gb":
            best = f"{min(keyed) / min(base):.2f} ({min(base):.3g} / {min(keyed):.3g})"
        print(f"| {LABELS[k]} | {statistics.median(base):.3g} | {statistics.median(keyed):.3g} "
              f"| {' '.join(f'{v:.2f}' for v in per)} | {statistics.median(per):.2f} | {best} |")


if __name__ == "__main__":
    main()
