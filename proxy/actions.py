"""Fault actions and their registry (DESIGN.md "Faults are data", "One declaration per idea").

Each action is a small pure function over the records about to be delivered
(usually the one matched record) and its parameters. It replaces the records
to deliver and sets ``detail`` to what it changed; side effects on the
connection (answer the sender, close, delay, paced writes) are returned as data
in :class:`Effect` and carried out by the engine. Nothing here mutates its
input: records and hellos are frozen, a fault builds new ones.

Every action is declared once, beside its function, with :func:`action` (or
:func:`hello_action` for an edit of a ClientHello/ServerHello): its name, its
parameters with their types, allowed values and defaults, its fault class, the
symptom it predicts, its documentation and its flags. Scenario validation,
``tlsinspector check`` / ``check --list``, diagnosis attribution, the fault
planner and the README's action table all read :data:`ACTIONS`; nothing else
lists actions. The model is mitmproxy's ``loader.add_option``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal

from tlsinspector.proxy import names
from tlsinspector.proxy.extensions import write_supported_versions
from tlsinspector.proxy.handshake import CLIENT_HELLO, HEADER_LEN, SERVER_HELLO, encode_message
from tlsinspector.proxy.hello import (
    ClientHello,
    Extension,
    ServerHello,
    parse_client_hello,
    parse_server_hello,
)
from tlsinspector.proxy.records import ALERT, MAX_PLAINTEXT, Record, RecordFramer
from tlsinspector.proxy.wire import DecodeError, Reader

SUPPORTED_VERSIONS = names.EXT_SUPPORTED_VERSIONS
PRE_SHARED_KEY = names.EXT_PRE_SHARED_KEY
FATAL = names.FATAL
HANDSHAKE_CT = names.CT_HANDSHAKE

FaultClass = Literal["transcript-safe", "transcript-breaking", "needs-keys"]
ParamType = Literal["int", "bool", "choice", "code", "codes", "hex", "text"]


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
    # coalesce: (records, "record" | "write", wait seconds): this record and the next
    # ones from the same side go out together (the engine gathers them).
    gather: tuple[int, Literal["record", "write"], float] | None = None
    detail: dict[str, Any] = field(default_factory=dict)   # for the log: before/after
    # Typed results, for diagnosis, which reads facts, never action names:
    # record_version (int), raw (bytes), dropped (bytes count), truncated ((kept,
    # length fixed)), records_after (int), closed ((how, toward)), inserted
    # ((content type, position)), extensions_removed / extensions_added (codes),
    # suites_before / suites_after (a ClientHello's suites), delayed (seconds).
    facts: dict[str, Any] = field(default_factory=dict)
    # Plaintext actions (issue 17): ``raw`` holds the matched line's bytes and
    # ``plain`` its description (proxy.plaintext.Line); the action edits ``raw``.
    plain: Any = None


Params = Mapping[str, Any]
Action = Callable[[Effect, Params], None]
HelloEdit = Callable[[ClientHello | ServerHello, Params], tuple[Any, Any, Any]]


# -- the declaration ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """One action parameter. ``default`` is already normalized (alert level 2, b"")."""

    type: ParamType    # code/codes: IANA names or numbers from names.<table>
    doc: str
    required: bool = False
    default: object = None
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    table: str | None = None      # a names.TABLE_NAMES kind, for code/codes


# A match's side and handshake type (None: not given) and the normalized params;
# returns (param name, message) when the combination can never work.
Fits = Callable[[str | None, int | None, Params], tuple[str, str] | None]


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """Everything known about one action; built by :func:`action`, read everywhere."""

    name: str
    run: Action
    params: Mapping[str, ParamSpec]
    # The class when the match does not say which record is hit; the scenario
    # builder's fault_class() refines it from the match (see there).
    fault_class: FaultClass
    symptom: str
    doc: str
    # Flags.
    rewrites_hello: bool = False       # edits a ClientHello/ServerHello: held until whole
    client_hello_only: bool = False    # ...and only a ClientHello has what it edits
    content: bool = False              # changes, removes or adds records where it hit:
                                       # needs-keys on an encrypted record
    needs_keys: bool = False           # works inside encrypted records only
    plaintext: bool = False            # works on a plaintext line before TLS (STARTTLS
                                       # protocols; a match with ``plaintext``), not records
    sends_alert: Literal["receiver", "sender"] | None = None   # who gets the alert it makes
    data: Literal["required", "optional"] | None = None  # hex/text params become "data"
    # Alert descriptions (RFC 8446 6) a receiver may answer this action with, for
    # diagnosis attribution: the rule for that alert names the fault as a cause.
    explains: frozenset[int] = frozenset()
    # When given, whether an applied fault (its class and params) explains that
    # alert; without it, every applied fault of the action does.
    attributes: Callable[[int, str, Mapping[str, Any]], bool] | None = None
    alters_bytes: bool = False         # edits a record's bytes in place: a receiver's MAC
                                       # check fails even where its alert is not visible
    refine: Callable[[Params], FaultClass | None] | None = None  # class from the params
    fits: Fits | None = None


_REGISTRY: dict[str, ActionSpec] = {}
ACTIONS: Mapping[str, ActionSpec] = MappingProxyType(_REGISTRY)


def action(name: str, fault_class: FaultClass, doc: str, symptom: str, *,
           params: Mapping[str, ParamSpec] | None = None, **flags: Any
           ) -> Callable[[Action], Action]:
    """Declare ``name`` with its function (decorated); the one place an action is listed."""
    def register(run: Action) -> Action:
        if name in _REGISTRY:
            raise ValueError(f"action {name!r} declared twice")
        _REGISTRY[name] = ActionSpec(name, run, MappingProxyType(dict(params or {})),
                                     fault_class, symptom, doc, **flags)
        return run
    return register


def hello_action(name: str, doc: str, symptom: str, *,
                 params: Mapping[str, ParamSpec] | None = None, **flags: Any
                 ) -> Callable[[HelloEdit], HelloEdit]:
    """Declare an edit of the hello in the matched record: always transcript-breaking
    (RFC 8446 4.4.1: both Finished cover the hellos as each side saw them)."""
    def register(edit: HelloEdit) -> HelloEdit:
        def run(e: Effect, p: Params) -> None:
            _rewrite_hello(e, p, edit)
        action(name, "transcript-breaking", doc, symptom, params=params,
               rewrites_hello=True, explains=frozenset({20}), **flags)(run)
        return edit
    return register


_P = ParamSpec  # short name for the declarations below
_VERSION = _P("code", "a version: name (TLSv1.2) or number (0x0303, 771)", required=True,
              table="version")
_LEVEL = _P("code", "alert level name or number (default fatal)", default=2,
            table="alert_level")
_DESC = _P("code", "alert description name or number, e.g. bad_record_mac, 21", required=True,
           table="alert_description")
_BREAKS = ("unless a peer aborts first, the transcripts differ and the handshake fails at the "
           "first encrypted handshake record or Finished: bad_record_mac or decrypt_error")
_ALERT_SEEN = ("OpenSSL 'sslv3 alert <description>' / 'tlsv1 alert <description>', "
               "Go 'remote error: tls: <description>', wolfSSL -313 'revcd alert fatal error'")
NEEDS_KEYS_SYMPTOM = (
    "the record is encrypted and the proxy has no keys: the receiver fails to authenticate "
    "what it gets, bad_record_mac (OpenSSL 'decryption failed or bad record mac', Go "
    "'local error: tls: bad record MAC'), or unexpected_message for a plaintext record "
    "where TLS 1.3 expects an encrypted one")

# Faults inside encryption (a match with ``encrypted: true``; issue 14): the engine
# decrypts the record with the peers' logged keys, applies the action to the
# plaintext records and seals each again (proxy/reseal.py).
INSIDE_SYMPTOM = (
    "inside the encryption (decrypted with the logged keys, changed, re-sealed with the "
    "right keys, nonce and additional data; later records of that direction are re-sealed "
    "with shifted sequence numbers, so no bad_record_mac): ")
TRANSCRIPT_NOT_REPAIRED = (
    "; re-sealing does not repair a changed handshake transcript (RFC 8446 4.4.1, RFC 5246 "
    "7.4.9): unless a peer aborts first, the Finished of that (re)negotiation fails with "
    "decrypt_error or bad_record_mac")

# -- helpers shared by the actions -----------------------------------------------


def _alert(level: int, desc: int, version: int) -> Record:
    return Record(ALERT, version, bytes((level, desc)))


def _alert_detail(p: Params) -> dict[str, Any]:
    return {"alert": f"{names.name_of(names.ALERT_LEVELS, p['level'], 2)} "
                     f"{names.alert_description_name(p['description'])}",
            "level": p["level"], "code": p["description"]}


def _split_messages(payload: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The whole handshake messages of a payload, and the first bytes of a message the
    record cuts (it goes on in the next record: RFC 5246 6.2.1, RFC 8446 5.1), kept
    as they are. A ServerHello followed by the start of a long Certificate is whole."""
    r = Reader(payload)
    out = []
    start = 0
    try:
        while not r.eof():
            t = r.u8()
            out.append((t, r.vector(3, "handshake message")))
            start = r.pos
    except DecodeError:
        return out, payload[start:]
    return out, b""


def _rewrite_hello(e: Effect, p: Params, edit: HelloEdit) -> None:
    for i, r in enumerate(e.records):
        msgs, cut = _split_messages(r.payload)
        for j, (t, body) in enumerate(msgs):
            if t not in (CLIENT_HELLO, SERVER_HELLO):
                continue
            try:
                hello: ClientHello | ServerHello = (
                    parse_client_hello(body) if t == CLIENT_HELLO else parse_server_hello(body))
            except DecodeError as err:
                raise CannotApply(f"the hello does not parse: {err.reason}") from err
            new, before, after = edit(hello, p)
            if new.encode() == body:
                # Recorded as applied, a no-op would be blamed for the outcome
                # (e.g. removing an extension the hello does not carry).
                raise CannotApply(f"the hello is unchanged: it already is as the action "
                                  f"would make it ({before} -> {after})")
            msgs[j] = (t, new.encode())
            payload = b"".join(encode_message(mt, b) for mt, b in msgs) + cut
            e.records[i] = Record(r.content_type, r.version, payload)
            e.detail = {"before": before, "after": after}
            # Typed, for diagnosis: the extension types the edit took out or put in.
            old = {x.type for x in hello.extensions or ()}
            now = {x.type for x in new.extensions or ()}
            e.facts = {"extensions_removed": tuple(sorted(old - now)),
                       "extensions_added": tuple(sorted(now - old))}
            if isinstance(hello, ClientHello) and isinstance(new, ClientHello):
                e.facts["suites_before"] = hello.cipher_suites
                e.facts["suites_after"] = new.cipher_suites
            return
    raise CannotApply("no complete ClientHello or ServerHello in the matched record "
                      f"(a hello split across records needs the whole message; "
                      f"header is {HEADER_LEN} bytes)")


def _exts_without(exts: tuple[Extension, ...] | None, drop_types: set[int]
                  ) -> tuple[Extension, ...] | None:
    if exts is None:
        return None
    return tuple(x for x in exts if x.type not in drop_types)


def _client_hello(h: ClientHello | ServerHello) -> ClientHello:
    if not isinstance(h, ClientHello):
        raise CannotApply("cipher suite lists are only in a ClientHello")
    return h


def _one_server_version(side: str | None, handshake: int | None,
                        p: Params) -> tuple[str, str] | None:
    versions = p.get("versions")
    if (isinstance(versions, tuple) and len(versions) > 1
            and (side == "server" or handshake == SERVER_HELLO)):
        return ("versions", "a ServerHello's supported_versions holds exactly one version "
                "(RFC 8446 4.2.1)")
    return None


def split_record(r: Record, plaintext: bool = False) -> list[Record]:
    """A rewritten record larger than 2^14 goes out as several (RFC 8446 5.1), when
    it is plaintext: a handshake record on the wire (a hello a fault made grow), or
    any record inside encryption (``plaintext``). Any other record on the wire may be
    a ciphertext, which is legally up to 2^14+256 (TLS 1.3) or 2^14+2048 (TLS 1.2)
    bytes and must stay whole: cut in two, its MAC breaks."""
    if len(r.payload) <= MAX_PLAINTEXT or r.length_field is not None:
        return [r]
    if not plaintext and r.content_type != HANDSHAKE_CT:
        return [r]
    return [Record(r.content_type, r.version, r.payload[i : i + MAX_PLAINTEXT])
            for i in range(0, len(r.payload), MAX_PLAINTEXT)]


# -- the actions, in the order `check --list` and the README show them ------------


@action(
    "set-record-version", "transcript-safe", "rewrite the record header's version",
    "the receiver rejects the record: Go 'tls: received record with version 3030 when "
    "expecting version 303' (Go prints both in hex), OpenSSL 'wrong version number', alert "
    "protocol_version; the first record of either side (ClientHello, ServerHello), read "
    "before a version is agreed, may carry any 0x03XX and pass (every lab client accepts "
    "0x0300 on the ServerHello's record); under TLS 1.3 Go checks no record version: the "
    "compatibility ChangeCipherSpec passes and an encrypted record fails its AEAD check, "
    "whose additional data is the header (Go 'local error: tls: bad record MAC', RFC 8446 "
    "5.2), so Go's 'received record with version' needs TLS 1.2 (server: tls12)",
    params={"version": _VERSION})
def set_record_version(e: Effect, p: Params) -> None:
    before = sorted({names.hex4(r.version) for r in e.records})
    e.records = [replace(r, version=p["version"]) for r in e.records]
    e.detail = {"before": before[0] if len(before) == 1 else before,
                "after": names.hex4(p["version"])}
    e.facts["record_version"] = p["version"]


@hello_action(
    "set-hello-version",
    "rewrite the ClientHello/ServerHello legacy_version (by default also drop "
    "supported_versions)",
    "the peer negotiates another version or answers protocol_version ('unsupported "
    "protocol'); a TLS 1.3 client sees the downgrade sentinel and sends illegal_parameter; "
    + _BREAKS,
    params={"version": _VERSION,
            "keep_supported_versions": _P("bool", "keep the supported_versions extension",
                                          default=False)})
def set_hello_version(h: ClientHello | ServerHello, p: Params) -> tuple[Any, Any, Any]:
    new: ClientHello | ServerHello = replace(h, legacy_version=p["version"])
    if not p["keep_supported_versions"]:
        new = replace(new, extensions=_exts_without(new.extensions, {SUPPORTED_VERSIONS}))
    return new, names.hex4(h.legacy_version), names.hex4(p["version"])


@hello_action(
    "add-cipher-suites", "add cipher suites to the ClientHello (e.g. TLS_FALLBACK_SCSV)",
    "TLS_FALLBACK_SCSV below the server's best version: alert inappropriate_fallback; "
    "TLS_EMPTY_RENEGOTIATION_INFO_SCSV in a renegotiation ClientHello: handshake_failure; "
    + _BREAKS,
    params={"suites": _P("codes", "cipher suite names or numbers", required=True,
                         table="cipher_suite"),
            "position": _P("choice", "where to add them", default="end",
                           choices=("start", "end"))},
    client_hello_only=True)
def add_cipher_suites(h: ClientHello | ServerHello, p: Params) -> tuple[Any, Any, Any]:
    ch = _client_hello(h)
    add = tuple(p["suites"])
    suites = add + ch.cipher_suites if p["position"] == "start" else ch.cipher_suites + add
    return (replace(ch, cipher_suites=suites), len(ch.cipher_suites),
            [names.cipher_suite_name(s) for s in add])


@hello_action(
    "remove-cipher-suites", "remove cipher suites from the ClientHello",
    "no suite left in common: handshake_failure (OpenSSL 'no shared cipher', Go 'tls: no "
    "cipher suite supported by both client and server'); " + _BREAKS,
    params={"suites": _P("codes", "cipher suite names or numbers", required=True,
                         table="cipher_suite")},
    client_hello_only=True)
def remove_cipher_suites(h: ClientHello | ServerHello, p: Params) -> tuple[Any, Any, Any]:
    ch = _client_hello(h)
    gone = set(p["suites"])
    removed = [names.cipher_suite_name(s) for s in ch.cipher_suites if s in gone]
    kept = tuple(s for s in ch.cipher_suites if s not in gone)
    return replace(ch, cipher_suites=kept), removed, len(kept)


@hello_action(
    "remove-extensions", "remove extensions from the hello",
    "without server_name a server that requires SNI answers handshake_failure or "
    "unrecognized_name (wolfSSL -313); without supported_groups an ECDHE-only server "
    "answers handshake_failure; a TLS 1.3 server answers a hello without "
    "signature_algorithms, supported_groups or key_share with missing_extension "
    "(RFC 8446 9.2); " + _BREAKS,
    params={"extensions": _P("codes", "extension names or numbers", required=True,
                             table="extension")})
def remove_extensions(h: ClientHello | ServerHello, p: Params) -> tuple[Any, Any, Any]:
    gone = set(p["extensions"])
    removed = [names.extension_name(x.type) for x in h.extensions or () if x.type in gone]
    return (replace(h, extensions=_exts_without(h.extensions, gone)),
            [names.extension_name(x.type) for x in h.extensions or ()], {"removed": removed})


@hello_action(
    "add-extension", "add an extension to the hello",
    "an unknown extension is ignored (RFC 8446 4.2) but changes the transcript; a duplicate "
    "or malformed one: decode_error / illegal_parameter; unsolicited in a ServerHello: "
    "unsupported_extension; " + _BREAKS,
    params={"type": _P("code", "extension name or number", required=True, table="extension"),
            "data": _P("hex", "extension body as hex (spaces and colons allowed)",
                       default=b"")})
def add_extension(h: ClientHello | ServerHello, p: Params) -> tuple[Any, Any, Any]:
    exts = list(h.extensions or ())
    new = Extension(p["type"], p["data"])
    # RFC 8446 4.2.11: pre_shared_key must stay the last extension.
    at = len(exts) - 1 if exts and exts[-1].type == PRE_SHARED_KEY else len(exts)
    exts.insert(at, new)
    return (replace(h, extensions=tuple(exts)), len(h.extensions or ()),
            {"added": names.extension_name(p["type"]), "length": len(p["data"])})


@hello_action(
    "set-supported-versions", "set the hello's supported_versions extension (added if absent)",
    "no version in common: protocol_version ('unsupported protocol'); a ServerHello "
    "selecting a version the client did not offer: illegal_parameter; " + _BREAKS,
    params={"versions": _P("codes", "version names or numbers", required=True,
                           table="version")},
    fits=_one_server_version)
def set_supported_versions(h: ClientHello | ServerHello, p: Params) -> tuple[Any, Any, Any]:
    versions: list[int] = list(p["versions"])
    # A ServerHello selects one (the scenario builder refuses more; RFC 8446 4.2.1).
    data = (write_supported_versions(versions, "client_hello") if isinstance(h, ClientHello)
            else write_supported_versions(versions[:1], "server_hello"))
    exts = list(h.extensions or ())
    old = next((x for x in exts if x.type == SUPPORTED_VERSIONS), None)
    if old is not None:
        exts[exts.index(old)] = Extension(SUPPORTED_VERSIONS, data)
    else:
        at = len(exts) - 1 if exts and exts[-1].type == PRE_SHARED_KEY else len(exts)
        exts.insert(at, Extension(SUPPORTED_VERSIONS, data))
    return (replace(h, extensions=tuple(exts)), old.data.hex() if old else None,
            [names.hex4(v) for v in versions])


@action(
    "replace-with-alert", "transcript-safe",
    "deliver this alert instead of the record (a fatal alert then closes)",
    "the receiver reports the alert as its peer's: " + _ALERT_SEEN,
    params={"level": _LEVEL, "description": _DESC}, content=True, sends_alert="receiver")
def replace_with_alert(e: Effect, p: Params) -> None:
    version = e.records[0].version if e.records else 0x0303
    before = [names.content_type_name(r.content_type) for r in e.records]
    e.records = [_alert(p["level"], p["description"], version)]
    e.detail = {"before": before, **_alert_detail(p)}
    if p["level"] == FATAL:
        # RFC 8446 6.2 / RFC 5246 7.2.2: a fatal alert ends the connection.
        e.close = ("fin", "both")


@action(
    "insert-alert", "transcript-safe", "deliver an alert before or after the record",
    "a fatal alert ends the handshake: " + _ALERT_SEEN + "; a warning is ignored in TLS 1.2 "
    "and is an error in TLS 1.3 unless close_notify or user_canceled",
    params={"level": _LEVEL, "description": _DESC,
            "position": _P("choice", "before or after the record", default="before",
                           choices=("before", "after"))},
    content=True, sends_alert="receiver")
def insert_alert(e: Effect, p: Params) -> None:
    version = e.records[0].version if e.records else 0x0303
    alert = _alert(p["level"], p["description"], version)
    e.records = [alert, *e.records] if p["position"] == "before" else [*e.records, alert]
    e.detail = {"position": p["position"], **_alert_detail(p)}


@action(
    "reply-alert", "transcript-safe",
    "drop the record and answer its sender with the alert, as a rejecting middlebox does",
    "the sender reports the alert as its peer's: " + _ALERT_SEEN
    + "; the other side never sees the record and is closed",
    params={"level": _LEVEL, "description": _DESC}, content=True, sends_alert="sender")
def reply_alert(e: Effect, p: Params) -> None:
    version = e.records[0].version if e.records else 0x0303
    e.to_sender += _alert(p["level"], p["description"], version).raw
    e.detail = {"dropped": len(e.records), "answered_sender": True, **_alert_detail(p)}
    e.records = []
    if p["level"] == FATAL:
        e.close = ("fin", "both")


@action(
    "replace-with-raw", "transcript-safe",
    "send these bytes instead (e.g. a plain 'HTTP/1.1 400' reply), then close",
    "the receiver sees bytes that are not a TLS record: Go 'tls: first record does not "
    "look like a TLS handshake', OpenSSL 'wrong version number' or 'packet length too long'",
    params={"hex": _P("hex", "the bytes as hex (exactly one of hex or text)"),
            "text": _P("text", "the bytes as text, sent UTF-8 encoded (exactly one of hex or "
                       "text)")},
    data="required")
def replace_with_raw(e: Effect, p: Params) -> None:
    data: bytes = p["data"]
    e.detail = {"before": sum(len(r.raw) for r in e.records), "after": len(data),
                "preview": data[:32].decode("latin-1")}
    e.records = []
    e.raw = data
    e.close = ("fin", "both")
    e.facts["raw"] = data


def _drop_explains(alert: int, cls: str, p: Params) -> bool:
    # A dropped handshake record breaks the transcript, so Finished fails (bad MAC);
    # any drop can leave the receiver's state machine out of step.
    return alert != 20 or cls == "transcript-breaking"


@action(
    "drop", "transcript-breaking", "the record never arrives",
    "the receiver waits for a record that never comes (a stall until its timeout) or, when "
    "later records arrive, answers unexpected_message; after a dropped encrypted record the "
    "next one fails with bad_record_mac (sequence numbers are implicit)",
    content=True, explains=frozenset({10, 20}), attributes=_drop_explains)
def drop(e: Effect, p: Params) -> None:
    e.detail = {"dropped": sum(len(r.raw) for r in e.records)}
    e.facts["dropped"] = e.detail["dropped"]
    e.records = []


def _truncate_class(p: Params) -> FaultClass | None:
    # Without fix_length the receiver gets an unaltered prefix of the stream, then a
    # header promising more: a stream cut short, not edited bytes.
    return None if p["fix_length"] else "transcript-safe"


def _truncate_explains(alert: int, cls: str, p: Params) -> bool:
    # With the length field fixed the receiver authenticates (or hashes) a cut
    # record; unfixed it waits for bytes that never come instead.
    return bool(p.get("fix_length")) and cls != "transcript-safe"


@action(
    "truncate", "transcript-breaking",
    "cut the record's payload, fixing the length field or not",
    "length field unchanged: the header promises bytes that do not come, so the receiver "
    "stalls, then misreads the next record; fixed: a cut handshake message gives "
    "decode_error or a wait for the rest",
    params={"length": _P("int", "payload bytes to keep", required=True, minimum=0,
                         maximum=0xffff),
            "fix_length": _P("bool", "rewrite the header's length to the new size",
                             default=False)},
    content=True, explains=frozenset({20}), refine=_truncate_class,
    attributes=_truncate_explains, alters_bytes=True)
def truncate(e: Effect, p: Params) -> None:
    keep: int = p["length"]
    out = []
    for r in e.records:
        cut = r.payload[:keep]
        out.append(Record(r.content_type, r.version, cut,
                          None if p["fix_length"] else r.length))
    e.detail = {"before": [r.length for r in e.records], "after": keep,
                "length_field": "fixed" if p["fix_length"] else "unchanged"}
    e.facts["truncated"] = (keep, bool(p["fix_length"]))  # (payload kept, length fixed)
    if p["fix_length"]:
        cuts = [c for r in e.records if r.content_type == HANDSHAKE_CT
                and (c := _message_cut(r.payload, keep)) is not None]
        if cuts:
            e.facts["message_cut"] = cuts[0]
    e.records = out


def _message_cut(payload: bytes, keep: int) -> tuple[int, int, int] | None:
    """(type, declared length, body bytes kept) of the handshake message the cut at
    ``keep`` falls inside, if ``payload`` reads as whole handshake messages from its
    start: its receiver then waits for the rest of that message (a complete record,
    an incomplete message). None for a cut between messages, or for bytes that do not
    read as handshake messages (ciphertext, a message continued from the record
    before): diagnosis uses it only for a record sent in the clear or resealed."""
    pos = 0
    while pos + HEADER_LEN <= len(payload):
        msg_type = payload[pos]
        if msg_type not in names.HANDSHAKE_TYPES:
            return None
        length = int.from_bytes(payload[pos + 1:pos + HEADER_LEN], "big")
        end = pos + HEADER_LEN + length
        if end > len(payload):
            return None  # continued in the next record: not a message this one holds
        if pos < keep < end:
            return msg_type, length, max(0, keep - pos - HEADER_LEN)
        pos = end
    return None


@action(
    "fragment", "transcript-safe",
    "split the record's payload into records of at most size bytes",
    "legal for handshake records (RFC 5246 6.2.1, RFC 8446 5.1): a correct stack carries on; "
    "one that cannot reassemble fails with decode_error or unexpected_message; TLS 1.3 "
    "forbids fragmented alerts",
    params={"size": _P("int", "largest payload per record", required=True, minimum=1,
                       maximum=0xffff)},
    content=True, explains=frozenset({10}))
def fragment(e: Effect, p: Params) -> None:
    size: int = p["size"]
    out: list[Record] = []
    for r in e.records:
        if not r.payload:
            out.append(r)
        for i in range(0, len(r.payload), size):
            out.append(Record(r.content_type, r.version, r.payload[i : i + size]))
    e.detail = {"records_before": len(e.records), "records_after": len(out), "size": size}
    e.facts["records_after"] = len(out)
    e.records = out


@action(
    "split-writes", "transcript-safe", "deliver the record's bytes in small TCP writes",
    "none for a correct stack (TLS is a byte stream); a receiver that expects one record "
    "per read stalls or fails to parse",
    params={"size": _P("int", "bytes per TCP write", required=True, minimum=1, maximum=0xffff),
            "pause_ms": _P("int", "pause between writes in ms (0: no pause, each write "
                           "still its own TCP segment)", default=0, minimum=0,
                           maximum=600_000)})
def split_writes(e: Effect, p: Params) -> None:
    e.split = (p["size"], p["pause_ms"] / 1000.0)
    e.detail = {"write_size": p["size"], "pause_ms": p["pause_ms"]}


@action(
    "delay", "transcript-safe", "hold the record back; other connections are not slowed",
    "latency only, unless a peer's handshake or read timeout expires first (Go 'i/o "
    "timeout', curl 'Operation timed out')",
    params={"ms": _P("int", "delay in milliseconds", required=True, minimum=0,
                     maximum=600_000)})
def delay(e: Effect, p: Params) -> None:
    e.delay += p["ms"] / 1000.0
    e.detail = {"ms": p["ms"]}
    e.facts["delayed"] = p["ms"] / 1000.0  # seconds: a peer's timeout may expire first


@action(
    "corrupt", "transcript-breaking", "flip bits inside the record's payload",
    "inside an encrypted record: bad_record_mac (report 003's broken hardware crypto); "
    "inside a handshake message: decode_error or illegal_parameter, or " + _BREAKS,
    params={"offset": _P("int", "payload offset; negative counts from the end", required=True),
            "xor": _P("int", "the mask XORed into that byte", default=0xff, minimum=1,
                      maximum=255)},
    content=True, explains=frozenset({20}), alters_bytes=True)
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


@action(
    "close", "transcript-safe",
    "end the connection after the matched record (it is delivered; a drop on the same "
    "match before it ends the connection without it)",
    "fin: the peer sees an unexpected EOF (OpenSSL 'unexpected eof while reading', Go "
    "'EOF'); rst: 'connection reset by peer' (OpenSSL, curl, Python), Go 'unexpected EOF' "
    "or 'connection reset by peer' (as its reads fall), GnuTLS 'Error in the pull function'",
    params={"how": _P("choice", "FIN or RST", default="fin", choices=("fin", "rst")),
            "toward": _P("choice", "which side is closed", default="both",
                         choices=("client", "server", "both"))})
def close(e: Effect, p: Params) -> None:
    e.close = (p["how"], p["toward"])
    e.detail = {"how": p["how"], "toward": p["toward"]}
    e.facts["closed"] = e.close


def _inserted_class(p: Params) -> FaultClass:
    # A new handshake record enters the transcript (RFC 8446 4.4.1); others do not.
    return "transcript-breaking" if p["content_type"] == HANDSHAKE_CT else "transcript-safe"


@action(
    "insert-record", "transcript-safe", "deliver an extra record before or after this one",
    "an unknown or out-of-place content type: unexpected_message (RFC 8446 5, RFC 5246 6); "
    "an extra handshake record: unexpected_message, or " + _BREAKS + "; an empty "
    "application_data record after the handshake is legal and ignored",
    params={"content_type": _P("code", "content type name or number of the new record",
                               required=True, table="content_type"),
            "version": _P("code", "record version (default: the matched record's)",
                          table="version"),
            "hex": _P("hex", "the new record's payload as hex (at most one of hex or text; "
                      "default empty)"),
            "text": _P("text", "the payload as text, UTF-8 encoded (at most one of hex or "
                       "text)"),
            "position": _P("choice", "before or after the record", default="before",
                           choices=("before", "after"))},
    content=True, data="optional", explains=frozenset({10}), refine=_inserted_class)
def insert_record(e: Effect, p: Params) -> None:
    version = p.get("version") or (e.records[0].version if e.records else 0x0303)
    rec = Record(p["content_type"], version, p["data"])
    e.records = [rec, *e.records] if p["position"] == "before" else [*e.records, rec]
    e.detail = {"position": p["position"],
                "content_type": names.content_type_name(rec.content_type),
                "length": len(rec.payload)}
    e.facts["inserted"] = (rec.content_type, p["position"])
    e.facts["inserted_length"] = len(rec.payload)


# -- added as issue 15 asked: one declaration plus its function each -------------


def _coalesce_class(p: Params) -> FaultClass | None:
    # One TCP write of unchanged records changes no byte; records merged into one
    # change record framing only, which no transcript covers (RFC 8446 4.4.1 hashes
    # handshake messages, not records).
    return "transcript-safe"


@action(
    "coalesce", "transcript-safe",
    "deliver this record and the next ones from the same side together: merged into "
    "one record (into: record) or in one TCP write (into: write)",
    "into: write: none for a correct stack; a middlebox or a peer that expects one record "
    "per TCP segment stalls or fails to parse. into: record on plaintext handshake records: "
    "legal (RFC 8446 5.1, RFC 5246 6.2.1), a correct stack carries on; on encrypted records "
    "the merged record fails authentication (bad_record_mac)",
    params={"records": _P("int", "how many records, this one included", default=2,
                          minimum=2, maximum=64),
            "into": _P("choice", "record: one TLS record per run of the same content type; "
                       "write: the records unchanged, one TCP write", default="record",
                       choices=("record", "write")),
            "wait_ms": _P("int", "send what was gathered after this long even if fewer "
                          "records came (the sender may wait for its peer)", default=200,
                          minimum=0, maximum=600_000)},
    content=True, refine=_coalesce_class)
def coalesce(e: Effect, p: Params) -> None:
    e.gather = (p["records"], p["into"], p["wait_ms"] / 1000.0)
    e.detail = {"records": p["records"], "into": p["into"], "wait_ms": p["wait_ms"]}


def merge_records(data: bytes) -> bytes:
    """Consecutive records of one content type as one record (split again only above
    2^14 bytes, RFC 8446 5.1); bytes that are not whole records pass unchanged."""
    framer = RecordFramer()
    items = framer.feed(data)
    out: list[bytes] = []
    run: list[Record] = []

    def flush() -> None:
        if run:
            merged = Record(run[0].content_type, run[0].version,
                            b"".join(r.payload for r in run))
            out.extend(piece.raw for piece in split_record(merged, plaintext=True))
            run.clear()
    for item in items:
        if isinstance(item, Record) and (not run or run[0].content_type == item.content_type):
            run.append(item)
            continue
        flush()
        if isinstance(item, Record):
            run.append(item)
        else:
            out.append(item.raw)
    flush()
    return b"".join(out) + framer.held_bytes()


@hello_action(
    "set-cipher-suites",
    "set the ClientHello's cipher suite list to exactly these suites, in this order "
    "(only: offered keeps just those of them the client offered)",
    "no suite in common: handshake_failure (OpenSSL 'no shared cipher', Go 'tls: no cipher "
    "suite supported by both client and server'); a server that picks by the client's order "
    "now picks the first listed; " + _BREAKS,
    params={"suites": _P("codes", "cipher suite names or numbers, in the order to send",
                         required=True, table="cipher_suite"),
            "only": _P("choice", "all: send every listed suite; offered: keep only those the "
                       "client offered", default="all", choices=("all", "offered"))},
    client_hello_only=True)
def set_cipher_suites(h: ClientHello | ServerHello, p: Params) -> tuple[Any, Any, Any]:
    ch = _client_hello(h)
    suites = tuple(p["suites"])
    if p["only"] == "offered":
        offered = set(ch.cipher_suites)
        suites = tuple(s for s in suites if s in offered)
        if not suites:
            raise CannotApply("the client offered none of the listed cipher suites")
    return (replace(ch, cipher_suites=suites), len(ch.cipher_suites),
            [names.cipher_suite_name(s) for s in suites])


def _reorder(exts: tuple[Extension, ...], order: tuple[int, ...],
             keep_rest: bool) -> tuple[Extension, ...]:
    rank = {t: i for i, t in enumerate(order)}
    listed = sorted((x for x in exts if x.type in rank), key=lambda x: rank[x.type])
    rest = [x for x in exts if x.type not in rank] if keep_rest else []
    out = listed + rest
    # RFC 8446 4.2.11: pre_shared_key must be the last extension; it stays last
    # unless the list itself places it.
    psk = [x for x in out if x.type == PRE_SHARED_KEY]
    if psk and PRE_SHARED_KEY not in rank:
        out = [x for x in out if x.type != PRE_SHARED_KEY] + psk
    return tuple(out)


@hello_action(
    "set-extensions-order",
    "put the listed extensions first, in this order (rest: drop keeps only them); "
    "extensions not in the hello are ignored",
    "a correct stack accepts any order (RFC 8446 4.2), but a middlebox or server that expects "
    "a fixed order (or finds server_name or pre_shared_key elsewhere) fails with "
    "decode_error or illegal_parameter, or drops the connection; with rest: drop, see "
    "remove-extensions; " + _BREAKS,
    params={"extensions": _P("codes", "extension names or numbers, in the order to send",
                             required=True, table="extension"),
            "rest": _P("choice", "keep: the others follow in their order; drop: they are "
                       "removed", default="keep", choices=("keep", "drop"))})
def set_extensions_order(h: ClientHello | ServerHello, p: Params) -> tuple[Any, Any, Any]:
    if h.extensions is None:
        raise CannotApply("the hello has no extensions block")
    new = _reorder(h.extensions, tuple(p["extensions"]), p["rest"] == "keep")
    return (replace(h, extensions=new), [names.extension_name(x.type) for x in h.extensions],
            [names.extension_name(x.type) for x in new])


# -- the plaintext phase of STARTTLS protocols (issue 17) ------------------------
#
# Matched with ``match: {plaintext: {protocol, from, contains}}``: ``e.raw`` is the
# command or reply line, ``e.plain`` its description. Nothing here is in a TLS
# transcript: TLS has not started.

PLAIN_SYMPTOM_STRIP = (
    "a client that requires TLS (curl --ssl-reqd, openssl s_client -starttls) fails before "
    "any TLS byte: curl 'STARTTLS not supported.' / '(64) Requested SSL level failed', "
    "OpenSSL 'Didn't find STARTTLS in server response'; a client that does not require it "
    "goes on in plaintext, credentials and mail included")

# A refusal in each protocol's own words (RFC 3207 4: 454; RFC 4217 4: 534 or 431;
# RFC 2595 4: -ERR; RFC 9051 6.2.1: NO; RFC 6120 5.4.2.2: <failure/>; PostgreSQL 'N').
REFUSALS: dict[str, str] = {
    "smtp": "454 4.7.0 TLS not available due to temporary reason\r\n",
    "lmtp": "454 4.7.0 TLS not available due to temporary reason\r\n",
    "ftp": "534 Request denied for policy reasons.\r\n",
    "pop3": "-ERR TLS not available\r\n",
    "imap": "{tag} NO [UNAVAILABLE] STARTTLS not available\r\n",
    "xmpp": "<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:stream>",
    "postgres": "N",
}


@action(
    "replace-text", "transcript-safe",
    "replace text in the matched plaintext line (e.g. 250-STARTTLS to 250-XXXXXXXA, as "
    "Cisco ESMTP inspection did)",
    PLAIN_SYMPTOM_STRIP,
    params={"find": _P("text", "the text to find (case-sensitive)", required=True),
            "replace": _P("text", "what to put in its place (same length keeps every "
                          "length field right)", required=True)},
    plaintext=True)
def replace_text(e: Effect, p: Params) -> None:
    raw = e.raw or b""
    find, repl = bytes(p["find"]), bytes(p["replace"])
    if find not in raw:
        raise CannotApply(f"{find.decode('latin-1')!r} is not in the matched line")
    e.raw = raw.replace(find, repl)
    e.detail = {"before": find.decode("latin-1"), "after": repl.decode("latin-1")}


@action(
    "drop-line", "transcript-safe", "the matched plaintext line never arrives",
    "the receiver waits for it: a dropped STARTTLS capability line reads as 'not offered' "
    "(see replace-text); a dropped command leaves the client waiting for its reply",
    plaintext=True)
def drop_line(e: Effect, p: Params) -> None:
    e.detail = {"dropped": len(e.raw or b"")}
    e.raw = b""


@action(
    "reply-error", "transcript-safe",
    "drop the matched plaintext command and answer its sender with an error reply in its "
    "protocol (default: the protocol's own 'TLS not available'), as a proxy that refuses "
    "STARTTLS does",
    "the client reports STARTTLS refused: curl '(64) STARTTLS denied' / 'Requested SSL level "
    "failed'; OpenSSL 3.0's s_client -starttls ignores the refusal and sends its ClientHello "
    "anyway ('wrong version number' against the plaintext server); one that does not "
    "require TLS goes on in plaintext",
    params={"text": _P("text", "the reply to send instead (CRLF included)", default=b"")},
    plaintext=True)
def reply_error(e: Effect, p: Params) -> None:
    text = bytes(p["text"])
    line = e.plain
    if not text:
        protocol = getattr(line, "protocol", "")
        if protocol not in REFUSALS:
            raise CannotApply(f"no default error reply for {protocol or 'this protocol'}: "
                              "give text")
        tag = (e.raw or b"").split(b" ", 1)[0].decode("latin-1")
        text = REFUSALS[protocol].format(tag=tag).encode()
    e.to_sender += text
    e.detail = {"dropped": len(e.raw or b""), "answered_sender": text.decode("latin-1")}
    e.raw = b""
