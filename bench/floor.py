"""The floor under the inspector: ``tlsinspector run`` with its engine doing nothing.

    .venv/bin/python bench/floor.py run --listen 127.0.0.1:PORT --upstream HOST:PORT ...

A bench path (bench/quick.py's and split_tail.py's ``inspector-floor``), never a
product mode. Everything is the inspector's, as ``run`` loads it: mitmproxy's lean
addon set, its accept path and connection handler, the eager upstream connection,
our layer, the hand-over after the first chunk and the hot relay on the event loop's
transports. Only the engine is replaced, by one that parses, decrypts, logs and
diagnoses nothing: each chunk goes on as it came (the hot relay writes it before
asking the engine, as for any chunk ``forwards_unchanged`` allows), and a connection
ends with its connect and close events alone.

What it measures: the cost of relaying a TLS connection through mitmproxy's accept
path and a transport-level relay, before any inspection. A target that this path
misses (issue 19's handshakes/s against direct, or the p99 latency over direct)
cannot be reached by cutting the inspector's own work, only by leaving mitmproxy's
accept path. The difference between ``inspector`` and ``inspector-floor`` is what
the inspection itself costs per handshake.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tlsinspector.proxy import engine  # noqa: E402
from tlsinspector.proxy.history import Side, other  # noqa: E402


class FloorConnection(engine.Connection):
    """The engine's interface, none of its work (a faultless connection only: run
    without a scenario, as quick.py's rows do). The close event keeps its byte counts."""

    def forwards_unchanged(self, side: Side, data: bytes) -> bool:
        return True

    @property
    def handshakes_over(self) -> bool:
        return True

    def receive(self, side: Side, data: bytes, now: float,
                forwarded: bool = False) -> list[engine.Output]:
        self._dirs[side].bytes += len(data)
        return [] if forwarded else [engine.Send(other(side), bytes(data))]


def main(argv: list[str]) -> Any:
    if any(a in ("--scenario", "-s", "--keylog", "--starttls", "--intercept") for a in argv):
        sys.exit("bench/floor.py: the floor takes no scenario, key log, STARTTLS or "
                 "interception: its engine does nothing")
    engine.Connection = FloorConnection  # type: ignore[misc]
    from tlsinspector.cli import main as cli_main
    sys.argv = ["tlsinspector", *argv]
    return cli_main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
