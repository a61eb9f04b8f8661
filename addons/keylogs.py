"""Key log files followed as peers append to them (issue 14), the I/O half.

The sans-io parser is proxy/keylog.py; this module only reads files. One
:class:`KeyLogFollower` feeds one shared :class:`~proxy.keylog.KeyLog` from
every ``--keylog`` file:

- a file that does not exist yet is waited for (a client started after the
  proxy creates it); the live proxy starts after what an existing file already
  holds (``skip_existing``: those keys belong to connections it never saw);
- appended bytes are read from where the last read stopped; only whole lines
  go to the shared parser, so two files never mix a line;
- truncation (the size went below what was read) and rotation (another file
  under the same name) start that file again from its beginning (keys already
  parsed stay: a connection in flight still needs them);
- a directory, a FIFO, a device or socket (none can be followed: no size, no
  position; opening a FIFO would block the event loop until a writer comes), or a
  file that cannot be read, is refused with a clear message
  (:func:`check_path`: the CLI exits 2, the addon option raises OptionsError);
- malformed lines and unknown labels are counted by the parser and reported
  once per file, by line number and reason, never with a secret.

:meth:`KeyLogFollower.poll` is cheap (one ``stat`` per file when nothing
changed, one ``pread`` of just the appended bytes when something did): the addon
calls it on a short timer and before each chunk of a connection whose handshake
is under way, several times per handshake. Each file stays open between polls
(reopened when rotated; :meth:`KeyLogFollower.close` or garbage collection
closes it): opening it and reading into a MAX_READ buffer on every poll cost
about 300 us per poll, the largest part of what ``--keylog`` added per handshake.
"""

from __future__ import annotations

import os
import stat
import time
import weakref
from dataclasses import dataclass

from tlsinspector.addons.logfile import file_kind
from tlsinspector.proxy.keylog import KeyLog
from tlsinspector.proxy.render import counted
from tlsinspector.proxy.scenario_yaml import terminal_safe

MAX_READ = 1 << 20  # per file per poll: a runaway writer cannot stall the event loop
QUICK_READ = 1 << 16  # per file per quick poll (the appended bytes of a handshake: ~1 KiB)


class KeyLogPathError(ValueError):
    """A --keylog path that can never be read (a directory, no permission)."""


def check_path(path: str) -> str | None:
    """Why ``path`` cannot be a key log, or None (a missing file is fine: waited for);
    the path in it escaped for a terminal."""
    why = _path_problem(path)
    return None if why is None else terminal_safe(why)


def _path_problem(path: str) -> str | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            return f"key log {path}: its folder {parent} does not exist"
        return None
    except OSError as e:
        return f"key log {path}: {e.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"key log {path} is {file_kind(st.st_mode)}, not a key log file"
    if not os.access(path, os.R_OK):
        return f"key log {path} is not readable (permission denied)"
    return None


@dataclass(slots=True)
class _File:
    path: str
    ino: int | None = None
    dev: int | None = None
    pos: int = 0
    lines: int = 0           # whole lines read (from the start, or from where it began)
    tail: bytes = b""        # a partial last line, waiting for its newline
    skipping: bool = False   # inside a line too long to be a key, counted already
    seen: bool = False       # the file existed at some point
    failed: str = ""         # the last read error (reported once)
    malformed: int = 0       # problems of this file already reported
    reported: bool = False
    fd: int = -1             # open between polls (the inode ino/dev names)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _close_all(files: list[_File]) -> None:
    for f in files:
        f.close()


class KeyLogFollower:
    """Follows key log files into one shared :class:`KeyLog`."""

    def __init__(self, paths: list[str], keylog: KeyLog | None = None,
                 skip_existing: bool = False) -> None:
        for p in paths:
            why = check_path(p)
            if why is not None:
                raise KeyLogPathError(why)
        self.keylog = keylog if keylog is not None else KeyLog()
        self.files = [_File(p) for p in paths]
        self._closer = weakref.finalize(self, _close_all, self.files)
        if skip_existing:
            for f in self.files:
                self._skip(f)
        self.messages: list[str] = []  # for the terminal; drained by the caller
        # Client randoms whose keys changed since the caller last took them
        # (:meth:`take_changed`): KeyLog.owners names the connections that want them.
        self.changed: set[bytes] = set()

    @staticmethod
    def _skip(f: _File) -> None:
        """Start after what a file already holds (up to its last whole line): the
        secrets of every connection the proxy will see are written after it started
        listening (a client writes them after its ClientHello, which goes through
        the proxy), so a long key log is not parsed again at every start."""
        try:
            st = os.stat(f.path)
            with open(f.path, "rb") as fh:
                fh.seek(max(0, st.st_size - 4096))
                tail = fh.read(4096)
        except OSError:
            return
        f.seen, f.ino, f.dev = True, st.st_ino, st.st_dev
        f.pos = st.st_size - len(tail) + tail.rfind(b"\n") + 1 if b"\n" in tail else 0

    def close(self) -> None:
        """Close the files kept open between polls (a later poll reopens them)."""
        _close_all(self.files)

    def waiting(self) -> list[str]:
        """The files that do not exist yet."""
        return [f.path for f in self.files if not f.seen]

    def poll(self, quick: bool = False) -> bool:
        """Read what was appended to every file; True when the key log gained keys.

        ``quick`` (the proxy's reads before and after each chunk of a handshake, about
        eight per connection): a file already open is read at its position, with no
        ``stat`` of its name (one system call instead of two, and none of the path
        lookup); rotation and truncation are noticed by the next full poll (the
        50 ms timer), as a missing file's creation is."""
        grew = False
        for f in self.files:
            if quick and f.fd >= 0 and not f.failed:
                grew |= self._quick(f)
            else:
                grew |= self._poll(f)
        if grew:  # bounded: secrets of long-gone connections go as new ones come
            self.keylog.expire(time.time())
        return grew

    def _poll(self, f: _File) -> bool:
        try:
            st = os.stat(f.path)
        except FileNotFoundError:
            return False
        except OSError as e:
            self._fail(f, e.strerror or str(e))
            return False
        if not stat.S_ISREG(st.st_mode):
            self._fail(f, f"it is {file_kind(st.st_mode)} now")
            return False
        if f.seen and (st.st_ino != f.ino or st.st_dev != f.dev or st.st_size < f.pos):
            # Rotated (a new file under the name) or truncated: read it from the start.
            f.pos, f.lines, f.tail, f.skipping = 0, 0, b"", False
            if st.st_ino != f.ino or st.st_dev != f.dev:
                f.close()  # the old file's descriptor: the name means another file now
        f.seen, f.ino, f.dev = True, st.st_ino, st.st_dev
        if st.st_size == f.pos:
            return False
        try:
            data = self._read(f, min(MAX_READ, st.st_size - f.pos))
        except OSError as e:
            f.close()
            self._fail(f, e.strerror or str(e))
            return False
        if data is None:
            return False  # replaced between the stat and the open: next poll
        return self._take(f, data)

    def _quick(self, f: _File) -> bool:
        try:
            data = os.pread(f.fd, QUICK_READ, f.pos)
        except OSError:
            return self._poll(f)  # the full path says what is wrong, once
        return bool(data) and self._take(f, data)

    def _take(self, f: _File, data: bytes) -> bool:
        """Bytes read at ``f.pos``: whole lines to the parser, a partial one kept."""
        f.failed = ""
        f.pos += len(data)
        data = f.tail + data
        if f.skipping:  # the rest of a line already counted as too long, up to its end
            end = data.find(b"\n")
            if end < 0:
                f.tail = b""
                return False
            data, f.skipping = data[end + 1:], False
        cut = data.rfind(b"\n") + 1
        f.tail = data[cut:]
        if len(f.tail) > 4096:  # no key line is this long: let the parser count it, once
            cut, f.tail, f.skipping = len(data), b"", True
        before = len(self.keylog.problems)
        changed = self.keylog.feed(data[:cut].decode("ascii", "replace"), time.time(),
                                   f.lines)
        f.lines = self.keylog.lines
        self._problems(f, before)
        self.changed |= changed
        return bool(changed)

    def take_changed(self) -> set[bytes]:
        """The client randoms whose keys changed since the last call."""
        changed, self.changed = self.changed, set()
        return changed

    @staticmethod
    def _read(f: _File, n: int) -> bytes | None:
        """``n`` bytes at ``f.pos`` (exactly what was appended: never a MAX_READ buffer
        per poll); None when the name was given to another file since the stat."""
        if f.fd < 0:
            # O_NONBLOCK: a FIFO put there since the stat must not block the loop.
            fd = os.open(f.path, os.O_RDONLY | os.O_NONBLOCK)
            fst = os.fstat(fd)
            if (fst.st_ino, fst.st_dev) != (f.ino, f.dev):
                os.close(fd)
                return None
            f.fd = fd
        return os.pread(f.fd, n, f.pos)

    def _fail(self, f: _File, why: str) -> None:
        if f.failed != why:
            f.failed = why
            self.messages.append(f"cannot read key log {f.path}: {why} (retrying; "
                                 "traffic is not affected)")

    def _problems(self, f: _File, before: int) -> None:
        """Report a file's first malformed line once (``before``: the problems the shared
        KeyLog held before this file's read); the totals come with :meth:`summary`."""
        log = self.keylog
        total = log.malformed + log.unknown_labels
        if total > f.malformed and not f.reported and len(log.problems) > before:
            f.reported = True
            self.messages.append(f"key log {f.path}: {log.problems[before]} (lines that are "
                                 "not keys are counted and skipped)")
        f.malformed = total

    def summary(self) -> str | None:
        """The counts of skipped lines over the run, or None if every line was a key."""
        log = self.keylog
        if not (log.malformed or log.unknown_labels):
            return None
        return (f"key logs: {counted(log.malformed, 'malformed line')} and "
                f"{counted(log.unknown_labels, 'line')} with unknown labels were skipped; "
                f"{counted(log.entries, 'key')} read for {counted(len(log), 'connection')}")
