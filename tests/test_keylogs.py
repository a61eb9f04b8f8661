"""The key log file follower (addons/keylogs.py) and --keylog's bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tlsinspector.addons.keylogs import KeyLogFollower, KeyLogPathError, check_path

R1, R2 = "11" * 32, "22" * 32
SECRET = "ab" * 48
LINE1 = f"CLIENT_RANDOM {R1} {SECRET}\n"
LINE2 = f"CLIENT_HANDSHAKE_TRAFFIC_SECRET {R2} {'cd' * 32}\n"


def test_waits_for_a_file_that_does_not_exist_yet(tmp_path: Path) -> None:
    path = tmp_path / "keys.log"
    f = KeyLogFollower([str(path)])
    assert f.waiting() == [str(path)]
    assert not f.poll()
    path.write_text(LINE1)
    assert f.poll()
    assert f.keylog.get(bytes.fromhex(R1)) is not None
    assert f.waiting() == []
    assert not f.poll()  # nothing new


def test_appended_bytes_and_partial_lines(tmp_path: Path) -> None:
    path = tmp_path / "keys.log"
    path.write_text(LINE1[:30])
    f = KeyLogFollower([str(path)])
    assert not f.poll()  # half a line waits for its newline
    with path.open("a") as fh:
        fh.write(LINE1[30:] + LINE2[:10])
    assert f.poll()
    assert bytes.fromhex(R1) in f.keylog and bytes.fromhex(R2) not in f.keylog
    with path.open("a") as fh:
        fh.write(LINE2[10:])
    assert f.poll()
    assert bytes.fromhex(R2) in f.keylog
    assert f.keylog.malformed == 0


def test_two_files_never_mix_a_line(tmp_path: Path) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_text(LINE1[:40])
    b.write_text(LINE2)
    f = KeyLogFollower([str(a), str(b)])
    f.poll()
    with a.open("a") as fh:
        fh.write(LINE1[40:])
    f.poll()
    assert bytes.fromhex(R1) in f.keylog and bytes.fromhex(R2) in f.keylog
    assert f.keylog.malformed == 0


def test_truncation_and_rotation_read_the_new_content(tmp_path: Path) -> None:
    path = tmp_path / "keys.log"
    path.write_text(LINE1 + LINE1)
    f = KeyLogFollower([str(path)])
    assert f.poll()
    path.write_text(LINE2)  # truncated and rewritten, shorter than before
    assert f.poll()
    assert bytes.fromhex(R2) in f.keylog
    r3 = "33" * 32
    new = tmp_path / "keys.log.new"
    new.write_text(f"CLIENT_RANDOM {r3} {SECRET}\n" + LINE1 * 3)  # longer: rotation
    os.replace(new, path)
    assert f.poll()
    assert bytes.fromhex(r3) in f.keylog


def test_malformed_lines_are_reported_once_without_secrets(tmp_path: Path) -> None:
    path = tmp_path / "keys.log"
    path.write_text(f"CLIENT_RANDOM {R1} {SECRET[:20]}\n"          # truncated key
                    f"MY_LABEL {R2} {SECRET}\n"                     # unknown label
                    "garbage\n" + LINE1)
    f = KeyLogFollower([str(path)])
    assert f.poll()
    assert f.keylog.malformed == 2 and f.keylog.unknown_labels == 1
    assert len(f.messages) == 1 and str(path) in f.messages[0]
    with path.open("a") as fh:
        fh.write("more garbage\n")
    f.poll()
    assert len(f.messages) == 1  # once per file
    summary = f.summary() or ""
    # "1 lines with unknown labels": counts of one are singular.
    assert summary.startswith("key logs: 3 malformed lines and 1 line with unknown labels "
                              "were skipped; 1 key read for 1 connection"), summary
    for text in [*f.messages, summary]:
        assert SECRET[:20] not in text and R1 not in text


def test_a_malformed_line_is_named_by_its_own_line_in_its_own_file(tmp_path: Path) -> None:
    """Several key logs feed one KeyLog (reproduce passes one per peer): the message
    names the first bad line of each file by its number in that file, also after the
    file was truncated and written again."""
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_text(LINE1 + "\n\nnot a key\n")
    b.write_text("# a comment\n" + LINE2 + "bad one\nbad two\n")
    f = KeyLogFollower([str(a), str(b)])
    f.poll()
    assert [m.split(": ", 2)[1] for m in f.messages] == ["key log line 4", "key log line 3"]
    a.write_text("x\n")  # truncated: read again from its first line
    f.poll()
    assert f.keylog.problems[-1].line == 1


def test_a_huge_line_written_in_pieces_is_one_malformed_line(tmp_path: Path) -> None:
    """A line far longer than any key (garbage, a binary file) arriving over many reads
    is counted once, and the lines after it keep their numbers."""
    path = tmp_path / "keys.log"
    path.write_text("A" * 100_000)
    f = KeyLogFollower([str(path)])
    f.poll()
    with path.open("a") as fh:
        fh.write("A" * 3_000_000)
    while f.poll() or f.files[0].pos < path.stat().st_size:
        pass
    with path.open("a") as fh:
        fh.write("AAAA\n" + LINE1 + "bad\n")
    f.poll()
    assert f.keylog.malformed == 2
    assert [p.line for p in f.keylog.problems] == [1, 3]
    assert f.keylog.get(bytes.fromhex(R1)) is not None


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyLogPathError, match="is a directory"):
        KeyLogFollower([str(tmp_path)])
    assert "does not exist" in (check_path(str(tmp_path / "no" / "keys.log")) or "")
    plain = tmp_path / "file"
    plain.write_text("x")
    assert "Not a directory" in (check_path(str(plain / "keys.log")) or "")


def test_a_fifo_is_refused_and_one_appearing_later_never_blocks(tmp_path: Path) -> None:
    """A FIFO cannot be followed (no size, no position) and opening one for reading
    blocks until a writer comes: `run --keylog FIFO` hung before listening, and a FIFO
    created at a waited-for path froze the event loop, every connection with it."""
    import threading

    fifo = tmp_path / "keys.fifo"
    os.mkfifo(fifo)
    with pytest.raises(KeyLogPathError, match="is a FIFO, not a key log file"):
        KeyLogFollower([str(fifo)])
    later = tmp_path / "keys.log"
    f = KeyLogFollower([str(later)])
    os.mkfifo(later)
    t = threading.Thread(target=f.poll, daemon=True)
    t.start()
    t.join(timeout=5)
    assert not t.is_alive()
    assert f.messages == [f"cannot read key log {later}: it is a FIFO now (retrying; "
                          "traffic is not affected)"]


def test_cli_refuses_a_directory_keylog_with_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tlsinspector", "run", "--upstream", "127.0.0.1:1",
         "--keylog", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"key log {tmp_path} is a directory" in proc.stderr


def test_a_file_turning_unreadable_is_reported_and_retried(tmp_path: Path) -> None:
    path = tmp_path / "keys.log"
    path.write_text(LINE1)
    f = KeyLogFollower([str(path)])
    f.poll()
    path.unlink()
    path.mkdir()  # the name is now a directory: reported once, retried quietly
    assert not f.poll() and not f.poll()
    assert len(f.messages) == 1 and "directory" in f.messages[0]
    path.rmdir()
    path.write_text(LINE2)
    assert f.poll()
    assert bytes.fromhex(R2) in f.keylog


def test_skip_existing_starts_after_what_the_file_holds(tmp_path: Path) -> None:
    path = tmp_path / "keys.log"
    path.write_text(LINE1 + "garbage\n" + LINE2[:20])
    f = KeyLogFollower([str(path)], skip_existing=True)
    assert not f.poll()
    with path.open("a") as fh:
        fh.write(LINE2[20:] + LINE1.replace(R1, "44" * 32))
    assert f.poll()
    # From the last whole line on: not R1 or the garbage; the line being written at
    # the start is read once complete.
    assert bytes.fromhex(R1) not in f.keylog and bytes.fromhex("44" * 32) in f.keylog
    assert bytes.fromhex(R2) in f.keylog
    assert f.keylog.malformed == 0 and not f.messages


def test_a_quick_poll_reads_the_open_file_without_a_stat(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxy's per-chunk polls (quick) read an open file at its position with no
    stat of its name, partial lines kept as a full poll keeps them; a file not open
    yet, and a rotation, are the full poll's (the 50 ms timer's) to see."""
    path = tmp_path / "keys.log"
    f = KeyLogFollower([str(path)])
    assert not f.poll(quick=True)  # not there yet: the full path, which waits
    path.write_text(LINE1[:30])
    assert not f.poll(quick=True)  # opened by the full path: half a line waits
    stats: list[object] = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda *a, **k: stats.append(a) or real_stat(*a, **k))
    with path.open("a") as fh:
        fh.write(LINE1[30:] + LINE2[:10])
    assert f.poll(quick=True)
    assert bytes.fromhex(R1) in f.keylog and bytes.fromhex(R2) not in f.keylog
    assert not f.poll(quick=True)  # nothing new
    with path.open("a") as fh:
        fh.write(LINE2[10:])
    assert f.poll(quick=True) and bytes.fromhex(R2) in f.keylog
    assert stats == [] and f.keylog.malformed == 0
    r3 = "33" * 32
    new = tmp_path / "keys.log.new"
    new.write_text(f"CLIENT_RANDOM {r3} {SECRET}\n")
    os.replace(new, path)  # rotated: the old descriptor's file gets nothing more
    assert not f.poll(quick=True)
    assert f.poll() and bytes.fromhex(r3) in f.keylog
