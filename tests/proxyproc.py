"""The inspector as a process for end-to-end tests (see lab/inspector.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from lab.inspector import ROOT, InspectorProcess
from lab.peers import free_port, wait_for_port

BIN = Path(sys.executable).parent
Proxy = InspectorProcess

__all__ = ["BIN", "ROOT", "Proxy", "free_port", "wait_port"]


def wait_port(port: int, proc: subprocess.Popen[bytes], output: Callable[[], str],
              timeout: float = 30.0) -> None:
    try:
        wait_for_port("127.0.0.1", port, timeout, proc)
    except (RuntimeError, TimeoutError) as e:
        raise RuntimeError(f"{e}: {output()}") from e
