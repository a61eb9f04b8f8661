"""A side-by-side benchmark: direct, bare mitmproxy, tlsinspector in four settings.

    .venv/bin/python bench/quick.py            # prints a Markdown report (make bench)

One run, same machine, same servers, configurations interleaved round by round
so that drift on a shared machine hits all alike. Load comes from real tools:
curl downloading from ``openssl s_server -WWW`` (bulk), ``openssl s_time``
(full handshakes per second, TLS 1.2 and 1.3), Python's ssl for handshake
latency, 100 curl downloads at once from Go's net/http (lab/go/server.go -www),
and 10,000 idle established connections held by bench/hold.py (fewer where the
open-file hard limit does not allow two descriptors per proxied connection; the
row says how many; BENCH_IDLE=N to choose). ``--memory-only`` runs just the
idle row. Besides throughput, the proxy's
own CPU time per GB is reported: it is what a faster proxy saves, and it is
less noisy than throughput on a 2-core machine where client, server and proxy
share the cores.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tlsinspector.lab.certs import make_certs  # noqa: E402
from tlsinspector.lab.peers import free_port, wait_for_port  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
BULK = 256 << 20       # bytes per bulk download
GROWTH = 1 << 30       # bytes for the RSS growth run
HS_SECONDS = 2         # per s_time run
HS_CLIENTS = 2         # parallel s_time processes
KINDS = ("direct", "haproxy", "socat", "mitmproxy", "inspector", "inspector-full-path",
         "inspector-all-addons", "inspector-no-app-records",
         "inspector-fault-every-connection", "inspector-asyncio", "inspector-pcap",
         "inspector-keylog", "inspector-floor")
STEADY = {  # what each configuration is, for the report
    "direct": "client to server, no proxy (the limit)",
    "haproxy": "haproxy 2.6, mode tcp (Debian package; its default threads)",
    "socat": "socat TCP-LISTEN,fork (a process per connection)",
    "mitmproxy": "bare mitmproxy relaying raw TCP (reverse:tcp, --ignore-hosts '.*')",
    "inspector-full-path": "tlsinspector without the hot path (TLSINSPECTOR_NO_HOTPATH=1): "
                           "every chunk through mitmproxy's layer, as before issue 19",
    "inspector-all-addons": "tlsinspector on mitmproxy's DumpMaster with all its addons "
                            "(TLSINSPECTOR_ALL_ADDONS=1), as before issue 19",
    "inspector": "tlsinspector, every record logged to JSONL (default settings)",
    "inspector-no-app-records": "tlsinspector --no-app-records (application data counted)",
    "inspector-fault-every-connection": "tlsinspector with a fault on every connection",
    "inspector-asyncio": "tlsinspector --loop asyncio (mitmproxy's own event loop)",
    "inspector-pcap": "tlsinspector --pcap (both legs written to a pcapng as well)",
    "inspector-keylog": "tlsinspector --keylog on the server's key log (handshake messages "
                        "and alerts decrypted, bulk counted)",
    "inspector-floor": "the inspector with an engine that does nothing (bench/floor.py): "
                       "mitmproxy's accept path and the hot relay, no inspection, no log",
}


def proxy(kind: str, upstream: str, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    bin_ = Path(sys.executable).parent
    env = dict(os.environ)
    if kind == "haproxy":
        cfg = tmp / f"haproxy-{port}.cfg"
        cfg.write_text(f"global\n  maxconn 1000\ndefaults\n  mode tcp\n  timeout connect 5s\n"
                       f"  timeout client 120s\n  timeout server 120s\n"
                       f"frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\n"
                       f"backend b\n  server s1 {upstream}\n")
        cmd = ["haproxy", "-db", "-f", str(cfg)]
    elif kind == "socat":
        cmd = ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,backlog=1024",
               f"TCP:{upstream}"]
    elif kind == "mitmproxy":
        cmd = [str(bin_ / "mitmdump"), "--mode", f"reverse:tcp://{upstream}", "-p", str(port),
               "--listen-host", "127.0.0.1", "--set", "connection_strategy=lazy",
               "--ignore-hosts", ".*", "-q"]
    elif kind == "inspector-floor":
        cmd = [sys.executable, str(Path(__file__).resolve().parent / "floor.py"), "run",
               "--listen", f"127.0.0.1:{port}", "--upstream", upstream, "--quiet"]
    else:
        cmd = [str(bin_ / "tlsinspector"), "run", "--listen", f"127.0.0.1:{port}",
               "--upstream", upstream, "--log", str(tmp / f"{kind}.jsonl"), "--quiet"]
        if kind == "inspector-no-app-records":
            cmd.append("--no-app-records")
        if kind == "inspector-full-path":
            env["TLSINSPECTOR_NO_HOTPATH"] = "1"
        if kind == "inspector-all-addons":
            env["TLSINSPECTOR_ALL_ADDONS"] = "1"
        if kind == "inspector-asyncio":
            cmd += ["--loop", "asyncio"]
        if kind == "inspector-pcap":
            cmd += ["--pcap", str(tmp / "both-legs.pcapng")]
        if kind == "inspector-keylog":
            cmd += ["--keylog", str(tmp / "server-keys.log")]
            if (tmp / "go-keys.log").exists():
                # Go's too (quick.py's 100 clients' row): every row has its keys.
                cmd += ["--keylog", str(tmp / "go-keys.log")]
        if kind == "inspector-fault-every-connection":
            # Transcript-safe and touching every connection: the ServerHello
            # record is re-split (a no-op size), so every byte passes the planner.
            scen = tmp / "every.yaml"
            scen.write_text("name: every-connection\nfaults:\n"
                            "  - match: {from: server, index: 1}\n"
                            "    action: fragment\n    size: 16384\n")
            cmd += ["--scenario", str(scen)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_for_port("127.0.0.1", port, 30, p)  # type: ignore[arg-type]
    return p, port


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process and of its children it reaped (socat's
    per-connection processes: waited for until they are gone, bounded)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    deadline = time.monotonic() + 5
    while children.exists() and children.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.01)
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int, key: str = "VmRSS") -> int:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(x for x in status if x.startswith(key + ":")).split()[1])


def bulk(port: int, ca: Path, name: str, p: subprocess.Popen[bytes] | None) -> tuple[float, float]:
    """curl downloads ``name`` over one TLS connection: (MB/s, proxy CPU s per GB)."""
    cpu0 = cpu_seconds(p.pid) if p else 0.0
    out = subprocess.run(
        ["curl", "-sS", "--fail", "-o", "/dev/null", "--cacert", str(ca), "--max-time", "120",
         "-w", "%{size_download} %{speed_download}", f"https://localhost:{port}/{name}"],
        capture_output=True, text=True, timeout=150, check=True)
    size, speed = out.stdout.split()
    cpu = (cpu_seconds(p.pid) - cpu0) / (int(size) / 1e9) if p else 0.0
    return float(speed) / 1e6, cpu


CLIENTS = 100          # concurrent downloads (issue 19's concurrency row)
PER_CLIENT = 4 << 20   # bytes each of them downloads


def concurrent(port: int, ca: Path, p: subprocess.Popen[bytes] | None) -> tuple[float, float]:
    """CLIENTS downloads at once, each on its own TLS connection (one curl, --parallel
    --parallel-immediate: new connections rather than waiting to reuse one), from a
    Go net/http server (s_server serves one connection at a time): (aggregate MB/s,
    proxy CPU s per GB)."""
    cpu0 = cpu_seconds(p.pid) if p else 0.0
    urls: list[str] = []
    for i in range(CLIENTS):
        urls += ["-o", "/dev/null", f"https://localhost:{port}/each?{i}"]
    t = time.perf_counter()
    out = subprocess.run(
        ["curl", "-sS", "--fail", "-Z", "--parallel-immediate", "--parallel-max",
         str(CLIENTS), "--cacert", str(ca), "--max-time", "300", "-w", "%{size_download}\n",
         *urls], capture_output=True, text=True, timeout=330, check=True)
    wall = time.perf_counter() - t
    size = sum(int(x) for x in out.stdout.split())
    assert size == CLIENTS * PER_CLIENT, (size, out.stderr)
    cpu = (cpu_seconds(p.pid) - cpu0) / (size / 1e9) if p else 0.0
    return size / wall / 1e6, cpu


def www_server(certs: Any, www: Path, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``openssl s_server -WWW`` serving ``www`` on a free port, its key log in
    ``tmp/server-keys.log`` (what the inspector-keylog path follows), up and listening."""
    port = free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", str(port), "-cert", str(certs.server_cert),
         "-key", str(certs.server_key), "-WWW", "-quiet", "-naccept", "1000000",
         "-keylogfile", str(tmp / "server-keys.log")],
        cwd=www, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port("127.0.0.1", port, 30, server)  # type: ignore[arg-type]
    return server, port


def go_server(certs: Any, www: Path, keylog: Path | None = None
              ) -> tuple[subprocess.Popen[str], str]:
    """lab/go/server.go serving ``www`` (concurrent, and holds idle connections),
    writing its secrets to ``keylog`` if given."""
    from tlsinspector.lab.peers import go_binary

    port = free_port()
    extra = ["-keylog", str(keylog)] if keylog is not None else []
    p = subprocess.Popen([str(go_binary("server")), "-listen", f"127.0.0.1:{port}", "-cert",
                          str(certs.server_cert), "-key", str(certs.server_key), "-www",
                          str(www), *extra], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, text=True)
    wait_for_port("127.0.0.1", port, 30, p)  # type: ignore[arg-type]
    return p, f"127.0.0.1:{port}"


LAST_HS = {"count": 0}  # how many handshakes the last handshakes() call completed


def s_time_count(port: int, ca: Path, seconds: int, clients: int,
                 extra: tuple[str, ...] = ()) -> int:
    """Full handshakes completed by ``clients`` parallel ``openssl s_time -new`` runs
    of ``seconds`` each (also bench/intercept_bench.py's measure)."""
    cmd = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-time",
           str(seconds), *extra, "-CAfile", str(ca)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(clients)]
    total = 0
    for pr in procs:
        out, _ = pr.communicate(timeout=seconds + 30)
        line = next(x for x in out.splitlines() if "connections in" in x and "real" in x)
        total += int(line.split()[0])
    return total


def handshakes(port: int, ca: Path, tls: str) -> float:
    """Full handshakes per second: HS_CLIENTS parallel ``openssl s_time -new`` runs."""
    t = time.perf_counter()
    total = s_time_count(port, ca, HS_SECONDS, HS_CLIENTS, (f"-tls{tls.replace('.', '_')}",))
    LAST_HS["count"] = total
    return total / (time.perf_counter() - t)


def handshake_times(port: int, ca: Path, n: int, tls13_only: bool = False) -> list[float]:
    """Connect + full handshake, in ms, ``n`` times one after another."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if tls13_only:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    times = []
    for _ in range(n):
        t = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as s:
            times.append((time.perf_counter() - t) * 1000)
            s.sendall(b"0")
    return times


def latency(port: int, ca: Path, n: int = 150) -> tuple[float, float]:
    """Median and p99 of connect + full handshake, in ms, one at a time."""
    times = sorted(handshake_times(port, ca, n))
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


IDLE = int(os.environ.get("BENCH_IDLE", "10000"))  # idle connections held at once (issue 19)


def idle_count() -> int:
    """How many connections the proxy can hold: IDLE, or fewer where the open-file
    limit (two descriptors per proxied connection, raised to the hard limit here
    and inherited by the proxy) does not allow it. Reported with the row."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return min(IDLE, (resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 200) // 2)


def settle_cpu(pid: int, quiet: float = 0.5, bound: float = 30.0) -> None:
    """Wait (bounded) until the process's CPU time stops moving for ``quiet`` s."""
    last, since, deadline = cpu_seconds(pid), time.monotonic(), time.monotonic() + bound
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.1)
        now = cpu_seconds(pid)
        if now != last:
            last, since = now, time.monotonic()


def idle_memory(kind: str, upstream: str, ca: Path, tmp: Path,
                n: int) -> tuple[float, float, float]:
    """n idle established TLS connections held at once by bench/hold.py (another
    process): (KiB of proxy RSS per connection, the proxy's peak RSS in MiB, the
    proxy's CPU ms per new TLS 1.3 handshake while they are held: a cost that grows
    with the connections open is a gateway's problem, bench/keylog_many.py)."""
    p, port = proxy(kind, upstream, tmp)
    try:
        warm = subprocess.Popen([sys.executable, str(ROOT / "bench" / "hold.py"), str(port),
                                 str(ca), "8"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
        try:
            assert warm.stdout is not None and warm.stdin is not None
            warm.stdout.readline()  # first-use costs out of the baseline
            settle_cpu(p.pid)
            base = rss_kib(p.pid)
            hold = subprocess.Popen([sys.executable, str(ROOT / "bench" / "hold.py"),
                                     str(port), str(ca), str(n)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                assert hold.stdout is not None and hold.stdin is not None
                line = hold.stdout.readline()
                assert line.strip() == f"held {n}", line
                settle_cpu(p.pid)
                per, peak = (rss_kib(p.pid) - base) / n, rss_kib(p.pid, "VmHWM") / 1024
                cpu0 = cpu_seconds(p.pid)
                count = s_time_count(port, ca, HS_SECONDS, 1, ("-tls1_3",))
                return per, peak, (cpu_seconds(p.pid) - cpu0) * 1000 / max(1, count)
            finally:
                hold.communicate("\n", timeout=60)
        finally:
            warm.communicate("\n", timeout=60)
    finally:
        stop(p)


def stop(p: subprocess.Popen[bytes]) -> None:
    """Terminate, and kill what does not exit in time (mitmdump closing 10,000
    connections one by one takes longer than the measurement's result may wait)."""
    p.terminate()
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=30)


def growth(kind: str, upstream: str, ca: Path, tmp: Path) -> tuple[float, float]:
    """RSS (MiB) after a warm-up download and after 1 GB more over one connection."""
    p, port = proxy(kind, upstream, tmp)
    try:
        bulk(port, ca, "warm", p)
        before = rss_kib(p.pid)
        bulk(port, ca, "huge", p)
        return before / 1024, rss_kib(p.pid) / 1024
    finally:
        p.terminate()
        p.wait(timeout=10)


def codec_rates() -> dict[str, float]:
    from mitmproxy.tls import ClientHello as MitmHello

    from tlsinspector.proxy.handshake import HandshakeReassembler
    from tlsinspector.proxy.hello import parse_client_hello
    from tlsinspector.proxy.records import Record, RecordFramer

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
    """``--only k1,k2`` measures just those paths (plus mitmproxy, the baseline) and
    skips the memory and codec sections: for adding rows without the full run."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", type=lambda s: s.split(","), default=None,
                    metavar="K1,K2", help="measure just these paths (plus mitmproxy, the "
                    f"baseline), no memory or codec sections; paths: {', '.join(KINDS)}")
    ap.add_argument("--rounds", type=int, default=ROUNDS,
                    help="interleaved rounds (more: steadier medians on a shared machine)")
    ap.add_argument("--memory-only", action="store_true",
                    help="just the idle connections (mitmproxy, inspector and, with --only, "
                    "inspector-full-path), without the rounds")
    args = ap.parse_args()
    only, rounds, memory_only = args.only, args.rounds, args.memory_only
    unknown = sorted(set(only or ()) - set(KINDS))
    if unknown:
        ap.error(f"unknown path {', '.join(unknown)}; paths: {', '.join(KINDS)}")
    kinds = [k for k in KINDS if only is None or k in only or k == "mitmproxy"]
    missing = [t for t in ("haproxy", "socat") if t in kinds and shutil.which(t) is None]
    if missing:  # the bench installs its comparison relays, as make bench pip-installs
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing],
                       check=True, timeout=600, stdout=subprocess.DEVNULL)
    tmp = Path(tempfile.mkdtemp(prefix="tlsinspector-bench-"))
    atexit.register(shutil.rmtree, tmp, True)  # its 256 MB file and logs: not left behind
    certs = make_certs(tmp / "certs")
    www = tmp / "www"
    www.mkdir()
    (www / "bulk").write_bytes(os.urandom(1 << 20) * (BULK >> 20))
    (www / "warm").write_bytes(os.urandom(1 << 20) * 16)
    with open(www / "huge", "wb") as f:  # sparse: zeros cost no disk, TLS encrypts them anyway
        f.truncate(GROWTH)
    server, sport = www_server(certs, www, tmp)
    upstream = f"127.0.0.1:{sport}"
    (www / "each").write_bytes(os.urandom(PER_CLIENT))
    gosrv, goup = go_server(certs, www, tmp / "go-keys.log")
    r: dict[str, dict[str, list[float]]] = {
        k: {m: [] for m in ("mbps", "cpu", "hs13", "hs12", "p50", "p99", "hscpu", "c100",
                            "c100cpu")}
        for k in kinds}
    idle: dict[str, tuple[float, float, float]] = {}
    held = idle_count()
    try:
        if memory_only:
            raise _MemoryOnly
        for i in range(rounds):
            for kind in kinds:
                print(f"{time.strftime('%H:%M:%S')} round {i + 1}/{rounds}: {kind}",
                      file=sys.stderr)
                p = None
                port = sport
                if kind != "direct":
                    p, port = proxy(kind, upstream, tmp)
                try:
                    mbps, cpu = bulk(port, certs.ca_cert, "bulk", p)
                    r[kind]["mbps"].append(mbps)
                    r[kind]["cpu"].append(cpu)
                    cpu0 = cpu_seconds(p.pid) if p else 0.0
                    r[kind]["hs13"].append(handshakes(port, certs.ca_cert, "1.3"))
                    # Proxy CPU per handshake: steadier than handshakes/s on a loaded machine.
                    r[kind]["hscpu"].append((cpu_seconds(p.pid) - cpu0) * 1000
                                            / max(1, LAST_HS["count"]) if p else 0.0)
                    r[kind]["hs12"].append(handshakes(port, certs.ca_cert, "1.2"))
                    p50, p99 = latency(port, certs.ca_cert)
                    r[kind]["p50"].append(p50)
                    r[kind]["p99"].append(p99)
                finally:
                    if p:
                        p.terminate()
                        p.wait(timeout=10)
                # 100 clients at once, through a proxy of the same kind in front of
                # the Go server (s_server serves one connection at a time).
                p = None
                port = int(goup.rsplit(":", 1)[1])
                if kind != "direct":
                    p, port = proxy(kind, goup, tmp)
                try:
                    c100, c100cpu = concurrent(port, certs.ca_cert, p)
                    r[kind]["c100"].append(c100)
                    r[kind]["c100cpu"].append(c100cpu)
                finally:
                    if p:
                        p.terminate()
                        p.wait(timeout=10)
        if only is not None:
            raise _Partial
        raise _MemoryOnly
    except _MemoryOnly:
        print(f"memory: {held} idle connections", file=sys.stderr)
        # s_server answers one connection at a time: hold the idle ones on Go's server.
        idle = {k: idle_memory(k, goup, certs.ca_cert, tmp, held)
                for k in kinds if k in ("mitmproxy", "inspector", "inspector-full-path")}
        if not memory_only:
            grow = {k: growth(k, upstream, certs.ca_cert, tmp)
                    for k in ("mitmproxy", "inspector")}
    except _Partial:
        pass
    finally:
        server.terminate()
        server.wait(timeout=10)
        gosrv.terminate()
        gosrv.wait(timeout=10)
    if memory_only:
        _idle_rows(idle, held)
        return
    med = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in r.items()}
    if only is not None:
        _rows(med, med["mitmproxy"])
        _ratios(r, kinds)
        return
    print("codec", file=sys.stderr)
    codec = codec_rates()
    Path("build").mkdir(exist_ok=True)
    Path("build/bench.json").write_text(json.dumps({"rounds": r, "idle": idle, "growth": grow,
                                                    "codec": codec}, indent=1))
    base = med["mitmproxy"]

    cpu = next((x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text()
                .splitlines() if x.startswith("model name")), platform.machine())
    import mitmproxy.version as mv
    import uvloop

    cores = len(os.sched_getaffinity(0))
    curl = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split()
    print(f"Measured {time.strftime('%Y-%m-%d')} on {cpu}, {cores} cores, Linux "
          f"{platform.release()}; Python {platform.python_version()}, mitmproxy {mv.VERSION}, "
          f"uvloop {uvloop.__version__}, {ssl.OPENSSL_VERSION}, curl {curl[1]}. "
          f"Medians of {ROUNDS} interleaved rounds.\n")
    print("| path | what |\n|---|---|")
    for k in KINDS:
        print(f"| {k} | {STEADY[k]} |")
    print(f"\n| path | bulk MB/s ({BULK >> 20} MB, curl, one TLS connection) | x mitmproxy "
          "| x direct | proxy CPU s per GB | x mitmproxy (lower is better) |")
    print("|---|---|---|---|---|---|")
    for k, m in med.items():
        cpu_ratio = f"{m['cpu'] / base['cpu']:.2f}" if k != "direct" else "-"
        cpu_s = f"{m['cpu']:.2f}" if k != "direct" else "-"
        print(f"| {k} | {m['mbps']:.0f} | {m['mbps'] / base['mbps']:.2f} | "
              f"{m['mbps'] / med['direct']['mbps']:.2f} | {cpu_s} | {cpu_ratio} |")
    print(f"\n| path | handshakes/s TLS 1.3 ({HS_CLIENTS} x openssl s_time -new) | x mitmproxy "
          "| handshakes/s TLS 1.2 | x mitmproxy |")
    print("|---|---|---|---|---|")
    for k, m in med.items():
        print(f"| {k} | {m['hs13']:.0f} | {m['hs13'] / base['hs13']:.2f} | {m['hs12']:.0f} | "
              f"{m['hs12'] / base['hs12']:.2f} |")
    print(f"\n| path | {CLIENTS} clients downloading at once, MB/s ({PER_CLIENT >> 20} MB each, "
          "curl --parallel, Go server) | x mitmproxy | x direct | proxy CPU s per GB "
          "| x mitmproxy |")
    print("|---|---|---|---|---|---|")
    for k, m in med.items():
        cpu_s = f"{m['c100cpu']:.2f}" if k != "direct" else "-"
        cpu_x = f"{m['c100cpu'] / base['c100cpu']:.2f}" if k != "direct" else "-"
        print(f"| {k} | {m['c100']:.0f} | {m['c100'] / base['c100']:.2f} | "
              f"{m['c100'] / med['direct']['c100']:.2f} | {cpu_s} | {cpu_x} |")
    print("\n| path | handshake latency median (ms) | p99 (ms) | p99 - bare mitmproxy p99 |")
    print("|---|---|---|---|")
    for k, m in med.items():
        print(f"| {k} | {m['p50']:.2f} | {m['p99']:.2f} | {m['p99'] - base['p99']:+.2f} |")
    print(f"\n| path | RSS per idle established TLS connection ({held} held) | peak RSS "
          "| CPU ms per new handshake while held | RSS before 1 GB | after 1 GB | growth |")
    print("|---|---|---|---|---|---|---|")
    for k in idle:
        per, peak, hs = idle[k]
        if k in grow:
            before, after = grow[k]
            print(f"| {k} | {per:.1f} KiB | {peak:.1f} MiB | {hs:.2f} | {before:.1f} MiB | "
                  f"{after:.1f} MiB | {after - before:+.1f} MiB |")
        else:
            print(f"| {k} | {per:.1f} KiB | {peak:.1f} MiB | {hs:.2f} | - | - | - |")
    print("\n| codec (real ClientHellos) | per second | ratio |")
    print("|---|---|---|")
    ref = codec["mitmproxy ClientHello"]
    for k, v in codec.items():
        print(f"| {k} | {v:.0f} | {v / ref:.2f} |")


class _Partial(Exception):
    """--only: the throughput rounds are done; skip memory and codec."""


class _MemoryOnly(Exception):
    """On to the memory section (--memory-only: straight away)."""


def _idle_rows(idle: dict[str, tuple[float, float, float]], held: int) -> None:
    print(f"| path | RSS per idle established TLS connection ({held} held) | peak RSS "
          "| CPU ms per new handshake while held |")
    print("|---|---|---|---|")
    for k, (per, peak, hs) in idle.items():
        print(f"| {k} | {per:.1f} KiB | {peak:.1f} MiB | {hs:.2f} |")


def _ratios(r: dict[str, dict[str, list[float]]], kinds: list[str]) -> None:
    """Per round, each path against the path measured just before it (interleaved:
    the pair saw the same machine load), then the median of those ratios; and each
    proxy against direct (the issue 19 targets' measure), per round as well."""
    pairs = [(a, b) for a, b in zip(kinds, kinds[1:], strict=False) if a != "mitmproxy"]
    if "direct" in kinds:
        pairs += [("direct", k) for k in kinds if k != "direct" and ("direct", k) not in pairs]
    if not pairs:
        return
    print("\n| ratio (per round, then median) | bulk MB/s | CPU s per GB | handshakes/s TLS 1.3 "
          "| handshakes/s TLS 1.2 | proxy CPU per TLS 1.3 handshake "
          f"| CPU s per GB, {CLIENTS} clients |")
    print("|---|---|---|---|---|---|---|")
    for a, b in pairs:
        cells = []
        for m in ("mbps", "cpu", "hs13", "hs12", "hscpu", "c100cpu"):
            per = [y / x for x, y in zip(r[a][m], r[b][m], strict=True) if x]
            if not per:  # against direct: no proxy CPU to compare with
                cells.append("-")
                continue
            med = statistics.median(per)
            cells.append(" ".join(f"{v:.2f}" for v in per) + f" (median {med:.2f})")
        print(f"| {b} / {a} | " + " | ".join(cells) + " |")


def _rows(med: dict[str, dict[str, float]], base: dict[str, float]) -> None:
    d = med.get("direct")
    print("| path | bulk MB/s | x mitmproxy | x direct | proxy CPU s per GB | CPU x mitmproxy "
          "| handshakes/s TLS 1.3 | x direct | handshakes/s TLS 1.2 | x direct "
          "| proxy CPU ms per TLS 1.3 handshake | CPU x mitmproxy "
          "| latency p50 (ms) | p99 (ms) | p99 - direct p99 (ms) "
          f"| {CLIENTS} clients MB/s | x direct | CPU s per GB | CPU x mitmproxy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for k, m in med.items():
        def xd(key: str, m: dict[str, float] = m) -> str:
            return f"{m[key] / d[key]:.2f}" if d else "-"

        cpu = f"{m['cpu']:.2f}" if k != "direct" else "-"
        cpux = f"{m['cpu'] / base['cpu']:.2f}" if k != "direct" else "-"
        p99d = f"{m['p99'] - d['p99']:+.2f}" if d else "-"
        hscpu = f"{m['hscpu']:.2f}" if k != "direct" else "-"
        hscpux = f"{m['hscpu'] / base['hscpu']:.2f}" if k != "direct" else "-"
        print(f"| {k} | {m['mbps']:.0f} | {m['mbps'] / base['mbps']:.2f} | {xd('mbps')} | "
              f"{cpu} | {cpux} | {m['hs13']:.0f} | {xd('hs13')} | {m['hs12']:.0f} | "
              f"{xd('hs12')} | {hscpu} | {hscpux} | {m['p50']:.2f} | {m['p99']:.2f} "
              f"| {p99d} | {m['c100']:.0f} | {xd('c100')} | "
              + (f"{m['c100cpu']:.2f} | {m['c100cpu'] / base['c100cpu']:.2f} |"
                 if k != "direct" else "- | - |"))


if __name__ == "__main__":
    main()
