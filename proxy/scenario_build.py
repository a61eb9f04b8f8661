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

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from yaml.nodes import Node

from tlsinspector.proxy.actions import ACTIONS, FaultClass, ParamSpec
from tlsinspector.proxy.match_keys import (
    HELLO_KEYS,
    MATCH_KEY_SPECS,
    MATCH_KEYS,
    TIMER_KEYS,
    PlainMatch,
)
from tlsinspector.proxy.scenario_yaml import (
    FrozenMap,
    NodeReader,
    did_you_mean,
    join_field,
    line_of,
)

Side = Literal["client", "server"]

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
TOP_KEYS = ("name", "description", "reproduces", "faults", "expect", "server", "client",
            "intercept")
# The built-in clients' options (reproduce, matrix): key -> what it means.
CLIENT_KEYS: Mapping[str, str] = {
    "sni": "server_name to send: a host name (null: none; default localhost)",
    "alpn": "ALPN protocols to offer, in order (h2, http/1.1)",
    "tls": "1.2 | 1.3 | any (default): the versions the client offers",
    "timeout": ("seconds for connect, handshake and reads (default: each client's own; "
                "openssl, gnutls and wolfssl have no such option: reproduce ends them "
                "after it)"),
    "wait_ms": "idle this long after the handshake before the request (a kept-alive "
               "connection, for idle_ms faults)",
    "resume": "true: a second connection resuming the first's session (go, gnutls, python)",
}
# Every match key with what it means, declared in proxy/match_keys.py (`check --list`
# and the README print them from there).
SIDES: tuple[Side, ...] = ("client", "server")
SERVER_KINDS = ("any", "tls12", "tls13", "ecdhe-only-tls12", "requires-sni",
                "openssl-renegotiation", "h2", "requires-client-cert", "default-cert")
#: ``intercept:`` (issue 21): run the inspector with --intercept; keys and meaning.
INTERCEPT_KEYS = {
    "policy": "interception policy: a shipped name (configs/policies/) or a file",
    "trust_ca": "whether the clients trust the interception CA (default true)",
    "client_tls": "the clients' TLS versions: any (default), 1.2 or 1.3 only",
    "client_alpn": "ALPN protocols the clients offer and report (default: none asked)",
}
CLIENT_TLS = ("any", "1.2", "1.3")
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
    # --intercept only (issue 21): the TLS connection the record is on; the
    # transparent path has one and refuses the key (proxy/scenario.leg_refusal).
    leg: Side | None = None
    index: int | None = None           # n-th record sent by that side, >= 1
    content_type: int | None = None
    # n-th record of ``content_type`` sent by that side, >= 1 (by the record header's
    # type; ``index`` counts records of every type)
    type_index: int | None = None
    handshake: int | None = None       # a handshake message type starting in the record
    # True: an encrypted record, matched on and changed in its decrypted content
    # (needs keys); False: a record sent in the clear; None: either. A ClientHello
    # is encrypted only in a TLS 1.2 renegotiation (RFC 5246 7.4.1.2, RFC 5746).
    encrypted: bool | None = None
    connection: int | None = None      # n-th connection of the run, >= 1
    times: int | None = None           # at most n times per connection; None = unlimited
    probability: float | None = None   # 0..1, drawn from the seeded generator
    # Keys over the record's content (proxy/match_keys.py), each checked by its
    # declared test: (key, normalized value) in the order written.
    content: tuple[tuple[str, object], ...] = ()
    after_ms: int | None = None        # timer: fire n ms after connect, without a record
    idle_ms: int | None = None         # timer: fire after n ms without a byte either way
    plaintext: PlainMatch | None = None  # a plaintext line, not a record (issue 17)

    @property
    def sni(self) -> str | None:
        """The SNI glob, if the match has one (the planner also uses it early)."""
        return next((v for k, v in self.content if k == "sni" and isinstance(v, str)), None)

    @property
    def timer(self) -> bool:
        """The fault fires from a timer, not on a record."""
        return self.after_ms is not None or self.idle_ms is not None

    @property
    def needs_hello(self) -> bool:
        """A key reads the hello: a hello split across records is held until whole."""
        return any(k in HELLO_KEYS for k, _ in self.content)


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
    client: Mapping[str, object] | None = None   # normalized CLIENT_KEYS values
    intercept: Intercept | None = None


@dataclass(frozen=True, slots=True)
class Intercept:
    """A scenario's ``intercept:`` section: the inspector terminates both legs."""

    policy: str | None = None
    trust_ca: bool = True
    client_tls: str = "any"
    client_alpn: tuple[str, ...] = ()


LEG_ONLY_INTERCEPT = (
    "leg works only with --intercept: the transparent path has one TLS connection end to "
    "end, so there is no client or server leg to choose; a scenario that names a leg is an "
    "interception scenario: give it an intercept: section (reproduce then runs it with "
    "--intercept; run needs --intercept), or drop leg: and use from:")


def intercept_refusal(fault: Fault) -> str | None:
    """Why the intercepting path (``--intercept``) cannot apply ``fault`` (None: it can).

    With ``--intercept`` the engines sit between each peer and mitmproxy's TLS
    layer of that leg (addons/intercept.py), on the raw records, from the first
    byte: every record action, timer and close works there, and faults inside
    encryption use the inspector's own keys of the leg (no ``--keylog``). The
    plaintext phase of STARTTLS protocols does not exist there: mitmproxy's TLS
    layers start TLS at once.
    """
    if fault.match.plaintext is not None or ACTIONS[fault.action].plaintext:
        return (f"{fault.action} works on a STARTTLS plaintext line; with --intercept TLS "
                "starts at the first byte on both legs, so there is none (use the "
                "transparent path)")
    return None


def leg_refusal(faults: Iterable[Fault], intercept: bool) -> str | None:
    """Why a run cannot apply these faults: ``leg`` without ``--intercept``, or a fault
    the intercepting path cannot do with it (None: all fine)."""
    for f in faults:
        why = (intercept_refusal(f) if intercept
               else LEG_ONLY_INTERCEPT if f.match.leg is not None else None)
        if why is not None:
            return f"fault #{f.number} of scenario {f.scenario} ({f.source}:{f.line}): {why}"
    return None


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


# Timer faults act without a record: these actions need none.
TIMER_ACTIONS = ("close", "insert-alert", "replace-with-alert")
# Keys that select a record: meaningless for a fault fired by a timer.
_RECORD_ONLY = ("index", "content_type", "type_index", "handshake", "encrypted")


def _match(r: NodeReader, node: Node, field: str) -> Match:
    items = r.mapping(node, field, "match")
    r.check_keys(items, field, MATCH_KEYS, "in match")
    kw: dict[str, object] = {}
    content: list[tuple[str, object]] = []
    for key, (_, v) in items.items():
        spec = MATCH_KEY_SPECS[key]
        value = spec.read(r, v, f"{field}.{key}")
        if spec.field is None:
            content.append((key, value))
        else:
            kw[spec.field] = value
    m = Match(**kw, content=tuple(content))  # type: ignore[arg-type]
    record_keys = [k for k in ("from", "leg", "index", "content_type", "type_index",
                               "handshake", "encrypted", "sni") if k in items]
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
    _check_type_index(r, items, field, m)
    _check_timer(r, items, field, m)
    return m


def _check_type_index(r: NodeReader, items: Mapping[str, tuple[Node, Node]], field: str,
                      m: Match) -> None:
    """type_index counts the records of one content type: it needs that type, as the
    record header names it (inside the encryption the type is another one)."""
    if m.type_index is None:
        return
    key = items["type_index"][0]
    if m.content_type is None:
        raise r.error(key, f"{field}.type_index", "type_index counts records of one content "
                      "type: give content_type beside it (e.g. content_type: "
                      "application_data, type_index: 3)")
    if m.encrypted:
        raise r.error(items["encrypted"][0], f"{field}.encrypted", "type_index counts "
                      "records by their header's content type, not the decrypted one: use "
                      "index with encrypted: true")


def _check_timer(r: NodeReader, items: Mapping[str, tuple[Node, Node]], field: str,
                 m: Match) -> None:
    """A timer key (after_ms, idle_ms) fires without a record: no record keys with it."""
    timers = sorted((k for k in TIMER_KEYS if k in items),
                    key=lambda k: int(items[k][0].start_mark.index))
    if len(timers) > 1:
        raise r.error(items[timers[1]][0], f"{field}.{timers[1]}", f"give one timer key, not "
                      f"{' and '.join(timers)}", TIMER_KEYS)
    if not timers:
        return
    record_keys = [k for k in items if k in _RECORD_ONLY or (
        MATCH_KEY_SPECS[k].kind == "content" and k != "sni")]
    if record_keys:
        k = record_keys[0]
        raise r.error(items[k][0], f"{field}.{k}", f"{timers[0]} fires on a timer, not on a "
                      f"record, so {k!r} cannot apply (use after_bytes or a record match for "
                      "a fault on a record)")


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
        text = r.string(node, field, "text", controls=True)  # sent as bytes
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
        # A misspelt 'action' (acton, actions) is the likely cause: name the key and its
        # line, not only the fault's first line.
        for k, (k_node, _) in items.items():
            if k != "match" and did_you_mean(k, ("action",)):
                raise r.error(k_node, join_field(field, k), f"unknown key {k!r}; a fault needs "
                              "'action'", hint="did you mean 'action'?")
        raise r.error(node, f"{field}.action", "missing key 'action'", tuple(ACTIONS))
    action = r.choice(items["action"][1], f"{field}.action", tuple(ACTIONS), "action")
    spec = ACTIONS[action]
    r.check_keys(items, field, ("match", "action", *spec.params), f"for action {action}")
    if "match" not in items:
        raise r.error(node, f"{field}.match", "missing key 'match' (write match: {} to match "
                      "every record)")
    match = _match(r, items["match"][1], f"{field}.match")
    if match.timer and action not in TIMER_ACTIONS:
        key = "after_ms" if match.after_ms is not None else "idle_ms"
        raise r.error(items["action"][1], f"{field}.action", f"{key} fires on a timer, "
                      f"without a record for {action} to work on", TIMER_ACTIONS)
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


# A client's name in ``expect:``: a built-in kind (go, curl, ...) or a --client-cmd
# NAME (lab/reproduce.py parses NAME=COMMAND with this grammar too).
CLIENT_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
# An ``expect:`` entry's keys with what they mean (validation and `check --list`).
EXPECT_KEYS: Mapping[str, str] = {
    "outcome": "ok | error (default error): how the client ended; ok is exit status 0 with "
               "an HTTP 200 answer (or the lab server's 'hello from') in its output, so a "
               "--client-cmd that only connects (openssl s_client) is error",
    "error": "text the client prints (a substring; 're:' then a Python regular expression)",
    "diagnosis": "finding codes the close event must list (all of them; codes below)",
}


def _expect(r: NodeReader, node: Node) -> FrozenMap[object]:
    """``expect:``: per client (a built-in kind or a --client-cmd name), ``outcome`` ok |
    error, ``error`` (text the client prints; ``re:`` for a regular expression) and
    ``diagnosis`` (finding codes). Checked like the rest, so a typo (``outcome:
    failed``, ``missing_sni``) is an error here, not a run that never reproduces."""
    out: dict[str, object] = {}
    for client, (key, value) in r.mapping(node, "expect", "expect").items():
        f = join_field("expect", client)
        if not CLIENT_NAME_RE.fullmatch(client):
            raise r.error(key, f, "a client name is a built-in client (go, openssl, curl, "
                          "...) or a --client-cmd NAME: a lowercase letter, then up to 31 "
                          "of a-z 0-9 _ -")
        entry = r.mapping(value, f, "an expectation")
        r.check_keys(entry, f, tuple(EXPECT_KEYS), "in an expectation")
        vals: dict[str, object] = {}
        if "outcome" in entry:
            vals["outcome"] = r.choice(entry["outcome"][1], f"{f}.outcome", ("ok", "error"),
                                       "outcome")
        if "error" in entry:
            vals["error"] = _error_text(r, entry["error"][1], f"{f}.error")
        if "diagnosis" in entry:
            vals["diagnosis"] = tuple(
                _finding_code(r, n, f"{f}.diagnosis[{i}]")
                for i, n in enumerate(r.sequence(entry["diagnosis"][1], f"{f}.diagnosis",
                                                 "diagnosis"), 1))
        out[client] = FrozenMap(vals)
    return FrozenMap(out)


def _error_text(r: NodeReader, node: Node, field: str) -> str:
    text = r.string(node, field, "the client's error text")
    if text.startswith("re:"):
        try:
            re.compile(text[3:])
        except re.error as e:
            raise r.error(node, field, f"not a regular expression after 're:': {e}") from None
    return text


@functools.cache
def _finding_codes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The rules' codes and every fallback alert code: diagnosis's own, declared once
    there (read once, on the first expect: diagnosis entry)."""
    from tlsinspector.proxy.diagnosis import RULE_SPECS, alert_finding_code

    return (tuple(sorted(s.code for s in RULE_SPECS if s.code != "alert-*")),
            tuple(alert_finding_code(n) for n in range(256)))


def _finding_code(r: NodeReader, node: Node, field: str) -> str:
    code = r.string(node, field, "a finding code")
    known, alerts = _finding_codes()
    if code in known or code in alerts:
        return code
    raise r.error(node, field, f"unknown finding code {code!r}", [*known, "alert-<name>"],
                  did_you_mean(code.replace("_", "-").lower(), [*known, *alerts]))


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


_HOSTNAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9_][A-Za-z0-9_-]{0,62}"
                       r"(\.[A-Za-z0-9_][A-Za-z0-9_-]{0,62})*")


def _client(r: NodeReader, node: Node) -> FrozenMap[object]:
    items = r.mapping(node, "client", "client")
    r.check_keys(items, "client", tuple(CLIENT_KEYS), "in client")
    out: dict[str, object] = {}
    for key, (_, v) in items.items():
        f = f"client.{key}"
        if key == "sni":
            value = r.scalar(v, f)
            out[key] = None if value is None else r.string(v, f, "a hostname (or null)")
            # It goes into every built-in client's command line (curl's --resolve and
            # URL, chromium's resolver rule): a host name, nothing a parser could split.
            if isinstance(out[key], str) and not _HOSTNAME.fullmatch(str(out[key])):
                raise r.error(v, f, f"not a host name: {out[key]!r}", (
                    "labels of letters, digits, '_' and '-' (not first), joined by '.', "
                    "at most 253 characters (localhost, api.example.com, 127.0.0.1)",
                    "null for no server_name"))
        elif key == "alpn":
            names_ = [r.string(x, f"{f}[{i}]", "a protocol name")
                      for i, x in enumerate(r.sequence(v, f, "protocols"), 1)]
            if not names_ or any(not 1 <= len(n) <= 255 or "," in n for n in names_):
                raise r.error(v, f, "a list of 1..255-byte protocol names without commas "
                              "(RFC 7301 3.1)")
            out[key] = tuple(names_)
        elif key == "tls":
            value = r.scalar(v, f)
            text = f"{value:.1f}" if isinstance(value, float) else str(value)
            out[key] = r.choice(v, f, ("1.2", "1.3", "any"), "tls") if not isinstance(
                value, float) else text
            if out[key] not in ("1.2", "1.3", "any"):
                raise r.error(v, f, f"unknown tls {text!r}", ("1.2", "1.3", "any"))
        elif key == "timeout":
            value = r.scalar(v, f)
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    0 < value <= 600):
                raise r.error(v, f, f"expected seconds, got {r.describe(v, value)}",
                              ("0 < seconds <= 600",))
            out[key] = float(value)
        elif key == "resume":
            out[key] = r.boolean(v, f)
        else:
            out[key] = r.integer(v, f, lo=0, hi=600_000)
    return FrozenMap(out)


def build(r: NodeReader, root: Node | None) -> tuple[Scenario, int]:
    if root is None:
        raise r.error(None, "", "empty file: a scenario needs at least 'name' and 'faults'")
    items = r.mapping(root, "", "a scenario file")
    r.check_keys(items, "", TOP_KEYS, "at the top level")
    for required in ("name",) if "intercept" in items else ("name", "faults"):
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
    expect = _expect(r, items["expect"][1]) if "expect" in items else None
    server = _server(r, items["server"][1]) if "server" in items else None
    intercept = _intercept(r, items["intercept"][1]) if "intercept" in items else None
    faults: tuple[Fault, ...] = ()
    fnodes: list[Node] = []
    if "faults" in items:
        fnode = items["faults"][1]
        fnodes = r.sequence(fnode, "faults", "faults")
        # faults: [] is a baseline: the same run with nothing changed (issue 15).
        faults = tuple(_fault(r, n, i, name) for i, n in enumerate(fnodes, 1))
    if intercept is not None:
        # An intercept scenario's faults act on the legs (issue 21 part 4): refuse
        # here what the intercepting path cannot do, at the fault's line.
        for f, n in zip(faults, fnodes, strict=True):
            why = intercept_refusal(f)
            if why is not None:
                raise r.error(n, f"faults[{f.number}]", why)
    else:
        for f, n in zip(faults, fnodes, strict=True):
            if f.match.leg is not None:
                items_ = r.mapping(n, f"faults[{f.number}]", "a fault")
                leg_node = r.mapping(items_["match"][1], "match", "match")["leg"][0]
                raise r.error(leg_node, f"faults[{f.number}].match.leg", LEG_ONLY_INTERCEPT)
    client = _client(r, items["client"][1]) if "client" in items else None
    return (Scenario(name, description, reproduces, faults, r.source, expect, server, client,
                     intercept), line_of(name_key))


def _intercept(r: NodeReader, node: Node) -> Intercept:
    items = r.mapping(node, "intercept", "intercept")
    r.check_keys(items, "intercept", tuple(INTERCEPT_KEYS), "in intercept")
    policy = r.string(items["policy"][1], "intercept.policy", "a policy name or file") \
        if "policy" in items else None
    trust = r.boolean(items["trust_ca"][1], "intercept.trust_ca") if "trust_ca" in items \
        else True
    tls = "any"
    if "client_tls" in items:
        v = r.scalar(items["client_tls"][1], "intercept.client_tls")
        tls = f"{v:.1f}" if isinstance(v, float) else str(v)
        if tls not in CLIENT_TLS:
            raise r.error(items["client_tls"][1], "intercept.client_tls",
                          f"unknown client TLS {tls!r}", CLIENT_TLS)
    alpn: tuple[str, ...] = ()
    if "client_alpn" in items:
        nodes = r.sequence(items["client_alpn"][1], "intercept.client_alpn", "client_alpn")
        alpn = tuple(r.string(n, f"intercept.client_alpn[{i}]", "an ALPN protocol name")
                     for i, n in enumerate(nodes, 1))
        if any(not a or not a.isprintable() or "," in a or " " in a for a in alpn):
            raise r.error(items["client_alpn"][1], "intercept.client_alpn",
                          "ALPN names are printable, without spaces or commas (h2, http/1.1)")
    return Intercept(policy, trust, tls, alpn)
