"""The JSON Lines log file: the I/O side of the log (the events come from proxy/).

Not an addon itself: addons/inspector.py writes through it (``--log`` /
``--set tlsinspector_log=FILE``).

The file is a place an attacker on the same host may have prepared, and a
place others rotate, so it is opened with care (issue 12):

- created 0600 (the log names every client and server), O_NOFOLLOW: a
  planted symlink is refused, never followed to its target;
- a regular file only: a FIFO (opened O_NONBLOCK, so no reader means an
  immediate error, not a hang), a device or a directory is refused;
- append only (O_APPEND), never truncated to a remembered size: after an
  external truncation (logrotate's copytruncate) the next line simply goes at
  the new end, without a hole of NUL bytes;
- a file renamed away (logrotate's default) is noticed within
  :data:`REOPEN_CHECK` seconds and the log is reopened at the path.

A failed write (disk full, quota, I/O error) is handled as before: the part of
the batch that did reach the file is cut off again (only that part: the file
is never made longer, and never shorter than it was before the batch), the
batch's events are counted as lost, and the first write that succeeds starts
with a ``log_gap`` event giving the count.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from tlsinspector.proxy.outbox import EmitRecords
from tlsinspector.proxy.scenario_yaml import terminal_safe

REOPEN_CHECK = 1.0  # seconds between checks that the path still names our file


class LogFileError(OSError):
    """The log path cannot be used; the message says why (exit 2 at startup)."""


def open_log(path: str) -> int:
    """An O_APPEND descriptor for ``path``, created 0600; refuses symlinks and
    anything that is not a regular file, without ever blocking."""
    return open_regular(path, os.O_APPEND, "the log")


def open_regular(path: str, flags: int, what: str) -> int:
    """A write descriptor for ``path`` (``flags`` added: O_APPEND, O_TRUNC), created
    0600; refuses symlinks and anything that is not a regular file, without ever
    blocking; ``what`` ("the log", "the pcapng") names it in the error, whose path
    is escaped for a terminal."""
    flags |= os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    shown = terminal_safe(path)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        why = {errno.ELOOP: "is a symbolic link; refusing to follow it (give the real path)",
               errno.ENXIO: "is a FIFO or socket, not a regular file",
               errno.EISDIR: "is a directory, not a regular file"}.get(e.errno or 0)
        if why:
            raise LogFileError(f"{what} {shown} {why}") from e
        raise LogFileError(f"cannot write {what} {shown}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LogFileError(f"{what} {shown} is not a regular file "
                               f"({file_kind(st.st_mode)}); {what} must be one")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is ("a FIFO", "a directory", ...)."""
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


class JsonlLog:
    """Appends JSON Lines, whole lines only, and never loses an event silently.

    The events of one batch (everything one network read produced) go out in
    one write(2), so every event is on disk before the proxy handles its next
    read: flushed per event, as DESIGN.md asks, at a fraction of the cost.
    """

    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._fd = open_log(path)
        self._id = self._identity(self._fd)
        self._checked = clock()
        self.lost = 0                      # events not written since the last success
        self.error: OSError | None = None  # the failure of the current gap
        self.reopened = 0                  # times the path was found rotated away

    @staticmethod
    def _identity(fd: int) -> tuple[int, int]:
        st = os.fstat(fd)
        return st.st_dev, st.st_ino

    def _follow_rotation(self) -> None:
        """Reopen at the path if our file was renamed away (or deleted)."""
        now = self._clock()
        if now - self._checked < REOPEN_CHECK:
            return
        self._checked = now
        try:
            st = os.stat(self.path, follow_symlinks=False)
            same = (st.st_dev, st.st_ino) == self._id
        except FileNotFoundError:
            same = False
        except OSError:
            return  # cannot tell: keep writing where we are
        if same:
            return
        try:
            fd = open_log(self.path)
        except OSError:
            return  # e.g. a symlink planted in its place: keep the old file
        os.close(self._fd)
        self._fd, self._id = fd, self._identity(fd)
        self.reopened += 1

    def write_many(self, evs: Sequence[dict[str, Any] | EmitRecords]) -> None:
        """Write ``evs`` (runs of bulk records may come packed: outbox.packed_events);
        raises the OSError that starts a gap (later ones are counted)."""
        if not evs:
            return
        self._follow_rotation()
        lines: list[bytes] = []
        count = 0
        for ev in evs:
            if type(ev) is EmitRecords:
                lines += packed_lines(ev)
                count += len(ev.lengths)
            else:
                lines.append(orjson.dumps(ev))
                count += 1
        if self.lost:
            gap = {"event": "log_gap", "ts": round(time.time(), 6), "lost_events": self.lost,
                   "error": str(self.error)}
            lines.insert(0, orjson.dumps(gap))
        data = b"\n".join(lines) + b"\n"
        done = 0
        try:
            view = memoryview(data)
            while done < len(data):
                n = os.write(self._fd, view[done:])
                if not n:
                    raise OSError(errno.ENOSPC, "short write")
                done += n
        except OSError as e:
            self._cut(done)
            starts_gap = self.error is None
            self.error = e
            self.lost += count
            if starts_gap:
                raise
            return
        self.lost = 0
        self.error = None

    def _cut(self, written: int) -> None:
        """Take back the ``written`` bytes of a failed batch: they end the file
        (O_APPEND), so the file shrinks by exactly that, never below zero and
        never grows (an external truncation since is not undone)."""
        if not written:
            return
        try:
            size = os.fstat(self._fd).st_size
            os.ftruncate(self._fd, max(0, size - written))
        except OSError:
            pass

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# Stand-ins for a run's index and length in its serialized template: never a record's
# index or length (both below 2**40 in any stream), of equal width, neither a part of
# the other.
_INDEX_MARK, _LENGTH_MARK = b"%d" % 7_390_123_457_019, b"%d" % 7_390_123_457_023


def packed_lines(run: EmitRecords) -> list[bytes]:
    """The JSON lines of a run's records, the same bytes as ``orjson.dumps`` of each of
    ``run.events()``: its template serialized once with marks where the index and the
    length go, then one bytes formatting per record (issue 19: a download logs ~65,000
    records per GB). Falls back to serializing each event should a mark not be found
    exactly once."""
    template = run.template.copy()
    template["index"], template["length"] = int(_INDEX_MARK), int(_LENGTH_MARK)
    raw = orjson.dumps(template)
    if raw.count(_INDEX_MARK) != 1 or raw.count(_LENGTH_MARK) != 1:
        return [orjson.dumps(ev) for ev in run.events()]
    index_first = raw.find(_INDEX_MARK) < raw.find(_LENGTH_MARK)
    fmt = raw.replace(b"%", b"%%").replace(_INDEX_MARK, b"%d").replace(_LENGTH_MARK, b"%d")
    indexes = range(run.first, run.first + len(run.lengths))
    if index_first:
        return [fmt % pair for pair in zip(indexes, run.lengths, strict=True)]
    return [fmt % pair for pair in zip(run.lengths, indexes, strict=True)]
