"""Does the live view slow the proxy? 1 GB through tlsinspector with and without
``--web`` and a browser holding the page open (issue 18).

    .venv/bin/python bench/web.py        # prints a Markdown table (BENCHMARKS.md quotes it)

curl downloads 1 GB (a sparse file; TLS encrypts the zeros anyway) from
``openssl s_server -WWW`` over one TLS connection through the inspector, which
logs every record; in the "page open" runs headless chromium has the live page open
and receives that connection's lane as it grows. The "no browser" and
"about:blank" runs separate the view's cost in the proxy from a browser's
competing for the same cores. Rounds are interleaved.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.quick import bulk  # noqa: E402
from tests.browser import DevTools  # noqa: E402
from tlsinspector.lab.certs import make_certs  # noqa: E402
from tlsinspector.lab.peers import free_port, wait_for_port  # noqa: E402

ROUNDS = 3
SIZE = 1 << 30


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="tlsinspector-bench-web-"))
    certs = make_certs(tmp / "certs")
    www = tmp / "www"
    www.mkdir()
    with open(www / "huge", "wb") as f:
        f.truncate(SIZE)
    sport = free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", str(sport), "-cert", str(certs.server_cert),
         "-key", str(certs.server_key), "-WWW", "-quiet", "-naccept", "100000"],
        cwd=www, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port("127.0.0.1", sport, 30, server)  # type: ignore[arg-type]
    res: dict[str, list[tuple[float, float]]] = {
        "inspector": [], "inspector --web, no browser": [], "inspector --web, page open": [],
        "inspector, a browser open elsewhere (about:blank)": []}
    try:
        for i in range(ROUNDS):
            for kind in res:
                print(f"{time.strftime('%H:%M:%S')} round {i + 1}/{ROUNDS}: {kind}",
                      file=sys.stderr)
                port, web = free_port(), free_port()
                cmd = [str(Path(sys.executable).parent / "tlsinspector"), "run", "--listen",
                       f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{sport}",
                       "--log", str(tmp / f"{i}.jsonl"), "--quiet"]
                if "web" in kind:
                    cmd += ["--web", f"127.0.0.1:{web}"]
                p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                browser = None
                try:
                    wait_for_port("127.0.0.1", port, 30, p)  # type: ignore[arg-type]
                    if "web" in kind:
                        wait_for_port("127.0.0.1", web, 30, p)  # type: ignore[arg-type]
                    if "page open" in kind:
                        browser = DevTools(tmp)
                        browser.call("Page.navigate", url=f"http://127.0.0.1:{web}/")
                        browser.wait_for("document.body && document.body.dataset.lanes === '0'")
                    elif "browser" in kind and "no browser" not in kind:
                        browser = DevTools(tmp)  # the browser's own cost on shared cores
                    res[kind].append(bulk(port, certs.ca_cert, "huge", p))
                    if "page open" in kind and browser:  # the page followed the transfer
                        browser.wait_for("document.body.dataset.lanes === '1'")
                finally:
                    if browser is not None:
                        browser.close()
                    p.terminate()
                    p.wait(timeout=10)
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"| path (1 GB, curl, one TLS connection; medians of {ROUNDS} rounds) "
          "| MB/s | proxy CPU s per GB |\n|---|---|---|")
    for kind, runs in res.items():
        print(f"| {kind} | {statistics.median(r[0] for r in runs):.0f} "
              f"| {statistics.median(r[1] for r in runs):.2f} |")


if __name__ == "__main__":
    main()
