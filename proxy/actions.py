"""Fault actions: small pure functions over records (DESIGN.md "Faults are data").

Each action takes the records about to be delivered (usually the one matched
record) and its parameters, and returns the records to deliver instead plus a
``detail`` of what it changed. Side effects on the connection (answer the
sender, close, delay, paced writes) are returned as data in :class:`Effect`;
the engine carries them out. Nothing here mutates its input: records and
hellos are frozen, a fault builds new ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from tlsinspector.proxy import names
from tlsinspector.proxy.handshake import CLIENT_HELLO, HEADER_LEN, SERVER_HELLO, encode_message
from tlsinspector.proxy.hello import (
    ClientHello,
    Extension,
    ServerHello,
    parse_client_hello,
    parse_server_hello,
)
from tlsinspector.proxy.records import ALERT, MAX_PLAINTEXT, Record
from tlsinspector.proxy.wire import DecodeError, Reader, u16_list, uint

SUPPORTED_VERSIONS = 43
PRE_SHARED_KEY = 41
FATAL = 2


class CannotApply(Exception):
    """The action does not fit the matched record (reported, never silent)."""


@dataclass(slots=True)
class Effect:
    records: list[Record]
    raw: bytes | None = None                 # replaces the records' bytes entirely
    to_sender: bytes = b""
    close: tuple[Literal["fin", "rst"], Literal["client", "server", "both"]] | None = None
    delay: float = 0.0
    split: tuple[int, float] | None = None
    detail: dict[str, Any] = field(default_factory=dict)


Params = Mapping[str, Any]
Action = Callable[[Effect, Params], None]


def _hex(v: int) -> str:
    return f"0x{v:04x}"


def set_record_version(e: Effect, p: Params) -> None:
    before = sorted({_hex(r.version) for r in e.records})
    e.records = [replace(r, version=p["version"]) for r in e.records]
    e.detail = {"before": before[0] if len(before) == 1 else before,
                "after": _hex(p["version"])}


def _alert(level: int, desc: int, version: int) -> Record:
    return Record(ALERT, version, bytes((level, desc)))


def _alert_detail(p: Params) -> dict[str, Any]:
    return {"alert": f"{names.name_of(names.ALERT_LEVELS, p['level'], 2)} "
                     f"{names.alert_description_name(p['description'])}",
            "level": p["level"], "code": p["description"]}


def replace_with_alert(e: Effect, p: Params) -> None:
    version = e.records[0].version if e.records else 0x0303
    before = [names.content_type_name(r.content_type) for r in e.records]
    e.records = [_alert(p["level"], p["description"], version)]
    e.detail = {"before": before, **_alert_detail(p)}
    if p["level"] == FATAL:
        # RFC 8446 6.2 / RFC 5246 7.2.2: a fatal alert ends the connection.
        e.close = ("fin", "both")


def insert_alert(e: Effect, p: Params) -> None:
    version = e.records[0].version if e.records else 0x0303
    alert = _alert(p["level"], p["description"], version)
    e.records = [alert, *e.records] if p["position"] == "before" else [*e.records, alert]
    e.detail = {"position": p["position"], **_alert_detail(p)}


def reply_alert(e: Effect, p: Params) -> None:
    version = e.records[0].version if e.records else 0x0303
    e.to_sender += _alert(p["level"], p["description"], version).raw
    e.detail = {"dropped": len(e.records), "answered_sender": True, **_alert_detail(p)}
    e.records = []
    if p["level"] == FATAL:
        e.close = ("fin", "both")


def replace_with_raw(e: Effect, p: Params) -> None:
    data: bytes = p["data"]
    e.detail = {"before": sum(len(r.raw) for r in e.records), "after": len(data),
                "preview": data[:32].decode("latin-1")}
    e.records = []
    e.raw = data
    e.close = ("fin", "both")


def drop(e: Effect, p: Params) -> None:
    e.detail = {"dropped": sum(len(r.raw) for r in e.records)}
    e.records = []


def truncate(e: Effect, p: Params) -> None:
    keep: int = p["length"]
    out = []
    for r in e.records:
        cut = r.payload[:keep]
        out.append(Record(r.content_type, r.version, cut,
                          None if p["fix_length"] else r.length))
    e.detail = {"before": [r.length for r in e.records], "after": keep,
                "length_field": "fixed" if p["fix_length"] else "unchanged"}
    e.records = out


def fragment(e: Effect, p: Params) -> None:
    size: int = p["size"]
    out: list[Record] = []
    for r in e.records:
        if not r.payload:
            out.append(r)
        for i in range(0, len(r.payload), size):
            out.append(Record(r.content_type, r.version, r.payload[i : i + size]))
    e.detail = {"records_before": len(e.records), "records_after": len(out), "size": size}
    e.records = out


def split_writes(e: Effect, p: Params) -> None:
    e.split = (p["size"], p["pause_ms"] / 1000.0)
    e.detail = {"write_size": p["size"], "pause_ms": p["pause_ms"]}


def delay(e: Effect, p: Params) -> None:
    e.delay += p["ms"] / 1000.0
    e.detail = {"ms": p["ms"]}


def corrupt(e: Effect, p: Params) -> None:
    out = []
    detail: dict[str, Any] = {}
    for r in e.records:
        payload = bytearray(r.payload)
        off = p["offset"] if p["offset"] >= 0 else len(payload) + p["offset"]
        if not 0 <= off < len(payload):
            raise CannotApply(f"offset {p['offset']} outside a {len(payload)}-byte payload")
        before = payload[off]
        payload[off] ^= p["xor"]
        detail = {"offset": off, "before": f"0x{before:02x}", "after": f"0x{payload[off]:02x}"}
        out.append(replace(r, payload=bytes(payload)))
    e.records = out
    e.detail = detail


def close(e: Effect, p: Params) -> None:
    e.close = (p["how"], p["toward"])
    e.detail = {"how": p["how"], "toward": p["toward"]}


# -- hello rewrites -------------------------------------------------------------


def _split_messages(payload: bytes) -> list[tuple[int, bytes]] | None:
    """The whole handshake messages of a payload, or None if one is cut."""
    r = Reader(payload)
    out = []
    try:
        while not r.eof():
            t = r.u8()
            out.append((t, r.vector(3, "handshake message")))
    except DecodeError:
        return None
    return out


def _rewrite_hello(e: Effect, p: Params,
                   edit: Callable[[ClientHello | ServerHello, Params], tuple[Any, Any, Any]]
                   ) -> None:
    for i, r in enumerate(e.records):
        msgs = _split_messages(r.payload)
        if not msgs:
            continue
        for j, (t, body) in enumerate(msgs):
            if t not in (CLIENT_HELLO, SERVER_HELLO):
                continue
            try:
                hello: ClientHello | ServerHello = (
                    parse_client_hello(body) if t == CLIENT_HELLO else parse_server_hello(body))
            except DecodeError as err:
                raise CannotApply(f"the hello does not parse: {err.reason}") from err
            new, before, after = edit(hello, p)
            msgs[j] = (t, new.encode())
            payload = b"".join(encode_message(mt, b) for mt, b in msgs)
            e.records[i] = Record(r.content_type, r.version, payload)
            e.detail = {"before": before, "after": after}
            return
    raise CannotApply("no complete ClientHello or ServerHello in the matched record "
                      f"(a hello split across records needs the whole message; "
                      f"header is {HEADER_LEN} bytes)")


def _exts_without(exts: tuple[Extension, ...] | None, drop_types: set[int]
                  ) -> tuple[Extension, ...] | None:
    if exts is None:
        return None
    return tuple(x for x in exts if x.type not in drop_types)


def _set_hello_version(h: ClientHello | ServerHello, p: Params) -> tuple[Any, Any, Any]:
    new: ClientHello | ServerHello = replace(h, legacy_version=p["version"])
    if not p["keep_supported_versions"]:
        new = replace(new, extensions=_exts_without(new.extensions, {SUPPORTED_VERSIONS}))
    return new, _hex(h.legacy_version), _hex(p["version"])


def _suites_edit(h: ClientHello | ServerHello) -> ClientHello:
    if not isinstance(h, ClientHello):
        raise CannotApply("cipher suite lists are only in a ClientHello")
    return h


def _add_suites(h: ClientHello | ServerHello, p: Params) -> tuple[Any, Any, Any]:
    ch = _suites_edit(h)
    add = tuple(p["suites"])
    suites = add + ch.cipher_suites if p["position"] == "start" else ch.cipher_suites + add
    return (replace(ch, cipher_suites=suites), len(ch.cipher_suites),
            [names.cipher_suite_name(s) for s in add])


def _remove_suites(h: ClientHello | ServerHello, p: Params) -> tuple[Any, Any, Any]:
    ch = _suites_edit(h)
    gone = set(p["suites"])
    removed = [names.cipher_suite_name(s) for s in ch.cipher_suites if s in gone]
    kept = tuple(s for s in ch.cipher_suites if s not in gone)
    return replace(ch, cipher_suites=kept), removed, len(kept)


def _remove_exts(h: ClientHello | ServerHello, p: Params) -> tuple[Any, Any, Any]:
    gone = set(p["extensions"])
    removed = [names.extension_name(x.type) for x in h.extensions or () if x.type in gone]
    return (replace(h, extensions=_exts_without(h.extensions, gone)),
            [names.extension_name(x.type) for x in h.extensions or ()], {"removed": removed})


def _add_ext(h: ClientHello | ServerHello, p: Params) -> tuple[Any, Any, Any]:
    exts = list(h.extensions or ())
    new = Extension(p["type"], p["data"])
    # RFC 8446 4.2.11: pre_shared_key must stay the last extension.
    at = len(exts) - 1 if exts and exts[-1].type == PRE_SHARED_KEY else len(exts)
    exts.insert(at, new)
    return (replace(h, extensions=tuple(exts)), len(h.extensions or ()),
            {"added": names.extension_name(p["type"]), "length": len(p["data"])})


def _set_versions(h: ClientHello | ServerHello, p: Params) -> tuple[Any, Any, Any]:
    versions: list[int] = list(p["versions"])
    if isinstance(h, ClientHello):
        data = u16_list(versions, 1)
    else:
        data = uint(versions[0], 2)
    exts = list(h.extensions or ())
    old = next((x for x in exts if x.type == SUPPORTED_VERSIONS), None)
    if old is not None:
        exts[exts.index(old)] = Extension(SUPPORTED_VERSIONS, data)
    else:
        at = len(exts) - 1 if exts and exts[-1].type == PRE_SHARED_KEY else len(exts)
        exts.insert(at, Extension(SUPPORTED_VERSIONS, data))
    return (replace(h, extensions=tuple(exts)), old.data.hex() if old else None,
            [_hex(v) for v in versions])


def _hello_action(edit: Callable[[ClientHello | ServerHello, Params], tuple[Any, Any, Any]]
                  ) -> Action:
    def run(e: Effect, p: Params) -> None:
        _rewrite_hello(e, p, edit)
    return run


def insert_record(e: Effect, p: Params) -> None:
    version = p.get("version") or (e.records[0].version if e.records else 0x0303)
    rec = Record(p["content_type"], version, p["data"])
    e.records = [rec, *e.records] if p["position"] == "before" else [*e.records, rec]
    e.detail = {"position": p["position"],
                "content_type": names.content_type_name(rec.content_type),
                "length": len(rec.payload)}


def split_record(r: Record) -> list[Record]:
    """A rewritten record larger than 2^14 goes out as several (RFC 8446 5.1)."""
    if len(r.payload) <= MAX_PLAINTEXT or r.length_field is not None:
        return [r]
    return [Record(r.content_type, r.version, r.payload[i : i + MAX_PLAINTEXT])
            for i in range(0, len(r.payload), MAX_PLAINTEXT)]


HELLO_ACTIONS = frozenset({"set-hello-version", "add-cipher-suites", "remove-cipher-suites",
                           "remove-extensions", "add-extension", "set-supported-versions"})

ACTIONS: dict[str, Action] = {
    "set-record-version": set_record_version,
    "set-hello-version": _hello_action(_set_hello_version),
    "add-cipher-suites": _hello_action(_add_suites),
    "remove-cipher-suites": _hello_action(_remove_suites),
    "remove-extensions": _hello_action(_remove_exts),
    "add-extension": _hello_action(_add_ext),
    "set-supported-versions": _hello_action(_set_versions),
    "replace-with-alert": replace_with_alert,
    "insert-alert": insert_alert,
    "reply-alert": reply_alert,
    "replace-with-raw": replace_with_raw,
    "drop": drop,
    "truncate": truncate,
    "fragment": fragment,
    "split-writes": split_writes,
    "delay": delay,
    "corrupt": corrupt,
    "close": close,
    "insert-record": insert_record,
}
