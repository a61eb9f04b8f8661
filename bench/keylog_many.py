"""``--keylog`` with many connections open: proxy CPU per new handshake.

    .venv/bin/python bench/keylog_many.py [--held 0,2000] [--seconds 4] [--rounds 2]
        [--before DIR]

A gateway following a key log keeps thousands of connections open. Each new
handshake makes the key log grow (its peer writes its secrets), and the proxy then
hands the new keys to the connections that wait for them. This measures whether
that costs more with more connections open: Go's net/http server (lab/go,
``-keylog``) behind ``tlsinspector run --keylog`` on its key log; ``--held`` idle
established connections through the proxy (bench/hold.py), then ``openssl s_time
-new -tls1_3`` for ``--seconds``: handshakes/s and the proxy's CPU ms per
handshake, per number held. ``--before DIR`` runs a second checkout the same way,
interleaved (``PYTHONPATH``, as bench/ab.py does). ``--kind inspector``: the same
without ``--keylog``, for what holding connections costs a handshake anyway.
"""

from __future__ import annotations

import argparse
import os
import resource
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
from tlsinspector.lab.peers import free_port, go_binary, wait_for_port  # noqa: E402


def measure(tree: Path, held: int, upstream: str, tmp: Path, ca: Path,
            seconds: int, kind: str) -> tuple[float, float]:
    """(handshakes/s, proxy CPU ms per handshake) with ``held`` connections open."""
    os.environ["PYTHONPATH"] = str(tree)
    p, port = quick.proxy(kind, upstream, tmp)
    hold = None
    try:
        if held:
            hold = subprocess.Popen([sys.executable, str(ROOT / "bench" / "hold.py"), str(port),
                                     str(ca), str(held)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)
            assert hold.stdout is not None
            line = hold.stdout.readline()  # "held N" once every connection is up
            if not line.startswith("held"):
                raise RuntimeError(f"bench/hold.py: {line!r}")
        cpu0 = quick.cpu_seconds(p.pid)
        n = quick.s_time_count(port, ca, seconds, 1, ("-tls1_3",))
        return n / seconds, (quick.cpu_seconds(p.pid) - cpu0) * 1000 / max(1, n)
    finally:
        if hold is not None:
            hold.kill()
            hold.wait(timeout=30)
        p.terminate()
        p.wait(timeout=60)
        os.environ.pop("PYTHONPATH", None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--held", default="0,2000", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--before", type=Path)
    ap.add_argument("--kind", default="inspector-keylog",
                    help="bench/quick.py's path (inspector: the same without --keylog)")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited: 2 fds per held
    trees = {"after": ROOT} if a.before is None else {"before": a.before.resolve(),
                                                      "after": ROOT}
    tmp = Path(tempfile.mkdtemp(prefix="tlsinspector-keylog-many-"))
    certs = make_certs(tmp / "certs")
    (tmp / "www").mkdir()
    sport = free_port()
    server = subprocess.Popen(
        [str(go_binary("server")), "-listen", f"127.0.0.1:{sport}", "-cert",
         str(certs.server_cert), "-key", str(certs.server_key), "-www", str(tmp / "www"),
         "-keylog", str(tmp / "server-keys.log")],  # the file inspector-keylog follows
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    got: dict[tuple[str, int], list[tuple[float, float]]] = {}
    try:
        wait_for_port("127.0.0.1", sport, 30, server)  # type: ignore[arg-type]
        for r in range(a.rounds):
            for held in a.held:
                for name, tree in trees.items():
                    res = measure(tree, held, f"127.0.0.1:{sport}", tmp, certs.ca_cert,
                                  a.seconds, a.kind)
                    got.setdefault((name, held), []).append(res)
                    print(f"round {r + 1}: {name} held={held} {res[0]:.0f}/s "
                          f"{res[1]:.2f} ms", file=sys.stderr)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    print("| checkout | connections held | handshakes/s (median) | proxy CPU ms per "
          "handshake (median; rounds) |\n|---|---|---|---|")
    for (name, held), v in got.items():
        print(f"| {name} | {held} | {statistics.median(x for x, _ in v):.0f} | "
              f"{statistics.median(c for _, c in v):.2f}; "
              f"{' '.join(f'{c:.2f}' for _, c in v)} |")


if __name__ == "__main__":
    main()
