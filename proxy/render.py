"""The terminal view (one human line per log event) and the JSON Lines log writer."""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import orjson

ARROW = {"client": "C->S", "server": "S->C"}


def _hello(m: dict[str, Any]) -> str:
    parts = [m["type"]]
    if "unparsed" in m:
        return f"{m['type']} (unparsed: {m['unparsed']})"
    if m["type"] == "client_hello":
        parts.append(f"legacy_version={m['legacy_version']}")
        if "supported_versions" in m:
            parts.append(f"versions={m['supported_versions']}")
        parts.append(f"sni={m.get('sni', '-')}")
        if "alpn" in m:
            parts.append(f"alpn={','.join(m['alpn'])}")
        parts.append(f"suites={len(m['cipher_suites'])}")
        if "supported_groups" in m:
            parts.append(f"groups={','.join(m['supported_groups'])}")
        else:
            parts.append("groups=-")
        ext = m.get("extensions")
        parts.append("exts=" + ("none" if ext is None else ",".join(e["type"] for e in ext)))
        parts.append(f"ja4={m['ja4']}")
    else:
        parts.append(f"version={m.get('selected_version')}")
        parts.append(f"suite={m.get('cipher_suite')}")
        if "key_share_groups" in m:
            parts.append(f"group={','.join(m['key_share_groups'])}")
    if m.get("renegotiation"):
        parts.append("RENEGOTIATION")
    return " ".join(parts)


def _decrypted(d: dict[str, Any]) -> str:
    """The decrypted summary, escaped: certificate fields are peer-controlled text."""
    text = str(d.get("summary") or d.get("status", "?"))
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:600])


def _record(conn: str, ev: dict[str, Any]) -> str:
    head = f"{conn} {ARROW[ev['from']]} #{ev['index']}"
    if "unparsed" in ev:
        return f"{head} UNPARSED {ev['length']} bytes: {ev['unparsed']}"
    body = f"{ev['content_type']} {ev['version']} len={ev['length']}"
    if ev.get("encrypted"):
        body += " (encrypted)"
    if "messages" in ev:
        body += " | " + " ; ".join(
            _hello(m) if m["type"] in ("client_hello", "server_hello",
                                       "hello_retry_request")
            else f"{m['type']}({m['length']})"
            for m in ev["messages"])
    if "fragment" in ev:
        body += f" [fragment {ev['fragment']['have']}/{ev['fragment']['want']}]"
    if isinstance(ev.get("alert"), dict):
        a = ev["alert"]
        body += f" | ALERT {a['level']} {a['description']} ({a['code']})"
    if "note" in ev:
        body += f" | {ev['note']}"
    if isinstance(ev.get("decrypted"), dict):
        body += f" | decrypted: {_decrypted(ev['decrypted'])}"
    faults = ev.get("fault")
    for f in faults if isinstance(faults, list) else [faults] if faults else []:
        body += f" | FAULT {f['scenario']}: {f['action']} {f.get('detail', '')}"
    return f"{head} {body}"


def line(ev: dict[str, Any]) -> str:
    kind = ev["event"]
    conn = f"[{ev['conn']}]"
    if kind == "connect":
        return f"{conn} connect {ev['client']} -> {ev['server']} ({ev['mode']})"
    if kind == "record":
        return _record(conn, ev)
    if kind == "decrypted":
        return (f"{conn} {ARROW[ev['from']]} #{ev['index']} decrypted (keys arrived late): "
                f"{_decrypted(ev['decrypted'])}")
    if kind == "non_tls":
        return (f"{conn} {ARROW[ev['from']]} NON-TLS {ev['length']} bytes ({ev['reason']}): "
                f"{ev['preview']!r}")
    if kind == "close":
        b = ev["bytes"]
        out = (f"{conn} close by {ev['by']}: client sent {b['client']} bytes, "
               f"server sent {b['server']} bytes")
        for d in ev.get("diagnosis", []):
            out += f"\n{conn}   diagnosis {d['code']}: {d['summary']} ({d['reference']})"
            for e in d.get("evidence", []):
                out += f"\n{conn}     - {e}"
        return out
    if kind == "error":
        return f"{conn} ERROR {ev.get('message', '')}"
    rest = {k: v for k, v in ev.items() if k not in ("event", "conn")}
    return f"{conn} {kind} {json.dumps(rest)}"


class JsonlWriter:
    """Appends JSON Lines to a file, whole lines only, and never loses an event silently.

    The events of one batch (everything one network read produced) go out in one
    write(2) on an unbuffered O_APPEND file, so every event is on disk before
    the proxy handles its next read: flushed per event, as DESIGN.md asks, at a
    fraction of the cost. When a write fails (disk full, quota, I/O error) the
    partial batch is cut off again (ftruncate) so the file keeps whole lines,
    the batch's events are counted as lost, and the first write that succeeds
    afterwards starts with a ``log_gap`` event giving that count.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._f = open(path, "ab", buffering=0)  # noqa: SIM115  (closed by close())
        self._size = os.fstat(self._f.fileno()).st_size
        self.lost = 0                      # events not written since the last success
        self.error: OSError | None = None  # the failure of the current gap

    def write_many(self, evs: Sequence[dict[str, Any]]) -> None:
        """Write ``evs``; raises the OSError that starts a gap (later ones are counted)."""
        if not evs:
            return
        lines = [orjson.dumps(ev) for ev in evs]
        if self.lost:
            gap = {"event": "log_gap", "ts": round(time.time(), 6), "lost_events": self.lost,
                   "error": str(self.error)}
            lines.insert(0, orjson.dumps(gap))
        data = b"\n".join(lines) + b"\n"
        try:
            view = memoryview(data)
            while view:
                n = self._f.write(view)
                if not n:
                    raise OSError(errno.ENOSPC, "short write")
                view = view[n:]
        except OSError as e:
            self._cut()
            starts_gap = self.error is None
            self.error = e
            self.lost += len(evs)
            if starts_gap:
                raise
            return
        self._size += len(data)
        self.lost = 0
        self.error = None

    def _cut(self) -> None:
        try:
            os.ftruncate(self._f.fileno(), self._size)
        except OSError:
            pass  # not a regular file (a pipe, /dev/full): nothing was kept anyway

    def close(self) -> None:
        self._f.close()
