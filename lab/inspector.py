"""The inspector as a child process (the CLI, or plain mitmdump with the addon).

Used by experiments and tests alike: start it, read its JSON Lines events,
wait for connections to close, stop it by its own handle.
"""

from __future__ import annotations

import json
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
                 output: Path | None = None, keylog: Sequence[str | Path] = ()) -> None:
        self.port = free_port()
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
        try:
            wait_for_port("127.0.0.1", self.port, timeout=30, proc=self.proc)
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

    def wait_closes(self, n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Wait until the log holds ``n`` close events (polling the log file)."""
        deadline = time.monotonic() + timeout
        while True:
            evs = self.events()
            if sum(e["event"] == "close" for e in evs) >= n:
                return evs
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise TimeoutError(f"{n} close events not logged; have: {evs[-5:]}")
            time.sleep(0.02)  # polling the log for the event

    def wait_close(self, old: set[str], timeout: float = 20.0) -> list[dict[str, Any]]:
        """Events once a connection not in ``old`` has closed (or the time is up)."""
        start = time.monotonic()
        while time.monotonic() < start + timeout:
            evs = self.events()
            if any(e["event"] == "close" and e["conn"] not in old for e in evs):
                return evs
            if not any(e["conn"] not in old for e in evs) and time.monotonic() > start + 2.0:
                return evs  # no connection reached the inspector: the client never connected
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)  # polling the log for the close event
        return self.events()

    def stop(self) -> str:
        stop_process(self.proc, signal.SIGINT)  # SIGINT: mitmproxy shuts down cleanly
        self._out.close()
        return self.output()

    def __enter__(self) -> InspectorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
