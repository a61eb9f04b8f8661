"""JSON-ready descriptions of handshake messages and alerts (DESIGN.md "JSON Lines log").

Hellos are decoded field by field; every other handshake message is named with
its length. A hello that does not parse is described as unparsed with the
reason, never dropped: the bytes still travel unchanged.
"""

from __future__ import annotations

import traceback
from pathlib import PurePath as Path
from typing import Any

from tlsinspector.proxy import extensions as ext
from tlsinspector.proxy import fingerprint, names
from tlsinspector.proxy.handshake import (
    CLIENT_HELLO,
    MAX_LOGGED_RECORDS,
    SERVER_HELLO,
    HandshakeMessage,
)
from tlsinspector.proxy.hello import (
    ClientHello,
    ServerHello,
    parse_client_hello,
    parse_server_hello,
)
from tlsinspector.proxy.records import Record, preview
from tlsinspector.proxy.wire import DecodeError

Json = dict[str, Any]


def _common(hello: ClientHello | ServerHello) -> Json:
    return {
        "legacy_version": names.hex4(hello.legacy_version),
        "random": hello.random.hex(),
        "session_id": hello.session_id.hex(),
    }


def _decoded(hello: ClientHello | ServerHello, kind: ext.Kind, out: Json) -> None:
    """The hello's decoded extension values, under the DESIGN.md field names."""
    fields = {
        ext.SERVER_NAME: "sni",
        ext.ALPN: "alpn",
        ext.SUPPORTED_VERSIONS: "supported_versions",
        ext.SUPPORTED_GROUPS: "supported_groups",
        ext.SIGNATURE_ALGORITHMS: "signature_algorithms",
        ext.EC_POINT_FORMATS: "ec_point_formats",
        ext.RENEGOTIATION_INFO: "renegotiation_info",
        ext.PSK_KEY_EXCHANGE_MODES: "psk_key_exchange_modes",
        ext.RECORD_SIZE_LIMIT: "record_size_limit",
        ext.PRE_SHARED_KEY: "pre_shared_key",
        ext.STATUS_REQUEST: "status_request",
    }
    details: list[Json] = []
    for e in hello.extensions or ():
        value = ext.decode(e.type, e.data, kind)
        entry: Json = {"type": names.extension_name(e.type), "length": len(e.data)}
        if value is not None:
            entry["value"] = value
        details.append(entry)
        field = fields.get(e.type)
        if e.type == ext.SERVER_NAME:
            # A string (docs/events.schema.json); a server_name that does not parse has
            # none: its extension entry's value says why (it was that error object).
            if isinstance(value, list):
                out["sni"] = value[0] if value else ""
        elif e.type == ext.KEY_SHARE:
            if isinstance(value, list):
                out["key_share_groups"] = [s["group"] for s in value if isinstance(s, dict)]
            elif isinstance(value, dict) and "selected_group" in value:
                out["key_share_groups"] = [value["selected_group"]]
        elif field is not None and field not in out:
            out[field] = value
    out["extensions"] = details


MAX_LOGGED_SUITES = 512


def describe_client_hello(ch: ClientHello) -> Json:
    out = _common(ch)
    # Bounded log: a hello may list 32k suites (RFC 8446 4.1.2 allows 2^16 - 2
    # bytes); names beyond MAX_LOGGED_SUITES are counted, not listed.
    out["cipher_suites"] = [names.cipher_suite_name(c)
                            for c in ch.cipher_suites[:MAX_LOGGED_SUITES]]
    if len(ch.cipher_suites) > MAX_LOGGED_SUITES:
        out["cipher_suites_count"] = len(ch.cipher_suites)
    out["compression_methods"] = list(ch.compression_methods)
    if ch.extensions is None:
        out["extensions"] = None
    else:
        _decoded(ch, "client_hello", out)
    if ch.trailing:
        out["trailing_bytes"] = len(ch.trailing)
    out["ja3"], out["ja4"] = fingerprint.fingerprints(ch)
    return out


def describe_server_hello(sh: ServerHello) -> Json:
    kind: ext.Kind = "hello_retry_request" if sh.is_hrr else "server_hello"
    out = _common(sh)
    out["cipher_suite"] = names.cipher_suite_name(sh.cipher_suite)
    out["compression_method"] = sh.compression_method
    if sh.extensions is None:
        out["extensions"] = None
    else:
        _decoded(sh, kind, out)
    out["selected_version"] = names.hex4(sh.selected_version)
    if sh.trailing:
        out["trailing_bytes"] = len(sh.trailing)
    return out


def describe(msg: HandshakeMessage) -> tuple[Json, ClientHello | ServerHello | None]:
    """The log entry for one handshake message, and the parsed hello if it is one."""
    name = names.handshake_type_name(msg.msg_type)
    base: Json = {"type": name, "length": len(msg.body)}
    if len(msg.records) > MAX_LOGGED_RECORDS:
        # Bounded log per message: only the ends of a long run of records.
        base["records"] = [msg.records[0], msg.records[-1]]
        base["record_count"] = len(msg.records)
    elif len(msg.records) > 1:
        base["records"] = list(msg.records)
    try:
        if msg.msg_type == CLIENT_HELLO:
            ch = parse_client_hello(msg.body)
            return {**base, **describe_client_hello(ch)}, ch
        if msg.msg_type == SERVER_HELLO:
            sh = parse_server_hello(msg.body)
            if sh.is_hrr:
                base["type"] = "hello_retry_request"
            return {**base, **describe_server_hello(sh)}, sh
    except DecodeError as e:
        return {**base, "unparsed": e.reason}, None
    return base, None


def describe_alert(payload: bytes) -> Json | None:
    """A plaintext alert (RFC 8446 6): level and description, or None if not 2 bytes."""
    if len(payload) != 2:
        return None
    level, desc = payload[0], payload[1]
    return {
        "level": names.name_of(names.ALERT_LEVELS, level, 2) if level in names.ALERT_LEVELS
        else str(level),
        "description": names.alert_description_name(desc),
        "code": desc,
    }


# -- log events (DESIGN.md "JSON Lines log"): built here, emitted by the engine ---------


def event(name: str, now: float, conn: str, **fields: Any) -> Json:
    """Every event carries "event", "ts" (unix seconds) and "conn"."""
    return {"event": name, "ts": round(now, 6), "conn": conn, **fields}


def record_fields(side: str, index: int, rec: Record, encrypted: bool) -> Json:
    """A record event's header fields, before messages, alert or fault are added."""
    return {"from": side, "index": index,
            "content_type": names.content_type_name(rec.content_type),
            "version": names.hex4(rec.version), "length": rec.length, "encrypted": encrypted}


def app_data_event(ts: float, conn: str, side: str, index: int, version: int,
                   length: int) -> Json:
    """An encrypted application_data record on the fast path (``ts`` already rounded)."""
    return {"event": "record", "ts": ts, "conn": conn, "from": side, "index": index,
            "content_type": "application_data", "version": names.hex4(version),
            "length": length, "encrypted": True}


def internal_error_event(now: float, conn: str, side: str | None, err: BaseException) -> Json:
    """The engine failed on a connection (a bug, never the peer's fault): what and
    where, as a short traceback summary. The message is cut short and made
    printable: an exception may carry bytes a peer sent."""
    frames = traceback.extract_tb(err.__traceback__)[-_TRACE_FRAMES:]
    where = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames]
    text = preview(f"{type(err).__name__}: {err}".encode("utf-8", "replace"), 200)
    return event("internal_error", now, conn, side=side, error=text, traceback=where,
                 action="passthrough")


_TRACE_FRAMES = 5
