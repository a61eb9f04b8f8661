"""A quick side-by-side benchmark: direct, bare mitmproxy, tlsinspector (two settings).

    .venv/bin/python bench/quick.py            # prints a Markdown report

Same server, same client code, same run: bulk throughput over one TLS
connection, full handshakes per second with 4 concurrent clients, and the
codec's ClientHello parse + re-encode rate next to mitmproxy's parser.
"""

from __future__ import annotations

import hashlib
import platform
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.certs import make_certs  # noqa: E402
from lab.peers import free_port, wait_for_port  # noqa: E402
from lab.tlsserver import ThreadedTLSServer  # noqa: E402

BLOCK = hashlib.sha256(b"b").digest() * (1 << 15)
ROUNDS = 3


class Bulk(ThreadedTLSServer):
    def handle(self, tls: ssl.SSLSocket) -> None:
        want = int(tls.recv(64).decode() or 0)
        sent = 0
        while sent < want:
            n = min(len(BLOCK), want - sent)
            tls.sendall(BLOCK[:n])
            sent += n


def proxy(kind: str, upstream: str, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    bin_ = Path(sys.executable).parent
    if kind == "mitmproxy":
        cmd = [str(bin_ / "mitmdump"), "--mode", f"reverse:tcp://{upstream}", "-p", str(port),
               "--listen-host", "127.0.0.1", "--set", "connection_strategy=lazy",
               "--ignore-hosts", ".*", "-q"]
    else:
        cmd = [str(bin_ / "tlsinspector"), "run", "--listen", f"127.0.0.1:{port}",
               "--upstream", upstream, "--log", str(tmp / f"{kind}.jsonl"), "--quiet"]
        if kind == "inspector-no-app-records":
            cmd.append("--no-app-records")
        if kind == "inspector-fault-every-connection":
            # Transcript-safe and touching every connection: the ServerHello
            # record is re-split (a no-op size), so every byte passes the planner.
            scen = tmp / "every.yaml"
            scen.write_text("name: every-connection\nfaults:\n"
                            "  - match: {from: server, index: 1}\n"
                            "    action: fragment\n    size: 16384\n")
            cmd += ["--scenario", str(scen)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port("127.0.0.1", port, 30, p)  # type: ignore[arg-type]
    return p, port


def bulk(port: int, ca: Path, size: int) -> float:
    ctx = ssl.create_default_context(cafile=str(ca))
    t = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(str(size).encode())
        n = 0
        while n < size:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            n += len(chunk)
    return size / (time.perf_counter() - t) / 1e6


def handshakes(port: int, ca: Path, seconds: float, workers: int = 4) -> float:
    ctx = ssl.create_default_context(cafile=str(ca))
    deadline = time.perf_counter() + seconds

    def loop() -> int:
        n = 0
        while time.perf_counter() < deadline:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
                    ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"0")
            n += 1
        return n

    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        total = sum(ex.map(lambda _: loop(), range(workers)))
    return total / (time.perf_counter() - t)


def latency(port: int, ca: Path, n: int = 200) -> tuple[float, float]:
    """Median and p99 of connect + full handshake, in ms, one at a time."""
    ctx = ssl.create_default_context(cafile=str(ca))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as s:
            times.append((time.perf_counter() - t) * 1000)
            s.sendall(b"0")
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


def idle_memory(kind: str, upstream: str, ca: Path, tmp: Path, n: int = 500) -> float:
    """KiB of proxy RSS per established idle TLS connection (n held open at once)."""
    p, port = proxy(kind, upstream, tmp)
    ctx = ssl.create_default_context(cafile=str(ca))
    held = []
    try:
        def rss() -> int:
            status = Path(f"/proc/{p.pid}/status").read_text().splitlines()
            return int(next(x for x in status if x.startswith("VmRSS:")).split()[1])

        warm = socket.create_connection(("127.0.0.1", port), timeout=30)
        held.append(ctx.wrap_socket(warm, server_hostname="localhost"))
        base = rss()
        for _ in range(n):
            raw = socket.create_connection(("127.0.0.1", port), timeout=30)
            held.append(ctx.wrap_socket(raw, server_hostname="localhost"))
        return (rss() - base) / n
    finally:
        for s in held:
            s.close()
        p.terminate()
        p.wait(timeout=10)


def codec_rates() -> dict[str, float]:
    from mitmproxy.tls import ClientHello as MitmHello

    from proxy.handshake import HandshakeReassembler
    from proxy.hello import parse_client_hello
    from proxy.records import Record, RecordFramer

    bodies = []
    for f in sorted((ROOT / "tests" / "fixtures" / "hellos").glob("*.bin")):
        hs = HandshakeReassembler()
        for r in RecordFramer().feed(f.read_bytes()):
            if isinstance(r, Record):
                bodies += [m.body for m in hs.feed(r.payload, 1)]
    n = 20000

    def ours() -> None:
        for i in range(n):
            b = bodies[i % len(bodies)]
            assert parse_client_hello(b).encode() == b

    def mitm() -> None:
        for i in range(n):
            MitmHello(bodies[i % len(bodies)])

    def parse_tlslite() -> None:
        from tlslite.messages import ClientHello as TlsliteHello
        from tlslite.utils.codec import Parser

        framed = [bytearray(len(b).to_bytes(3, "big") + b) for b in bodies]  # its input form
        for i in range(n):
            TlsliteHello().parse(Parser(framed[i % len(framed)]))

    out = {}
    runs = [("tlsinspector parse+encode", ours), ("mitmproxy ClientHello", mitm)]
    try:
        import tlslite  # noqa: F401  (bench-only: pip install tlslite-ng)

        runs.append(("tlslite-ng ClientHello.parse", parse_tlslite))
    except ImportError:
        print("tlslite-ng not installed: pip install tlslite-ng to compare", file=sys.stderr)
    for name, fn in runs:
        t = time.perf_counter()
        fn()
        out[name] = n / (time.perf_counter() - t)
    return out


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="tlsinspector-bench-"))
    certs = make_certs(tmp / "certs")
    server = Bulk(certs.server_cert, certs.server_key)
    server.start()
    upstream = f"127.0.0.1:{server.port}"
    size = 256 << 20
    kinds = ("direct", "mitmproxy", "inspector", "inspector-no-app-records",
             "inspector-fault-every-connection")
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    lat: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    # Rounds interleave the configurations so drift on a shared machine hits all alike.
    for _ in range(ROUNDS):
        for kind in kinds:
            p = None
            port = server.port
            if kind != "direct":
                p, port = proxy(kind, upstream, tmp)
            try:
                samples[kind].append((bulk(port, certs.ca_cert, size),
                                      handshakes(port, certs.ca_cert, 3.0)))
                lat[kind].append(latency(port, certs.ca_cert))
            finally:
                if p:
                    p.terminate()
                    p.wait(timeout=10)
    rows = [(k, statistics.median(m for m, _ in v), statistics.median(h for _, h in v))
            for k, v in samples.items()]
    for kind, mbps, hs in rows:
        print(f"{kind}: {mbps:.0f} MB/s, {hs:.0f} handshakes/s", file=sys.stderr)
    idle = {k: idle_memory(k, upstream, certs.ca_cert, tmp) for k in ("mitmproxy", "inspector")}
    codec = codec_rates()
    base = {k: (m, h) for k, m, h in rows}["mitmproxy"]
    cpu = next((x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text()
                .splitlines() if x.startswith("model name")), platform.machine())
    import mitmproxy.version as mv

    cores = len(__import__("os").sched_getaffinity(0))
    print(f"Measured {time.strftime('%Y-%m-%d')} on {cpu}, {cores} "
          f"cores; Python {platform.python_version()}, mitmproxy {mv.VERSION}, "
          f"{ssl.OPENSSL_VERSION}.\n")
    print("| path | bulk MB/s (256 MB, one TLS connection) | x bare mitmproxy | "
          "handshakes/s (TLS 1.3, 4 clients) | x bare mitmproxy |")
    print("|---|---|---|---|---|")
    for kind, m, h in rows:
        print(f"| {kind} | {m:.0f} | {m / base[0]:.2f} | {h:.0f} | {h / base[1]:.2f} |")
    print("\n| path | handshake latency median (ms) | p99 (ms) | p99 - bare mitmproxy p99 |")
    print("|---|---|---|---|")
    med = {k: (statistics.median(a for a, _ in v), statistics.median(b for _, b in v))
           for k, v in lat.items()}
    for k, (m50, m99) in med.items():
        print(f"| {k} | {m50:.2f} | {m99:.2f} | {m99 - med['mitmproxy'][1]:+.2f} |")
    print("\n| path | proxy RSS per idle established TLS connection (500 held) |")
    print("|---|---|")
    for k, v in idle.items():
        print(f"| {k} | {v:.1f} KiB |")
    print("\n| codec (real ClientHellos) | per second | ratio |")
    print("|---|---|---|")
    ref = codec["mitmproxy ClientHello"]
    for k, v in codec.items():
        print(f"| {k} | {v:.0f} | {v / ref:.2f} |")


if __name__ == "__main__":
    main()
