"""Self-contained HTML reports: a ladder diagram per connection (issue 18).

``tlsinspector report LOG.jsonl -o report.html`` reads any JSON Lines log the
inspector writes (README "The JSON Lines log") and writes one HTML file: one
lane per connection (client | inspector | server, one arrow per record), faults
drawn as the record arrived and as it left, the diagnosis beside the lane.

The file makes no network request: the stylesheet and script (package data
``report.css`` / ``report.js``) are inlined and pinned by a Content-Security-
Policy of ``default-src 'none'`` with their SHA-256 hashes, so nothing else can
load or run even if a log value slipped through. Log values are peer-controlled
(SNI, ALPN, alert bytes): they travel as JSON inside a non-executed
``application/json`` block with ``<``, ``>`` and ``&`` escaped, and the script
puts them into the page with ``textContent`` only, never as markup. The few
server-rendered pages (the matrix) escape with :func:`html.escape`.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from tlsinspector.proxy.render import counted, escape, plaintext_text
from tlsinspector.proxy.scenario_yaml import terminal_safe

Json = dict[str, Any]

_EVIDENCE = re.compile(r"^(client|server) record (\d+)")
_RFC = re.compile(r"RFC\s*(\d+)\s*(.*)", re.IGNORECASE)


class ReportError(Exception):
    """The log cannot be read at all (a missing file, not one bad line)."""


@dataclass(frozen=True, slots=True)
class Log:
    events: list[Json]
    bad_lines: list[int]       # 1-based numbers of lines that were not JSON objects


def read_log(path: Path) -> Log:
    """Every JSON object of a JSONL log; lines that are not are counted, never fatal."""
    events: list[Json] = []
    bad: list[int] = []
    try:
        with path.open("rb") as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    ev = orjson.loads(raw)
                except orjson.JSONDecodeError:  # also invalid UTF-8
                    bad.append(n)
                    continue
                if isinstance(ev, dict) and isinstance(ev.get("event"), str):
                    events.append(ev)
                else:
                    bad.append(n)
    except OSError as e:
        raise ReportError(f"cannot read the log {path}: {e.strerror}") from e
    return Log(events, bad)


# -- one-line summaries --------------------------------------------------------


def _s(v: Any) -> str:
    """A logged value as summary text; peer-controlled strings (SNI, ALPN) escaped as the
    terminal view escapes them (``evil\\x1b[31m``): an ESC or a bidi override would
    otherwise sit invisible in the page, showing another name than the one sent."""
    return escape(v) if isinstance(v, str) else json.dumps(v)


def message_summary(m: Mapping[str, Any]) -> str:
    """A handshake message in a few words; hellos with versions, SNI, suites, JA4."""
    t = _s(m.get("type", "?"))
    if "unparsed" in m:
        return f"{t} (unparsed: {_s(m['unparsed'])})"
    if t == "client_hello":
        parts = [t]
        versions = m.get("supported_versions")
        parts.append("versions " + (",".join(map(_s, versions)) if isinstance(versions, list)
                                    else _s(m.get("legacy_version", "?"))))
        parts.append(f"SNI {_s(m['sni'])}" if "sni" in m else "no SNI")
        if isinstance(m.get("alpn"), list):
            parts.append("ALPN " + ",".join(map(_s, m["alpn"])))
        suites = m.get("cipher_suites")
        parts.append(f"{len(suites) if isinstance(suites, list) else '?'} suites")
        if "ja4" in m:
            parts.append(f"JA4 {_s(m['ja4'])}")
        return " ".join(parts)
    if t in ("server_hello", "hello_retry_request"):
        version = m.get("selected_version") or m.get("legacy_version", "?")
        return f"{t} {_s(version)} {_s(m.get('cipher_suite', '?'))}"
    if isinstance(m.get("summary"), str):  # a TLS 1.2 message decoded in the clear
        return _s(m["summary"])
    return t


def record_summary(rec: Mapping[str, Any]) -> str:
    """The ladder label of a record event (or a decrypted one merged into it)."""
    if "unparsed" in rec:
        return f"unparsed: {_s(rec['unparsed'])}"
    parts: list[str] = []
    msgs = rec.get("messages")
    if isinstance(msgs, list) and msgs:
        parts.append("; ".join(message_summary(m) for m in msgs if isinstance(m, dict)))
    alert = rec.get("alert")
    if isinstance(alert, dict):
        parts.append(f"alert {_s(alert.get('level', '?'))} {_s(alert.get('description', '?'))}"
                     f" ({_s(alert.get('code', '?'))})")
    elif alert == "encrypted":
        parts.append("encrypted alert")
    elif rec.get("encrypted"):
        parts.append("encrypted")
    frag = rec.get("fragment")
    if isinstance(frag, dict):
        parts.append(f"fragment {_s(frag.get('have'))}/{_s(frag.get('want'))}")
    if "note" in rec:
        parts.append(_s(rec["note"]))
    dec = rec.get("decrypted")
    if isinstance(dec, dict):
        parts.append(decrypted_summary(dec))
    return " | ".join(p for p in parts if p)


def decrypted_summary(dec: Mapping[str, Any]) -> str:
    """What keys revealed of a record: its inner type, messages, alert (issue 14)."""
    status = _s(dec.get("status", "decrypted"))
    if status != "decrypted":
        return f"decryption {status}" + (f": {_s(dec['reason'])}" if dec.get("reason") else "")
    inner_type = _s(dec.get("inner_type", dec.get("content_type", "")))
    inner = record_summary({k: dec[k] for k in ("messages", "alert") if k in dec})
    if not inner and dec.get("length") is not None:
        inner = f"{_s(dec['length'])} bytes"
    text = inner if inner_type and inner.startswith(inner_type) else f"{inner_type} {inner}"
    return f"decrypted: {text.strip()}"


def _faults(rec: Mapping[str, Any]) -> list[Json]:
    f = rec.get("fault")
    items = f if isinstance(f, list) else [f] if isinstance(f, dict) else []
    return [x for x in items if isinstance(x, dict)]


def _short(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_short(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_short(x)}" for k, x in v.items()) + "}"
    return _s(v)


def fault_view(rec: Mapping[str, Any], f: Mapping[str, Any]) -> Json:
    """How a fault changed the record: what left the inspector, before -> after.

    ``kind`` tells the page how to draw it: change (a second arrow with the
    new values), drop (the arrow ends at the inspector), reply (dropped, an
    alert goes back to the sender), delay (the second arrow later, to scale),
    close (forwarded, then the connection ends), raw (other bytes sent instead).
    """
    action = _s(f.get("action", "?"))
    raw_detail = f.get("detail")
    d: Json = raw_detail if isinstance(raw_detail, dict) else {}
    ct, version = _s(rec.get("content_type", "?")), _s(rec.get("version", "?"))
    out: Json = {"scenario": _s(f.get("scenario", "?")), "action": action,
                 "class": _s(f.get("class", "")), "kind": "change", "ms": 0, "closes": None}
    # The actions that end the connection after delivering (actions.py: a fatal
    # alert closes both ways as a real stack would, RFC 8446 6.2 / RFC 5246 7.2.2).
    if action in ("replace-with-alert", "reply-alert") and d.get("level") == 2:
        out["closes"] = "both"
    elif action == "replace-with-raw":
        out["closes"] = "both"
    elif action == "close":
        out["closes"] = _s(d.get("toward", "both"))
    before, after = d.get("before"), d.get("after")
    if "not_applied" in d:
        out.update(kind="info", before="", after="", left="not applied: " + _s(d["not_applied"]))
        return out
    if action == "set-record-version":
        out.update(before=f"version {_short(before)}", after=f"version {_short(after)}",
                   left=f"{ct} {_s(after)}")
    elif action in ("drop", "drop-line"):
        out.update(kind="drop", before=f"{_short(d.get('dropped'))} bytes", after="dropped",
                   left="dropped")
    elif action == "reply-error":
        answer = _short(str(d.get("answered_sender", "")).strip())
        out.update(kind="reply", before=f"{_short(d.get('dropped'))} bytes",
                   after=f"dropped; sender gets {answer}", left="dropped")
    elif action == "reply-alert":
        out.update(kind="reply", before=ct, after=f"dropped; sender gets alert "
                                                  f"{_s(d.get('alert', '?'))}",
                   left=f"alert {_s(d.get('alert', '?'))}")
    elif action == "replace-with-alert":
        out.update(before=_short(before), after=f"alert {_s(d.get('alert', '?'))}",
                   left=f"alert {version} {_s(d.get('alert', '?'))}")
    elif action == "replace-with-raw":
        out.update(kind="raw", before=f"{_short(before)} bytes",
                   after=f"{_short(after)} bytes: {_s(d.get('preview', ''))!r}",
                   left=f"raw bytes {_s(d.get('preview', ''))!r}, then close")
    elif action == "delay":
        ms = d.get("ms", 0)
        out.update(kind="delay", ms=ms if isinstance(ms, int | float) else 0,
                   before="at once", after=f"{_short(ms)} ms later", left=f"{ct} {version}")
    elif action == "close":
        out.update(kind="close", before="open",
                   after=f"{_short(d.get('how'))} toward {_short(d.get('toward'))}",
                   left=f"{ct} {version}")
    elif before is not None or after is not None:
        out.update(before=_short(before), after=_short(after), left=f"{ct} {version}")
    else:
        out.update(before="", after=_short(d), left=f"{ct} {version}")
    return out


def rfc_links(reference: str) -> list[Json]:
    """``RFC 8446 4.2.1, D; RFC 5246 E.1`` as rfc-editor.org section links."""
    links: list[Json] = []
    for part in reference.split(";"):
        m = _RFC.search(part)
        if not m:
            if part.strip():
                links.append({"text": part.strip(), "url": ""})
            continue
        num, rest = m.group(1), m.group(2)
        base = f"https://www.rfc-editor.org/rfc/rfc{num}"
        secs = [s.strip() for s in rest.split(",") if s.strip()]
        if not secs:
            links.append({"text": f"RFC {num}", "url": base})
        for sec in secs:
            kind = "section" if sec[0].isdigit() else "appendix"
            anchor = sec if re.fullmatch(r"[A-Za-z0-9.]+", sec) else ""
            links.append({"text": f"RFC {num} {sec}",
                          "url": f"{base}#{kind}-{anchor}" if anchor else base})
    return links


# -- the model the page draws ----------------------------------------------------


def _mark_undelivered(items: Sequence[Json]) -> None:
    """Records that arrived after a fault closed the stream toward their receiver
    never reached it (engine: nothing reaches a side after the fault closed it). A
    log says so itself (``undelivered``: which fault); one written before it did is
    read from its faults here."""
    closed: set[str] = set()
    for r in items:
        if r.get("event") not in ("record", "non_tls"):
            continue
        receiver = "client" if r.get("from") == "server" else "server"
        if receiver in closed and not r.get("undelivered"):
            r["undelivered"] = True
        for f in r.get("faults", ()):
            if f.get("closes"):
                closed |= {"client", "server"} if f["closes"] == "both" else {f["closes"]}


def _outcome(items: Sequence[Json]) -> str:
    fatal = [r for r in items if r.get("event") == "record" and isinstance(r.get("alert"), dict)
             and r["alert"].get("level") == "fatal"]
    if fatal:
        a = fatal[0]["alert"]
        return f"alert {_s(a.get('description', '?'))}"
    if any(r.get("event") in ("error", "internal_error") for r in items):
        return "error"
    sent = {r.get("from") for r in items if r.get("event") == "record"
            and r.get("content_type") == "application_data" and not r.get("undelivered")}
    if sent == {"client", "server"}:
        return "completed"
    return "incomplete"


def _sni(items: Sequence[Json], close: Json | None) -> str:
    if close and isinstance(close.get("sni"), str):
        return escape(close["sni"])
    for r in items:
        for m in r.get("messages") or ():
            if isinstance(m, dict) and m.get("type") == "client_hello" and "sni" in m:
                return _s(m["sni"])
    return ""


def lane_id(conn: str) -> str:
    """The page anchor of a connection's lane (``report.html#conn-2``)."""
    return "conn-" + re.sub(r"[^A-Za-z0-9_-]", "_", conn)


def connections(events: Iterable[Json]) -> list[Json]:
    """Group a log's events into lanes, decrypted content merged into its record."""
    lanes: dict[str, Json] = {}
    order: list[Json] = []
    orphans: list[Json] = []
    for ev in events:
        kind = ev.get("event")
        if "conn" not in ev:
            orphans.append(ev)
            continue
        conn = _s(ev["conn"])
        lane = lanes.get(conn)
        if lane is None:
            lane = lanes[conn] = {"conn": conn, "id": lane_id(conn), "items": [], "t0": None,
                                  "_by": {}}
            order.append(lane)
        ts = ev.get("ts")
        if isinstance(ts, int | float) and lane["t0"] is None:
            lane["t0"] = ts
        body = {k: v for k, v in ev.items() if k != "conn"}
        if kind == "connect":
            lane["connect"] = body
        elif kind == "released" and (ev.get("from"), ev.get("index")) in lane["_by"]:
            # A record held for keys went on: what the faults did is shown on it.
            rec = lane["_by"][(ev.get("from"), ev.get("index"))]
            rec.pop("held", None)
            if "fault" in ev:
                rec["fault"] = ev["fault"]
                rec["faults"] = [fault_view(rec, f) for f in _faults(rec)]
        elif kind == "decrypted":
            # Names its record by from+index (or record: {side, index}); the content
            # is the event itself or its "decrypted" field.
            ref: Json = ev["record"] if isinstance(ev.get("record"), dict) else {}
            key = (ev.get("from", ref.get("side")), ev.get("index", ref.get("index")))
            inner = ev.get("decrypted")
            content = inner if isinstance(inner, dict) else {
                k: v for k, v in body.items()
                if k not in ("event", "ts", "from", "index", "record")}
            rec = lane["_by"].get(key)
            if rec is not None:
                rec["decrypted"] = content
                rec["sum"] = record_summary(rec)
            else:  # keys arrived for a record this log does not hold
                body["sum"] = decrypted_summary(content)
                lane["items"].append(body)
        else:
            if kind == "record":
                lane["_by"][(ev.get("from"), ev.get("index"))] = body
                body["sum"] = record_summary(body)
                body["faults"] = [fault_view(body, f) for f in _faults(body)]
            elif kind == "plaintext":
                # A STARTTLS-phase line (verb or status, capability words); a plaintext
                # fault on it (drop-line, replace-text, reply-error) is drawn on it.
                body["faults"] = [fault_view(body, f) for f in _faults(body)]
                body["sum"] = plaintext_text(body).strip()
            elif kind == "timer":
                # A fault that fired on a timer (after_ms, idle_ms), with no record: its
                # views say what it did (a close's how: the lane's RST or FIN).
                body["faults"] = [fault_view(body, f) for f in _faults(body)]
                body["sum"] = "; ".join(
                    f"{v['scenario']}: {v['action']}"
                    + (f" ({v['after']})" if v.get("after") else "")
                    for v in body["faults"])
            elif kind == "close":
                lane["close"] = body
                for d in body.get("diagnosis") or ():
                    if isinstance(d, dict):
                        d["links"] = rfc_links(_s(d.get("reference", "")))
                        d["points"] = [
                            [m.group(1), int(m.group(2))] if m else None
                            for m in (_EVIDENCE.match(_s(e)) for e in d.get("evidence") or ())]
            lane["items"].append(body)
    for lane in order:
        del lane["_by"]
        items, close = lane["items"], lane.get("close")
        _mark_undelivered(items)
        lane["sni"] = _sni(items, close)
        lane["outcome"] = _outcome(items)
        lane["fault_names"] = sorted({f"{f['scenario']}: {f['action']}" for r in items
                                      for f in r.get("faults", ())})
        lane["codes"] = [_s(d.get("code")) for d in (close or {}).get("diagnosis") or ()
                         if isinstance(d, dict)]
    if orphans:
        order.append({"conn": "-", "id": "log", "items": orphans, "t0": None, "sni": "",
                      "outcome": "log events", "fault_names": [], "codes": []})
    return order


# -- the page --------------------------------------------------------------------


def _asset(name: str) -> str:
    return resources.files("tlsinspector").joinpath(name).read_text(encoding="utf-8")


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _json_for_html(data: Any) -> str:
    # Inside <script type="application/json">, "</script>" or "<!--" in a value
    # would end the block early; escaping <, > and & makes that impossible.
    try:
        raw = orjson.dumps(data)
    except TypeError:  # e.g. an integer beyond 64 bits in a hand-made log
        raw = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    for char, escaped in ((b"&", b"\\u0026"), (b"<", b"\\u003c"), (b">", b"\\u003e"),
                          ("\u2028".encode(), b"\\u2028"), ("\u2029".encode(), b"\\u2029")):
        raw = raw.replace(char, escaped)
    return raw.decode()


def page(title: str, body: str, script: str | None = None, live: bool = False) -> str:
    """An HTML page with the report stylesheet (and script) inline, pinned by CSP.

    ``live``: the page may also open its own server's event stream (run --web).
    """
    css = _asset("report.css")
    csp = f"default-src 'none'; style-src {_hash(css)}; img-src data:"
    if live:
        csp += "; connect-src 'self'"
    js = ""
    if script is not None:
        csp += f"; script-src {_hash(script)}"
        js = f"<script>{script}</script>"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{csp}\">\n"
            "<meta name=\"referrer\" content=\"no-referrer\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{css}</style></head>\n"
            f"<body>\n{body}\n{js}\n</body></html>\n")


def render(events: Iterable[Json], title: str = "tlsinspector report",
           extra: Mapping[str, Any] | None = None, live: bool = False) -> str:
    """The ladder page for a log's events; ``extra`` carries reproduce's verdicts."""
    data = {"title": title, "lanes": connections(events), **(extra or {})}
    body = (f"<script type=\"application/json\" id=\"data\">{_json_for_html(data)}</script>\n"
            f"<header><h1>{html.escape(title)}</h1><p id=\"sub\"></p></header>\n"
            "<section id=\"verdicts\"></section>\n<nav id=\"filters\"></nav>\n"
            "<main id=\"lanes\"><p>This report needs JavaScript to draw the ladders.</p></main>")
    return page(title, body, _asset("report.js"), live)


def write_report(log: Path, out: Path, title: str | None = None,
                 extra: Mapping[str, Any] | None = None) -> Log:
    parsed = read_log(log)
    if parsed.bad_lines and not parsed.events:
        # Not a log at all (a capture, a scenario, the terminal view): say so
        # rather than write an empty page.
        raise ReportError(f"{log}: no tlsinspector event in any of its "
                          f"{counted(len(parsed.bad_lines), 'line')}; give the JSON Lines log "
                          "written by run/analyze --log")
    info = dict(extra or {})
    if parsed.bad_lines:
        info["bad_lines"] = parsed.bad_lines[:20]
        info["bad_count"] = len(parsed.bad_lines)
    page_text = render(parsed.events, title or f"tlsinspector report: {log.name}", info)
    from tlsinspector.addons.logfile import open_regular

    # As run's --log: a symbolic link, a FIFO or a device at the path is refused (a
    # report written to a shared folder must not overwrite what a planted link names).
    with open(open_regular(str(out), os.O_TRUNC, "the report"), "w", encoding="utf-8") as f:
        f.write(page_text)
    return parsed


def main(log: str, out: str, title: str | None = None) -> int:
    """``tlsinspector report``: 0 written, 2 the log cannot be read."""
    from tlsinspector.addons.logfile import LogFileError

    try:
        parsed = write_report(Path(log), Path(out), title)
    except ReportError as e:  # paths are escaped: a customer's file name may hold ESC
        print(f"tlsinspector report: {terminal_safe(str(e))}", file=sys.stderr)
        return 2
    except LogFileError as e:  # its message escapes the path already
        print(f"tlsinspector report: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"tlsinspector report: cannot write {terminal_safe(out)}: {e.strerror}",
              file=sys.stderr)
        return 2
    lanes = len({e.get("conn") for e in parsed.events if "conn" in e})
    note = ""
    if parsed.bad_lines:
        # Which lines: a user fixing or trimming the log needs to find them.
        shown = ", ".join(map(str, parsed.bad_lines[:5]))
        more = ", ..." if len(parsed.bad_lines) > 5 else ""
        n = len(parsed.bad_lines)
        note = (f", {counted(n, 'unreadable line')} skipped "
                f"(line{'s' if n > 1 else ''} {shown}{more})")
    print(f"{out}: {counted(lanes, 'connection')}, {counted(len(parsed.events), 'event')}"
          f"{note}")
    return 0
