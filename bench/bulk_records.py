"""The hot path's Python cost per bulk record (issue 19's CPU-per-GB row).

    .venv/bin/python bench/bulk_records.py [--mb 64] [--rounds 7] [--chunk 614400]
                                           [--no-app-records] [--profile]

A download through the live proxy is ~65,000 application_data records of 16 KiB
per GB, read ~600 KB at a time; each record is logged (a JSONL ``record`` event)
or counted (``--no-app-records``). This feeds such a stream to a settled
:class:`Connection` (after a real TLS 1.3 handshake, tests/conversation.py),
through the output path the live proxy uses once it has handed a connection to
its hot relay: ``HotRelay._receive`` (forwards_unchanged, the write, receive,
_apply), the layer's ``hot_emit`` (the per-connection Coalescer) and
``Inspector.emit_many`` down to ``JsonlLog.write_many`` (orjson, one write(2)
per chunk, to a file in a temporary directory). The transports are stand-ins
that take the write and keep nothing.

Process CPU time (time.process_time), the minimum of the rounds, per record.
The clock the relay reads is fixed, so the log is the same bytes for the same
stream whatever the code: its SHA-256 is printed, to compare two commits' logs
(``--no-app-records`` logs nothing of the bulk).

Run it from two worktrees alternately for a before/after in one run (the
machine is shared: CPU time, minimum of rounds, interleaved).
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import os
import pstats
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conversation import conversation  # noqa: E402
from tlsinspector.addons import hotpath, logfile  # noqa: E402
from tlsinspector.addons.inspector import Inspector, RecordLayer  # noqa: E402
from tlsinspector.proxy.coalesce import Coalescer  # noqa: E402
from tlsinspector.proxy.engine import Connection  # noqa: E402
from tlsinspector.proxy.history import Side  # noqa: E402

RECORD = 16401  # a TLS 1.3 record of 16 KiB of data: + content type + 16-byte tag
CLOCK = 1_700_000_000.123456


class NullTransport:
    """Takes the relay's writes and keeps nothing (the kernel's part is not ours);
    reading is a flag, flow control a no-op."""

    def __init__(self) -> None:
        self.reading = True

    def write(self, data: Any) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def set_protocol(self, protocol: Any) -> None:
        pass

    def is_reading(self) -> bool:
        return self.reading

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def bulk_stream(mb: int) -> tuple[bytes, int]:
    """Application_data records of RECORD bytes, about ``mb`` MB in all."""
    n = (mb << 20) // (RECORD + 5)
    payload = os.urandom(RECORD)
    rec = bytes((23, 3, 3, RECORD >> 8, RECORD & 0xFF)) + payload
    return rec * n, n


def settled(log_app_data: bool) -> Connection:
    """A Connection after a real TLS 1.3 handshake and one request and response,
    settled (its hot relay would have it)."""
    flights = conversation("1.3")
    eng = Connection("1", "127.0.0.1:1", "127.0.0.1:2", log_app_data=log_app_data)
    eng.start(1.0)
    for side, data in flights[:-2]:  # not the close_notify alerts
        eng.receive(side, data, 1.0)  # type: ignore[arg-type]
        if eng.settled:
            break
    if not eng.settled:
        raise SystemExit("the conversation did not settle the engine")
    return eng


def relay(eng: Connection, log_path: Path) -> hotpath.HotRelay:
    """The hot relay of a layer whose log is ``log_path`` (quiet terminal)."""
    insp = Inspector()
    insp.quiet = True
    insp._jsonl = logfile.JsonlLog(str(log_path))
    layer = object.__new__(RecordLayer)  # only what hot_emit reads: no mitmproxy context
    layer.inspector = insp
    layer.engine = eng
    layer.coalescer = Coalescer()
    r = hotpath.HotRelay(layer, eng, layer.hot_emit)
    # As HotRelay.start does once it has the transports (no idle timer).
    r.attach({side: (NullTransport(), None, b"", False) for side in ("client", "server")}, 0.0)
    return r


def run(stream: bytes, chunk: int, log_app_data: bool, tmp: Path,
        profile: cProfile.Profile | None = None) -> tuple[float, bytes]:
    """One download through a fresh relay: (CPU seconds, the log's bytes)."""
    eng = settled(log_app_data)
    path = tmp / "bulk.jsonl"
    path.unlink(missing_ok=True)
    r = relay(eng, path)
    view = memoryview(stream)
    side: Side = "server"
    receive = r._receive
    if profile is not None:
        profile.enable()
    t = time.process_time()
    for pos in range(0, len(stream), chunk):
        receive(side, view[pos:pos + chunk])  # type: ignore[arg-type]
    spent = time.process_time() - t
    if profile is not None:
        profile.disable()
    assert r.layer.inspector._jsonl is not None
    r.layer.inspector._jsonl.close()
    return spent, path.read_bytes()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--chunk", type=int, default=600 << 10)
    ap.add_argument("--no-app-records", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    # The relay's clock, fixed: the same stream gives the same log bytes.
    hotpath.time = types.SimpleNamespace(time=lambda: CLOCK)  # type: ignore[assignment]
    stream, n = bulk_stream(a.mb)
    log = not a.no_app_records
    best = 1e9
    digest = ""
    size = 0
    with tempfile.TemporaryDirectory(prefix="tlsinspector-bulk-") as tmp:
        for _ in range(a.rounds):
            spent, data = run(stream, a.chunk, log, Path(tmp))
            best = min(best, spent)
            digest, size = hashlib.sha256(data).hexdigest()[:16], len(data)
        if a.profile:
            prof = cProfile.Profile()
            run(stream, a.chunk, log, Path(tmp), prof)
            pstats.Stats(prof).sort_stats("tottime").print_stats(a.top)
    mode = "counted" if a.no_app_records else "logged"
    print(f"{ROOT.name}: {n} records of {RECORD} B in {a.chunk} B chunks, {mode}: "
          f"{best / n * 1e6:.3f} us per record (min of {a.rounds}), "
          f"{best / (n * (RECORD + 5)) * 1e9:.3f} s per GB; log {size} B sha256 {digest}")


if __name__ == "__main__":
    main()
