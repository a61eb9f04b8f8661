"""Headless Debian chromium for the report tests: render a page, read back its DOM.

The page's own network requests are read from chromium's net log: requests a
page starts carry the page's origin as initiator (``null`` for file://), while
chromium's background traffic (update checks, account probes), which the flags
below reduce but do not end, carries none ("not an origin").
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tlsinspector.lab.peers import need

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


@dataclass(frozen=True)
class Rendered:
    dom: str
    netlog: Path
    seconds: float


def _run(args: list[str], work: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    work.mkdir(parents=True, exist_ok=True)
    profile = work / f"profile-{time.monotonic_ns()}"   # a fresh --user-data-dir per run
    return subprocess.run([need("chromium"), *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=timeout)


def dump_dom(url: str, work: Path, timeout: float = 120.0) -> Rendered:
    """The DOM after the page's scripts ran, and the net log of the visit."""
    netlog = work / f"netlog-{time.monotonic_ns()}.json"
    start = time.monotonic()
    res = _run([f"--log-net-log={netlog}", "--dump-dom", url], work, timeout)
    took = time.monotonic() - start
    if res.returncode != 0 or "<html" not in res.stdout:
        raise RuntimeError(f"chromium failed ({res.returncode}): {res.stderr[-2000:]}")
    return Rendered(res.stdout, netlog, took)


def screenshot(url: str, png: Path, width: int = 1400, height: int = 1000,
               timeout: float = 120.0) -> Path:
    res = _run([f"--window-size={width},{height}", f"--screenshot={png}",
                "--hide-scrollbars", url], png.parent, timeout)
    if res.returncode != 0 or not png.is_file():
        raise RuntimeError(f"chromium screenshot failed ({res.returncode}): {res.stderr[-2000:]}")
    return png


def page_requests(netlog: Path) -> list[str]:
    """URLs the page itself asked for (not chromium's own background requests)."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for ev in log["events"]:
        params = ev.get("params") or {}
        if (ev["type"] == start and "url" in params
                and params.get("initiator") != "not an origin"):
            urls.append(str(params.get("url")))
    return urls
