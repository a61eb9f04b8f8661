"""--intercept next to bare mitmproxy's own TLS interception (issue 21).

    .venv/bin/python bench/intercept_bench.py [--rounds 3] [--only hs|bulk]
                                              # prints Markdown tables

Two pairs, each measured with the same client tools, interleaved round by round:

- regular mode (an HTTP proxy; clients send CONNECT): bare ``mitmdump --mode
  regular`` (its HTTP interception: certificates from its CA, the HTTP flow
  parsed) against ``tlsinspector run --mode regular --intercept`` (both legs
  terminated, each logged record by record to JSONL, the plaintext relayed).
  Bulk: curl through the proxy; handshakes: Python threads doing CONNECT and a
  full TLS handshake (openssl s_time has no proxy option).
- reverse mode: bare ``mitmdump --mode reverse:tls://`` (TLS terminated on both
  legs, the stream relayed) against ``tlsinspector run --intercept``; bulk with
  curl, handshakes with ``openssl s_time -new``.

Besides the rates it reads each proxy's CPU time (/proc/PID/stat) around every
workload: CPU per GB and CPU per handshake are what a shared machine does not
distort much, and the per-round ratios (inspector / bare mitmproxy in the same
round) are printed next to the medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tlsinspector.addons.runner import ca_files  # noqa: E402
from tlsinspector.lab.certs import make_certs  # noqa: E402
from tlsinspector.lab.peers import free_port, wait_for_port  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from quick import s_time_count  # noqa: E402

ROUNDS = 3
BULK = 128 << 20
HS_SECONDS = 3.0
HS_THREADS = 2
KINDS = ("mitmproxy-regular", "inspector-regular", "mitmproxy-reverse", "inspector-reverse")


def start(kind: str, upstream: str, tmp: Path, ca_dir: Path, lab_ca: Path
          ) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    bin_ = Path(sys.executable).parent
    if kind.startswith("mitmproxy"):
        mode = "regular" if kind.endswith("regular") else f"reverse:tls://{upstream}"
        cmd = [str(bin_ / "mitmdump"), "--mode", mode, "-p", str(port), "--listen-host",
               "127.0.0.1", "--set", f"confdir={ca_dir}", "--set",
               f"ssl_verify_upstream_trusted_ca={lab_ca}", "-q"]
    else:
        mode = "regular" if kind.endswith("regular") else "reverse"
        cmd = [str(bin_ / "tlsinspector"), "run", "--listen", f"127.0.0.1:{port}", "--mode",
               mode, "--upstream", upstream, "--intercept", "--ca", str(ca_dir),
               "--upstream-ca", str(lab_ca), "--log", str(tmp / f"{kind}.jsonl"), "--quiet"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # a shared machine may take long to import mitmproxy
        wait_for_port("127.0.0.1", port, 120, p)  # type: ignore[arg-type]
    except BaseException:
        p.kill()
        p.wait(timeout=10)
        raise
    return p, port


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bulk(kind: str, port: int, sport: int, ca: Path, pid: int) -> tuple[float, float]:
    cpu0 = cpu_seconds(pid)
    if kind.endswith("regular"):
        target = ["-x", f"http://127.0.0.1:{port}", f"https://localhost:{sport}/bulk"]
    else:
        target = ["--resolve", f"localhost:{port}:127.0.0.1", f"https://localhost:{port}/bulk"]
    out = subprocess.run(["curl", "-sS", "--fail", "-o", "/dev/null", "--cacert", str(ca),
                          "--max-time", "180", "-w", "%{size_download} %{speed_download}",
                          *target], capture_output=True, text=True, timeout=200, check=True)
    size, speed = out.stdout.split()
    return float(speed) / 1e6, (cpu_seconds(pid) - cpu0) / (int(size) / 1e9)


def handshakes_s_time(port: int, ca: Path, seconds: float = HS_SECONDS) -> int:
    """Handshakes done by HS_THREADS ``openssl s_time -new`` in ``seconds``."""
    return s_time_count(port, ca, int(seconds), HS_THREADS)


def handshakes(kind: str, port: int, sport: int, ca: Path, pid: int
               ) -> tuple[float, float]:
    """(handshakes per second, proxy CPU milliseconds per handshake)."""
    cpu0, t = cpu_seconds(pid), time.perf_counter()
    n = (handshakes_connect(port, sport, ca) if kind.endswith("regular")
         else handshakes_s_time(port, ca))
    wall, cpu = time.perf_counter() - t, cpu_seconds(pid) - cpu0
    return n / wall, 1000 * cpu / max(n, 1)


def handshakes_connect(port: int, sport: int, ca: Path) -> int:
    """CONNECT, then a full TLS handshake and one request, in HS_THREADS threads."""
    ctx = ssl.create_default_context(cafile=str(ca))
    count = [0] * HS_THREADS
    deadline = time.monotonic() + HS_SECONDS

    def work(i: int) -> None:
        while time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
                raw.sendall(f"CONNECT localhost:{sport} HTTP/1.1\r\nHost: localhost:{sport}"
                            "\r\n\r\n".encode())
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = raw.recv(4096)
                    if not chunk:
                        raise RuntimeError("proxy closed during CONNECT")
                    head += chunk
                with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                    s.sendall(b"GET /small HTTP/1.0\r\nHost: localhost\r\n\r\n")
                    while s.recv(65536):
                        pass
            count[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(HS_THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=HS_SECONDS + 60)
    return sum(count)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--only", choices=("hs", "bulk"), help="one workload only")
    ap.add_argument("--bulk-mb", type=int, default=BULK >> 20)
    ap.add_argument("--kinds", default=",".join(KINDS),
                    help="comma-separated subset of " + ",".join(KINDS))
    a = ap.parse_args()
    kinds = [k for k in a.kinds.split(",") if k]
    if not set(kinds) <= set(KINDS):
        ap.error(f"--kinds: choose from {', '.join(KINDS)}")
    tmp = Path(tempfile.mkdtemp(prefix="tlsinspector-ibench-"))
    certs = make_certs(tmp / "certs")
    ca_pem, ca_dir = ca_files(str(tmp / "ca"))
    www = tmp / "www"
    www.mkdir()
    (www / "bulk").write_bytes(os.urandom(1 << 20) * a.bulk_mb)
    (www / "small").write_bytes(b"x" * 100)
    sport = free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", str(sport), "-cert", str(certs.server_cert),
         "-key", str(certs.server_key), "-WWW", "-quiet", "-naccept", "1000000"],
        cwd=www, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port("127.0.0.1", sport, 30, server)  # type: ignore[arg-type]
    metrics = ("mbps", "cpu", "hs", "hs_cpu")
    r: dict[str, dict[str, list[float]]] = {k: {m: [] for m in metrics} for k in kinds}
    try:
        for i in range(a.rounds):
            for kind in kinds:
                print(f"{time.strftime('%H:%M:%S')} round {i + 1}/{a.rounds}: {kind}",
                      file=sys.stderr)
                p, port = start(kind, f"127.0.0.1:{sport}", tmp, ca_dir, certs.ca_cert)
                try:
                    if a.only != "hs":
                        mbps, cpu = bulk(kind, port, sport, ca_pem, p.pid)
                        r[kind]["mbps"].append(mbps)
                        r[kind]["cpu"].append(cpu)
                    if a.only != "bulk":
                        # The first handshakes make the certificate (both proxies cache
                        # it): a short warm-up outside the measurement.
                        handshakes_s_time(port, ca_pem, 1) if kind.endswith("reverse") \
                            else None
                        hs, hs_cpu = handshakes(kind, port, sport, ca_pem, p.pid)
                        r[kind]["hs"].append(hs)
                        r[kind]["hs_cpu"].append(hs_cpu)
                finally:
                    p.terminate()
                    p.wait(timeout=10)
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)  # the bulk file is large
    report(r, kinds, a.rounds)


def report(r: dict[str, dict[str, list[float]]], kinds: list[str], rounds: int) -> None:
    def med(k: str, m: str) -> float:
        return statistics.median(r[k][m]) if r[k][m] else float("nan")

    def base(k: str) -> str:
        return "mitmproxy-" + k.split("-")[1]

    load = os.getloadavg()[0]
    print(f"Medians of {rounds} interleaved rounds; load average {load:.1f} at the end.\n")
    print("| path | bulk MB/s (curl, one connection) | x bare mitmproxy | proxy CPU s per GB "
          "| handshakes/s | x bare mitmproxy | proxy CPU ms per handshake | CPU x bare "
          "mitmproxy |")
    print("|---|---|---|---|---|---|---|---|")
    for k in kinds:
        b = base(k) if base(k) in r else k
        print(f"| {k} | {med(k, 'mbps'):.0f} | {med(k, 'mbps') / med(b, 'mbps'):.2f} | "
              f"{med(k, 'cpu'):.2f} | {med(k, 'hs'):.0f} | {med(k, 'hs') / med(b, 'hs'):.2f} | "
              f"{med(k, 'hs_cpu'):.2f} | {med(k, 'hs_cpu') / med(b, 'hs_cpu'):.2f} |")
    print("\n| ratio inspector / bare mitmproxy, per round (median) | bulk MB/s | CPU per GB "
          "| handshakes/s | CPU per handshake |")
    print("|---|---|---|---|---|")
    for k in kinds:
        if not k.startswith("inspector") or base(k) not in r:
            continue
        cells = []
        for m in ("mbps", "cpu", "hs", "hs_cpu"):
            ratios = [x / y for x, y in zip(r[k][m], r[base(k)][m], strict=False) if y]
            cells.append(" ".join(f"{x:.2f}" for x in ratios)
                         + (f" ({statistics.median(ratios):.2f})" if ratios else "-"))
        print(f"| {k} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
