"""What ``--keylog`` costs the live proxy: CPU per handshake and per GB, with and without.

    .venv/bin/python bench/keylog_cost.py [--rounds 5] [--seconds 3] [--bulk-mb 128]
        [--clients 1] [--no-bulk] [--same]

Made for a shared machine: ``inspector`` and ``inspector-keylog`` (the same
build with ``--keylog`` on the key log its server writes) run *at the same
time*, each with its own ``openssl s_server`` (both write a key log, so they
cost the same) and its own ``openssl s_time -new`` clients (TLS 1.3, then 1.2),
then one curl download each, so both see the same load in the same seconds.
Then a second download phase: ``inspector`` again next to ``inspector-keylog``
following a key log that never gets the connection's keys (an empty file; its
server's own log is elsewhere), the case of a key log from another client: its
CPU per GB ("missing keys") shows what waiting for keys that never arrive costs.
Per path: the proxy's own CPU time (from /proc, user + system) per handshake and
per GB, and handshakes/s (two proxies competing for the same cores: the one
that costs more per handshake completes fewer). Each round starts fresh
proxies; the ratio keylog / inspector is taken per round, then the median.
bench/quick.py gives the one-at-a-time throughput view of the same pair.
``--same`` is the A/A check of the harness: the second path runs the plain
inspector too, so its ratios show the noise (and any bias) of the set-up itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quick import cpu_seconds, proxy, www_server  # noqa: E402

from tlsinspector.lab.certs import make_certs  # noqa: E402

KINDS = ("inspector", "inspector-keylog")
# --same: what each path really runs (the A/A check of this harness: both the plain
# inspector, so any ratio away from 1.00 is the harness's own noise or bias).
RUNS: dict[str, str] = {}


def s_time(port: int, ca: Path, tls: str, seconds: int, page: str | None = None
           ) -> subprocess.Popen[str]:
    """``openssl s_time -new`` (full handshakes, one at a time) started toward ``port``;
    with ``page``, each connection also fetches it (``-www``: a request and its response)."""
    cmd = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-time",
           str(seconds), f"-tls{tls.replace('.', '_')}", "-CAfile", str(ca)]
    if page is not None:
        cmd += ["-www", page]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def count(p: subprocess.Popen[str], seconds: int) -> int:
    out, _ = p.communicate(timeout=seconds + 30)
    return int(next(x for x in out.splitlines()
                    if "connections in" in x and "real" in x).split()[0])


def server(tmp: Path, certs: Any, www: Path) -> tuple[subprocess.Popen[bytes], str]:
    """An ``openssl s_server -WWW`` of its own per path (it serves one connection at a
    time), writing its key log in both paths so that the servers cost the same:
    ``tmp/server-keys.log``, the file bench/quick.py's inspector-keylog follows."""
    tmp.mkdir(exist_ok=True)
    p, port = www_server(certs, www, tmp)
    return p, f"127.0.0.1:{port}"


def download(procs: dict[str, tuple[subprocess.Popen[bytes], int]], ca: Path
             ) -> dict[str, tuple[float, float]]:
    """One curl download through each proxy at once: (MB/s, proxy CPU s per GB)."""
    cpu0 = {k: cpu_seconds(p.pid) for k, (p, _) in procs.items()}
    curls = {k: subprocess.Popen(
        ["curl", "-sS", "--fail", "-o", "/dev/null", "--cacert", str(ca),
         "--max-time", "120", "-w", "%{size_download} %{speed_download}",
         f"https://localhost:{port}/bulk"], stdout=subprocess.PIPE, text=True)
        for k, (_, port) in procs.items()}
    out: dict[str, tuple[float, float]] = {}
    for k, c in curls.items():
        text, _ = c.communicate(timeout=150)
        size, speed = text.split()
        out[k] = (float(speed) / 1e6,
                  (cpu_seconds(procs[k][0].pid) - cpu0[k]) / (int(size) / 1e9))
    return out


def missing_keys(upstreams: dict[str, str], tmp: Path, ca: Path) -> tuple[float, float]:
    """CPU per GB of the plain inspector and of one whose key log lacks the keys."""
    (tmp / "missing").mkdir(exist_ok=True)
    (tmp / "missing" / "server-keys.log").touch()  # followed, never written
    procs = {"inspector": proxy("inspector", upstreams["inspector"], tmp / "inspector"),
             "missing": proxy("inspector-keylog", upstreams["missing"], tmp / "missing")}
    try:
        got = download(procs, ca)
    finally:
        for p, _ in procs.values():
            p.terminate()
            p.wait(timeout=10)
    return got["inspector"][1], got["missing"][1]


def one_round(upstreams: dict[str, str], tmp: Path, ca: Path, a: argparse.Namespace
              ) -> dict[str, dict[str, float]]:
    """Both paths at once, each with its own server and clients: the same machine
    load during the same seconds, whatever else runs on it."""
    procs = {kind: proxy(RUNS.get(kind, kind), upstreams[kind], tmp / kind) for kind in KINDS}
    res: dict[str, dict[str, float]] = {kind: {} for kind in KINDS}
    try:
        for tls in ("1.3", "1.2"):
            cpu0 = {k: cpu_seconds(p.pid) for k, (p, _) in procs.items()}
            t0 = time.perf_counter()
            clients = {k: [s_time(port, ca, tls, a.seconds, "/page" if a.request else None)
                           for _ in range(a.clients)]
                       for k, (_, port) in procs.items()}
            n = {k: sum(count(c, a.seconds) for c in cs) for k, cs in clients.items()}
            wall = time.perf_counter() - t0
            for k, (p, _) in procs.items():
                res[k][f"hs{tls}"] = n[k] / wall
                res[k][f"cpu{tls}"] = (cpu_seconds(p.pid) - cpu0[k]) * 1000 / max(1, n[k])
        if not a.no_bulk:
            for k, (mbps, gb) in download(procs, ca).items():
                res[k]["mbps"], res[k]["gb"] = mbps, gb
    finally:
        for p, _ in procs.values():
            p.terminate()
            p.wait(timeout=10)
    if not a.no_bulk:
        base, missing = missing_keys(upstreams, tmp, ca)
        res[KINDS[0]]["gbmiss"], res[KINDS[1]]["gbmiss"] = base, missing
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=1, help="s_time processes per path")
    ap.add_argument("--bulk-mb", type=int, default=128)
    ap.add_argument("--no-bulk", action="store_true")
    ap.add_argument("--request", action="store_true",
                    help="each handshake's connection also fetches a 1 KiB page")
    ap.add_argument("--same", action="store_true",
                    help="A/A check: the second path runs the plain inspector too")
    a = ap.parse_args()
    if a.same:
        RUNS["inspector-keylog"] = "inspector"
    tmp = Path(tempfile.mkdtemp(prefix="tlsinspector-keycost-"))
    servers: list[subprocess.Popen[bytes]] = []
    try:
        certs = make_certs(tmp / "certs")
        www = tmp / "www"
        www.mkdir()
        (www / "page").write_bytes(b"x" * 1024)
        if not a.no_bulk:
            (www / "bulk").write_bytes(os.urandom(1 << 20) * a.bulk_mb)
        upstreams = {}
        for kind in (*KINDS, "missing"):
            # The "missing" server writes its key log where no proxy follows it.
            p, upstreams[kind] = server(tmp / (kind + "-server" if kind == "missing" else kind),
                                        certs, www)
            servers.append(p)
        rows: dict[str, list[dict[str, float]]] = {k: [] for k in KINDS}
        for i in range(a.rounds):
            got = one_round(upstreams, tmp, certs.ca_cert, a)
            for kind in KINDS:
                rows[kind].append(got[kind])
                print(f"{time.strftime('%H:%M:%S')} round {i + 1}: {kind} "
                      + " ".join(f"{k}={v:.3g}" for k, v in got[kind].items())
                      + f" (load {os.getloadavg()[0]:.1f})", file=sys.stderr)
        if not a.same:  # a guard for this bench's own set-up
            log = tmp / "inspector-keylog" / "inspector-keylog.jsonl"
            statuses = {str(e.get("decrypted", {}).get("status"))
                        for e in map(json.loads, log.read_text().splitlines())}
            if "decrypted" not in statuses:
                sys.exit("inspector-keylog decrypted nothing: it follows the wrong key log")
        else:
            print("A/A (--same): both paths run the plain inspector")
        report(rows)
    finally:
        for p in servers:
            p.terminate()
            p.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


LABELS = {"cpu1.3": "proxy CPU ms per TLS 1.3 handshake", "cpu1.2": "per TLS 1.2 handshake",
          "hs1.3": "handshakes/s TLS 1.3", "hs1.2": "handshakes/s TLS 1.2",
          "gb": "proxy CPU s per GB", "mbps": "bulk MB/s",
          "gbmiss": "proxy CPU s per GB, key log without the connection's keys"}


def report(rows: dict[str, list[dict[str, float]]]) -> None:
    """Medians, per-round ratios and their median; for the CPU measures also the
    ratio of the best rounds (the least disturbed by other work: CPU time only
    grows with contention for caches and cores)."""
    keys = [k for k in LABELS if k in rows[KINDS[0]][0]]
    print("| measure | inspector (median) | inspector-keylog (median) "
          "| keylog / inspector per round | median ratio | geometric mean (95% CI) "
          "| ratio of the best rounds |")
    print("|---|---|---|---|---|---|---|")
    for k in keys:
        base = [r[k] for r in rows[KINDS[0]]]
        keyed = [r[k] for r in rows[KINDS[1]]]
        per = [y / x for x, y in zip(base, keyed, strict=True) if x and y]
        best = "-"
        if k.startswith("cpu") or k.startswith("gb"):
            best = f"{min(keyed) / min(base):.2f} ({min(base):.3g} / {min(keyed):.3g})"
        print(f"| {LABELS[k]} | {statistics.median(base):.3g} | {statistics.median(keyed):.3g} "
              f"| {' '.join(f'{v:.2f}' for v in per)} | {statistics.median(per):.2f} "
              f"| {geomean_ci(per)} | {best} |")


def geomean_ci(ratios: list[float]) -> str:
    """The geometric mean of per-round ratios and its 95% interval (t on the logs):
    with two proxies competing for two cores a single round's ratio swings by a
    quarter either way even between two identical proxies (``--same``), so a target
    like 0.9x is only judged with enough rounds for the interval to say so."""
    logs = [math.log(r) for r in ratios]
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return f"{math.exp(mean):.2f}"
    half = T95.get(len(logs) - 1, 1.96) * statistics.stdev(logs) / math.sqrt(len(logs))
    return f"{math.exp(mean):.2f} ({math.exp(mean - half):.2f}-{math.exp(mean + half):.2f})"


# Two-sided 95% Student t quantiles by degrees of freedom (1.96 beyond the table).
T95 = dict(enumerate((12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23, 2.20,
                      2.18, 2.16, 2.14, 2.13, 2.12, 2.11, 2.10, 2.09, 2.09, 2.08, 2.07,
                      2.07, 2.06, 2.06, 2.06, 2.05, 2.05, 2.05, 2.04), start=1))


if __name__ == "__main__":
    main()
