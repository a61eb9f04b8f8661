"""Other connections' latency while one client sends a 384 KB hello in 1-byte records.

    .venv/bin/python bench/hostile.py [--records 65536] [--scenario remove-sni]

One run, side by side: a probe opens a fresh TLS connection through the
inspector every 50 ms (Python's ssl against the project's echo server: full
handshake plus a 100-byte echo) and times it, first for a quiet baseline
window, then while an attacker sends a ClientHello as N one-byte handshake
records (N = 65536: 384 KB on the wire), each phase the same length. Also
reported: the proxy's CPU time and RSS growth for the attack, how long until
it logged the attacker's completed hello, and the log bytes the attack cost.
Prints a Markdown table (RELIABILITY.md's "hostile input" section quotes it).
The issue 12 figures for the code before the fix: 32k records cost 3.1 s of
CPU and stalled every other connection 5.4 s; 64k records 11.3 s CPU, 24 s
stall, +58 MiB RSS and a 13 MB log.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

from tests.test_handshake import client_hello, one_byte_records  # noqa: E402
from tlsinspector.lab.certs import make_certs  # noqa: E402
from tlsinspector.lab.peers import free_port, stop_process, wait_for_port  # noqa: E402
from tlsinspector.lab.tlsserver import EchoServer  # noqa: E402

WINDOW = 6.0      # seconds per phase
PERIOD = 0.05     # seconds between probes
REMOVE_SNI = """name: remove-sni
faults:
  - match: {from: client, handshake: client_hello, sni: example.test}
    action: remove-extensions
    extensions: [server_name]
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("VmRSS:")).split()[1]) / 1024


def probe(port: int, ctx: ssl.SSLContext) -> float:
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"x" * 100)
        got = b""
        while len(got) < 100:
            chunk = s.recv(100)
            if not chunk:
                break
            got += chunk
    return time.perf_counter() - start


def probes(port: int, ctx: ssl.SSLContext, seconds: float) -> list[float]:
    out: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        out.append(probe(port, ctx))
        time.sleep(max(0.0, PERIOD - (time.monotonic() - t0)))  # pacing, not synchronisation
    return out


def summary(lat: list[float]) -> str:
    ms = sorted(x * 1000 for x in lat)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    return (f"{len(ms)} probes: median {statistics.median(ms):.1f} ms, p95 {p95:.1f} ms, "
            f"max {ms[-1]:.1f} ms")


def conn_lines(log: Path, conn: str) -> list[str]:
    return [x for x in log.read_text().splitlines() if json.loads(x).get("conn") == conn]


class HelloWatch:
    """Whether the attacker's completed hello is in the log (reads only new bytes, so
    polling costs the bench process, which also runs the probes, next to nothing)."""

    def __init__(self, log: Path, conn: str) -> None:
        self.f = open(log, "rb")  # noqa: SIM115 - read until the bench ends
        self.f.seek(0, 2)
        self.key = f'"conn":"{conn}"'.encode()
        self.rest = b""

    def seen(self) -> bool:
        data = self.rest + self.f.read()
        lines = data.split(b"\n")
        self.rest = lines.pop()
        return any(self.key in x and b'"messages"' in x for x in lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=65536, help="one-byte records in the hello")
    ap.add_argument("--scenario", choices=("none", "remove-sni"), default="none")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tlsi-hostile-"))
    certs = make_certs(tmp / "certs")
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    echo = EchoServer(certs.server_cert, certs.server_key)
    echo.start()
    port, log = free_port(), tmp / "log.jsonl"
    cmd = [str(Path(sys.executable).parent / "tlsinspector"), "run", "--listen",
           f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{echo.port}", "--log", str(log)]
    if args.scenario == "remove-sni":
        (tmp / "s.yaml").write_text(REMOVE_SNI)
        cmd += ["--scenario", str(tmp / "s.yaml")]
    with open(tmp / "out.txt", "wb") as out:
        proxy = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port, proc=proxy)
        probes(port, ctx, 1.0)  # warm up
        baseline = probes(port, ctx, WINDOW)

        data = one_byte_records(client_hello(args.records))
        conns_before = sum(1 for x in log.read_text().splitlines()
                           if json.loads(x)["event"] == "connect")
        cpu0, rss0 = cpu_seconds(proxy.pid), rss_mib(proxy.pid)
        attacker = socket.create_connection(("127.0.0.1", port), timeout=60)
        conn = str(conns_before + 1)  # the attacker connects first in this phase
        started = time.monotonic()
        done: dict[str, float] = {}

        watch = HelloWatch(log, conn)

        def attack() -> None:
            attacker.sendall(data)
            deadline = time.monotonic() + 120
            while not watch.seen() and time.monotonic() < deadline:
                time.sleep(0.02)  # polling the log for the attacker's hello
            done["parsed"] = time.monotonic() - started

        thread = threading.Thread(target=attack, daemon=True)
        thread.start()
        during = probes(port, ctx, WINDOW)
        thread.join(120)
        cpu = cpu_seconds(proxy.pid) - cpu0
        rss = rss_mib(proxy.pid) - rss0
        attacker.close()
        log_cost = sum(len(x) + 1 for x in conn_lines(log, conn))
        parsed = done.get("parsed", float("nan"))
    finally:
        stop_process(proxy)
        echo.close()
    print(f"Run {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; scenario: {args.scenario}.\n")
    print("| measure | figure |\n|---|---|")
    print(f"| attack | ClientHello of {args.records} bytes in {args.records} one-byte "
          f"records: {len(data):,} bytes |")
    print(f"| other connections, quiet ({WINDOW:g} s) | {summary(baseline)} |")
    print(f"| other connections, under attack ({WINDOW:g} s) | {summary(during)} |")
    print(f"| attacker's hello parsed and logged after | {parsed:.2f} s |")
    print(f"| proxy CPU in the attack window (attack and probes) | {cpu:.2f} s |")
    print(f"| proxy RSS growth | {rss:+.1f} MiB |")
    print(f"| log bytes for the attacker's connection | {log_cost:,} |")


if __name__ == "__main__":
    main()
