"""Two checkouts of tlsinspector side by side: proxy CPU per GB or per handshake.

    .venv/bin/python bench/ab.py --before DIR [--after DIR] [--kinds inspector,...]
        [--work bulk|hs] [--rounds 4] [--seconds 3]

``DIR`` is a checkout (``git worktree add /tmp/before REV``); ``--after`` defaults to
this one. Each path of ``--kinds`` (bench/quick.py's names: inspector,
inspector-keylog, inspector-no-app-records, ...) runs from each checkout
(``PYTHONPATH`` puts the checkout's ``tlsinspector`` first; this venv's
dependencies), interleaved round by round against one ``openssl s_server -WWW``
that writes a key log. ``bulk``: one 256 MB curl download per proxy (MB/s, proxy CPU s
per GB); ``hs``: ``openssl s_time -new`` (``--tls``, 1.3 by default) for ``--seconds``
(proxy CPU ms per handshake). Medians, and the ratio of each later kind to the first per round:
what a change did to a setting's cost, with load hitting both checkouts alike.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import quick  # noqa: E402

from tlsinspector.lab.certs import make_certs  # noqa: E402


def handshake_cpu(port: int, ca: Path, p: subprocess.Popen[bytes], seconds: int,
                  tls: str = "1.3") -> float:
    """Proxy CPU ms per handshake under ``openssl s_time -new`` (TLS ``tls``)."""
    cpu0 = quick.cpu_seconds(p.pid)
    n = quick.s_time_count(port, ca, seconds, 1, (f"-tls{tls.replace('.', '_')}",))
    return (quick.cpu_seconds(p.pid) - cpu0) * 1000 / max(1, n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, type=Path)
    ap.add_argument("--after", default=ROOT, type=Path)
    ap.add_argument("--kinds", default="inspector,inspector-keylog",
                    type=lambda s: s.split(","))
    ap.add_argument("--work", default="bulk", choices=("bulk", "hs"))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--tls", default="1.3", choices=("1.2", "1.3"), help="for --work hs")
    a = ap.parse_args()
    trees = {"before": a.before.resolve(), "after": a.after.resolve()}
    for tree in trees.values():
        if not (tree / "tlsinspector" / "__init__.py").exists():
            ap.error(f"{tree} is not a tlsinspector checkout")
    tmp = Path(tempfile.mkdtemp(prefix="tlsinspector-ab-"))
    certs = make_certs(tmp / "certs")
    www = tmp / "www"
    www.mkdir()
    if a.work == "bulk":
        (www / "bulk").write_bytes(os.urandom(1 << 20) * 256)
    server, sport = quick.www_server(certs, www, tmp)
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        for r in range(a.rounds):
            for name, tree in trees.items():
                for kind in a.kinds:
                    os.environ["PYTHONPATH"] = str(tree)  # inherited by the proxy
                    p, port = quick.proxy(kind, f"127.0.0.1:{sport}", tmp)
                    try:
                        if a.work == "bulk":
                            got = quick.bulk(port, certs.ca_cert, "bulk", p)
                        else:
                            got = (0.0, handshake_cpu(port, certs.ca_cert, p, a.seconds, a.tls))
                    finally:
                        p.terminate()
                        p.wait(timeout=30)
                    results.setdefault((name, kind), []).append(got)
                    print(f"round {r + 1}: {name} {kind} {got[1]:.3f}", file=sys.stderr)
    finally:
        server.terminate()
        server.wait(timeout=30)
        os.environ.pop("PYTHONPATH", None)
        shutil.rmtree(tmp, ignore_errors=True)
    unit = "proxy CPU s per GB" if a.work == "bulk" else "proxy CPU ms per handshake"
    print(f"| checkout | path | {unit} (median; rounds) | MB/s (median) | "
          f"x {a.kinds[0]} (per round) |\n|---|---|---|---|---|")
    for name in trees:
        first = results[(name, a.kinds[0])]
        for kind in a.kinds:
            v = results[(name, kind)]
            ratios = [x[1] / f[1] for x, f in zip(v, first, strict=True) if f[1]]
            print(f"| {name} | {kind} | {statistics.median(c for _, c in v):.3f}; "
                  f"{' '.join(f'{c:.2f}' for _, c in v)} | "
                  f"{statistics.median(m for m, _ in v):.0f} | "
                  f"{' '.join(f'{x:.2f}' for x in ratios)} "
                  f"(median {statistics.median(ratios):.2f}) |")


if __name__ == "__main__":
    main()
