"""Building a :class:`Scenario` from a scenario file's node tree (DESIGN.md "Scenario files").

A scenario is data: a name, what it reproduces and a list of faults, each a
:class:`Match` (which record) and an action with parameters. The builder turns
the YAML node tree into frozen :class:`Scenario` objects whose parameters are
already normalized (IANA names resolved to numbers, hex decoded, defaults
filled in), so the fault engine never parses or guesses. What an action
accepts is read from its declaration in :data:`proxy.actions.ACTIONS`; nothing
here lists actions. It knows nothing of records or sockets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from yaml.nodes import Node

from tlsinspector.proxy.actions import ACTIONS, FaultClass, ParamSpec
from tlsinspector.proxy.scenario_yaml import (
    FrozenMap,
    NodeReader,
    did_you_mean,
    line_of,
)

Side = Literal["client", "server"]

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
TOP_KEYS = ("name", "description", "reproduces", "faults", "expect", "server")
# Every match key with what it means (`check --list` prints this table).
MATCH_DOCS: Mapping[str, str] = {
    "from": "client | server: which side sent the record",
    "index": "n-th record sent by that side on the connection, 1-based",
    "content_type": "record content type: name (handshake, alert, ...) or number",
    "handshake": "a handshake message type starting in the record (client_hello, ...)",
    "encrypted": "true: only encrypted records, matched and changed inside the encryption "
                 "(content_type and handshake then name the decrypted content; needs "
                 "--keylog); false: only records sent in the clear",
    "connection": "n-th connection of the run, 1-based (counted across every client)",
    "sni": "glob on the ClientHello's server_name",
    "times": "apply at most n times per connection (default unlimited)",
    "probability": "0..1, drawn from a seeded generator so runs repeat (--seed)",
    "plaintext": "{protocol, from, contains}: a command or reply line of a STARTTLS "
                 "protocol before TLS (smtp, imap, ...; contains: text in the line, any "
                 "case); only with the plaintext actions (replace-text, drop-line, "
                 "reply-error)",
}
PLAINTEXT_KEYS = ("protocol", "from", "contains")
MATCH_KEYS = tuple(MATCH_DOCS)
SIDES: tuple[Side, ...] = ("client", "server")
SERVER_KINDS = ("any", "tls12", "tls13", "ecdhe-only-tls12", "requires-sni",
                "openssl-renegotiation")
_HOSTPORT_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})")
HANDSHAKE_CT = 22
APPLICATION_DATA_CT = 23
CLIENT_HELLO, SERVER_HELLO, NEW_SESSION_TICKET = 1, 2, 4
# Handshake messages only ever sent encrypted (RFC 8446 4.4.4, 4.6.3, 4.5, 4.3.1;
# RFC 5246 7.4.9 Finished follows ChangeCipherSpec): the proxy cannot see their
# type without keys, so a match on them never fires today.
ALWAYS_ENCRYPTED = {20: "finished", 24: "key_update", 5: "end_of_early_data",
                    8: "encrypted_extensions"}


@dataclass(frozen=True, slots=True)
class Match:
    """Which records a fault applies to; every given key must hold."""

    from_: Side | None = None          # YAML key "from"
    index: int | None = None           # n-th record sent by that side, >= 1
    content_type: int | None = None
    handshake: int | None = None       # a handshake message type starting in the record
    # True: an encrypted record, matched on and changed in its decrypted content
    # (needs keys); False: a record sent in the clear; None: either. A ClientHello
    # is encrypted only in a TLS 1.2 renegotiation (RFC 5246 7.4.1.2, RFC 5746).
    encrypted: bool | None = None
    connection: int | None = None      # n-th connection of the run, >= 1
    sni: str | None = None             # fnmatch glob on the ClientHello's SNI
    times: int | None = None           # at most n times per connection; None = unlimited
    probability: float | None = None   # 0..1, drawn from the seeded generator
    plaintext: PlainMatch | None = None  # a plaintext line, not a record (issue 17)


@dataclass(frozen=True, slots=True)
class PlainMatch:
    """Which plaintext lines (before STARTTLS) a fault applies to."""

    protocol: str | None = None        # a name from proxy.plaintext.PROTOCOLS
    from_: Side | None = None
    contains: bytes | None = None      # in the raw line, compared case-insensitively


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


def inside(m: Match) -> bool:
    """Whether a match selects decrypted content: ``encrypted: true``, or a handshake
    message that is only ever sent encrypted (its type is invisible without keys)."""
    return m.encrypted is True or (m.encrypted is None and m.handshake in ALWAYS_ENCRYPTED)


def needs_keys(fault: Fault) -> bool:
    """Whether the fault can only work with the peers' key log (``run`` refuses it
    without ``--keylog``): it matches or changes the content of encrypted records."""
    return inside(fault.match)


def keys_refusal(faults: Iterable[Fault]) -> str | None:
    """Why a run without key logs cannot apply these faults (None: it can)."""
    keyed = [f for f in faults if needs_keys(f)]
    if not keyed:
        return None
    f = keyed[0]
    more = f" (and {len(keyed) - 1} more)" if len(keyed) > 1 else ""
    return (f"fault #{f.number} of scenario {f.scenario} ({f.source}:{f.line}, {f.action}) "
            f"works inside encrypted records and needs the peers' keys{more}: give "
            "--keylog FILE (the key log the client or server writes, e.g. SSLKEYLOGFILE)")


def plain_class(fault: Fault) -> FaultClass:
    """The class the fault's change has on the content it hits, encryption aside:
    for a fault inside encryption, whether re-sealing leaves the transcript intact."""
    spec = ACTIONS[fault.action]
    m = fault.match
    if not spec.content:
        return spec.fault_class
    if m.encrypted and m.handshake == NEW_SESSION_TICKET:
        # An encrypted NewSessionTicket is TLS 1.3's, sent after both Finished: it is in
        # no transcript (RFC 8446 4.6.1); TLS 1.2's is (RFC 5077 3.3) but travels in the
        # clear, before ChangeCipherSpec.
        return "transcript-safe"
    refined = spec.refine(fault.params) if spec.refine is not None else None
    if refined is not None:
        return refined
    return spec.fault_class if m.content_type in (None, HANDSHAKE_CT) else "transcript-safe"


def fault_class(fault: Fault) -> FaultClass:
    """The class ``tlsinspector check`` reports, from the action, its params and the match.

    - A match inside encryption (:func:`inside`: ``encrypted: true`` or an
      always-encrypted handshake type): needs-keys, for every action; the
      record is decrypted, changed and re-sealed (:func:`plain_class` says
      whether the change still breaks the transcript).
    - Actions not flagged ``content`` (record header, timing, close, hello
      rewrites, replace-with-raw): the declared class.
    - ``needs_keys`` actions: always needs-keys.
    - Record-content actions (the alerts, drop, truncate, fragment, corrupt,
      insert-record): needs-keys when the match can only hit encrypted records
      (content_type application_data); without ``encrypted: true`` such a
      fault changes the ciphertext and runs without keys (bad_record_mac is
      then its symptom). Then the action's ``refine`` from its params, if it says
      (truncate without fix_length is transcript-safe: the receiver gets an
      unaltered prefix of the stream; insert-record is transcript-breaking when
      the new record is a handshake record). Otherwise the declared class if the
      match may hit a plaintext handshake record (content_type handshake or not
      given: the first records of every connection are handshake records), and
      transcript-safe for other plaintext records (alert, change_cipher_spec, ...).
    """
    spec = ACTIONS[fault.action]
    if spec.needs_keys or inside(fault.match):
        return "needs-keys"
    if not spec.content:
        return spec.fault_class
    m = fault.match
    if m.content_type == APPLICATION_DATA_CT and m.encrypted is not False:
        return "needs-keys"
    return plain_class(fault)


def _match(r: NodeReader, node: Node, field: str) -> Match:
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
        elif key == "encrypted":
            kw[key] = r.boolean(v, f)
        elif key == "plaintext":
            kw[key] = _plain_match(r, v, f)
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
    record_keys = [k for k in ("from", "index", "content_type", "handshake", "encrypted", "sni")
                   if k in items]
    if m.plaintext is not None and record_keys:
        raise r.error(items[record_keys[0]][0], f"{field}.{record_keys[0]}", "a plaintext "
                      "match selects lines before TLS, not records: put from inside "
                      "plaintext, and no record keys beside it")
    if m.encrypted is False and m.handshake in ALWAYS_ENCRYPTED:
        raise r.error(items["encrypted"][0], f"{field}.encrypted", "never matches: "
                      f"{ALWAYS_ENCRYPTED[m.handshake]} is only ever sent encrypted")
    if (m.handshake is not None and m.content_type is not None
            and m.content_type != HANDSHAKE_CT):
        raise r.error(items["handshake"][0], f"{field}.handshake", "never matches: handshake "
                      "messages travel only in records of content_type handshake (22)")
    return m


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
            kw["from_"] = r.choice(v, f, SIDES, "side")
        else:
            text = r.string(v, f, "text")
            if not text:
                raise r.error(v, f, "the text is empty")
            kw["contains"] = text.encode("utf-8").lower()
    return PlainMatch(**kw)  # type: ignore[arg-type]


def _param(r: NodeReader, spec: ParamSpec, node: Node, field: str) -> object:
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


def _fault(r: NodeReader, node: Node, number: int, scenario: str) -> Fault:
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
    if spec.data is not None:
        params = _data_param(r, items, node, field, action, spec.data == "required", params)
    _check_fits(r, items, field, action, match, params)
    return Fault(scenario, action, FrozenMap(params), match, r.source, line_of(node), number)


def _data_param(r: NodeReader, items: Mapping[str, tuple[Node, Node]], node: Node, field: str,
                action: str, required: bool, params: dict[str, object]) -> dict[str, object]:
    """The bytes of an action that takes them as ``hex`` or ``text``, as ``data``."""
    given = [k for k in ("hex", "text") if k in params]
    if len(given) > 1 or (required and not given):
        # Point at whichever of the two comes second in the file.
        at = max((items[k][0] for k in given), key=line_of) if given else node
        need = "exactly" if required else "at most"
        raise r.error(at, field, f"{action} needs {need} one of hex or text", ("hex", "text"))
    data = params.pop(given[0]) if given else b""
    out = {k: v for k, v in params.items() if k not in ("hex", "text")}
    out["data"] = data
    return out


def _check_fits(r: NodeReader, items: Mapping[str, tuple[Node, Node]], field: str, action: str,
                m: Match, params: Mapping[str, object]) -> None:
    """Refuse a match that can never reach a record the action works on."""
    spec = ACTIONS[action]
    if spec.plaintext != (m.plaintext is not None):
        at = items["match"][1]
        if spec.plaintext:
            raise r.error(at, f"{field}.match", f"{action} works on a plaintext line before "
                          "TLS: the match needs plaintext: {protocol, from, contains}")
        raise r.error(at, f"{field}.match", f"{action} works on TLS records; a plaintext "
                      "match takes replace-text, drop-line or reply-error",
                      ("replace-text", "drop-line", "reply-error"))
    if not spec.rewrites_hello:
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
    if spec.client_hello_only and (m.from_ == "server" or m.handshake == SERVER_HELLO):
        raise r.error(at, f"{field}.match", f"{action} edits the ClientHello's cipher suite "
                      "list; a server sends none", hint="use from: client")
    problem = spec.fits(m.from_, m.handshake, params) if spec.fits is not None else None
    if problem is not None:
        key, message = problem
        raise r.error(items[key][1], f"{field}.{key}", message)


def _server(r: NodeReader, node: Node) -> str:
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
                  did_you_mean(v, SERVER_KINDS) if isinstance(v, str) else None)


def build(r: NodeReader, root: Node | None) -> tuple[Scenario, int]:
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
            line_of(name_key))
