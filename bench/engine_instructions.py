"""Instructions per connection in the sans-io engine, with and without a key log.

    .venv/bin/python bench/engine_instructions.py [--n 200] [--before DIR]

The same conversations as bench/engine_keys.py (tests/conversation.py: Python's
ssl over MemoryBIOs, a full handshake, a small request and response, close_notify
both ways, each with its key log lines), fed through :class:`Connection` and
their events encoded as the JSONL log encodes them, counted by valgrind
(cachegrind without cache simulation: instructions executed in user space).

CPU time on this shared 2-core VM swings by a third from one run to the next, so a
change worth a few percent of the keyed path cannot be judged by it (bench/
engine_keys.py needs many rounds and still overlaps); an instruction count does
not move with the load. It is not time: a cache miss costs no instruction, and the
live proxy runs this code with its caches cold (BENCHMARKS.md, twelfth round). It
answers "does this change do less work", which is what a trim of the keyed path
must show first.

Per (version, with or without keys): the count of ``--iterations`` feeds of ``--n``
conversations minus the count of one feed (interpreter start, imports and the
conversations' loading cancel out), per connection. ``--before DIR``: a checkout of
another revision (``git worktree add /tmp/before REV``) counted on the very same
conversations, and the difference. Two valgrind processes at a time (two cores).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import pickle
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(root: str, convs_file: str, mode: str, iterations: int) -> None:
    """Inside valgrind: ``iterations`` feeds of the conversations through ``root``'s
    engine (its own bench/engine_keys.py ``feed``)."""
    sys.path[:0] = [root, str(Path(root) / "bench")]
    import engine_keys  # the checkout's own

    with open(convs_file, "rb") as fh:
        convs, keys = pickle.load(fh)
    for _ in range(iterations):
        engine_keys.feed(convs, keys if mode == "keylog" else None)


def count(root: Path, convs_file: Path, mode: str, iterations: int) -> int:
    """Instructions executed by one child run (valgrind's "I refs")."""
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=no",
           "--cachegrind-out-file=/dev/null", sys.executable, __file__, "--child",
           str(root), str(convs_file), mode, str(iterations)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=True)
    found = re.search(r"I\s+refs:\s+([\d,]+)", res.stderr)
    if found is None:
        raise SystemExit(f"no instruction count from valgrind:\n{res.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200, help="conversations per feed")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--before", type=Path, help="a checkout of another revision")
    a = ap.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    from engine_keys import make

    trees = ([("before", a.before.resolve())] if a.before else []) + [("this", ROOT)]
    with tempfile.TemporaryDirectory(prefix="tlsinspector-instr-") as tmp:
        files = {}
        for version in ("1.3", "1.2"):
            files[version] = Path(tmp) / f"convs-{version}.pickle"
            files[version].write_bytes(pickle.dumps(make(a.n, version)))
        jobs = {(tree, version, mode, it): (root, files[version], mode, it)
                for tree, root in trees for version in ("1.3", "1.2")
                for mode in ("without", "keylog") for it in (1, a.iterations)}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            done = dict(zip(jobs, pool.map(lambda args: count(*args), jobs.values()),
                            strict=True))
    per = {k[:3]: (done[(*k[:3], a.iterations)] - done[(*k[:3], 1)])
           / ((a.iterations - 1) * a.n) for k in jobs}
    print("| revision | TLS | instructions per connection without keys | with keys "
          "| keyed extra |")
    print("|---|---|---|---|---|")
    for tree, _ in trees:
        for version in ("1.3", "1.2"):
            base, keyed = per[(tree, version, "without")], per[(tree, version, "keylog")]
            print(f"| {tree} | {version} | {base / 1e6:.3f}M | {keyed / 1e6:.3f}M "
                  f"| +{(keyed - base) / 1e6:.3f}M ({keyed / base:.2f}x) |")
    if a.before:
        for version in ("1.3", "1.2"):
            old = per[("before", version, "keylog")] - per[("before", version, "without")]
            new = per[("this", version, "keylog")] - per[("this", version, "without")]
            print(f"TLS {version}: keyed extra {old / 1e6:.3f}M -> {new / 1e6:.3f}M "
                  f"({(new - old) / old:+.1%}); without keys "
                  f"{per[('before', version, 'without')] / 1e6:.3f}M -> "
                  f"{per[('this', version, 'without')] / 1e6:.3f}M")


if __name__ == "__main__":
    main()
