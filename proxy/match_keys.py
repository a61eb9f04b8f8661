"""Match keys and their registry (DESIGN.md "One declaration per idea").

Every key a scenario's ``match:`` accepts is declared once here with
:func:`match_key`: its name, its documentation (``check --list`` and the
README read it), how its value is read from the YAML node (with the located
errors of :class:`proxy.scenario_yaml.NodeReader`), how ``check`` describes
it, and, for keys over a record's content, the test the fault planner runs.

Three kinds of key:

- ``plan`` keys (from, leg, index, content_type, type_index, handshake,
  encrypted, connection, times, probability) have a field of their own in
  :class:`proxy.scenario_build.Match`; the planner applies them itself.
- ``content`` keys look inside the record: its size and the ClientHello or
  ServerHello it completes (size, hello_size, has_extension,
  lacks_extension, offers_suite, offers_group, offers_version, alpn, sni,
  negotiated, after_bytes). They are kept in ``Match.content`` as
  ``(key, value)`` pairs and each is checked by its ``test`` against a
  :class:`proxy.engine.RecordView`. A fault with a hello key holds a hello
  split across records until it is whole, so the test sees all of it.
- ``timer`` keys (after_ms, idle_ms) are not about a record: the fault fires
  from the engine's timer (``Wakeup``), without a record, with an action
  that needs none (close, or an alert sent to the peers).

Values are normalized when read (names resolved to numbers, comparisons
parsed), so the tests never parse. Lists mean "all of these".
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from yaml.nodes import MappingNode, Node, SequenceNode

from tlsinspector.proxy import names
from tlsinspector.proxy.extensions import ALPN, SUPPORTED_GROUPS, read_supported_versions
from tlsinspector.proxy.hello import ClientHello, ServerHello
from tlsinspector.proxy.scenario_yaml import NodeReader
from tlsinspector.proxy.wire import DecodeError, Reader

if TYPE_CHECKING:
    from tlsinspector.proxy.engine import RecordView

KeyKind = Literal["plan", "content", "timer"]
Read = Callable[[NodeReader, Node, str], object]
Test = Callable[[object, "RecordView"], bool]
GREASE = -1  # stands for "any GREASE value" (RFC 8701) in code lists
KEY_SHARE = 51
SUPPORTED_VERSIONS = names.EXT_SUPPORTED_VERSIONS


@dataclass(frozen=True, slots=True)
class MatchKeySpec:
    """Everything known about one match key; built by :func:`match_key`."""

    name: str
    kind: KeyKind
    doc: str             # `check --list`: what the value is and what it selects
    read: Read           # YAML node -> normalized value (raises located errors)
    describe: Callable[[object], str]   # `check`: the value in words
    test: Test | None = None            # content keys: does the record match
    hello: bool = False                 # the test needs the whole hello
    field: str | None = None            # plan/timer keys: the Match attribute


_REGISTRY: dict[str, MatchKeySpec] = {}
MATCH_KEY_SPECS: Mapping[str, MatchKeySpec] = MappingProxyType(_REGISTRY)


def match_key(name: str, kind: KeyKind, doc: str, read: Read,
              describe: Callable[[object], str], *, hello: bool = False,
              field: str | None = None) -> Callable[[Test | None], Test | None]:
    """Declare ``name`` (with its test, for a content key, as the decorated function)."""
    def register(test: Test | None) -> Test | None:
        if name in _REGISTRY:
            raise ValueError(f"match key {name!r} declared twice")
        _REGISTRY[name] = MatchKeySpec(name, kind, doc, read, describe, test, hello,
                                       field or (None if kind == "content" else name))
        return test
    return register


# -- readers ------------------------------------------------------------------------

_CMP_RE = re.compile(r"\s*(>=|<=|>|<|==|=)?\s*(0[xX][0-9a-fA-F]+|[0-9]+)\s*"
                     r"(?:\.\.\s*(0[xX][0-9a-fA-F]+|[0-9]+)\s*)?")
SIZE_GRAMMAR = ('N (exactly), ">N", ">=N", "<N", "<=N" or "N..M" (inclusive); quote the '
                'comparisons in YAML')


@dataclass(frozen=True, slots=True)
class Between:
    """An inclusive range of sizes; a comparison is read as one (">1500": 1501..)."""

    lo: int
    hi: int | None

    def __contains__(self, n: object) -> bool:
        return isinstance(n, int) and n >= self.lo and (self.hi is None or n <= self.hi)

    def __str__(self) -> str:
        if self.hi is None:
            return f">= {self.lo}"
        return f"{self.lo}" if self.lo == self.hi else f"{self.lo}..{self.hi}"


def read_size(r: NodeReader, node: Node, field: str) -> Between:
    v = r.scalar(node, field)
    if isinstance(v, int) and not isinstance(v, bool):
        n = r.integer(node, field, lo=0)
        return Between(n, n)
    m = _CMP_RE.fullmatch(v) if isinstance(v, str) else None
    if m is None or (m.group(1) and m.group(3)):
        raise r.error(node, field, f"expected a size, got {r.describe(node, v)}",
                      (SIZE_GRAMMAR,))
    op, a = m.group(1) or "==", int(m.group(2), 0)
    if m.group(3) is not None:
        b = int(m.group(3), 0)
        if b < a:
            raise r.error(node, field, f"empty range {v!r}: {b} < {a}", (SIZE_GRAMMAR,))
        return Between(a, b)
    if op == "<" and a == 0:
        raise r.error(node, field, "never matches: no size is below 0", (SIZE_GRAMMAR,))
    return {">": Between(a + 1, None), ">=": Between(a, None), "<": Between(0, a - 1),
            "<=": Between(0, a), "==": Between(a, a), "=": Between(a, a)}[op]


def _codes_reader(kind: str) -> Read:
    """One code or a list of codes (names, numbers, or ``grease`` for any GREASE value)."""
    def read(r: NodeReader, node: Node, field: str) -> tuple[int, ...]:
        items = r.sequence(node, field, f"{kind} codes") if isinstance(node, SequenceNode) \
            else [node]
        if not items:
            raise r.error(node, field, f"the list of {kind} codes is empty")
        out = []
        for i, v in enumerate(items, 1):
            f = f"{field}[{i}]" if isinstance(node, SequenceNode) else field
            value = r.scalar(v, f)
            if isinstance(value, str) and value.strip().lower() == "grease":
                out.append(GREASE)
            else:
                out.append(r.code(v, f, kind))
        return tuple(out)
    return read


def _strings(r: NodeReader, node: Node, field: str) -> tuple[str, ...]:
    items = r.sequence(node, field, "protocol names") if isinstance(node, SequenceNode) \
        else [node]
    out = []
    for i, v in enumerate(items, 1):
        f = f"{field}[{i}]" if isinstance(node, SequenceNode) else field
        s = r.string(v, f, "an ALPN protocol name (h2, http/1.1, ...)")
        if not 1 <= len(s.encode("utf-8", "replace")) <= 255:
            raise r.error(v, f, "an ALPN protocol name is 1 to 255 bytes (RFC 7301 3.1)")
        out.append(s)
    if not out:
        raise r.error(node, field, "the list of protocol names is empty")
    return tuple(out)


def _negotiated(r: NodeReader, node: Node, field: str) -> tuple[int | None, int | None]:
    """``TLSv1.3`` (a version) or ``{version: .., suite: ..}`` (either or both)."""
    if not isinstance(node, MappingNode):
        return (r.code(node, field, "version"), None)
    items = r.mapping(node, field, "negotiated")
    r.check_keys(items, field, ("version", "suite"), "in negotiated")
    if not items:
        raise r.error(node, field, "give version, suite or both", ("version", "suite"))
    version = r.code(items["version"][1], f"{field}.version", "version") \
        if "version" in items else None
    suite = r.code(items["suite"][1], f"{field}.suite", "cipher_suite") \
        if "suite" in items else None
    return (version, suite)


def _sni(r: NodeReader, node: Node, field: str) -> str:
    sni = r.string(node, field, "a hostname glob")
    if not sni:
        raise r.error(node, field, "the SNI glob is empty")
    return sni


def _int_reader(lo: int, hi: int | None = None) -> Read:
    def read(r: NodeReader, node: Node, field: str) -> int:
        return r.integer(node, field, lo=lo, hi=hi)
    return read


def _side(r: NodeReader, node: Node, field: str) -> str:
    return r.choice(node, field, ("client", "server"), "side")


@dataclass(frozen=True, slots=True)
class PlainMatch:
    """Which plaintext lines (before STARTTLS, issue 17) a fault applies to."""

    protocol: str | None = None        # a name from proxy.plaintext.PROTOCOLS
    from_: str | None = None           # client | server
    contains: bytes | None = None      # in the raw line, compared case-insensitively


PLAINTEXT_KEYS = ("protocol", "from", "contains")


def _plain_match(r: NodeReader, node: Node, field: str) -> PlainMatch:
    from tlsinspector.proxy.plaintext import PROTOCOLS

    items = r.mapping(node, field, "plaintext")
    r.check_keys(items, field, PLAINTEXT_KEYS, "in plaintext")
    kw: dict[str, object] = {}
    for key, (_, v) in items.items():
        f = f"{field}.{key}"
        if key == "protocol":
            kw["protocol"] = r.choice(v, f, tuple(PROTOCOLS), "protocol")
        elif key == "from":
            kw["from_"] = _side(r, v, f)
        else:
            text = r.string(v, f, "text")
            if not text:
                raise r.error(v, f, "the text is empty")
            kw["contains"] = text.encode("utf-8").lower()
    return PlainMatch(**kw)  # type: ignore[arg-type]


def _plain_words(v: object) -> str:
    if not isinstance(v, PlainMatch):
        return str(v)
    parts = [f"protocol {v.protocol}" if v.protocol else "any protocol",
             f"from the {v.from_}" if v.from_ else "either side"]
    if v.contains is not None:
        parts.append(f"containing {v.contains.decode('utf-8', 'replace')!r}")
    return "plaintext lines: " + ", ".join(parts)


def _probability(r: NodeReader, node: Node, field: str) -> float:
    p = r.scalar(node, field)
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
        raise r.error(node, field, f"expected a probability, got {r.describe(node, p)}",
                      ("0..1",))
    return float(p)


def _code_reader(kind: str) -> Read:
    def read(r: NodeReader, node: Node, field: str) -> int:
        return r.code(node, field, kind)
    return read


def _boolean(r: NodeReader, node: Node, field: str) -> bool:
    return r.boolean(node, field)


# -- describers ---------------------------------------------------------------------

def _code_words(kind: str, code: int) -> str:
    if code == GREASE:
        return "a GREASE value"
    name = names.TABLE_NAMES[kind].get(code)
    number = f"0x{code:04x}" if kind != "handshake_type" else str(code)
    return f"{name} ({number})" if name else number


def _codes_words(kind: str) -> Callable[[object], str]:
    def words(v: object) -> str:
        assert isinstance(v, tuple)
        return " and ".join(_code_words(kind, c) for c in v)
    return words


def _plain(v: object) -> str:
    return str(v)


# -- what a record shows ------------------------------------------------------------

def _has(codes: tuple[int, ...], c: int) -> bool:
    return c in codes if c != GREASE else any(names.is_grease(x) for x in codes)


def extension_types(h: ClientHello | ServerHello) -> tuple[int, ...]:
    return tuple(x.type for x in h.extensions or ())


def _u16_list(data: bytes, length_size: int) -> tuple[int, ...]:
    try:
        r = Reader(data)
        out = r.u16_list(length_size, "list")
        return out if r.eof() else ()
    except DecodeError:
        return ()


def offered_groups(h: ClientHello | ServerHello) -> tuple[int, ...]:
    """supported_groups and the key_share groups (RFC 8446 4.2.7, 4.2.8); a
    ServerHello's key_share group."""
    out: list[int] = []
    sg = h.extension(SUPPORTED_GROUPS)
    if sg is not None and isinstance(h, ClientHello):
        out += _u16_list(sg.data, 2)
    ks = h.extension(KEY_SHARE)
    if ks is not None:
        try:
            r = Reader(ks.data)
            if isinstance(h, ServerHello):
                out.append(r.u16("group"))
            else:
                with r.block(2, "client_shares") as lst:
                    while not lst.eof():
                        out.append(lst.u16("group"))
                        lst.vector(2, "key_exchange")
        except DecodeError:
            pass
    return tuple(out)


def offered_versions(h: ClientHello | ServerHello) -> tuple[int, ...]:
    """supported_versions when present (RFC 8446 4.2.1), else legacy_version."""
    sv = h.extension(SUPPORTED_VERSIONS)
    if sv is not None:
        try:
            return read_supported_versions(
                sv.data, "client_hello" if isinstance(h, ClientHello) else "server_hello")
        except DecodeError:
            return ()
    return (h.legacy_version,)


def alpn_protocols(h: ClientHello | ServerHello) -> tuple[str, ...]:
    ext = h.extension(ALPN)
    if ext is None:
        return ()
    out = []
    try:
        r = Reader(ext.data)
        with r.block(2, "protocol_name_list") as lst:
            while not lst.eof():
                out.append(lst.vector(1, "protocol_name").decode("utf-8", "replace"))
    except DecodeError:
        return ()
    return tuple(out)


def _hello_codes(v: object, view: RecordView,
                 get: Callable[[ClientHello | ServerHello], tuple[int, ...]]) -> bool:
    if view.hello is None:
        return False
    have = get(view.hello)
    return isinstance(v, tuple) and all(_has(have, c) for c in v)


# -- the keys, in the order `check --list` shows them --------------------------------

match_key("from", "plan", "client | server: which side sent the record", _side, _plain,
          field="from_")(None)
match_key("leg", "plan",
          "client | server, only with --intercept: which TLS connection the record is on, "
          "client (client <-> inspector) or server (inspector <-> server); from then names "
          "the sender on that leg (the inspector is the server of the client leg and the "
          "client of the server leg). Without it a fault applies on both legs. The "
          "transparent path has one TLS connection, so run refuses leg there",
          _side, lambda v: f"on the {v} leg")(None)
match_key("index", "plan", "n-th record sent by that side on the connection, 1-based",
          _int_reader(1), _plain)(None)
match_key("content_type", "plan",
          "record content type: name (handshake, alert, ...) or number",
          _code_reader("content_type"), _plain)(None)
match_key("type_index", "plan",
          "n-th record of the content_type given beside it that side sent, 1-based (index "
          "counts every record): {from: server, content_type: application_data, type_index: "
          "3} is the server's third application_data record. Counted by the record header's "
          "type, as the log shows it (TLS 1.3 encrypts its handshake in application_data "
          "records, which count); needs content_type, not with encrypted: true",
          _int_reader(1), _plain)(None)
match_key("handshake", "plan",
          "a handshake message type starting in the record (client_hello, ...); under TLS "
          "1.3 certificate and the others it encrypts match only with encrypted: true and "
          "--keylog (check warns); finished always needs keys",
          _code_reader("handshake_type"), _plain)(None)
match_key("encrypted", "plan",
          "true: only encrypted records, matched and changed inside the encryption "
          "(content_type and handshake then name the decrypted content; needs --keylog); "
          "false: only records sent in the clear", _boolean, _plain)(None)
match_key("connection", "plan",
          "n-th connection of the run, 1-based, counted across every client of the run "
          "(reproduce runs its clients one after another)", _int_reader(1), _plain)(None)
match_key("times", "plan",
          "apply at most n times per connection (default unlimited; timer keys: 1)",
          _int_reader(1), _plain)(None)
match_key("probability", "plan",
          "0..1, drawn from a seeded generator so runs repeat (--seed)", _probability,
          _plain)(None)


@match_key("sni", "content", "glob on the ClientHello's server_name (a connection without "
           "SNI never matches; use lacks_extension: server_name for that)", _sni,
           lambda v: f"whose ClientHello SNI matches {v!r}")
def _test_sni(v: object, view: RecordView) -> bool:
    return view.sni is not None and isinstance(v, str) and fnmatch.fnmatch(view.sni, v)


@match_key("size", "content", "the record's length (its header's length field; a hello "
           f"held whole: the sum of its records): {SIZE_GRAMMAR}", read_size,
           lambda v: f"of size {v}")
def _test_size(v: object, view: RecordView) -> bool:
    return isinstance(v, Between) and len(view.record.payload) in v


@match_key("hello_size", "content", "the length of the ClientHello/ServerHello message "
           "completed in the record (its handshake header's length, as Wireshark shows): "
           + SIZE_GRAMMAR, read_size, lambda v: f"whose hello is {v} bytes long", hello=True)
def _test_hello_size(v: object, view: RecordView) -> bool:
    return (view.hello is not None and isinstance(v, Between)
            and len(view.hello.encode()) in v)


@match_key("has_extension", "content", "the hello carries these extensions (a name or "
           "number, grease for any GREASE value, or a list: all of them)",
           _codes_reader("extension"),
           lambda v: f"whose hello carries {_codes_words('extension')(v)}", hello=True)
def _test_has_extension(v: object, view: RecordView) -> bool:
    return _hello_codes(v, view, extension_types)


@match_key("lacks_extension", "content", "the hello carries none of these extensions "
           "(name, number, grease, or a list)", _codes_reader("extension"),
           lambda v: f"whose hello lacks {_codes_words('extension')(v)}", hello=True)
def _test_lacks_extension(v: object, view: RecordView) -> bool:
    if view.hello is None or not isinstance(v, tuple):
        return False
    have = extension_types(view.hello)
    return not any(_has(have, c) for c in v)


@match_key("offers_suite", "content", "the ClientHello offers these cipher suites "
           "(a ServerHello: selected it); name, number, grease, or a list: all of them",
           _codes_reader("cipher_suite"),
           lambda v: f"whose hello offers {_codes_words('cipher_suite')(v)}", hello=True)
def _test_offers_suite(v: object, view: RecordView) -> bool:
    return _hello_codes(v, view, lambda h: h.cipher_suites if isinstance(h, ClientHello)
                        else (h.cipher_suite,))


@match_key("offers_group", "content", "the hello offers these groups in supported_groups or "
           "key_share (X25519MLKEM768, x25519, grease, ...; a list: all of them)",
           _codes_reader("group"),
           lambda v: f"whose hello offers group {_codes_words('group')(v)}", hello=True)
def _test_offers_group(v: object, view: RecordView) -> bool:
    return _hello_codes(v, view, offered_groups)


@match_key("offers_version", "content", "the hello offers these versions (supported_versions, "
           "else legacy_version; a ServerHello: the one selected); a list: all of them",
           _codes_reader("version"),
           lambda v: f"whose hello offers {_codes_words('version')(v)}", hello=True)
def _test_offers_version(v: object, view: RecordView) -> bool:
    return _hello_codes(v, view, offered_versions)


@match_key("alpn", "content", "the hello's ALPN list holds these protocols (h2, http/1.1; a "
           "ServerHello: the one selected); a list: all of them", _strings,
           lambda v: f"whose hello's ALPN has {', '.join(v)}"  # type: ignore[arg-type]
           , hello=True)
def _test_alpn(v: object, view: RecordView) -> bool:
    if view.hello is None or not isinstance(v, tuple):
        return False
    have = alpn_protocols(view.hello)
    return all(p in have for p in v)


@match_key("negotiated", "content", "records after the ServerHello of a connection that "
           "negotiated this version (TLSv1.2) or {version: .., suite: ..}", _negotiated,
           lambda v: "after a ServerHello that chose " + " and ".join(
               _code_words(k, c) for k, c in zip(("version", "cipher_suite"),
                                                v, strict=True)  # type: ignore[call-overload]
               if c is not None))
def _test_negotiated(v: object, view: RecordView) -> bool:
    if view.negotiated is None or not isinstance(v, tuple):
        return False
    version, suite = v
    return ((version is None or version == view.negotiated[0])
            and (suite is None or suite == view.negotiated[1]))


@match_key("after_bytes", "content", "records once at least n bytes have passed on the "
           "connection, both ways, counting this record", _int_reader(1),
           lambda v: f"once {v} bytes have passed")
def _test_after_bytes(v: object, view: RecordView) -> bool:
    return isinstance(v, int) and view.bytes_total >= v


match_key("plaintext", "plan",
          "{protocol, from, contains}: a command or reply line of a STARTTLS protocol before "
          "TLS (smtp, imap, ...; contains: text in the line, any case); only with the "
          "plaintext actions (replace-text, drop-line, reply-error) and no record keys beside "
          "it", _plain_match, _plain_words, field="plaintext")(None)
match_key("after_ms", "timer", "fire n ms after the connection opened, on a timer and "
          "without a record (actions: close, or an alert to the peers)", _int_reader(1, 86_400_000),
          lambda v: f"{v} ms after connect")(None)
match_key("idle_ms", "timer", "fire once no byte has passed either way for n ms (a load "
          "balancer's idle timeout; actions: close with how: fin | rst, or an alert)",
          _int_reader(1, 86_400_000), lambda v: f"after {v} ms without a byte either way")(None)

MATCH_DOCS: Mapping[str, str] = MappingProxyType({k: s.doc for k, s in _REGISTRY.items()})
MATCH_KEYS = tuple(_REGISTRY)
TIMER_KEYS = tuple(k for k, s in _REGISTRY.items() if s.kind == "timer")
HELLO_KEYS = frozenset(k for k, s in _REGISTRY.items() if s.hello)
