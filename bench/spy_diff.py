"""Where one proxy setting's extra CPU per handshake goes: py-spy, two paths side by side.

    .venv/bin/python bench/spy_diff.py [--a inspector] [--b inspector-keylog]
        [--seconds 12] [--top 40] [--under FUNCTION] [--keep DIR | --samples DIR]

Each path (one of bench/quick.py's, run one after the other against the same
``openssl s_server``, which writes a key log for ``inspector-keylog``) relays
``openssl s_time -new -tls1_3`` (``--tls 1.2``: ``-tls1_2``) for ``--seconds`` while ``py-spy record
--nonblocking`` samples it at 250 Hz. Per function (file and name), the inclusive
sampled time per connection of each path, and the difference, largest first:
which calls the second path's extra milliseconds per handshake are in.
``--under F`` shows the direct callees of F instead (what inside F grew). First,
each path's time per connection by who is on the stack: our code, mitmproxy's
without ours, asyncio's alone, or none (uvloop's own C code: the I/O and the kernel).
``--keep DIR`` keeps both samples; ``--samples DIR`` reads them again (another
``--under``) without a new run.

cProfile (bench/profile_proxy.py) inflates every Python call several times, so a
difference between two profiles of it is mostly its own overhead; sampling does
not. A sample is 4 ms: a function's figure rests on (ms per connection x
connections / 4) samples; read differences under ~0.03 ms per connection as
noise. Needs py-spy (the ``test`` extra).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import quick  # noqa: E402
from quick import proxy  # noqa: E402

from tlsinspector.lab.certs import make_certs  # noqa: E402

RATE = 250  # samples per second
_FRAME = re.compile(r"(.*) \((.*?):\d+\)$")


def _name(frame: str) -> str:
    m = _FRAME.match(frame)
    return f"{m.group(2).rsplit('/', 1)[-1]}:{m.group(1)}" if m else frame


def sample(kind: str, sport: int, tmp: Path, ca: Path, seconds: int, tls: str = "1.3"
           ) -> tuple[int, Path]:
    """Connections made, and py-spy's raw (collapsed stacks) output."""
    p, port = proxy(kind, f"127.0.0.1:{sport}", tmp)
    out = tmp / f"{kind}.spy"
    spy = subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "-r", str(RATE), "--format",
         "raw", "-o", str(out), "--pid", str(p.pid), "-d", str(seconds + 3), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        n = quick.s_time_count(port, ca, seconds, 1, (f"-tls{tls.replace('.', '_')}",))
        spy.wait(timeout=seconds + 60)
    finally:
        spy.kill()
        p.terminate()
        p.wait(timeout=30)
    return n, out


def per_connection(raw: Path, n: int, under: str | None) -> dict[str, float]:
    """ms per connection by function (inclusive), or by callee of ``under``."""
    ms: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [_name(f) for f in stack.split(";")]
        if under is None:
            for f in set(frames):
                ms[f] += int(count)
            continue
        for i, f in enumerate(frames):
            if f.endswith(":" + under):
                ms[frames[i + 1] if i + 1 < len(frames) else "(its own time)"] += int(count)
                break
    return {f: c * 1000 / RATE / n for f, c in ms.items()}


OWNERS = ("our code on the stack (engine, layer, relay, log)",
          "mitmproxy on the stack, none of ours (handler, layers, hooks, streams)",
          "asyncio's Python code alone (streams, tasks)",
          "the event loop itself (uvloop's C code: I/O, callbacks, the kernel)")


def owners(raw: Path, n: int) -> dict[str, float]:
    """ms per connection by who is on the stack below the event loop's run call: any
    frame of ours, else any of mitmproxy's, else asyncio's Python alone, else none
    (the sample is in the loop's own C code)."""
    ms: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        files = re.findall(r"\(([^()]*?):\d+\)", stack)
        run = next((i for i, f in enumerate(files) if f.endswith("asyncio/runners.py")), -1)
        below = files[run + 1:]
        if any(f.startswith("tlsinspector/") for f in below):
            who = OWNERS[0]
        elif any(f.startswith("mitmproxy/") for f in below):
            who = OWNERS[1]
        elif below:
            who = OWNERS[2]
        else:
            who = OWNERS[3]
        ms[who] += int(count)
    return {w: ms[w] * 1000 / RATE / n for w in OWNERS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", default="inspector")
    ap.add_argument("--b", default="inspector-keylog")
    ap.add_argument("--seconds", type=int, default=12)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--tls", choices=("1.2", "1.3"), default="1.3")
    ap.add_argument("--under", help="a function's name (e.g. Connection.finish)")
    ap.add_argument("--keep", type=Path, help="keep the two samples in this directory")
    ap.add_argument("--samples", type=Path,
                    help="read the samples a --keep run left here instead of sampling")
    a = ap.parse_args()
    if a.samples:
        report(a, {k: (int((a.samples / f"{k}.n").read_text()), a.samples / f"{k}.spy")
                   for k in (a.a, a.b)})
        return
    if shutil.which("py-spy", path=str(Path(sys.executable).parent)) is None:
        sys.exit("py-spy is not installed: pip install -e '.[test]'")
    tmp = Path(tempfile.mkdtemp(prefix="tlsinspector-spy-"))
    certs = make_certs(tmp / "certs")
    (tmp / "www").mkdir()
    server, sport = quick.www_server(certs, tmp / "www", tmp)
    try:
        runs = {k: sample(k, sport, tmp, certs.ca_cert, a.seconds, a.tls) for k in (a.a, a.b)}
    finally:
        server.terminate()
        server.wait(timeout=30)
    if a.keep:
        a.keep.mkdir(parents=True, exist_ok=True)
        for k, (n, raw) in runs.items():
            shutil.copy(raw, a.keep / f"{k}.spy")
            (a.keep / f"{k}.n").write_text(str(n))
    report(a, runs)
    shutil.rmtree(tmp, ignore_errors=True)


def report(a: argparse.Namespace, runs: dict[str, tuple[int, Path]]) -> None:
    """The two tables: time per connection by owner, then by function."""
    views = {k: per_connection(raw, n, a.under) for k, (n, raw) in runs.items()}
    va, vb = views[a.a], views[a.b]
    for k, (n, raw) in runs.items():
        total = sum(int(x.rpartition(" ")[2]) for x in raw.read_text().splitlines())
        print(f"{k}: {n} connections, {total * 1000 / RATE / n:.2f} ms sampled per connection")
    split = {k: owners(raw, n) for k, (n, raw) in runs.items()}
    print(f"\n| who is on the stack | {a.a} (ms/conn) | {a.b} (ms/conn) |\n|---|---|---|")
    for w in OWNERS:
        print(f"| {w} | {split[a.a][w]:.2f} | {split[a.b][w]:.2f} |")
    print(f"\n| {a.a} (ms/conn) | {a.b} (ms/conn) | difference | "
          f"{'callee of ' + a.under if a.under else 'function (inclusive)'} |\n|---|---|---|---|")
    rows = sorted(set(va) | set(vb), key=lambda f: vb.get(f, 0) - va.get(f, 0), reverse=True)
    for f in rows[:a.top]:
        x, y = va.get(f, 0.0), vb.get(f, 0.0)
        print(f"| {x:.3f} | {y:.3f} | {y - x:+.3f} | `{f}` |")


if __name__ == "__main__":
    main()
