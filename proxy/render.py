"""The terminal view: one human line per log event, from the same dicts as the JSONL log."""

from __future__ import annotations

import json
from typing import IO, Any

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


def line(ev: dict[str, Any]) -> str:
    kind = ev["event"]
    conn = f"[{ev['conn']}]"
    if kind == "connect":
        return f"{conn} connect {ev['client']} -> {ev['server']} ({ev['mode']})"
    if kind == "record":
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
        faults = ev.get("fault")
        for f in faults if isinstance(faults, list) else [faults] if faults else []:
            body += f" | FAULT {f['scenario']}: {f['action']} {f.get('detail', '')}"
        return f"{head} {body}"
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
    """Appends one JSON object per line and flushes per event (DESIGN.md)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, ev: dict[str, Any]) -> None:
        self.stream.write(json.dumps(ev, separators=(",", ":")) + "\n")
        self.stream.flush()
