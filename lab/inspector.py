"""The inspector as a child process (the CLI, or plain mitmdump with the addon).

Used by experiments and tests alike: start it, read its JSON Lines events,
wait for connections to close, stop it by its own handle.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tlsinspector import ADDON
from tlsinspector.lab.peers import free_port, stop_process, wait_for_port


class InspectorProcess:
    """``tlsinspector run`` (or mitmdump with the addon) with a JSONL log."""

    def __init__(self, upstream: str, log: Path, scenarios: Sequence[str | Path] = (),
                 mitmdump: bool = False, extra: Sequence[str] = (), seed: int = 1,
                 output: Path | None = None, keylog: Sequence[str | Path] = (),
                 port: int | None = None, start_timeout: float = 90.0) -> None:
        self.port = port or free_port()
        self.log = log
        if mitmdump:
            cmd = [str(Path(sys.executable).parent / "mitmdump"), "--mode",
                   f"reverse:tcp://{upstream}", "--listen-host", "127.0.0.1",
                   "-p", str(self.port), "-s", str(ADDON),
                   "--set", f"tlsinspector_log={log}", "--set", "connection_strategy=lazy"]
            for s in scenarios:
                cmd += ["--set", f"tlsinspector_scenarios={s}"]
            for k in keylog:
                cmd += ["--set", f"tlsinspector_keylog={k}"]
        else:
            cmd = [sys.executable, "-m", "tlsinspector", "run", "--listen",
                   f"127.0.0.1:{self.port}", "--upstream", upstream, "--log", str(log),
                   "--seed", str(seed)]
            for s in scenarios:
                cmd += ["--scenario", str(s)]
            for k in keylog:
                cmd += ["--keylog", str(k)]
        cmd += list(extra)
        # The terminal view goes to a file: a pipe nobody drains would block the proxy.
        self.out_path = output or log.with_suffix(".out")
        self._out = open(self.out_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        # start_timeout only bounds a hang (a crash is seen at once): importing
        # mitmproxy takes ~1 s of CPU, and several proxies starting together on a
        # loaded 2-core machine (CI, pytest -n 2) took over 30 s to listen.
        try:
            wait_for_port("127.0.0.1", self.port, timeout=start_timeout, proc=self.proc)
        except Exception as e:
            self.stop()
            raise RuntimeError(f"inspector did not start: {e}\n{self.output()}") from e

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def output(self) -> str:
        """What the proxy printed so far (the terminal view and mitmproxy's warnings)."""
        return self.out_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The complete lines of the log (a line still being written is left for later)."""
        if not self.log.exists():
            return []
        lines = self.log.read_text().split("\n")[:-1]
        return [json.loads(x) for x in lines if x.strip()]

    def wait_closes(self, n: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Wait until the log holds ``n`` close events (polling the log file); the
        timeout only bounds a hang (generous: a loaded machine is slow, not stuck)."""
        deadline = time.monotonic() + timeout
        while True:
            evs = self.events()
            if sum(e["event"] == "close" for e in evs) >= n:
                return evs
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise TimeoutError(f"{n} close events not logged; have: {evs[-5:]}")
            time.sleep(0.02)  # polling the log for the event

    def wait_close(self, old: set[str], timeout: float = 20.0) -> list[dict[str, Any]]:
        """Events once every connection not in ``old`` has closed and none is still on
        its way into the proxy, or at once when none reached the inspector (or the time
        is up). Call it after the client exited: a client that made several connections
        (a resumption, a retry) and exited quickly still gets every close event."""
        start = time.monotonic()
        while time.monotonic() < start + timeout:
            evs = self.events()
            if self._all_closed(evs, old) and self.in_flight() == 0:
                evs = self.events()  # re-read: a connect may have landed meanwhile
                if self._all_closed(evs, old):
                    return evs
            if not any(e["conn"] not in old for e in evs) and self.in_flight() == 0:
                # The kernel holds no connection for the listener and the proxy holds no
                # accepted socket: nothing is on its way into the log, so the client
                # never connected (re-read: the connect may have landed meanwhile).
                evs = self.events()
                if not any(e["conn"] not in old for e in evs):
                    return evs
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)  # polling the log for the close event
        return self.events()

    @staticmethod
    def _all_closed(evs: list[dict[str, Any]], old: set[str]) -> bool:
        """Some connection not in ``old`` connected, and each such one closed."""
        new = {e["conn"] for e in evs if e["event"] == "connect" and e["conn"] not in old}
        closed = {e["conn"] for e in evs if e["event"] == "close"}
        return bool(new) and new <= closed

    def in_flight(self) -> int:
        """Connections to the listening port that are not finished inside the proxy:
        waiting in the listener's accept queue, or accepted and still open in the proxy
        process (read from /proc/net/tcp{,6} and the process's descriptors, Linux)."""
        port = f":{self.port:04X}"
        try:
            inodes = {os.readlink(f"/proc/{self.proc.pid}/fd/{fd}")
                      for fd in os.listdir(f"/proc/{self.proc.pid}/fd")}
        except OSError:
            return 0  # the process is gone
        n = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                f = line.split()
                if not f[1].endswith(port):
                    continue
                if f[3] == "0A":   # LISTEN: rx_queue is the accept backlog
                    n += int(f[4].split(":")[1], 16)
                elif f"socket:[{f[9]}]" in inodes:
                    n += 1
        return n

    def stop(self) -> str:
        stop_process(self.proc, signal.SIGINT)  # SIGINT: mitmproxy shuts down cleanly
        self._out.close()
        return self.output()

    def __enter__(self) -> InspectorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
