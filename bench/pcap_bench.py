"""`run --pcap` next to plain `run`: bulk MB/s, proxy CPU per GB, handshakes/s; and
`analyze` against the live proxy's own rate, in the same interleaved rounds.

    .venv/bin/python bench/pcap_bench.py [--rounds 3] [--analyze-mb 128]

The same measurements as bench/quick.py (its functions, its servers), for the two
configurations only, interleaved round by round; then, in the same round, `analyze
--quiet` (end to end, process start included) over the round's own --pcap file
(both legs of the bulk download and the handshakes, loopback-sized segments), over
a copy of it taken right after the bulk download (the bytes the live rate is
measured on, nothing else), and over bench/analyze_bench.py's Ethernet captures
(1448-byte and 32 KiB segments; the 1448-byte one also as a pcapng, converted by
editcap). Each round also times `analyze --quiet` of a
capture of one packet: the process start (interpreter, imports), which the live
proxy's CPU per GB does not include; the "start excluded" column subtracts it.
Prints two Markdown tables; on a shared machine read the ratios within a round.
`make bench` measures inspector-pcap with everything else.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import analyze_bench  # noqa: E402
import quick  # noqa: E402

from tlsinspector.lab.certs import make_certs  # noqa: E402
from tlsinspector.lab.peers import free_port, wait_for_port  # noqa: E402


def start_server(certs: object, www: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A fresh `openssl s_server -WWW` per measurement: it serves one connection at a
    time, and on a loaded machine a handshake run could leave it stuck on a connection
    the next bulk download then waits behind (curl's --max-time ran out twice)."""
    sport = free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", str(sport), "-cert",
         str(certs.server_cert), "-key", str(certs.server_key),  # type: ignore[attr-defined]
         "-WWW", "-quiet", "-naccept", "100000"],
        cwd=www, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port("127.0.0.1", sport, 30, server)  # type: ignore[arg-type]
    return server, sport


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--analyze-mb", type=int, default=128)
    ap.add_argument("--bulk-mb", type=int, default=quick.BULK >> 20)
    args = ap.parse_args()
    # An installed tlsinspector has its bytecode compiled (pip does it); a shell with
    # PYTHONDONTWRITEBYTECODE=1 would make every analyze run compile every module
    # again (about 0.1 CPU s of its process start).
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    quick.BULK = args.bulk_mb << 20
    tmp = Path(tempfile.mkdtemp(prefix="tlsinspector-pcap-bench-"))
    certs = make_certs(tmp / "certs")
    www = tmp / "www"
    www.mkdir()
    (www / "bulk").write_bytes(os.urandom(1 << 20) * (quick.BULK >> 20))
    kinds = ("inspector", "inspector-pcap")
    r: dict[str, dict[str, list[float]]] = {k: {"mbps": [], "cpu": [], "hs13": [], "hs12": []}
                                            for k in kinds}
    exe = str(Path(sys.executable).parent / "tlsinspector")
    caps = {f"Ethernet, MSS {mss}": tmp / f"eth-{mss}.pcap" for mss in (1448, 32768)}
    for mss, path in zip((1448, 32768), caps.values(), strict=True):
        analyze_bench.write_capture(path, args.analyze_mb, 16, mss)
    # The same packets as a pcapng (Enhanced Packet Blocks), converted by editcap.
    caps["Ethernet, MSS 1448, as pcapng (editcap)"] = tmp / "eth-1448.pcapng"
    subprocess.run(["editcap", "-F", "pcapng", str(caps["Ethernet, MSS 1448"]),
                    str(caps["Ethernet, MSS 1448, as pcapng (editcap)"])], check=True,
                   timeout=600)
    tiny = tmp / "tiny.pcap"
    analyze_bench.write_capture(tiny, 0, 1, 1448)   # one connection, one record
    bulk_only = tmp / "bulk-legs.pcapng"
    starts: list[float] = []   # CPU s of analyze on the tiny capture, per round
    an: dict[str, list[tuple[float, float, float]]] = {}   # name -> (MB, wall, CPU)
    stalls = dict.fromkeys(kinds, 0)
    try:
        for _ in range(args.rounds):
            for kind in kinds:
                server, sport = start_server(certs, www)
                p, port = quick.proxy(kind, f"127.0.0.1:{sport}", tmp)
                try:
                    print(f"{kind}: bulk", file=sys.stderr, flush=True)
                    try:
                        mbps, cpu = quick.bulk(port, certs.ca_cert, "bulk", p)
                    except subprocess.CalledProcessError:
                        # Seen with --pcap on a loaded machine: the proxy stopped
                        # reading the server (bytes in its socket buffer, none owed to
                        # the client) and curl's --max-time ran out. Counted, shown.
                        stalls[kind] += 1
                        print(f"{kind}: bulk STALLED", file=sys.stderr, flush=True)
                        continue
                    print(f"{kind}: {mbps:.0f} MB/s; handshakes", file=sys.stderr, flush=True)
                    r[kind]["mbps"].append(mbps)
                    r[kind]["cpu"].append(cpu)
                    if kind == "inspector-pcap":   # valid at every moment: a copy now
                        shutil.copyfile(tmp / "both-legs.pcapng", bulk_only)
                    r[kind]["hs13"].append(quick.handshakes(port, certs.ca_cert, "1.3"))
                    r[kind]["hs12"].append(quick.handshakes(port, certs.ca_cert, "1.2"))
                finally:
                    p.terminate()
                    p.wait(timeout=10)
                    server.terminate()
                    server.wait(timeout=10)
            starts.append(analyze_bench.timed([exe, "analyze", str(tiny), "--quiet"])[1])
            for name, path in [("the round's --pcap file (both legs, loopback)",
                                tmp / "both-legs.pcapng"),
                               ("the same file after the bulk download only", bulk_only),
                               *caps.items()]:
                if not path.exists():
                    continue   # (every bulk download of the round stalled)
                print(f"analyze {path.name}", file=sys.stderr, flush=True)
                wall, cpu = analyze_bench.timed([exe, "analyze", str(path), "--quiet"])
                an.setdefault(name, []).append((path.stat().st_size / 1e6, wall, cpu))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in r.items()}
    print(f"| path | bulk MB/s ({quick.BULK >> 20} MB) | proxy CPU s per GB | "
          "handshakes/s TLS 1.3 | handshakes/s TLS 1.2 |")
    print("|---|---|---|---|---|")
    for k, m in med.items():
        print(f"| {k} | {m['mbps']:.0f} | {m['cpu']:.2f} | {m['hs13']:.0f} | {m['hs12']:.0f} |")
    if any(stalls.values()):
        print(f"\nbulk downloads that stalled (left out above): {stalls}")
    live = 1000 / med["inspector"]["cpu"]
    start = statistics.median(starts)
    print(f"\n`analyze` process start (a one-packet capture): {start:.2f} CPU s\n")
    print(f"| capture | MB | analyze --quiet MB/s | MB per CPU s | x the live proxy's "
          f"MB per CPU s ({live:.0f}, inspector above) | MB per CPU s, start excluded "
          "| x live, start excluded |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in an.items():
        mb = statistics.median(x[0] for x in runs)
        per_cpu = statistics.median(x[0] / x[2] for x in runs)
        wall = statistics.median(x[0] / x[1] for x in runs)
        lean = statistics.median(x[0] / max(x[2] - start, 1e-3) for x in runs)
        print(f"| {name} | {mb:.0f} | {wall:.0f} | {per_cpu:.0f} | {per_cpu / live:.2f} "
              f"| {lean:.0f} | {lean / live:.2f} |")


if __name__ == "__main__":
    main()
