"""Headless Debian chromium for the report tests: render a page, read back its DOM.

The page's own network requests are read from chromium's net log: requests a
page starts carry the page's origin as initiator (``null`` for file://), while
chromium's background traffic (update checks, account probes), which the flags
below reduce but do not end, carries none ("not an origin").
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlsinspector.lab.peers import need

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


@dataclass(frozen=True)
class Rendered:
    dom: str
    netlog: Path
    seconds: float


def _start(args: list[str], **kw: Any) -> subprocess.Popen[str]:
    # Debian's /usr/bin/chromium is a shell script that does not exec the browser:
    # a session of its own lets us end the whole group, leaving no orphans.
    # Chromium puts its singleton socket folder in TMPDIR and leaves it behind when
    # ended by a signal: give it one of its own, removed by _end (short: a socket
    # path has at most 108 bytes).
    tmp = tempfile.mkdtemp(prefix="chr-")
    proc = subprocess.Popen([need("chromium"), *FLAGS, *args], start_new_session=True,
                            text=True, env={**os.environ, "TMPDIR": tmp}, **kw)
    _TMP[proc.pid] = tmp
    return proc


_TMP: dict[int, str] = {}  # browser pid -> its TMPDIR


def _end(proc: subprocess.Popen[str]) -> None:
    """End the browser's process group (its id is the one we started)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=10)
            break
        except subprocess.TimeoutExpired:
            continue
    tmp = _TMP.pop(proc.pid, None)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(args: list[str], work: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    work.mkdir(parents=True, exist_ok=True)
    profile = work / f"profile-{time.monotonic_ns()}"   # a fresh --user-data-dir per run
    proc = _start([f"--user-data-dir={profile}", *args], stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        _end(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


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


class DevTools:
    """A headless chromium driven over the DevTools protocol (tornado's websocket
    client, which mitmproxy already ships): open a page, evaluate JavaScript in it."""

    def __init__(self, work: Path, timeout: float = 30.0) -> None:
        import asyncio
        import urllib.request

        self.timeout = timeout
        profile = work / f"devtools-{time.monotonic_ns()}"
        self.proc = _start([f"--user-data-dir={profile}", "--remote-debugging-port=0",
                            "about:blank"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.is_file() and port_file.read_text().count("\n") >= 1):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium's DevTools port did not appear")
            time.sleep(0.05)  # chromium writes the file once it listens
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            targets = json.loads(r.read())
        ws = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        self.loop = asyncio.new_event_loop()
        self._id = 0
        from tornado.websocket import websocket_connect

        async def connect() -> Any:
            return await asyncio.wait_for(websocket_connect(ws, max_message_size=1 << 26),
                                          timeout)

        self.ws = self.loop.run_until_complete(connect())

    def call(self, method: str, **params: object) -> dict[str, object]:
        import asyncio

        self._id += 1
        ident = self._id

        async def go() -> dict[str, object]:
            await self.ws.write_message(json.dumps({"id": ident, "method": method,
                                                    "params": params}))
            while True:
                msg = await self.ws.read_message()
                if msg is None:
                    raise RuntimeError("DevTools connection closed")
                reply = json.loads(msg)
                if reply.get("id") == ident:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return dict(reply.get("result", {}))

        return self.loop.run_until_complete(asyncio.wait_for(go(), self.timeout))

    def evaluate(self, expression: str) -> object:
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        value = res.get("result")
        return value.get("value") if isinstance(value, dict) else None

    def wait_for(self, expression: str, timeout: float = 20.0) -> object:
        """Evaluate until the expression is truthy; its value (a timeout is an error)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout}s: {expression}")
            time.sleep(0.05)  # polling the page's state, bounded by the deadline

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            async def shut() -> None:
                ws.close()  # tornado writes the close frame on the running loop

            # Not ws.close() from outside: with no current event loop in this thread
            # (another test in the same worker may have cleared it) tornado fails.
            self.loop.run_until_complete(shut())
        if getattr(self, "loop", None) is not None:
            self.loop.close()
        _end(self.proc)
