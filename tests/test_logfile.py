"""addons/logfile.py: the JSONL log file is opened and written safely (issue 12, item 4).

Before: a planted symlink was followed, the log was created 0644, a FIFO hung
the start with no message, and after an external truncation plus a full disk
the writer truncated back to its remembered size: 118,281 NUL bytes.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.proxyproc import free_port
from tlsinspector.addons.logfile import REOPEN_CHECK, JsonlLog, LogFileError

# These tests write log lines by hand (the writer's input, not the product's events).
pytestmark = pytest.mark.handmade_logs

BIN = Path(sys.executable).parent / "tlsinspector"


def ev(i: int) -> dict[str, object]:
    return {"event": "record", "ts": float(i), "conn": "1", "index": i, "pad": "x" * 200}


def lines(path: Path) -> list[dict[str, object]]:
    data = path.read_bytes()
    assert b"\0" not in data
    assert data == b"" or data.endswith(b"\n")
    return [orjson.loads(x) for x in data.splitlines()]


def run_cli(log: Path, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), "run", "--upstream", "127.0.0.1:1", "--listen",
                           f"127.0.0.1:{free_port()}", "--log", str(log)],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_created_0600_and_appended(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"event":"old"}\n')
    path.unlink()
    log = JsonlLog(str(path))
    log.write_many([ev(1)])
    log.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    log = JsonlLog(str(path))
    log.write_many([ev(2)])
    log.close()
    assert [e["index"] for e in lines(path)] == [1, 2]


def test_symlink_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "log.jsonl"
    link.symlink_to(victim)
    with pytest.raises(LogFileError, match="is a symbolic link; refusing to follow it"):
        JsonlLog(str(link))
    res = run_cli(link)
    assert res.returncode == 2
    assert f"tlsinspector run: the log {link} is a symbolic link" in res.stderr
    assert "Traceback" not in res.stderr
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("reader", [False, True])
def test_fifo_is_refused_without_hanging(tmp_path: Path, reader: bool) -> None:
    fifo = tmp_path / "log.jsonl"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK) if reader else -1
    try:
        with pytest.raises(LogFileError, match="FIFO"):
            JsonlLog(str(fifo))
        res = run_cli(fifo, timeout=20)  # hung forever before
        assert res.returncode == 2 and "FIFO" in res.stderr, res.stderr
    finally:
        if fd >= 0:
            os.close(fd)


@pytest.mark.parametrize("path", ["/dev/null", "/dev/full", "/tmp"])
def test_devices_and_directories_are_refused(path: str) -> None:
    with pytest.raises(LogFileError, match="not a regular file"):
        JsonlLog(path)
    res = run_cli(Path(path))
    # The message says which of run's paths it is (--keylog, --pcap have their own).
    assert res.returncode == 2 and f"the log {path} " in res.stderr, res.stderr
    assert "not a regular file" in res.stderr


def test_external_truncation_then_append_has_no_nul_hole(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    log = JsonlLog(str(path))
    log.write_many([ev(i) for i in range(100)])
    os.truncate(path, 0)  # logrotate copytruncate
    log.write_many([ev(100)])
    log.close()
    assert [e["index"] for e in lines(path)] == [100]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.fail("needs root: it mounts a 64 KiB tmpfs to fill")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tlsi-logfile", str(mnt)],
                   check=True, timeout=30)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True, timeout=30)


def fill(path: Path) -> None:
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError as e:
            assert e.errno == errno.ENOSPC


def test_truncation_then_full_disk_keeps_whole_lines_and_no_nul(small_fs: Path) -> None:
    """The reported sequence: lines, external truncation, a full disk, space again."""
    path = small_fs / "log.jsonl"
    log = JsonlLog(str(path))
    log.write_many([ev(i) for i in range(100)])  # ~22 KB
    os.truncate(path, 0)
    fill(small_fs / "filler")
    with pytest.raises(OSError):
        log.write_many([ev(i) for i in range(100, 400)])
    log.write_many([ev(400)])  # still full: counted, not raised again
    assert log.lost == 301
    (small_fs / "filler").unlink()
    log.write_many([ev(401)])
    log.close()
    got = lines(path)  # whole lines, no NUL bytes anywhere
    assert got[0]["event"] == "log_gap" and got[0]["lost_events"] == 301
    assert [e["index"] for e in got[1:]] == [401]


def test_renamed_away_is_reopened(tmp_path: Path) -> None:
    now = [0.0]
    path = tmp_path / "log.jsonl"
    log = JsonlLog(str(path), clock=lambda: now[0])
    log.write_many([ev(1)])
    path.rename(tmp_path / "log.jsonl.1")  # logrotate's default
    log.write_many([ev(2)])  # within REOPEN_CHECK: still the old file
    now[0] += REOPEN_CHECK
    log.write_many([ev(3)])
    log.close()
    assert [e["index"] for e in lines(tmp_path / "log.jsonl.1")] == [1, 2]
    assert [e["index"] for e in lines(path)] == [3]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and log.reopened == 1


def test_a_symlink_planted_at_rotation_is_not_followed(tmp_path: Path) -> None:
    now = [0.0]
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "log.jsonl"
    log = JsonlLog(str(path), clock=lambda: now[0])
    path.rename(tmp_path / "log.jsonl.1")
    path.symlink_to(victim)
    now[0] += REOPEN_CHECK
    log.write_many([ev(1)])
    log.close()
    assert victim.read_text() == "precious\n"
    assert [e["index"] for e in lines(tmp_path / "log.jsonl.1")] == [1]


# -- runs of bulk records written from their template (issue 19) ------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tlsinspector.addons.logfile import packed_lines  # noqa: E402
from tlsinspector.proxy.messages import app_data_event  # noqa: E402
from tlsinspector.proxy.outbox import EmitRecords, unpacked  # noqa: E402

_VALUES = st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False),
                    st.text(), st.booleans(), st.none(),
                    st.sampled_from(["%d", "%%", "%s %d", "7390123457019", "%"]))


@settings(deadline=None)  # (text generation is slow on a loaded machine; no timing here)
@given(keys=st.lists(st.text(min_size=1), unique=True, max_size=6), data=st.data(),
       first=st.integers(0, 2**40), lengths=st.lists(st.integers(0, 2**40), max_size=20),
       length_first=st.booleans(), index=st.integers(), length=st.integers())
def test_packed_lines_are_orjson_of_each_event(keys: list[str], data: st.DataObject,
                                               first: int, lengths: list[int],
                                               length_first: bool, index: int,
                                               length: int) -> None:
    """The oracle: orjson.dumps of every unpacked event, for any template (its keys in
    any order, values with % signs or the marks' digits, index before or after length)."""
    template: dict[str, object] = {k: data.draw(_VALUES) for k in keys
                                   if k not in ("index", "length")}
    order = ["length", "index"] if length_first else ["index", "length"]
    for k in order:
        template[k] = index if k == "index" else length
    run = EmitRecords(template, first, lengths)
    assert packed_lines(run) == [orjson.dumps(e) for e in run.events()]


def test_packed_lines_of_the_engines_own_template_and_the_mark_in_a_value() -> None:
    real = EmitRecords(app_data_event(1700000000.123456, "7", "server", 0, 0x0303, 0),
                       12, [16401, 16401, 901])
    assert packed_lines(real) == [orjson.dumps(e) for e in real.events()]
    marked = EmitRecords({"event": "record", "index": 0, "note": 7_390_123_457_019,
                          "length": 0}, 3, [5, 6])   # a mark found twice: the fallback
    assert packed_lines(marked) == [orjson.dumps(e) for e in marked.events()]


def test_packed_and_plain_events_write_the_same_bytes_and_count_the_same_loss(
        small_fs: Path) -> None:
    run = EmitRecords(app_data_event(1.5, "9", "client", 0, 0x0303, 0), 4, [100] * 50)
    items: list[dict[str, object] | EmitRecords] = [ev(1), run, ev(2)]
    a, b = small_fs / "packed.jsonl", small_fs / "plain.jsonl"
    la, lb = JsonlLog(str(a)), JsonlLog(str(b))
    la.write_many(items)
    lb.write_many(unpacked(items))  # type: ignore[arg-type]
    assert a.read_bytes() == b.read_bytes() and len(lines(a)) == 52
    fill(small_fs / "filler")
    with pytest.raises(OSError):
        la.write_many(items * 40)
    assert la.lost == 52 * 40   # every event of a run counts, not the run once
    la.close()
    lb.close()


def run_pcap(pcap: Path, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), "run", "--upstream", "127.0.0.1:1", "--listen",
                           f"127.0.0.1:{free_port()}", "--quiet", "--pcap", str(pcap)],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_pcap_symlink_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    """run --pcap is opened as carefully as --log: before, a planted symlink was
    followed and its target truncated and overwritten with pcapng blocks (which may
    hold --pcap-keys secrets), and the proxy started."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "both.pcapng"
    link.symlink_to(victim)
    res = run_pcap(link)
    assert res.returncode == 2, res.stderr
    assert f"tlsinspector run: the pcapng {link} is a symbolic link" in res.stderr
    assert victim.read_text() == "precious\n"


def test_pcap_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "both.pcapng"
    os.mkfifo(fifo)
    res = run_pcap(fifo)  # hung in open() before, with nothing printed
    assert res.returncode == 2 and "FIFO" in res.stderr, res.stderr


def test_pcap_path_is_escaped_in_errors(tmp_path: Path) -> None:
    res = run_pcap(tmp_path / "no\x1b[2Jdir" / "x.pcapng")
    assert res.returncode == 2, res.stderr
    assert "\x1b" not in res.stderr and "no\\x1b[2Jdir" in res.stderr, res.stderr
