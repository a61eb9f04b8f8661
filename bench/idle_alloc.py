"""What one idle established connection allocates in the proxy, by owner (tracemalloc).

    .venv/bin/python bench/idle_alloc.py [--kind inspector|mitmproxy] [-n 1000]
        [--frames 1] [--top 25] [--extra "--no-app-records"]

Runs the proxy (``tlsinspector run`` or bare ``mitmdump`` relaying raw TCP, as in
bench/quick.py) under tracemalloc in front of Go's server (lab/go/server.go),
takes a snapshot after 8 warm-up connections and another once ``n`` more idle
established TLS connections are held (bench/hold.py), and prints the Python
allocations still live per held connection, summed by owner (our code, mitmproxy,
asyncio, ...) and by allocating line. Python objects only: the kernel's socket
buffers and OpenSSL are not in it (the proxy never terminates TLS), and neither
is malloc's own overhead; quick.py's RSS row is the whole.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quick import go_server, rss_kib, settle_cpu  # noqa: E402

from tlsinspector.lab.certs import make_certs  # noqa: E402
from tlsinspector.lab.peers import free_port, wait_for_port  # noqa: E402

OURS = str(ROOT)
OWNERS = (  # first match wins: (owner, substrings of the allocating file)
    ("ours: engine (proxy/)", (f"{OURS}/proxy/", "tlsinspector/proxy/")),
    ("ours: record layer and hot relay (addons/)", (f"{OURS}/addons/",
                                                    "tlsinspector/addons/")),
    ("mitmproxy: connection handler (proxy/server.py)", ("mitmproxy/proxy/server.py",)),
    ("mitmproxy: layers, context, connections", ("mitmproxy/proxy/", "mitmproxy/connection.py")),
    ("mitmproxy: other", ("mitmproxy/",)),
    ("asyncio: streams", ("asyncio/streams.py",)),
    ("asyncio: tasks, futures, locks, loop", ("asyncio/", "uvloop")),
    ("Python: other stdlib", ("/lib/python3",)),
)


def owner(filename: str) -> str:
    for name, needles in OWNERS:
        if any(n in filename for n in needles):
            return name
    return f"other ({Path(filename).name})"


def start(kind: str, upstream: str, tmp: Path, frames: int, extra: list[str]
          ) -> tuple[subprocess.Popen[bytes], int, Path, Path]:
    port = free_port()
    if kind == "mitmproxy":
        argv = ["mitmdump", "--mode", f"reverse:tcp://{upstream}", "-p", str(port),
                "--listen-host", "127.0.0.1", "--set", "connection_strategy=lazy",
                "--ignore-hosts", ".*", "-q"]
        code = (f"import sys; from mitmproxy.tools.main import mitmdump; sys.argv = {argv!r}; "
                "run = mitmdump")
    else:
        argv = ["run", "--listen", f"127.0.0.1:{port}", "--upstream", upstream, "--log",
                str(tmp / "p.jsonl"), "--quiet", *extra]
        code = f"from tlsinspector.cli import main; run = lambda: main({argv!r})"
    before, after = tmp / "before.snap", tmp / "after.snap"
    script = tmp / "run.py"
    # The snapshots are taken from signal handlers, i.e. between two bytecodes of
    # the event loop's thread: after a gc.collect, so only what is reachable counts.
    script.write_text(
        "import gc, signal, tracemalloc\n"
        f"tracemalloc.start({frames})\n"
        "def _snap(path):\n"
        "    def h(*_):\n"
        "        gc.collect()\n"
        "        tracemalloc.take_snapshot().dump(path)\n"
        "    return h\n"
        f"signal.signal(signal.SIGUSR1, _snap({str(before)!r}))\n"
        f"signal.signal(signal.SIGUSR2, _snap({str(after)!r}))\n"
        f"{code}\n"
        "try:\n"
        "    run()\n"
        "except SystemExit:\n"
        "    pass\n")
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    wait_for_port("127.0.0.1", port, 120, p)  # type: ignore[arg-type]
    return p, port, before, after


def snapshot(p: subprocess.Popen[bytes], sig: int, path: Path) -> tracemalloc.Snapshot:
    p.send_signal(sig)
    deadline = time.monotonic() + 120
    size = -1
    while time.monotonic() < deadline:  # written by the proxy's handler: wait until whole
        if path.exists() and path.stat().st_size == size and size > 0:
            break
        size = path.stat().st_size if path.exists() else -1
        time.sleep(0.5)
    return tracemalloc.Snapshot.load(str(path))


def hold(port: int, ca: Path, n: int) -> subprocess.Popen[str]:
    h = subprocess.Popen([sys.executable, str(ROOT / "bench" / "hold.py"), str(port), str(ca),
                          str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert h.stdout is not None
    line = h.stdout.readline()
    assert line.strip() == f"held {n}", line
    return h


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", default="inspector", choices=("inspector", "mitmproxy"))
    ap.add_argument("-n", type=int, default=1000, help="idle connections held")
    ap.add_argument("--frames", type=int, default=1, help="traceback depth (1: by line)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--extra", default="", help="more `tlsinspector run` arguments")
    ap.add_argument("--keep", type=Path, help="copy both snapshots into this folder "
                    "(before.snap, after.snap) for a closer look")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tlsinspector-idle-"))
    certs = make_certs(tmp / "certs")
    www = tmp / "www"
    www.mkdir()
    gosrv, goup = go_server(certs, www)
    p = None
    try:
        p, port, before_path, after_path = start(a.kind, goup, tmp, a.frames,
                                                 shlex.split(a.extra))
        warm = hold(port, certs.ca_cert, 8)  # first-use costs out of the baseline
        settle_cpu(p.pid)
        rss0 = rss_kib(p.pid)
        before = snapshot(p, signal.SIGUSR1, before_path)
        held = hold(port, certs.ca_cert, a.n)
        settle_cpu(p.pid)
        rss1 = rss_kib(p.pid)
        after = snapshot(p, signal.SIGUSR2, after_path)
        for h in (held, warm):
            h.communicate("\n", timeout=60)
    finally:
        if p is not None:
            p.terminate()
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        gosrv.terminate()
        gosrv.wait(timeout=10)
    if a.keep is not None:
        a.keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(before_path, a.keep / "before.snap")
        shutil.copy(after_path, a.keep / "after.snap")
    stats = after.compare_to(before, "lineno")
    by: dict[str, int] = {}
    for s in stats:
        by[owner(s.traceback[0].filename)] = by.get(owner(s.traceback[0].filename), 0) \
            + s.size_diff
    total = sum(by.values())
    print(f"## {a.kind} {a.extra}: {a.n} idle connections held; Python allocations live "
          f"per connection {total / a.n / 1024:.2f} KiB (RSS under tracemalloc "
          f"{(rss1 - rss0) / a.n:.1f} KiB)\n")
    print("| owner | bytes per connection | share |\n|---|---|---|")
    for name, size in sorted(by.items(), key=lambda kv: -kv[1]):
        if abs(size) < a.n:  # under a byte per connection
            continue
        print(f"| {name} | {size / a.n:.0f} | {size / total:.0%} |")
    print(f"\n| allocating line (top {a.top}) | bytes per connection | blocks per connection "
          "|\n|---|---|---|")
    for s in stats[:a.top]:
        f = s.traceback[0]
        where = f"{'/'.join(Path(f.filename).parts[-2:])}:{f.lineno}"
        print(f"| {where} | {s.size_diff / a.n:.0f} | {s.count_diff / a.n:.2f} |")
    print("\n| our allocating lines | bytes per connection | blocks per connection |\n"
          "|---|---|---|")
    for s in stats:
        f = s.traceback[0]
        if owner(f.filename).startswith("ours") and abs(s.size_diff) >= a.n * 16:
            where = f"{'/'.join(Path(f.filename).parts[-2:])}:{f.lineno}"
            print(f"| {where} | {s.size_diff / a.n:.0f} | {s.count_diff / a.n:.2f} |")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
