"""The sans-io engine's CPU per connection with and without a key log (issue 14).

    .venv/bin/python bench/engine_keys.py [--n 200] [--rounds 9] [--profile]

Real conversations (Python's ssl over MemoryBIOs, tests/conversation.py: full
handshake, a small request and response, close_notify both ways), each with its
own key log lines; every one is fed through :class:`Connection` as the live
proxy feeds it (one ``receive`` per flight, then the close), its events encoded
as the JSONL log encodes them. The same conversations with and without
``keylog``, interleaved, process CPU time, the minimum of the rounds (the least
disturbed by other work on a shared machine). ``--profile`` prints where the
key log run's time goes (cProfile, by own time).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conversation import conversation  # noqa: E402
from tlsinspector.proxy.engine import Connection, Emit  # noqa: E402
from tlsinspector.proxy.keylog import KeyLog  # noqa: E402

Flights = list[tuple[str, bytes]]


def make(n: int, version: str) -> tuple[list[Flights], str]:
    with tempfile.TemporaryDirectory(prefix="tlsinspector-engine-keys-") as tmp:
        keys = Path(tmp) / "keys.log"
        convs = [conversation(version, keylog=keys) for _ in range(n)]
        return convs, keys.read_text()


def feed(convs: list[Flights], keys: str | None) -> int:
    """Every conversation through its own Connection; the events' encoded size."""
    log = None
    if keys is not None:
        log = KeyLog()
        log.feed(keys, time.time())
    size = 0
    for i, flights in enumerate(convs):
        conn = Connection(str(i), "c:1", "s:2", keylog=log)
        outs = list(conn.start(1.0))
        for side, data in flights:
            outs += conn.receive(side, data, 1.0)  # type: ignore[arg-type]
        outs += conn.eof("client", 2.0) + conn.eof("server", 2.0) + conn.finish(2.0)
        size += sum(len(orjson.dumps(o.event)) for o in outs if isinstance(o, Emit))
    return size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--top", type=int, default=30)
    a = ap.parse_args()
    for version in ("1.3", "1.2"):
        convs, keys = make(a.n, version)
        best: dict[str, float] = {"without": 1e9, "keylog": 1e9}
        sizes: dict[str, int] = {}
        for _ in range(a.rounds):
            for name, k in (("without", None), ("keylog", keys)):
                t = time.process_time()
                sizes[name] = feed(convs, k)
                best[name] = min(best[name], time.process_time() - t)
        per = {k: v / a.n * 1e6 for k, v in best.items()}
        print(f"TLS {version}: {per['without']:.0f} us per connection without keys, "
              f"{per['keylog']:.0f} us with (+{per['keylog'] - per['without']:.0f} us, "
              f"{per['keylog'] / per['without']:.2f}x); log bytes per connection "
              f"{sizes['without'] // a.n} / {sizes['keylog'] // a.n}")
        if a.profile:
            prof = cProfile.Profile()
            prof.runcall(feed, convs, keys)
            st = pstats.Stats(prof)
            st.sort_stats("tottime").print_stats(a.top)
            st.sort_stats("cumtime").print_stats(a.top)


if __name__ == "__main__":
    main()
