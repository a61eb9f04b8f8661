"""`tlsinspector analyze` throughput: MB of capture per second on a large capture.

Writes a classic pcap (Ethernet/IPv4/TCP, written with dpkt) of CONNS TLS 1.2
connections, each a real OpenSSL ClientHello (tests/fixtures/hellos), a ServerHello,
both ChangeCipherSpec + Finished, then SIZE_MB / CONNS of 16 KiB application-data
records from the server (a bulk download) in segments of --mss bytes, with the
client's ACKs. Then runs the CLI on it, timed end to end (process start included),
median of --rounds:

    .venv/bin/python bench/analyze_bench.py [--size-mb 512] [--mss 1448 --mss 32768]
        [--before OTHER/.venv/bin/tlsinspector] [--pcapng]

and prints a Markdown table for BENCHMARKS.md. ``--before`` also measures another
install (e.g. a checkout of main in another folder), its runs interleaved with this
one's, for a before/after ratio from the same minutes of a shared machine.
``--pcapng`` also measures the same packets as a pcapng (converted by Wireshark's
editcap, one interface, microsecond timestamps), its runs interleaved too.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dpkt  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
HELLO = (ROOT / "tests" / "fixtures" / "hellos" / "openssl-tls12.bin").read_bytes()
RECORD = 16384


def _server_hello() -> bytes:
    body = b"\x03\x03" + bytes(range(32)) + b"\x00" + b"\xc0\x2f" + b"\x00"
    msg = b"\x02" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x03" + len(msg).to_bytes(2, "big") + msg


def _flight() -> bytes:
    ccs = b"\x14\x03\x03\x00\x01\x01"
    fin = b"\x16\x03\x03\x00\x28" + bytes(40)     # encrypted Finished
    return ccs + fin


class Writer:
    def __init__(self, f: object, mss: int) -> None:
        self.w = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_EN10MB, snaplen=262144)
        self.mss = mss
        self.ts = 1_700_000_000.0

    def send(self, src: tuple[bytes, int], dst: tuple[bytes, int], seq: int, ack: int,
             data: bytes, flags: int = dpkt.tcp.TH_ACK) -> int:
        for i in range(0, max(len(data), 1), self.mss):
            chunk = data[i:i + self.mss]
            tcp = dpkt.tcp.TCP(sport=src[1], dport=dst[1], seq=seq & 0xFFFFFFFF,
                               ack=ack & 0xFFFFFFFF, flags=flags, win=65535, data=chunk)
            ip = dpkt.ip.IP(src=src[0], dst=dst[0], p=6, ttl=64, data=tcp)
            ip.len = len(ip)
            eth = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, data=ip)
            self.ts += 0.00001
            self.w.writepkt(bytes(eth), ts=self.ts)
            seq += len(chunk)
        return seq


def write_capture(path: Path, size_mb: int, conns: int, mss: int) -> None:
    app = b"\x17\x03\x03" + RECORD.to_bytes(2, "big") + os.urandom(RECORD)
    per_conn = size_mb * 1_000_000 // conns // len(app) + 1
    with open(path, "wb") as f:
        w = Writer(f, mss)
        for n in range(conns):
            c, s = (bytes([10, 0, 0, 1]), 40000 + n), (bytes([10, 0, 0, 2]), 443)
            cs, ss = 1000, 5000
            w.send(c, s, cs - 1, 0, b"", dpkt.tcp.TH_SYN)
            w.send(s, c, ss - 1, cs, b"", dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK)
            cs = w.send(c, s, cs, ss, HELLO)
            ss = w.send(s, c, ss, cs, _server_hello() + _flight())
            cs = w.send(c, s, cs, ss, _flight())
            for _ in range(per_conn):
                ss = w.send(s, c, ss, cs, app)
                w.send(c, s, cs, ss, b"")                      # the client's ACK
            w.send(s, c, ss, cs, b"", dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK)
            w.send(c, s, cs, ss + 1, b"", dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK)


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run: on a shared machine the CPU time is
    the steadier measure of what analysis costs."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=3600)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def rate(mb: float, runs: list[tuple[float, float]]) -> str:
    wall = statistics.median(r[0] for r in runs)
    cpu = statistics.median(r[1] for r in runs)
    return f"{mb / wall:.0f} ({mb / cpu:.0f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=512)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--mss", type=int, action="append")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--before", metavar="EXE", help="another tlsinspector to compare")
    ap.add_argument("--pcapng", action="store_true",
                    help="also the same capture as a pcapng (editcap -F pcapng)")
    args = ap.parse_args()
    exes = {"": str(Path(sys.executable).parent / "tlsinspector")}
    if args.before:
        exes = {"before: ": args.before, **exes}
    print("| capture | MB | packets | analyze --quiet: MB/s (MB per CPU s) "
          "| analyze --quiet --log: MB/s (MB per CPU s) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for mss in args.mss or [1448, 32768]:
            cap = Path(tmp) / f"bulk-{mss}.pcap"
            write_capture(cap, args.size_mb, args.conns, mss)
            with open(cap, "rb") as f:
                packets = sum(1 for _ in dpkt.pcap.Reader(f))
            caps = {"": cap}
            if args.pcapng:
                caps["pcapng: "] = cap.with_suffix(".pcapng")
                subprocess.run(["editcap", "-F", "pcapng", str(cap), str(caps["pcapng: "])],
                               check=True, timeout=600)
            runs = [(k, e, c) for k, c in caps.items() for e in exes]
            log = Path(tmp) / "out.jsonl"
            quiet: dict[tuple[str, str], list[tuple[float, float]]] = {
                (k, e): [] for k, e, _ in runs}
            logged: dict[tuple[str, str], list[tuple[float, float]]] = {
                (k, e): [] for k, e, _ in runs}
            for _ in range(args.rounds):
                for kind, name, path in runs:
                    exe = exes[name]
                    quiet[kind, name].append(timed([exe, "analyze", str(path), "--quiet"]))
                    log.unlink(missing_ok=True)
                    logged[kind, name].append(timed([exe, "analyze", str(path), "--quiet",
                                                     "--log", str(log)]))
            for kind, name, path in runs:
                mb = path.stat().st_size / 1e6
                print(f"| {kind}{name}Ethernet, {args.conns} TLS connections, MSS {mss} "
                      f"| {mb:.0f} | {packets} | {rate(mb, quiet[kind, name])} "
                      f"| {rate(mb, logged[kind, name])} |", flush=True)
            for path in caps.values():
                path.unlink()


if __name__ == "__main__":
    main()
