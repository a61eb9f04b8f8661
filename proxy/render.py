"""The terminal view: one human line per log event, every peer-controlled byte escaped.

The JSON Lines file writer is on the I/O side, in addons/logfile.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tlsinspector.proxy import names

ARROW = {"client": "C->S", "server": "S->C"}


def escape(text: str) -> str:
    """``text`` safe for a terminal: every character outside printable ASCII shown
    as ``\\xNN`` (``\\uNNNN`` beyond Latin-1), and a backslash doubled, so ESC,
    CR, LF, BEL, NUL, backspace and bidi controls a peer sends stay visible text."""
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text  # the common case, checked in C
    out = []
    for ch in text:
        o = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif 0x20 <= o < 0x7F:
            out.append(ch)
        elif o < 0x100:
            out.append(f"\\x{o:02x}")
        else:
            out.append(f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
    return "".join(out)


def alert_words(level: object, description: object, code: object) -> str:
    """``fatal handshake_failure (40)``; a level or description with no name reads
    ``level 7`` / ``unassigned alert 255``, not ``255 (255)``."""
    lvl = f"level {level}" if str(level).isdigit() else str(level)
    if str(description) == str(code):
        return f"{lvl} unassigned alert {code}"
    return f"{lvl} {description} ({code})"


def counted(n: int, noun: str) -> str:
    """``1 line``, ``2 lines``: a count and its noun, in the plural unless one."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _safe(v: Any) -> Any:
    """An event with every string in it escaped (peers control SNI, ALPN, SOCKS and
    CONNECT host names, reasons quoting their bytes, ...)."""
    if isinstance(v, str):
        return escape(v)
    if isinstance(v, dict):
        return {k: _safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_safe(x) for x in v]
    return v


def version_text(value: Any) -> str:
    """A logged version ("0x7f1c") for the terminal: one outside SSL 3.0 .. TLS 1.3
    that has a name gets it beside the hex ("0x7f1c (TLSv1.3-draft28)"): the codes
    everyone reads at sight stay short, a TLS 1.3 draft or DTLS code is not a mystery."""
    text = str(value)
    try:
        code = int(text, 16)
    except ValueError:
        return text
    if names.SSL3 <= code <= names.TLS1_3 or code not in names.VERSIONS:
        return text
    return f"{text} ({names.VERSIONS[code]})"


def _hello(m: dict[str, Any]) -> str:
    parts = [m["type"]]
    if "unparsed" in m:
        return f"{m['type']} (unparsed: {m['unparsed']})"
    if m["type"] == "client_hello":
        parts.append(f"legacy_version={m['legacy_version']}")
        if "supported_versions" in m:
            parts.append(f"versions={[version_text(v) for v in m['supported_versions']]}")
        sni = m.get("sni")
        if sni is None:  # absent, or present and unparsable (its entry has the error)
            sni = "(malformed)" if any(x.get("type") == "server_name"
                                       for x in m.get("extensions") or ()) else "-"
        parts.append(f"sni={sni}")
        if "alpn" in m:
            parts.append(f"alpn={','.join(m['alpn'])}")
        parts.append(f"suites={m.get('cipher_suites_count', len(m['cipher_suites']))}")
        if "supported_groups" in m:
            parts.append(f"groups={','.join(m['supported_groups'])}")
        else:
            parts.append("groups=-")
        ext = m.get("extensions")
        parts.append("exts=" + ("none" if ext is None else ",".join(e["type"] for e in ext)))
        parts.append(f"ja4={m['ja4']}")
    else:
        parts.append(f"version={version_text(m.get('selected_version'))}")
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


#: A record's handshake messages named on its terminal line; the rest are counted.
MESSAGES_SHOWN = 16


def line(ev: dict[str, Any]) -> str:
    """One event as terminal text; every string from the event is escaped first."""
    return _line(_safe(ev))


def _record(ev: dict[str, Any], conn: str) -> str:
    head = f"{conn} {ARROW[ev['from']]} #{ev['index']}"
    if "unparsed" in ev:
        return f"{head} UNPARSED {ev['length']} bytes: {ev['unparsed']}"
    body = f"{ev['content_type']} {ev['version']} len={ev['length']}"
    if ev.get("encrypted"):
        body += " (encrypted)"
    if "messages" in ev:
        msgs = ev["messages"]
        body += " | " + " ; ".join(
            _hello(m) if m["type"] in ("client_hello", "server_hello", "hello_retry_request")
            else m.get("summary") or f"{m['type']}({m['length']})"
            for m in msgs[:MESSAGES_SHOWN])
        if len(msgs) > MESSAGES_SHOWN:
            # A peer's 16 KiB of zeros is 4096 hello_requests: one terminal line each
            # would flood the view (the JSONL log keeps them all).
            body += f" ; ... {len(msgs) - MESSAGES_SHOWN} more messages"
    if "fragment" in ev:
        body += f" [fragment {_have_want(ev['fragment'])}]"
    if isinstance(ev.get("alert"), dict):
        a = ev["alert"]
        body += f" | ALERT {alert_words(a['level'], a['description'], a['code'])}"
    if "note" in ev:
        body += f" | {ev['note']}"
    if isinstance(ev.get("decrypted"), dict):
        body += f" | decrypted: {_decrypted(ev['decrypted'])}"
    body += _faults(ev)
    if "undelivered" in ev:
        body += f" | NOT DELIVERED: {ev['undelivered']}"
    return f"{head} {body}"


def _faults(ev: dict[str, Any]) -> str:
    """`` | FAULT scenario: action key=value ...`` for each fault on an event."""
    faults = ev.get("fault")
    out = ""
    for f in faults if isinstance(faults, list) else [faults] if faults else []:
        detail = detail_text(f.get("detail", ""))
        out += f" | FAULT {f['scenario']}: {f['action']}" + (f" {detail}" if detail else "")
    return out


def detail_text(v: Any) -> str:
    """A fault's detail as ``before=399 after=20 length_field=fixed`` (lists joined by
    commas, nested tables in parentheses), not a Python repr. Formatting only: the
    terminal view escapes strings first (:func:`_safe`)."""
    if isinstance(v, dict):
        return " ".join(f"{k}={_nested(x)}" for k, x in v.items())
    if isinstance(v, list | tuple):
        return ",".join(_nested(x) for x in v)
    return "" if v is None else str(v)


def _nested(v: Any) -> str:
    text = detail_text(v)
    return f"({text})" if isinstance(v, dict) else text


def _have_want(frag: dict[str, Any]) -> str:
    """A message being assembled: bytes so far / its length, "?" while its 4-byte
    handshake header is itself incomplete (want is null; it printed "None")."""
    want = frag.get("want")
    return f"{frag['have']}/{'?' if want is None else want}"


def _fragments(ev: dict[str, Any], conn: str) -> str:
    held = " (held)" if ev.get("held") else ""
    state = f" [fragment {_have_want(ev)}]" if "have" in ev else " (not parsed)"
    return (f"{conn} {ARROW[ev['from']]} #{ev['first_index']}-#{ev['last_index']} "
            f"{ev['count']} tiny handshake records{held}, {ev['bytes']} bytes{state}")


def _repeated(ev: dict[str, Any], conn: str) -> str:
    first = _record(ev["record"], conn).split(" ", 3)[-1]  # its body, without its head
    return (f"{conn} {ARROW[ev['from']]} #{ev['first_index']}-#{ev['last_index']} "
            f"{ev['count']} identical records, {ev['bytes']} bytes: {first}")


def _non_tls(ev: dict[str, Any], conn: str) -> str:
    text = f"{conn} {ARROW[ev['from']]} NON-TLS {ev['length']} bytes ({ev['reason']})"
    text += f": {ev['preview']}" if "preview" in ev else ""
    return text + (f" | NOT DELIVERED: {ev['undelivered']}" if "undelivered" in ev else "")


def _close(ev: dict[str, Any], conn: str) -> str:
    b = ev["bytes"]
    out = (f"{conn} close by {ev['by']}: client sent {b['client']} bytes, "
           f"server sent {b['server']} bytes")
    if "reason" in ev:
        out += f" ({ev['reason']})"
    held = ev.get("held")
    if isinstance(held, dict):
        out += "".join(f"; {n} bytes of the {side}'s held by a delay, not yet delivered"
                       for side, n in held.items() if n)
    for d in ev.get("diagnosis", []):
        out += f"\n{conn}   diagnosis {d['code']}: {d['summary']} ({d['reference']})"
        for e in d.get("evidence", []):
            out += f"\n{conn}     - {e}"
    return out


def _late_decrypted(ev: dict[str, Any], conn: str) -> str:
    return (f"{conn} {ARROW[ev['from']]} #{ev['index']} decrypted (keys arrived late): "
            f"{_decrypted(ev['decrypted'])}")


def _released(ev: dict[str, Any], conn: str) -> str:
    return (f"{conn} {ARROW[ev['from']]} #{ev['index']} released after {ev['waited_ms']} ms"
            + _faults(ev))


def _timer(ev: dict[str, Any], conn: str) -> str:
    """``[1] TIMER | FAULT lb-idle-timeout-rst: close {...}``: a fault whose match
    has after_ms or idle_ms fired on its timer, without a record."""
    return f"{conn} TIMER" + _faults(ev)


def _held_limit(ev: dict[str, Any], conn: str) -> str:
    if ev.get("action") == "paused":
        return (f"{conn} {ARROW[ev['from']]} HELD LIMIT: reading paused ({ev['held']} "
                f"bytes held here, {ev['total']} in all, --max-held {ev['max_held']})")
    return f"{conn} {ARROW[ev['from']]} HELD LIMIT: {ev['freed']} bytes let go: {ev['note']}"


def plaintext_text(ev: dict[str, Any]) -> str:
    """``smtp 250-STARTTLS``: a plaintext event's line as the terminal and the HTML
    report show it (words and statuses already escaped)."""
    head = str(ev.get("verb") or ev.get("status") or "")
    words = " ".join(str(w) for w in ev.get("words") or ())
    # "250-STARTTLS" as the server wrote it: a continuation status joins its word.
    text = (head + words if head.endswith("-") else f"{head} {words}").strip()
    if "hidden" in ev:
        text += f" ({ev['hidden']} not shown, {ev.get('length')} bytes)"
    if "starttls" in ev:
        text += f" [STARTTLS {ev['starttls']}]"
    return f"{ev.get('protocol', '')} {text}"


def _plaintext(ev: dict[str, Any], conn: str) -> str:
    """``[1] S->C plaintext smtp 250-STARTTLS``."""
    return f"{conn} {ARROW[ev['from']]} plaintext {plaintext_text(ev)}{_faults(ev)}"


_LINES: dict[str, Callable[[dict[str, Any], str], str]] = {
    "plaintext": _plaintext,
    "connect": lambda ev, conn: (f"{conn} connect {ev['client']} -> {ev['server']} "
                                 f"({ev['mode']})"),
    "record": _record,
    "fragments": _fragments,
    "repeated": _repeated,
    "non_tls": _non_tls,
    "close": _close,
    "error": lambda ev, conn: f"{conn} ERROR {ev.get('message', '')}",
    "held_limit": _held_limit,
    "decrypted": _late_decrypted,
    # run --keylog: a connection whose keys never arrived; analyze: how sides were told
    "note": lambda ev, conn: f"{conn} NOTE {ev['note']}",
    "released": _released,
    "timer": _timer,
    # a bug in the engine on one connection: its bytes go on as they came
    "internal_error": lambda ev, conn: (
        f"{conn} INTERNAL ERROR{' (' + str(ev['side']) + ')' if ev.get('side') else ''}: "
        f"{ev.get('error', '')}; {ev.get('action', '')} (at {detail_text(ev.get('traceback'))})"),
    # analyze: bytes the capture lacks on one side (that side is not decoded past it)
    "gap": lambda ev, conn: (
        f"{conn} {ARROW[ev['from']]} GAP {ev.get('missing', '?')} bytes missing at offset "
        f"{ev.get('offset', '?')}: {ev.get('note', '')}"),
    # the JSONL log could not be written for a while
    "log_gap": lambda ev, conn: (f"{conn} LOG GAP {ev.get('lost_events', '?')} events lost: "
                                 f"{ev.get('error', '')}"),
}


def _line(ev: dict[str, Any]) -> str:
    kind = ev["event"]
    conn = f"[{ev.get('conn') or '-'}]"  # "-": about the proxy, not one connection
    if ev.get("leg") in ("client", "server"):
        # --intercept: which TLS connection (client <-> inspector, inspector <-> server)
        conn += f" {ev['leg']}-leg"
    render = _LINES.get(kind)
    if render is not None:
        return render(ev, conn)
    rest = {k: v for k, v in ev.items() if k not in ("event", "conn")}
    return f"{conn} {kind} {json.dumps(rest)}"
