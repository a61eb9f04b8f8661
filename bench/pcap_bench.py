"""`run --pcap` next to plain `run`: bulk MB/s, proxy CPU per GB, handshakes/s.

    .venv/bin/python bench/pcap_bench.py [--rounds 3]

The same measurements as bench/quick.py (its functions, its servers), for the two
configurations only, interleaved round by round; prints a Markdown table.
`make bench` measures inspector-pcap with everything else.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quick  # noqa: E402

from tlsinspector.lab.certs import make_certs  # noqa: E402
from tlsinspector.lab.peers import free_port, wait_for_port  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tlsinspector-pcap-bench-"))
    certs = make_certs(tmp / "certs")
    www = tmp / "www"
    www.mkdir()
    (www / "bulk").write_bytes(os.urandom(1 << 20) * (quick.BULK >> 20))
    sport = free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", str(sport), "-cert", str(certs.server_cert),
         "-key", str(certs.server_key), "-WWW", "-quiet", "-naccept", "100000"],
        cwd=www, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port("127.0.0.1", sport, 30, server)  # type: ignore[arg-type]
    kinds = ("inspector", "inspector-pcap")
    r: dict[str, dict[str, list[float]]] = {k: {"mbps": [], "cpu": [], "hs13": [], "hs12": []}
                                            for k in kinds}
    try:
        for _ in range(args.rounds):
            for kind in kinds:
                p, port = quick.proxy(kind, f"127.0.0.1:{sport}", tmp)
                try:
                    mbps, cpu = quick.bulk(port, certs.ca_cert, "bulk", p)
                    r[kind]["mbps"].append(mbps)
                    r[kind]["cpu"].append(cpu)
                    r[kind]["hs13"].append(quick.handshakes(port, certs.ca_cert, "1.3"))
                    r[kind]["hs12"].append(quick.handshakes(port, certs.ca_cert, "1.2"))
                finally:
                    p.terminate()
                    p.wait(timeout=10)
    finally:
        server.terminate()
        server.wait(timeout=10)
    med = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in r.items()}
    print(f"| path | bulk MB/s ({quick.BULK >> 20} MB) | proxy CPU s per GB | "
          "handshakes/s TLS 1.3 | handshakes/s TLS 1.2 |")
    print("|---|---|---|---|---|")
    for k, m in med.items():
        print(f"| {k} | {m['mbps']:.0f} | {m['cpu']:.2f} | {m['hs13']:.0f} | {m['hs12']:.0f} |")
    pcap = tmp / "both-legs.pcapng"
    if pcap.exists():
        print(f"\n(last --pcap file: {pcap.stat().st_size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
