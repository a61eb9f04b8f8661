"""Scenario files: load, validate and explain fault scenarios (DESIGN.md "Scenario files").

A scenario is data: a name, what it reproduces and a list of faults, each a
:class:`Match` (which record) and an action with parameters. This module turns
a YAML file into frozen :class:`Scenario` objects whose parameters are already
normalized (IANA names resolved to numbers, hex decoded, defaults filled in), so
the fault engine never parses or guesses. It knows nothing of records or
sockets.

Every mistake in a file is one :class:`ScenarioError` naming the file, the line
of the offending YAML node, the dotted field (``faults[2].match.from``; list
positions are 1-based, like fault numbers) and the allowed values. To know
lines, the file is *composed* with ``yaml.SafeLoader`` into a node tree and the
values are built here from that tree; scalars are constructed by PyYAML's
``SafeConstructor``, so no tag can run code.

YAML 1.1 pitfalls are refused rather than silently misread: ``0303`` is octal
(195) and ``1:30`` is base 60 (90) to PyYAML, so such integers are errors that
say how to write the value; merge keys (``<<``) and duplicate keys are errors.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from tlsinspector.proxy import names

Side = Literal["client", "server"]
FaultClass = Literal["transcript-safe", "transcript-breaking", "needs-keys"]
ParamType = Literal["int", "bool", "choice", "code", "codes", "hex", "text"]

V = TypeVar("V")
_TAG = "tag:yaml.org,2002:"
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
TOP_KEYS = ("name", "description", "reproduces", "faults", "expect", "server")
MATCH_KEYS = ("from", "index", "content_type", "handshake", "connection", "sni", "times",
              "probability")
SIDES: tuple[Side, ...] = ("client", "server")
SERVER_KINDS = ("any", "tls12", "tls13", "ecdhe-only-tls12", "requires-sni")
_HOSTPORT_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})")
# Width of each IANA code space (the TLS wire field): 8 or 16 bits.
_BITS = {"version": 16, "cipher_suite": 16, "extension": 16, "group": 16,
         "signature_scheme": 16, "alert_description": 8, "alert_level": 8,
         "handshake_type": 8, "content_type": 8}
HANDSHAKE_CT = 22
APPLICATION_DATA_CT = 23
CLIENT_HELLO, SERVER_HELLO = 1, 2
# Handshake messages only ever sent encrypted (RFC 8446 4.4.4, 4.6.3, 4.5, 4.3.1;
# RFC 5246 7.4.9 Finished follows ChangeCipherSpec): the proxy cannot see their
# type without keys, so a match on them never fires today.
ALWAYS_ENCRYPTED = {20: "finished", 24: "key_update", 5: "end_of_early_data",
                    8: "encrypted_extensions"}


class FrozenMap(Mapping[str, V]):
    """A read-only, hashable mapping (faults and scenarios stay hashable)."""

    __slots__ = ("_data",)

    def __init__(self, items: Mapping[str, V] | Iterable[tuple[str, V]] = ()) -> None:
        self._data: dict[str, V] = dict(items)

    def __getitem__(self, key: str) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


@dataclass(frozen=True, slots=True)
class Match:
    """Which records a fault applies to; every given key must hold."""

    from_: Side | None = None          # YAML key "from"
    index: int | None = None           # n-th record sent by that side, >= 1
    content_type: int | None = None
    handshake: int | None = None       # a handshake message type starting in the record
    connection: int | None = None      # n-th connection of the run, >= 1
    sni: str | None = None             # fnmatch glob on the ClientHello's SNI
    times: int | None = None           # at most n times per connection; None = unlimited
    probability: float | None = None   # 0..1, drawn from the seeded generator


@dataclass(frozen=True, slots=True)
class Fault:
    scenario: str
    action: str
    params: Mapping[str, object]
    match: Match
    source: str
    line: int          # 1-based line of the fault's list item
    number: int        # 1-based position in the scenario's faults list


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    reproduces: str | None
    faults: tuple[Fault, ...]
    source: str
    expect: Mapping[str, object] | None
    server: str | None


class ScenarioError(Exception):
    """A scenario file that cannot be used, located to file, line and field."""

    def __init__(self, file: str, line: int | None, field: str, message: str,
                 allowed: Sequence[str] | None = None, hint: str | None = None) -> None:
        self.file = file
        self.line = line
        self.field = field
        self.message = message
        self.allowed: tuple[str, ...] | None = tuple(allowed) if allowed is not None else None
        self.hint = hint
        where = file if line is None else f"{file}:{line}"
        text = f"{where}: {field}: {message}" if field else f"{where}: {message}"
        if self.allowed:
            text += f"; allowed: {', '.join(self.allowed)}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)


# -- the action catalog ---------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class ActionSpec:
    name: str
    params: Mapping[str, ParamSpec]
    # The class when the match does not say which record is hit; fault_class()
    # refines it from the match (see there).
    fault_class: FaultClass
    symptom: str
    doc: str


_P = ParamSpec  # short name for the catalog below
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


def _action(name: str, cls: FaultClass, doc: str, symptom: str,
            **params: ParamSpec) -> tuple[str, ActionSpec]:
    return name, ActionSpec(name, FrozenMap(params), cls, symptom, doc)


ACTIONS: Mapping[str, ActionSpec] = FrozenMap([
    _action(
        "set-record-version", "transcript-safe", "rewrite the record header's version",
        "the receiver rejects the record: Go 'tls: received record with version 3030 when "
        "expecting version 303', OpenSSL 'wrong version number', alert protocol_version "
        "(a first ClientHello record may carry any 0x03XX and pass)",
        version=_VERSION),
    _action(
        "set-hello-version", "transcript-breaking",
        "rewrite the ClientHello/ServerHello legacy_version (by default also drop "
        "supported_versions)",
        "the peer negotiates another version or answers protocol_version ('unsupported "
        "protocol'); a TLS 1.3 client sees the downgrade sentinel and sends illegal_parameter; "
        + _BREAKS,
        version=_VERSION,
        keep_supported_versions=_P("bool", "keep the supported_versions extension",
                                   default=False)),
    _action(
        "add-cipher-suites", "transcript-breaking",
        "add cipher suites to the ClientHello (e.g. TLS_FALLBACK_SCSV)",
        "TLS_FALLBACK_SCSV below the server's best version: alert inappropriate_fallback; "
        "TLS_EMPTY_RENEGOTIATION_INFO_SCSV in a renegotiation ClientHello: handshake_failure; "
        + _BREAKS,
        suites=_P("codes", "cipher suite names or numbers", required=True,
                  table="cipher_suite"),
        position=_P("choice", "where to add them", default="end", choices=("start", "end"))),
    _action(
        "remove-cipher-suites", "transcript-breaking",
        "remove cipher suites from the ClientHello",
        "no suite left in common: handshake_failure (OpenSSL 'no shared cipher', Go 'tls: no "
        "cipher suite supported by both client and server'); " + _BREAKS,
        suites=_P("codes", "cipher suite names or numbers", required=True,
                  table="cipher_suite")),
    _action(
        "remove-extensions", "transcript-breaking", "remove extensions from the hello",
        "without server_name a server that requires SNI answers handshake_failure or "
        "unrecognized_name (wolfSSL -313); without supported_groups an ECDHE-only server "
        "answers handshake_failure; " + _BREAKS,
        extensions=_P("codes", "extension names or numbers", required=True,
                      table="extension")),
    _action(
        "add-extension", "transcript-breaking", "add an extension to the hello",
        "an unknown extension is ignored (RFC 8446 4.2) but changes the transcript; a duplicate "
        "or malformed one: decode_error / illegal_parameter; unsolicited in a ServerHello: "
        "unsupported_extension; " + _BREAKS,
        type=_P("code", "extension name or number", required=True, table="extension"),
        data=_P("hex", "extension body as hex (spaces and colons allowed)", default=b"")),
    _action(
        "set-supported-versions", "transcript-breaking",
        "set the hello's supported_versions extension (added if absent)",
        "no version in common: protocol_version ('unsupported protocol'); a ServerHello "
        "selecting a version the client did not offer: illegal_parameter; " + _BREAKS,
        versions=_P("codes", "version names or numbers", required=True, table="version")),
    _action(
        "replace-with-alert", "transcript-safe",
        "deliver this alert instead of the record (a fatal alert then closes)",
        "the receiver reports the alert as its peer's: " + _ALERT_SEEN,
        level=_LEVEL, description=_DESC),
    _action(
        "insert-alert", "transcript-safe", "deliver an alert before or after the record",
        "a fatal alert ends the handshake: " + _ALERT_SEEN + "; a warning is ignored in TLS 1.2 "
        "and is an error in TLS 1.3 unless close_notify or user_canceled",
        level=_LEVEL, description=_DESC,
        position=_P("choice", "before or after the record", default="before",
                    choices=("before", "after"))),
    _action(
        "reply-alert", "transcript-safe",
        "drop the record and answer its sender with the alert, as a rejecting middlebox does",
        "the sender reports the alert as its peer's: " + _ALERT_SEEN
        + "; the other side never sees the record and is closed",
        level=_LEVEL, description=_DESC),
    _action(
        "replace-with-raw", "transcript-safe",
        "send these bytes instead (e.g. a plain 'HTTP/1.1 400' reply), then close",
        "the receiver sees bytes that are not a TLS record: Go 'tls: first record does not "
        "look like a TLS handshake', OpenSSL 'wrong version number' or 'packet length too long'",
        hex=_P("hex", "the bytes as hex (exactly one of hex or text)"),
        text=_P("text", "the bytes as text, sent UTF-8 encoded (exactly one of hex or text)")),
    _action(
        "drop", "transcript-breaking", "the record never arrives",
        "the receiver waits for a record that never comes (a stall until its timeout) or, when "
        "later records arrive, answers unexpected_message; after a dropped encrypted record the "
        "next one fails with bad_record_mac (sequence numbers are implicit)"),
    _action(
        "truncate", "transcript-breaking",
        "cut the record's payload, fixing the length field or not",
        "length field unchanged: the header promises bytes that do not come, so the receiver "
        "stalls, then misreads the next record; fixed: a cut handshake message gives "
        "decode_error or a wait for the rest",
        length=_P("int", "payload bytes to keep", required=True, minimum=0, maximum=0xffff),
        fix_length=_P("bool", "rewrite the header's length to the new size", default=False)),
    _action(
        "fragment", "transcript-safe",
        "split the record's payload into records of at most size bytes",
        "legal for handshake records (RFC 5246 6.2.1, RFC 8446 5.1): a correct stack carries on; "
        "one that cannot reassemble fails with decode_error or unexpected_message; TLS 1.3 "
        "forbids fragmented alerts",
        size=_P("int", "largest payload per record", required=True, minimum=1, maximum=0xffff)),
    _action(
        "split-writes", "transcript-safe", "deliver the record's bytes in small TCP writes",
        "none for a correct stack (TLS is a byte stream); a receiver that expects one record "
        "per read stalls or fails to parse",
        size=_P("int", "bytes per TCP write", required=True, minimum=1, maximum=0xffff),
        pause_ms=_P("int", "pause between writes in ms", default=0, minimum=0,
                    maximum=600_000)),
    _action(
        "delay", "transcript-safe", "hold the record back; other connections are not slowed",
        "latency only, unless a peer's handshake or read timeout expires first (Go 'i/o "
        "timeout', curl 'Operation timed out')",
        ms=_P("int", "delay in milliseconds", required=True, minimum=0, maximum=600_000)),
    _action(
        "corrupt", "transcript-breaking", "flip bits inside the record's payload",
        "inside an encrypted record: bad_record_mac (report 003's broken hardware crypto); "
        "inside a handshake message: decode_error or illegal_parameter, or " + _BREAKS,
        offset=_P("int", "payload offset; negative counts from the end", required=True),
        xor=_P("int", "the mask XORed into that byte", default=0xff, minimum=1, maximum=255)),
    _action(
        "close", "transcript-safe", "end the connection at this point",
        "fin: the peer sees an unexpected EOF (OpenSSL 'unexpected eof while reading', Go "
        "'EOF'); rst: 'connection reset by peer'",
        how=_P("choice", "FIN or RST", default="fin", choices=("fin", "rst")),
        toward=_P("choice", "which side is closed", default="both",
                  choices=("client", "server", "both"))),
    # Not in DESIGN.md's table: added with proxy/actions.py's insert_record.
    _action(
        "insert-record", "transcript-safe", "deliver an extra record before or after this one",
        "an unknown or out-of-place content type: unexpected_message (RFC 8446 5, RFC 5246 6); "
        "an extra handshake record: unexpected_message, or " + _BREAKS + "; an empty "
        "application_data record after the handshake is legal and ignored",
        content_type=_P("code", "content type name or number of the new record",
                        required=True, table="content_type"),
        version=_P("code", "record version (default: the matched record's)", table="version"),
        hex=_P("hex", "the new record's payload as hex (at most one of hex or text; "
               "default empty)"),
        text=_P("text", "the payload as text, UTF-8 encoded (at most one of hex or text)"),
        position=_P("choice", "before or after the record", default="before",
                    choices=("before", "after"))),
])
# Actions whose bytes are given as hex or text; both become params["data"].
# True: exactly one is required; False: at most one (default empty).
BYTES_ACTIONS = {"replace-with-raw": True, "insert-record": False}
HELLO_ACTIONS = frozenset({"set-hello-version", "add-cipher-suites", "remove-cipher-suites",
                           "remove-extensions", "add-extension", "set-supported-versions"})
# Actions that change, remove or add records where the matched record was.
CONTENT_ACTIONS = frozenset({"replace-with-alert", "insert-alert", "reply-alert", "drop",
                             "truncate", "fragment", "corrupt", "insert-record"})


def fault_class(fault: Fault) -> FaultClass:
    """The class ``tlsinspector check`` reports, from the action, its params and the match.

    - Header, timing and close actions (set-record-version, split-writes, delay,
      close) and replace-with-raw: always transcript-safe.
    - Hello rewrites: always transcript-breaking.
    - Record-content actions (the alerts, drop, truncate, fragment, corrupt,
      insert-record): needs-keys when the match can only hit encrypted records
      (content_type application_data, or a handshake type that is always
      encrypted). Otherwise the catalog's class if the match may hit a plaintext
      handshake record (content_type handshake or not given: the first records
      of every connection are handshake records), and transcript-safe for other
      plaintext records (alert, change_cipher_spec, ...).
    - Two params matter: truncate without fix_length is transcript-safe (the
      receiver gets an unaltered prefix of the stream, then a header promising
      more: a stream cut short, not edited bytes); insert-record is
      transcript-breaking when the new record is a handshake record.
    """
    spec = ACTIONS[fault.action]
    if fault.action not in CONTENT_ACTIONS:
        return spec.fault_class
    m = fault.match
    if m.content_type == APPLICATION_DATA_CT or m.handshake in ALWAYS_ENCRYPTED:
        return "needs-keys"
    if fault.action == "insert-record":
        new_ct = fault.params["content_type"]
        return "transcript-breaking" if new_ct == HANDSHAKE_CT else "transcript-safe"
    if fault.action == "truncate" and not fault.params["fix_length"]:
        return "transcript-safe"
    return spec.fault_class if m.content_type in (None, HANDSHAKE_CT) else "transcript-safe"


# -- reading YAML nodes ---------------------------------------------------------


def _close(word: str, allowed: Iterable[str]) -> str | None:
    near = difflib.get_close_matches(word, list(allowed), n=3, cutoff=0.6)
    return f"did you mean {' or '.join(repr(n) for n in near)}?" if near else None


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


class _Reader:
    """Builds checked values from one document's node tree, raising located errors."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.constructor = SafeConstructor()
        self._plain: dict[int, object] = {}

    def error(self, node: Node | None, field: str, message: str,
              allowed: Sequence[str] | None = None, hint: str | None = None) -> ScenarioError:
        return ScenarioError(self.source, _line(node) if node is not None else None, field,
                             message, allowed, hint)

    def scalar(self, node: Node, field: str) -> object:
        if not isinstance(node, ScalarNode):
            return _Collection(node)
        # PyYAML's scalar constructors raise plain Python errors for explicit tags on
        # text they cannot read (!!int "", !!bool maybe, !!timestamp x).
        try:
            return self.constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, LookupError, AttributeError,
                OverflowError) as e:
            tag = node.tag.removeprefix(_TAG)
            raise self.error(node, field, f"cannot read {node.value!r} as {tag}: {e}") from e

    def describe(self, node: Node, value: object) -> str:
        if isinstance(node, MappingNode):
            return "a mapping"
        if isinstance(node, SequenceNode):
            return "a list"
        if value is None:
            return "no value"
        if isinstance(value, bool):
            return f"the boolean {node.value}"
        if isinstance(value, int | float):
            return f"the number {node.value}"
        if isinstance(value, str):
            return f"the string {value!r}"
        return f"a {type(value).__name__} ({node.value!r})"

    def mapping(self, node: Node, field: str, what: str) -> dict[str, tuple[Node, Node]]:
        if not isinstance(node, MappingNode):
            got = self.describe(node, self.scalar(node, field))
            raise self.error(node, field, f"{what} must be a mapping, got {got}")
        out: dict[str, tuple[Node, Node]] = {}
        for key, value in node.value:
            if key.tag == _TAG + "merge":
                raise self.error(key, field, "merge keys (<<) are not supported; repeat the "
                                 "keys or alias the whole mapping (match: *name)")
            k = self.scalar(key, field)
            if not isinstance(k, str):
                raise self.error(key, field, f"keys must be strings, got {self.describe(key, k)}")
            if k in out:
                raise self.error(key, _join(field, k), f"duplicate key {k!r} (first on line "
                                 f"{_line(out[k][0])})")
            out[k] = (key, value)
        return out

    def check_keys(self, items: Mapping[str, tuple[Node, Node]], field: str,
                   allowed: Sequence[str], what: str) -> None:
        for k, (key, _) in items.items():
            if k not in allowed:
                raise self.error(key, _join(field, k), f"unknown key {k!r} {what}", allowed,
                                 _close(k, allowed))

    def sequence(self, node: Node, field: str, what: str) -> list[Node]:
        if not isinstance(node, SequenceNode):
            got = self.describe(node, self.scalar(node, field))
            raise self.error(node, field, f"{what} must be a list, got {got}")
        return list(node.value)

    def string(self, node: Node, field: str, what: str = "a string") -> str:
        v = self.scalar(node, field)
        if not isinstance(v, str):
            raise self.error(node, field, f"expected {what}, got {self.describe(node, v)}")
        return v

    def integer(self, node: Node, field: str, lo: int | None = None,
                hi: int | None = None) -> int:
        v = self.scalar(node, field)
        span = _span(lo, hi)
        allowed = (span,) if span else None
        if not isinstance(v, int) or isinstance(v, bool):
            raise self.error(node, field, f"expected an integer, got {self.describe(node, v)}",
                             allowed)
        self._spelling(node, field)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise self.error(node, field, f"{v} is out of range", allowed)
        return v

    def _spelling(self, node: Node, field: str) -> None:
        """Refuse YAML 1.1 integer spellings nobody means in a TLS scenario."""
        raw = str(node.value).replace("_", "")
        if re.fullmatch(r"[-+]?0[0-9]+", raw):
            raise self.error(node, field, f"YAML reads {node.value} as an octal number "
                             f"({self.scalar(node, field)}); write 0x{raw.lstrip('+-0') or '0'} "
                             "for hex or drop the leading zero")
        if ":" in raw:
            raise self.error(node, field, f"YAML reads {node.value} as a base-60 number "
                             f"({self.scalar(node, field)}); quote it or write the number")

    def boolean(self, node: Node, field: str) -> bool:
        v = self.scalar(node, field)
        if not isinstance(v, bool):
            raise self.error(node, field, f"expected a boolean, got {self.describe(node, v)}",
                             ("true", "false"))
        return v

    def choice(self, node: Node, field: str, allowed: Sequence[str], what: str) -> str:
        v = self.scalar(node, field)
        if isinstance(v, str) and v in allowed:
            return v
        shown = repr(v) if isinstance(v, str) else self.describe(node, v)
        raise self.error(node, field, f"unknown {what} {shown}", allowed,
                         _close(v, allowed) if isinstance(v, str) else None)

    def code(self, node: Node, field: str, kind: str) -> int:
        v = self.scalar(node, field)
        bits = _BITS[kind]
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise self.error(node, field, f"expected a {kind} name or number from the IANA "
                             f"{kind} table, got {self.describe(node, v)}")
        if isinstance(v, int):
            self._spelling(node, field)
            if not 0 <= v < 1 << bits:
                raise self.error(node, field, f"{kind} {v!r} does not fit the {bits}-bit field",
                                 (f"0..0x{(1 << bits) - 1:x}",))
        try:
            code = names.code_of(kind, v)
        except ValueError as e:  # names.UnknownName lists the close matches
            raise self.error(node, field, str(e)) from e
        if not 0 <= code < 1 << bits:
            raise self.error(node, field, f"{kind} {v!r} does not fit the {bits}-bit field",
                             (f"0..0x{(1 << bits) - 1:x}",))
        return code

    def hexbytes(self, node: Node, field: str) -> bytes:
        v = self.scalar(node, field)
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise self.error(node, field, f"expected hex bytes, got {self.describe(node, v)}")
        # An unquoted 0010 or 1e10 is a YAML number; the text written is what is meant.
        text = v if isinstance(v, str) else str(node.value)
        digits = re.sub(r"[\s:]", "", text)
        digits = digits[2:] if digits[:2].lower() == "0x" else digits
        bad = re.search(r"[^0-9A-Fa-f]", digits)
        if bad:
            raise self.error(node, field, f"not hex: {bad.group()!r} in {text!r} (hex digits, "
                             "spaces and colons allowed)")
        if len(digits) % 2:
            raise self.error(node, field, f"odd number of hex digits ({len(digits)}) in {text!r}")
        return bytes.fromhex(digits)

    def plain(self, node: Node, field: str, active: frozenset[int] = frozenset()) -> object:
        """Any YAML value, frozen (mappings -> FrozenMap, lists -> tuple); aliases shared."""
        if id(node) in self._plain:
            return self._plain[id(node)]
        if id(node) in active:
            raise self.error(node, field, "recursive alias")
        active = active | {id(node)}
        out: object
        if isinstance(node, MappingNode):
            items = self.mapping(node, field, "a value")
            out = FrozenMap((k, self.plain(v, _join(field, k), active))
                            for k, (_, v) in items.items())
        elif isinstance(node, SequenceNode):
            out = tuple(self.plain(v, f"{field}[{i}]", active)
                        for i, v in enumerate(node.value, 1))
        else:
            out = self.scalar(node, field)
        self._plain[id(node)] = out
        return out


class _Collection:
    """Stands for a non-scalar node where a scalar was expected (never a valid value)."""

    __slots__ = ("node",)

    def __init__(self, node: Node) -> None:
        self.node = node


def _span(lo: int | None, hi: int | None) -> str | None:
    if lo is None and hi is None:
        return None
    if hi is None:
        return f">= {lo}"
    if lo is None:
        return f"<= {hi}"
    return f"{lo}..{hi}"


def _join(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key


# -- building a scenario --------------------------------------------------------


def _match(r: _Reader, node: Node, field: str) -> Match:
    items = r.mapping(node, field, "match")
    r.check_keys(items, field, MATCH_KEYS, "in match")
    kw: dict[str, object] = {}
    for key, (_, v) in items.items():
        f = f"{field}.{key}"
        if key == "from":
            kw["from_"] = r.choice(v, f, SIDES, "side")
        elif key in ("index", "connection", "times"):
            kw[key] = r.integer(v, f, lo=1)
        elif key == "content_type":
            kw[key] = r.code(v, f, "content_type")
        elif key == "handshake":
            kw[key] = r.code(v, f, "handshake_type")
        elif key == "sni":
            sni = r.string(v, f, "a hostname glob")
            if not sni:
                raise r.error(v, f, "the SNI glob is empty")
            kw[key] = sni
        else:
            p = r.scalar(v, f)
            if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
                raise r.error(v, f, f"expected a probability, got {r.describe(v, p)}",
                              ("0..1",))
            kw["probability"] = float(p)
    m = Match(**kw)  # type: ignore[arg-type]
    if (m.handshake is not None and m.content_type is not None
            and m.content_type != HANDSHAKE_CT):
        raise r.error(items["handshake"][0], f"{field}.handshake", "never matches: handshake "
                      "messages travel only in records of content_type handshake (22)")
    return m


def _param(r: _Reader, spec: ParamSpec, node: Node, field: str) -> object:
    if spec.type == "int":
        return r.integer(node, field, spec.minimum, spec.maximum)
    if spec.type == "bool":
        return r.boolean(node, field)
    if spec.type == "choice":
        return r.choice(node, field, spec.choices, "value")
    if spec.type == "hex":
        return r.hexbytes(node, field)
    if spec.type == "text":
        text = r.string(node, field, "text")
        if not text:
            raise r.error(node, field, "the text is empty")
        return text.encode("utf-8")
    assert spec.table is not None
    if spec.type == "code":
        return r.code(node, field, spec.table)
    items = r.sequence(node, field, spec.doc)
    if not items:
        raise r.error(node, field, f"the list of {spec.doc} is empty")
    return tuple(r.code(v, f"{field}[{i}]", spec.table) for i, v in enumerate(items, 1))


def _fault(r: _Reader, node: Node, number: int, scenario: str) -> Fault:
    field = f"faults[{number}]"
    items = r.mapping(node, field, "a fault")
    if "action" not in items:
        raise r.error(node, f"{field}.action", "missing key 'action'", tuple(ACTIONS))
    action = r.choice(items["action"][1], f"{field}.action", tuple(ACTIONS), "action")
    spec = ACTIONS[action]
    r.check_keys(items, field, ("match", "action", *spec.params), f"for action {action}")
    if "match" not in items:
        raise r.error(node, f"{field}.match", "missing key 'match' (write match: {} to match "
                      "every record)")
    match = _match(r, items["match"][1], f"{field}.match")
    params: dict[str, object] = {}
    for name, p in spec.params.items():
        if name in items:
            params[name] = _param(r, p, items[name][1], f"{field}.{name}")
        elif p.required:
            raise r.error(node, f"{field}.{name}", f"action {action} needs {name!r}: {p.doc}")
        elif p.default is not None:
            params[name] = p.default
    if action in BYTES_ACTIONS:
        given = [k for k in ("hex", "text") if k in params]
        if len(given) > 1 or (BYTES_ACTIONS[action] and not given):
            # Point at whichever of the two comes second in the file.
            at = max((items[k][0] for k in given), key=_line) if given else node
            need = "exactly" if BYTES_ACTIONS[action] else "at most"
            raise r.error(at, field, f"{action} needs {need} one of hex or text",
                          ("hex", "text"))
        data = params.pop(given[0]) if given else b""
        params = {k: v for k, v in params.items() if k not in ("hex", "text")}
        params["data"] = data
    _check_fits(r, items, field, action, match, params)
    return Fault(scenario, action, FrozenMap(params), match, r.source, _line(node), number)


def _check_fits(r: _Reader, items: Mapping[str, tuple[Node, Node]], field: str, action: str,
                m: Match, params: Mapping[str, object]) -> None:
    """Refuse a match that can never reach a record the action works on."""
    if action not in HELLO_ACTIONS:
        return
    at = items["match"][1]
    keys = r.mapping(at, f"{field}.match", "match")
    if m.content_type is not None and m.content_type != HANDSHAKE_CT:
        raise r.error(keys["content_type"][1], f"{field}.match.content_type", f"{action} "
                      "rewrites a hello, which travels only in records of content_type "
                      "handshake (22)")
    if m.handshake is not None and m.handshake not in (CLIENT_HELLO, SERVER_HELLO):
        raise r.error(keys["handshake"][1], f"{field}.match.handshake",
                      f"{action} rewrites a hello", ("client_hello", "server_hello"))
    if action in ("add-cipher-suites", "remove-cipher-suites") and (
            m.from_ == "server" or m.handshake == SERVER_HELLO):
        raise r.error(at, f"{field}.match", f"{action} edits the ClientHello's cipher suite "
                      "list; a server sends none", hint="use from: client")
    versions = params.get("versions")
    if (action == "set-supported-versions" and isinstance(versions, tuple) and len(versions) > 1
            and (m.from_ == "server" or m.handshake == SERVER_HELLO)):
        raise r.error(items["versions"][1], f"{field}.versions", "a ServerHello's "
                      "supported_versions holds exactly one version (RFC 8446 4.2.1)")


def _server(r: _Reader, node: Node) -> str:
    allowed = (*SERVER_KINDS, "HOST:PORT")
    v = r.scalar(node, "server")
    if isinstance(v, str):
        if v in SERVER_KINDS:
            return v
        hp = _HOSTPORT_RE.fullmatch(v)
        if hp and 1 <= int(hp.group(2)) <= 65535:
            return v
    shown = repr(v) if isinstance(v, str) else r.describe(node, v)
    raise r.error(node, "server", f"unknown server {shown}", allowed,
                  _close(v, SERVER_KINDS) if isinstance(v, str) else None)


def _build(r: _Reader, root: Node | None) -> tuple[Scenario, int]:
    if root is None:
        raise r.error(None, "", "empty file: a scenario needs at least 'name' and 'faults'")
    items = r.mapping(root, "", "a scenario file")
    r.check_keys(items, "", TOP_KEYS, "at the top level")
    for required in ("name", "faults"):
        if required not in items:
            raise r.error(root, required, f"missing key {required!r}")
    name_key, name_node = items["name"]
    name = r.string(name_node, "name", "a scenario name")
    if not NAME_RE.fullmatch(name):
        raise r.error(name_node, "name", f"bad scenario name {name!r}: lowercase letters, "
                      "digits, '.', '_' and '-', starting with a letter or digit")
    description = ""
    if "description" in items:
        description = r.string(items["description"][1], "description")
    reproduces = None
    if "reproduces" in items and r.scalar(items["reproduces"][1], "reproduces") is not None:
        reproduces = r.string(items["reproduces"][1], "reproduces")
    expect = None
    if "expect" in items:
        e = r.plain(items["expect"][1], "expect")
        if not isinstance(e, FrozenMap):
            raise r.error(items["expect"][1], "expect", "expect must be a mapping, got "
                          f"{r.describe(items['expect'][1], e)}")
        expect = e
    server = _server(r, items["server"][1]) if "server" in items else None
    fnode = items["faults"][1]
    fnodes = r.sequence(fnode, "faults", "faults")
    if not fnodes:
        raise r.error(fnode, "faults", "faults is empty: give at least one fault")
    faults = tuple(_fault(r, n, i, name) for i, n in enumerate(fnodes, 1))
    return (Scenario(name, description, reproduces, faults, r.source, expect, server),
            _line(name_key))


def _compose(text: str, source: str) -> Node | None:
    try:
        node: Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = " ".join(str(p) for p in (e.context, e.problem) if p)
        raise ScenarioError(source, mark.line + 1 if mark else None, "",
                            f"YAML syntax error: {what}") from e
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        raise ScenarioError(source, line, "", f"YAML cannot read the text: {e.reason} "
                            f"(character {e.character!r})") from e
    except yaml.YAMLError as e:
        raise ScenarioError(source, None, "", f"YAML error: {e}") from e
    except RecursionError as e:
        raise ScenarioError(source, None, "", "YAML nested too deeply") from e
    return node


def _load(text: str, source: str) -> tuple[Scenario, int]:
    r = _Reader(source)
    return _build(r, _compose(text, source))


def _read(path: str | Path) -> str:
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ScenarioError(source, None, "", f"cannot read the file: {e.strerror or e}") from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ScenarioError(source, line, "", f"not UTF-8 text (byte {e.start})") from e


def load_scenario_text(text: str, source: str = "<string>") -> Scenario:
    return _load(text, source)[0]


def load_scenario(path: str | Path) -> Scenario:
    return _load(_read(path), str(path))[0]


def load_scenarios(paths: Sequence[str | Path]) -> tuple[Scenario, ...]:
    """Load several files (--scenario repeated); their faults all apply."""
    seen: dict[str, Scenario] = {}
    for path in paths:
        s, line = _load(_read(path), str(path))
        if s.name in seen:
            raise ScenarioError(s.source, line, "name", f"scenario {s.name!r} is already "
                                f"defined in {seen[s.name].source}; names must be unique")
        seen[s.name] = s
    return tuple(seen.values())


# -- explaining -----------------------------------------------------------------

_TABLE_OF = {"version": "VERSIONS", "cipher_suite": "CIPHER_SUITES", "extension": "EXTENSIONS",
             "group": "GROUPS", "alert_description": "ALERT_DESCRIPTIONS",
             "alert_level": "ALERT_LEVELS", "handshake_type": "HANDSHAKE_TYPES",
             "content_type": "CONTENT_TYPES", "signature_scheme": "SIGNATURE_SCHEMES"}


def _named(kind: str, code: int) -> str:
    table: Mapping[int, str] = getattr(names, _TABLE_OF[kind])
    number = f"0x{code:04x}" if _BITS[kind] == 16 else str(code)
    name = table.get(code)
    return f"{name} ({number})" if name else number


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def describe_match(m: Match) -> str:
    who = f"the {m.from_}" if m.from_ else "either side"
    which = f"the {_ordinal(m.index)} record" if m.index else "every record"
    parts = [f"{which} {who} sends"]
    if m.content_type is not None:
        parts.append(f"of type {_named('content_type', m.content_type)}")
    if m.handshake is not None:
        parts.append(f"carrying a {_named('handshake_type', m.handshake)}")
    parts.append(f"on connection {m.connection} only" if m.connection else "on every connection")
    if m.sni is not None:
        parts.append(f"whose ClientHello SNI matches {m.sni!r}")
    if m.times is not None:
        parts.append(f"at most {m.times} time{'s' if m.times > 1 else ''} per connection")
    if m.probability is not None:
        parts.append(f"with probability {m.probability:g}")
    return ", ".join(parts)


def describe_params(fault: Fault) -> str:
    spec = ACTIONS[fault.action]
    out = []
    for key, value in fault.params.items():
        p = spec.params.get(key)
        if isinstance(value, bytes):
            shown = f"{len(value)} bytes" + (f" {value[:16].hex(' ')}" if value else "")
            shown += " ..." if len(value) > 16 else ""
        elif p is not None and p.table and isinstance(value, int):
            shown = _named(p.table, value)
        elif p is not None and p.table and isinstance(value, tuple):
            shown = "[" + ", ".join(_named(p.table, v) for v in value) + "]"
        elif isinstance(value, bool):
            shown = str(value).lower()
        else:
            shown = str(value)
        out.append(f"{key}={shown}")
    return ", ".join(out)


def explain(scenario: Scenario) -> list[str]:
    """Human lines for ``tlsinspector check``: each fault, where it is, what it does."""
    lines = [f"scenario {scenario.name} ({scenario.source}), {len(scenario.faults)} "
             f"fault{'s' if len(scenario.faults) > 1 else ''}"]
    if scenario.reproduces:
        lines.append(f"reproduces: {scenario.reproduces}")
    if scenario.server:
        lines.append(f"server: {scenario.server}")
    for f in scenario.faults:
        spec = ACTIONS[f.action]
        cls = fault_class(f)
        params = describe_params(f)
        lines.append(f"fault #{f.number} (line {f.line}): {f.action}"
                     + (f" {params}" if params else ""))
        lines.append(f"  matches {describe_match(f.match)}")
        lines.append(f"  does: {spec.doc}")
        lines.append(f"  class: {cls}")
        symptom = NEEDS_KEYS_SYMPTOM if cls == "needs-keys" else spec.symptom
        if f.action in ("replace-with-alert", "insert-alert", "reply-alert"):
            level, desc = f.params["level"], f.params["description"]
            assert isinstance(level, int) and isinstance(desc, int)
            alert = (f"alert {_named('alert_level', level)} "
                     f"{_named('alert_description', desc)}")
            # Stacks print the description's name in words: "decryption failed".
            words = names.ALERT_DESCRIPTIONS.get(desc, str(desc)).removesuffix("_RESERVED")
            symptom = f"{alert}: " + symptom.replace("<description>", words.replace("_", " "))
        lines.append(f"  predicted symptom: {symptom}")
        if f.match.handshake in ALWAYS_ENCRYPTED:
            lines.append(f"  warning: {ALWAYS_ENCRYPTED[f.match.handshake]} is always "
                         "encrypted; without keys the proxy cannot see it, so this never fires")
        elif (f.action in CONTENT_ACTIONS and f.match.content_type is None
              and f.match.handshake is None):
            lines.append("  note: needs-keys instead if it hits an encrypted record")
    return lines
