"""Explaining scenarios and the action catalog in words (``tlsinspector check``).

Everything shown is read from the declarations: :data:`proxy.actions.ACTIONS`
for actions and :data:`proxy.scenario_build.MATCH_DOCS` for match keys, so the
explanation, ``check --list`` and the README's generated action table cannot
drift from what the builder accepts.
"""

from __future__ import annotations

from tlsinspector.proxy import names
from tlsinspector.proxy.actions import (
    ACTIONS,
    INSIDE_SYMPTOM,
    NEEDS_KEYS_SYMPTOM,
    TRANSCRIPT_NOT_REPAIRED,
    ActionSpec,
    ParamSpec,
)
from tlsinspector.proxy.match_keys import MATCH_KEY_SPECS
from tlsinspector.proxy.scenario_build import (
    ALWAYS_ENCRYPTED,
    CLIENT_KEYS,
    EXPECT_KEYS,
    SERVER_KINDS,
    Fault,
    Match,
    Scenario,
    fault_class,
    intercept_refusal,
    needs_keys,
    plain_class,
)
from tlsinspector.proxy.scenario_yaml import BITS, terminal_safe

# Sent in the clear in TLS 1.2 but encrypted in TLS 1.3 (RFC 8446 2, 4.3-4.4): a
# plaintext match on them never fires on a TLS 1.3 connection.
TLS13_ENCRYPTED = {11: "certificate", 13: "certificate_request", 15: "certificate_verify",
                   4: "new_session_ticket"}


def _named(kind: str, code: int) -> str:
    table = names.TABLE_NAMES[kind]
    number = names.hex4(code) if BITS[kind] == 16 else str(code)
    name = table.get(code)
    return f"{name} ({number})" if name else number


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _describe_plain(m: Match) -> str:
    pm = m.plaintext
    assert pm is not None
    who = f"the {pm.from_}" if pm.from_ else "either side"
    parts = [f"every plaintext line {who} sends before TLS"
             + (f" in {pm.protocol}" if pm.protocol else " (any STARTTLS protocol)")]
    if pm.contains is not None:
        parts.append(f"containing {pm.contains.decode('utf-8', 'replace')!r} (any case)")
    parts.append(f"on connection {m.connection} only" if m.connection else "on every connection")
    if m.times is not None:
        parts.append(f"at most {m.times} time{'s' if m.times > 1 else ''} per connection")
    if m.probability is not None:
        parts.append(f"with probability {m.probability:g}")
    return ", ".join(parts)


def describe_match(m: Match) -> str:
    if m.plaintext is not None:
        return _describe_plain(m)
    who = f"the {m.from_}" if m.from_ else "either side"
    which = f"the {_ordinal(m.index)} record" if m.index else "every record"
    if m.type_index is not None and m.content_type is not None:
        which = (f"the {_ordinal(m.type_index)} "
                 f"{_named('content_type', m.content_type)} record"
                 + (f" (and the {_ordinal(m.index)} record overall)" if m.index else ""))
    parts = [f"{which} {who} sends"]
    if m.leg is not None:
        parts.append(MATCH_KEY_SPECS["leg"].describe(m.leg))
    if m.content_type is not None and m.type_index is None:
        parts.append(f"of type {_named('content_type', m.content_type)}")
    if m.handshake is not None:
        parts.append(f"carrying a {_named('handshake_type', m.handshake)}")
    if m.encrypted is not None:
        parts.append("encrypted (matched and changed in its decrypted content)" if m.encrypted
                     else "sent in the clear")
    parts.append(f"on connection {m.connection} only" if m.connection else "on every connection")
    for key, value in m.content:
        parts.append(MATCH_KEY_SPECS[key].describe(value))
    if m.after_ms is not None:
        parts = [f"no record: a timer {MATCH_KEY_SPECS['after_ms'].describe(m.after_ms)}"]
    if m.idle_ms is not None:
        parts = [f"no record: a timer {MATCH_KEY_SPECS['idle_ms'].describe(m.idle_ms)}"]
    if m.timer:
        parts.append(f"acting as the {m.from_}" if m.from_ else "toward both peers")
        parts.append(f"on connection {m.connection} only" if m.connection
                     else "on every connection")
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
        if isinstance(value, bytes) and p is not None and p.type == "text":
            shown = repr(value.decode("utf-8", "replace")) if value else "(default)"
        elif isinstance(value, bytes):
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
    n = len(scenario.faults)
    lines = [f"scenario {scenario.name} ({terminal_safe(scenario.source)}), "
             + (f"{n} fault{'s' if n > 1 else ''}" if n else
                "no faults: a baseline run, nothing is changed")]
    if scenario.reproduces:
        lines.append(f"reproduces: {scenario.reproduces}")
    if scenario.server:
        lines.append(f"server: {scenario.server}")
    if scenario.client:
        lines.append("client: " + ", ".join(
            f"{k}={list(v) if isinstance(v, tuple) else 'none' if v is None else v}"
            for k, v in scenario.client.items()))
    if scenario.intercept is not None:
        i = scenario.intercept
        lines.append(f"intercept: the inspector terminates both legs (run --intercept), "
                     f"policy {i.policy or 'default (mitmproxy)'}; clients "
                     f"{'trust' if i.trust_ca else 'do not trust'} the interception CA"
                     + (f", TLS {i.client_tls} only" if i.client_tls != "any" else "")
                     + (f", offer ALPN {','.join(i.client_alpn)}" if i.client_alpn else ""))
        lines.append("  the policy: transcript-safe (the inspector is an endpoint of each "
                     "leg: its choices break no transcript)")
    keyed = [f"#{f.number}" for f in scenario.faults if needs_keys(f)]
    if keyed and scenario.intercept is not None:
        lines.append(f"needs keys: fault {', '.join(keyed)}: the inspector's own keys of the "
                     "leg (no --keylog)")
    elif keyed:
        lines.append(f"needs keys: fault {', '.join(keyed)} (run with --keylog FILE)")
    for f in scenario.faults:
        spec = ACTIONS[f.action]
        cls = fault_class(f)
        params = describe_params(f)
        lines.append(f"fault #{f.number} (line {f.line}): {f.action}"
                     + (f" {params}" if params else ""))
        lines.append(f"  matches {describe_match(f.match)}")
        lines.append(f"  does: {spec.doc}")
        ciphertext = cls == "needs-keys" and not needs_keys(f)
        lines.append(f"  class: {cls}" + (
            " (a change to an encrypted record; this one changes its ciphertext as it "
            "passes, so `run` needs no --keylog for it)" if ciphertext else ""))
        if scenario.intercept is not None:
            lines += _intercept_lines(f, cls)
        else:
            if needs_keys(f):
                lines.append("  needs keys: yes; run with --keylog FILE (the peers' key log); "
                             "without it `run` refuses this scenario")
            why = intercept_refusal(f)
            lines.append("  with --intercept: " + (f"not valid: {why}" if why else
                         "valid, on both legs (leg: in an intercept: scenario picks one)"))
        lines.append(f"  predicted symptom: {_symptom(f, cls)}")
        if f.match.handshake in TLS13_ENCRYPTED and f.match.encrypted is not True:
            lines.append(f"  warning: TLS 1.3 encrypts {TLS13_ENCRYPTED[f.match.handshake]} "
                         "(RFC 8446 2): this matches only in TLS 1.2 handshakes; add "
                         "`encrypted: true` (with --keylog) to match it under TLS 1.3")
        if f.match.handshake in ALWAYS_ENCRYPTED and scenario.intercept is None:
            lines.append(f"  warning: {ALWAYS_ENCRYPTED[f.match.handshake]} is always "
                         "encrypted; without keys the proxy cannot see it, so this fault "
                         "matches only inside the encryption")
        elif ciphertext:
            lines.append("  note: to change the decrypted content instead, add "
                         "`encrypted: true` to the match (then with --keylog)")
        elif (spec.content and f.match.content_type is None
              and f.match.handshake is None and f.match.encrypted is None):
            lines.append("  note: needs-keys instead if it hits an encrypted record")
    return lines


def _intercept_lines(f: Fault, cls: str) -> list[str]:
    """What the fault is with --intercept: on which leg, and what its class means there
    (the inspector is the TLS endpoint of each leg, addons/intercept.py)."""
    why = intercept_refusal(f)
    if why is not None:
        return [f"  intercept: not valid: {why}"]
    legs = f"the {f.match.leg} leg" if f.match.leg else "both legs (no leg: given)"
    out = [f"  intercept: valid, on {legs}"]
    if needs_keys(f):
        out.append("  needs keys: the inspector's own keys of the leg (it is an endpoint of "
                   "it): decrypted, changed and re-sealed without --keylog")
    if cls == "transcript-breaking":
        out.append("  note: breaks only that leg's transcript (its peer and the inspector "
                   "hash different bytes); the other leg's handshake is untouched")
    return out


def _symptom(f: Fault, cls: str) -> str:
    spec = ACTIONS[f.action]
    if needs_keys(f):
        symptom = INSIDE_SYMPTOM + spec.symptom
        if plain_class(f) == "transcript-breaking":
            symptom += TRANSCRIPT_NOT_REPAIRED
    else:
        symptom = NEEDS_KEYS_SYMPTOM if cls == "needs-keys" else spec.symptom
    version = f.params.get("version") if f.action == "set-record-version" else None
    if isinstance(version, int):
        # Go prints the version this fault writes, with %x: 0x0301 is "version 301".
        symptom = symptom.replace("with version 3030 when", f"with version {version:x} when")
    if spec.sends_alert is not None:
        level, desc = f.params["level"], f.params["description"]
        assert isinstance(level, int) and isinstance(desc, int)
        alert = (f"alert {_named('alert_level', level)} "
                 f"{_named('alert_description', desc)}")
        # Stacks print the description's name in words: "decryption failed".
        words = names.ALERT_DESCRIPTIONS.get(desc, str(desc)).removesuffix("_RESERVED")
        symptom = f"{alert}: " + symptom.replace("<description>", words.replace("_", " "))
    return symptom


# -- the catalog (check --list, README) -------------------------------------------


def _kind(p: ParamSpec) -> str:
    if p.type == "int":
        lo, hi = p.minimum, p.maximum
        return ("integer" + (f" {lo}..{hi}" if lo is not None and hi is not None else "")
                + (f" >= {lo}" if lo is not None and hi is None else ""))
    if p.type == "choice":
        return " | ".join(p.choices)
    if p.type == "code":
        return f"{p.table} name or number"
    if p.type == "codes":
        return f"list of {p.table} names or numbers"
    return {"bool": "true | false", "hex": "hex bytes", "text": "text"}[p.type]


def _default(p: ParamSpec) -> str:
    if p.required:
        return "required"
    value = p.default
    if value is None:
        return "optional"
    if isinstance(value, bytes):
        return "default empty" if not value else f"default {value.hex()}"
    if isinstance(value, bool):
        return f"default {str(value).lower()}"
    if p.table is not None and isinstance(value, int):
        return f"default {names.name_of(names.TABLE_NAMES[p.table], value, 2)}"
    return f"default {value}"


def _data_note(spec: ActionSpec) -> list[str]:
    if spec.data is None:
        return []
    return [f"    ({'exactly' if spec.data == 'required' else 'at most'} one of hex or text)"]


def catalog() -> list[str]:
    """``tlsinspector check --list``: every match key and every action with its
    parameters (type, allowed values, default), class and predicted symptom."""
    lines = ["match keys (all optional, all must hold; lists mean all of them; codes are "
             "IANA names or numbers):"]
    lines += [f"  {key:15} [{spec.kind}] {spec.doc}" for key, spec in MATCH_KEY_SPECS.items()]
    lines += ["", "client: (the built-in clients of reproduce and matrix):"]
    lines += [f"  {key:15} {doc}" for key, doc in CLIENT_KEYS.items()]
    lines += [f"server: {' | '.join(SERVER_KINDS)} | HOST:PORT", ""]
    lines += ["expect: (reproduce: one entry per client, a built-in kind or a --client-cmd "
              "name)"]
    lines += [f"  {key:15} {doc}" for key, doc in EXPECT_KEYS.items()]
    lines += ["  finding codes (the close event's diagnosis; RFC sections the findings rely on):"]
    lines += [f"    {code:40} {ref}" for code, ref in finding_codes()]
    lines += [""]
    lines += ["actions (names or numbers from the IANA tables are accepted for codes):"]
    for spec in ACTIONS.values():
        cls = spec.fault_class + ("; needs-keys on an encrypted record" if spec.content else "")
        # A plaintext action edits a STARTTLS line before TLS, never a record: the
        # loader refuses it with encrypted: true, so it is not offered here either.
        cls += ("; a plaintext line before TLS (match: plaintext:)" if spec.plaintext
                else "; inside encryption with encrypted: true (needs --keylog)")
        lines.append(f"  {spec.name}  [{cls}]")
        lines.append(f"    does: {spec.doc}")
        for name, p in spec.params.items():
            lines.append(f"    {name}: {_kind(p)}, {_default(p)}: {p.doc}")
        lines += _data_note(spec)
        lines.append(f"    predicted symptom: {spec.symptom}")
    return lines


def finding_codes() -> list[tuple[str, str]]:
    """Every diagnosis code with its reference, as ``expect:`` accepts them."""
    from tlsinspector.proxy.diagnosis import RULE_SPECS  # the rules, declared once there

    codes = sorted((s.code, s.reference) for s in RULE_SPECS if s.code != "alert-*")
    fallback = next(s.reference for s in RULE_SPECS if s.code == "alert-*")
    return codes + [("alert-<name>", f"any other fatal alert by name (alert-bad-record-mac; "
                                     f"unnamed: alert-255); {fallback}")]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def actions_markdown() -> str:
    """The README's action table, generated (a test keeps the README equal to it)."""
    rows = ["| action | parameters | class | what it does |", "|---|---|---|---|"]
    for spec in ACTIONS.values():
        params = "; ".join(f"`{n}` ({_kind(p)}, {_default(p)})" for n, p in spec.params.items())
        rows.append(f"| {spec.name} | {_cell(params) or '-'} | {spec.fault_class} "
                    f"| {_cell(spec.doc)} |")
    return "\n".join(rows) + "\n"


def match_keys_markdown() -> str:
    """The README's match key table, generated from proxy/match_keys.py."""
    rows = ["| key | kind | what it selects |", "|---|---|---|"]
    for key, spec in MATCH_KEY_SPECS.items():
        rows.append(f"| `{key}` | {spec.kind} | {_cell(spec.doc)} |")
    return "\n".join(rows) + "\n"
