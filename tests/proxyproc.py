"""Start the inspector as a real process (the CLI or plain mitmdump) for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes], output: Callable[[], str],
              timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"proxy exited with {proc.returncode}: {output()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)  # polling the port, not synchronising on time
    raise TimeoutError(f"proxy did not listen on {port} within {timeout}s")


class Proxy:
    """``tlsinspector run`` (or mitmdump -s) with a JSONL log; a context manager."""

    def __init__(self, upstream: str, log: Path, scenarios: Sequence[str | Path] = (),
                 mitmdump: bool = False, extra: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.log = log
        if mitmdump:
            cmd = [str(BIN / "mitmdump"), "--mode", f"reverse:tcp://{upstream}",
                   "--listen-host", "127.0.0.1", "-p", str(self.port),
                   "-s", str(ROOT / "addons" / "inspector.py"),
                   "--set", f"tlsinspector_log={log}", "--set", "connection_strategy=lazy"]
            for s in scenarios:
                cmd += ["--set", f"tlsinspector_scenarios={s}"]
        else:
            cmd = [str(BIN / "tlsinspector"), "run", "--listen", f"127.0.0.1:{self.port}",
                   "--upstream", upstream, "--log", str(log), "--seed", "1"]
            for s in scenarios:
                cmd += ["--scenario", str(s)]
        cmd += list(extra)
        # The terminal view goes to a file: a pipe nobody drains would block the proxy.
        self.out_path = log.with_suffix(".out")
        self._out = open(self.out_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT,
                                     cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wait_port(self.port, self.proc, self.output)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def events(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def wait_closes(self, n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Wait until the log holds ``n`` close events (polling the log file)."""
        deadline = time.monotonic() + timeout
        while True:
            evs = self.events()
            if sum(e["event"] == "close" for e in evs) >= n:
                return evs
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise TimeoutError(f"{n} close events not logged; have: {evs[-5:]}")
            time.sleep(0.02)

    def output(self) -> str:
        """What the proxy printed so far (the terminal view and mitmproxy's warnings)."""
        return self.out_path.read_text(errors="replace")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._out.close()
        return self.output()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
