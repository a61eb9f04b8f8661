"""Diagnosis at close: rules that name the likely cause of a failed connection.

Each rule is one small function over the connection's :class:`History`; it
returns a :class:`Finding` (or a list, or None) with a stable code, a one-line
summary a support engineer can act on and the evidence (side and record index).
Each rule is declared once with :func:`rule` above its function: its code, the
RFC section its findings rely on and the alert descriptions it explains, so
"which rule covers this alert" is data (other_fatal_alert names only what no
rule that fired explains). Adding a rule is that declaration plus its function;
findings come out in declaration order.

Rules judge what each receiver got, so they diagnose real failures and
injected ones alike. The engine records hellos as delivered (a rewritten hello
replaces the original) and alerts and anomalies as sent, so rules also read
``History.faults`` (typed :class:`FaultSeen` values: the fault's normalized
parameters and the facts its action reported, never the log's strings) for
what a fault put on the wire (an alert, a record version, raw bytes); which
action can provoke which alert is declared with the action (proxy/actions.py).
What a rule needs from History is listed in its docstring. Rules never raise.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tlsinspector.proxy import keyschedule, names
from tlsinspector.proxy.actions import ACTIONS
from tlsinspector.proxy.certificate import printable
from tlsinspector.proxy.extensions import ALPN, decode, host_name, read_supported_versions
from tlsinspector.proxy.hello import ClientHello, ServerHello
from tlsinspector.proxy.history import (
    MAX_ITEMS,
    EncryptedSeen,
    FaultSeen,
    HelloSeen,
    History,
    Side,
    other,
)
from tlsinspector.proxy.names import (
    BAD_CERTIFICATE,
    BAD_RECORD_MAC,
    CERTIFICATE_EXPIRED,
    CERTIFICATE_REQUIRED,
    CERTIFICATE_REVOKED,
    CERTIFICATE_UNKNOWN,
    CLOSE_NOTIFY,
    CT_ALERT,
    CT_APPLICATION_DATA,
    CT_CHANGE_CIPHER_SPEC,
    CT_HANDSHAKE,
    DECODE_ERROR,
    DECRYPT_ERROR,
    DECRYPTION_FAILED_RESERVED,
    DTLS_VERSIONS,
    EXT_ENCRYPT_THEN_MAC,
    EXT_PRE_SHARED_KEY,
    EXT_RENEGOTIATION_INFO,
    EXT_SERVER_NAME,
    EXT_SUPPORTED_GROUPS,
    EXT_SUPPORTED_VERSIONS,
    FATAL,
    HANDSHAKE_FAILURE,
    ILLEGAL_PARAMETER,
    INAPPROPRIATE_FALLBACK,
    INSUFFICIENT_SECURITY,
    INTERNAL_ERROR,
    MISSING_EXTENSION,
    NO_APPLICATION_PROTOCOL,
    PROTOCOL_VERSION,
    SSL3,
    TLS1_1,
    TLS1_3,
    TLS_EMPTY_RENEGOTIATION_INFO_SCSV,
    TLS_FALLBACK_SCSV,
    UNEXPECTED_MESSAGE,
    UNKNOWN_CA,
    UNRECOGNIZED_NAME,
    UNSUPPORTED_CERTIFICATE,
    UNSUPPORTED_EXTENSION,
    hex4,
)
from tlsinspector.proxy.protection import sealed_length
from tlsinspector.proxy.records import MAX_CIPHERTEXT
from tlsinspector.proxy.render import detail_text
from tlsinspector.proxy.wire import DecodeError

TLS13 = TLS1_3
SIGNALLING = frozenset({TLS_EMPTY_RENEGOTIATION_INFO_SCSV, TLS_FALLBACK_SCSV})
TLS13_SUITES = frozenset({0x1301, 0x1302, 0x1303, 0x1304, 0x1305, 0x00C6, 0x00C7})
# Alerts each rule accounts for when it fires (its declaration's ``explains``):
# other_fatal_alert then leaves them out rather than naming them a second time.
_RESERVED_ALERTS = frozenset({DECRYPTION_FAILED_RESERVED})
_GROUPS_ALERTS = frozenset({HANDSHAKE_FAILURE, INSUFFICIENT_SECURITY, MISSING_EXTENSION})
_SNI_ALERTS = frozenset({HANDSHAKE_FAILURE, MISSING_EXTENSION, UNRECOGNIZED_NAME})
_MAC_ALERTS = frozenset({BAD_RECORD_MAC})
_FALLBACK_ALERTS = frozenset({INAPPROPRIATE_FALLBACK})
_VERSION_ALERTS = frozenset({PROTOCOL_VERSION})
_UNEXPECTED_ALERTS = frozenset({UNEXPECTED_MESSAGE})
_CERT_REQUIRED_ALERTS = frozenset({CERTIFICATE_REQUIRED})
# protocol_version names the version itself (protocol-version says the client is too old).
# OpenSSL 3 answers a TLS 1.0/1.1 hello with internal_error ("no suitable signature
# algorithm": those versions sign with SHA-1, refused at its default security level).
_TOO_OLD_ALERTS = frozenset({HANDSHAKE_FAILURE, INSUFFICIENT_SECURITY, INTERNAL_ERROR})
_NO_SUITE_ALERTS = frozenset({HANDSHAKE_FAILURE, INSUFFICIENT_SECURITY})
_DOWNGRADE_ALERTS = frozenset({ILLEGAL_PARAMETER, INAPPROPRIATE_FALLBACK})
_FINISHED_ALERTS = frozenset({BAD_RECORD_MAC, DECRYPT_ERROR, HANDSHAKE_FAILURE})
_CERT_ALERTS = frozenset({BAD_CERTIFICATE, UNSUPPORTED_CERTIFICATE, CERTIFICATE_REVOKED,
                          CERTIFICATE_EXPIRED, CERTIFICATE_UNKNOWN, UNKNOWN_CA})
HTTP_STARTS = ("HTTP/1.", "HTTP/2", "GET ", "POST ", "HEAD ", "PUT ", "DELETE ", "OPTIONS ",
               "CONNECT ", "PATCH ", "TRACE ")


@dataclass(frozen=True, slots=True)
class Finding:
    code: str            # stable kebab-case id, e.g. "record-version-invalid"
    summary: str         # one line: what happened and the likely cause
    evidence: list[str]  # which records, from which side
    reference: str = ""  # RFC section(s); filled from the rule's declaration

    def to_json(self) -> dict[str, object]:
        return {"code": self.code, "summary": self.summary, "evidence": list(self.evidence),
                "reference": self.reference}


# -- the rule registry ---------------------------------------------------------------

RuleResult = Finding | None | list[Finding]
Rule = Callable[..., RuleResult]


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One diagnosis rule, declared once with :func:`rule` above its function."""

    code: str                  # the finding code ("alert-*": one per alert name)
    check: Rule                # History -> findings (a fallback rule also gets `covered`)
    reference: str             # the RFC section(s) its findings rely on
    explains: frozenset[int]   # alert descriptions its findings account for
    fallback: bool             # runs with the alerts the rules before it explained


RULE_SPECS: list[RuleSpec] = []


def rule(code: str, reference: str, explains: frozenset[int] = frozenset(),
         fallback: bool = False) -> Callable[[Rule], Rule]:
    """Declare a rule: its code, reference and the alerts it explains. Adding a rule
    is this declaration plus its function (findings come out in declaration order)."""
    def register(check: Rule) -> Rule:
        RULE_SPECS.append(RuleSpec(code, check, reference, explains, fallback))
        return check
    return register


# -- typed views of History ------------------------------------------------------


def _faults(h: History) -> list[FaultSeen]:
    """Applied faults (one that could not apply changed nothing). Rules read what a
    fault did from its typed ``facts`` (actions.Effect lists them), never from its
    action's name, so a new action that does the same is diagnosed the same."""
    return [f for f in h.faults if f.applied]


def _code(params: Mapping[str, Any], key: str) -> int | None:
    v = params.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


@dataclass(frozen=True, slots=True)
class _Alert:
    """An alert as its receiver got it: sent by the peer, or put there by a fault."""

    side: Side             # who sent it (for a fault: who the receiver believes sent it)
    index: int             # record index on that side; 0 when a fault added it
    level: int
    description: int
    version: int           # negotiated version when sent, else the record's version
    injected_by: str = ""
    after_peer_left: bool = False  # sent once the other side had closed (a reaction)

    @property
    def name(self) -> str:
        return names.alert_description_name(self.description)

    def text(self) -> str:
        where = f" record {self.index}" if self.index else ""
        by = f" (put there by {self.injected_by})" if self.injected_by else ""
        level = names.name_of(names.ALERT_LEVELS, self.level, 2)
        if self.name == str(self.description):  # no name: "alert 255 (255)" said nothing
            return (f"{self.side}{where}: {level} alert with the unassigned code "
                    f"{self.description}{by}")
        return f"{self.side}{where}: {level} alert {self.name} ({self.description}){by}"


#: Alerts that refuse what a ClientHello offers (RFC 8446 6.2, RFC 5246 7.2.2, RFC 6066 3,
#: RFC 7301 3.2, RFC 7507 3): handshake_failure, illegal_parameter, protocol_version,
#: insufficient_security, inappropriate_fallback, missing_extension, unrecognized_name,
#: no_application_protocol. Not decode_error or unexpected_message, which a server
#: also sends when the client leaves in the middle.
_HELLO_REFUSALS = frozenset({40, 47, 70, 71, 86, 109, 112, 120})


#: During one :func:`diagnose` call: each History's alerts, computed once (every
#: rule reads them, about fifteen times per diagnosis). None outside a call.
_ALERTS_MEMO: dict[int, list[_Alert]] | None = None


def _alerts(h: History) -> list[_Alert]:
    memo = _ALERTS_MEMO
    if memo is None:
        return _alerts_of(h)
    found = memo.get(id(h))
    if found is None:
        found = memo[id(h)] = _alerts_of(h)
    return list(found)


def _alerts_of(h: History) -> list[_Alert]:
    # A reaction to a silent departure only: when the side that left had sent an alert
    # itself, the other's alert answers that alert, whichever of its alert and its FIN
    # the other read first (a race the live proxy and a capture may see differently).
    silent = {s for s in ("client", "server") if not any(b.side == s for b in h.alerts)}
    # A server's refusal of the ClientHello itself (unrecognized_name for its SNI, ...)
    # answers the hello, also when the client had half-closed right after sending it.
    found = _server_hello(h)
    sh = None if found is None else found[0].index
    out = [_Alert(a.side, a.index, a.level, a.description,
                  a.negotiated_version or a.record_version, "",
                  a.after_peer_left and other(a.side) in silent and not (
                      a.side == "server" and a.description in _HELLO_REFUSALS
                      and (sh is None or a.index < sh)))
           for a in h.alerts]
    seen = {(a.side, a.index, a.description) for a in out}
    for f in _faults(h):
        spec = ACTIONS.get(f.action)
        level, code = _code(f.params, "level"), _code(f.params, "description")
        if spec is None or spec.sends_alert is None or level is None or code is None:
            continue
        # reply-alert answers the matched record's sender as if its peer had refused it.
        side, index = (other(f.side), 0) if spec.sends_alert == "sender" else (f.side, f.index)
        if (side, index, code) not in seen:
            out.append(_Alert(side, index, level, code, h.negotiated_version or 0, f.text()))
    return out


def _cause_alerts(h: History, late: bool = False) -> list[_Alert]:
    """Alerts that can be a cause: not those sent after the other side had closed
    without an alert, which answer that close (an unexpected end of the handshake,
    RFC 8446 6.1). ``late``: those instead."""
    return [a for a in _alerts(h) if a.after_peer_left == late]


def _client_hello(h: History) -> tuple[HelloSeen, ClientHello] | None:
    """The ClientHello the server judged: the last one of the initial handshake
    (the second one after a HelloRetryRequest), as delivered."""
    found = None
    for seen in h.client_hellos:
        if isinstance(seen.hello, ClientHello) and not seen.renegotiation:
            found = seen, seen.hello
    return found


def _server_hello(h: History) -> tuple[HelloSeen, ServerHello] | None:
    for seen in h.server_hellos:
        if isinstance(seen.hello, ServerHello) and not seen.hello.is_hrr:
            return seen, seen.hello
    return None


def _before_server_hello(h: History, a: _Alert) -> bool:
    """A server alert sent before its ServerHello (a rejection of the ClientHello)."""
    if a.side != "server":
        return False
    sh = _server_hello(h)
    # A fault's alert that replaced the ServerHello's own record arrived instead of it.
    return sh is None or a.index < sh[0].index or (a.index == sh[0].index and a.injected_by != "")


def _version(v: int) -> str:
    return f"{hex4(v)} ({names.version_name(v)})" if v in names.VERSIONS else hex4(v)


def _ascii(v: int) -> str | None:
    """The two bytes of a 16-bit field as text, when both are printable ASCII."""
    b = v.to_bytes(2, "big")
    return b.decode("ascii") if all(32 <= x < 127 for x in b) else None


def _offered_versions(ch: ClientHello) -> list[int]:
    """Versions a ClientHello offers: supported_versions (RFC 8446 4.2.1), GREASE
    left out, or else legacy_version (the highest, RFC 5246 E.1)."""
    ext = ch.extension(EXT_SUPPORTED_VERSIONS)
    if ext is None:
        return [ch.legacy_version]
    try:
        found = read_supported_versions(ext.data, "client_hello")
    except DecodeError:
        return [ch.legacy_version]  # a malformed list offers nothing a server can read
    return [v for v in found if not names.is_grease(v)] or [ch.legacy_version]


def _hello_text(seen: HelloSeen) -> str:
    h = seen.hello
    kind = "ClientHello" if isinstance(h, ClientHello) else "ServerHello"
    text = (f"{seen.side} record {seen.index}: {kind}, record version "
            f"{hex4(seen.record_version)}, legacy_version {hex4(h.legacy_version)}")
    if isinstance(h, ClientHello) and h.extension(EXT_SUPPORTED_VERSIONS) is not None:
        text += (", supported_versions ["
                 + ", ".join(_version(v) if v in names.TLS13_DRAFTS else hex4(v)
                             for v in _offered_versions(h)) + "]")
    elif isinstance(h, ServerHello) and h.selected_version != h.legacy_version:
        text += f", selected {_version(h.selected_version)}"
    return text


def _receiver_version(h: History, side: Side, index: int | None) -> int | None:
    """The version the receiver of ``side``'s record ``index`` had settled on, if any:
    a client knows it from an earlier ServerHello, a server once it read a ClientHello."""
    if side == "server":
        sh = _server_hello(h)
        if sh is None or (index is not None and sh[0].index >= index):
            return None
        return sh[1].selected_version
    ch = _client_hello(h)
    if ch is None or (index is not None and ch[0].index >= index):
        return None
    return h.negotiated_version


def _go_error(h: History, side: Side, index: int | None, version: int,
              tls_type: bool = True) -> str:
    """What a Go crypto/tls receiver reports for a record header with this version.

    Go's readRecordOrCCS (conn.go) checks the version only once it knows the
    negotiated one, and not under TLS 1.3, printing both with %x and sending
    protocol_version; before that it rejects a version >= 0x1000, or a content
    type other than handshake or alert, as "first record does not look like a
    TLS handshake". ``tls_type`` False: the content type is no TLS one at all.
    """
    known = _receiver_version(h, side, index)
    if known is None:
        first = version >= 0x1000 or not tls_type
        return "tls: first record does not look like a TLS handshake" if first else ""
    if known == TLS13:
        return ""
    return f"tls: received record with version {version:x} when expecting version {known:x}"


def _sni(ch: ClientHello) -> str | None:
    ext = ch.extension(EXT_SERVER_NAME)
    return None if ext is None else host_name(ext.data)


# -- the rules ---------------------------------------------------------------------


def _bad_record_versions(h: History) -> dict[tuple[Side, int], tuple[int, str]]:
    """(side, index) -> (version, note) of records received with a non-TLS version:
    record_version anomalies and set-record-version faults (DTLS versions left out)."""
    bad: dict[tuple[Side, int], tuple[int, str]] = {}
    for a in h.anomalies:
        value = a.value
        if (a.kind == "record_version" and isinstance(value, int) and a.index is not None
                and not isinstance(value, bool) and 0 <= value <= 0xFFFF):
            bad[(a.side, a.index)] = (value, "")
    for f in _faults(h):
        value = _code(f.facts, "record_version")
        if value is not None and 0 <= value <= 0xFFFF and not SSL3 <= value <= TLS13:
            bad[(f.side, f.index)] = (value, f" (set by fault {f.scenario})")
    return {k: v for k, v in bad.items() if v[0] not in DTLS_VERSIONS}


def _mismatched_record_versions(h: History) -> dict[tuple[Side, int], tuple[int, str]]:
    """(side, index) -> (version, note) of records after the ServerHello whose header
    carries a TLS version other than the connection's (RFC 5246 6.2.1, E.1; under TLS
    1.3 0x0303, RFC 8446 5.1): record_version_mismatch anomalies, and set-record-version
    faults that wrote one (not on a hello's record: a ClientHello's may carry any
    {03,XX}, E.1, and the ServerHello's own is read before the version is known)."""
    neg = h.negotiated_version
    if neg is None:
        return {}
    expected = names.record_version(neg)
    bad: dict[tuple[Side, int], tuple[int, str]] = {}
    for a in h.anomalies:
        if (a.kind == "record_version_mismatch" and isinstance(a.value, int)
                and not isinstance(a.value, bool) and a.index is not None):
            bad[(a.side, a.index)] = (a.value, "")
    sh = _server_hello(h)
    hellos = {(s.side, s.index) for s in (*h.client_hellos, *h.server_hellos)}
    for f in _faults(h):
        value = _code(f.facts, "record_version")
        if (value is None or not SSL3 <= value <= TLS13 or value == expected or sh is None
                or (f.side, f.index) in hellos
                or (f.side == "server" and f.index < sh[0].index)):
            continue
        bad[(f.side, f.index)] = (value, f" (set by fault {f.scenario})")
    return bad


# What the OS error of a failed connect says about the upstream (errno names, as
# Python's OSError prints them: "[Errno 111] Connection refused").
_CONNECT_ERRORS = (
    ("refused", "nothing listens at that address and port (the host answered the SYN "
                "with a RST): check the address (--upstream, or in regular, socks5 and "
                "transparent mode the one the client asked for) and that the server runs"),
    ("timed out", "no answer to the connection attempt: the host is down or a firewall "
                  "drops the SYN"),
    ("unreachable", "no route to that address from this host"),
    ("name", "the upstream's host name does not resolve"),
    ("open files", "this process ran out of file descriptors (raise ulimit -n)"),
)


@rule("upstream-unreachable", "RFC 9293 3.5, 3.5.2")
def upstream_unreachable(h: History) -> Finding | None:
    """Needs: upstream_error (address, OS error text) when the proxy could not open
    the upstream connection; the client's connection was then closed."""
    if h.upstream_error is None:
        return None
    address, error = h.upstream_error
    why = next((text for key, text in _CONNECT_ERRORS if key in error.lower()),
               "the connection could not be opened")
    return Finding(
        "upstream-unreachable",
        f"the proxy could not connect to the upstream {address} ({error}): {why}. "
        "The client's connection was closed without a byte from the server; the proxy "
        "keeps serving other connections",
        [f"proxy: connecting to {address} failed: {error}"])


@rule("record-version-invalid", "RFC 8446 5.1; RFC 5246 6.2.1")
def record_version_invalid(h: History) -> Finding | None:
    """Needs: Anomaly(kind="record_version", index, value=int version) for each record
    whose header version is outside 0x0300-0x0304; set-record-version faults."""
    bad = _bad_record_versions(h)
    if not bad:
        return None
    evidence = []
    for (side, index), (value, note) in sorted(bad.items()):
        text = _ascii(value)
        go = _go_error(h, side, index, value)
        evidence.append(f"{side} record {index}: version {hex4(value)}"
                        + (f" (ASCII {text!r})" if text else "") + note
                        + (f"; a Go peer reports '{go}'" if go else ""))
    printable = [t for (v, _) in bad.values() if (t := _ascii(v))]
    summary = "a record header carries a version that is no TLS version"
    # A receiver whose last record may be an encrypted alert (no keys to tell) may
    # have refused it: curl's "wrong version number" after the handshake. (Both sides
    # ending so is the orderly close_notify exchange, as in likely-encrypted-alert.)
    hidden = [f"{rec.side} record {rec.index}" for side in sorted({s for s, _ in bad})
              if (rec := _alert_shaped_last(h, other(side))) is not None
              and _alert_shaped_last(h, side) is None]
    if hidden and not any(a.level == FATAL for a in _alerts(h)):
        summary += ((f" ({printable[0]!r} as ASCII)" if printable else "")
                    + "; whether the receiver refused it is not visible: its last record "
                    f"({', '.join(hidden)}) has the size of an encrypted alert and was not "
                    "decrypted (--keylog with the peers' keys names it)")
    elif _established(h) and not any(a.level == FATAL for a in _alerts(h)):
        # The receiver went on: the record parsed (its length was right), only its
        # version field was odd, and nothing was rejected.
        summary += ((f" ({printable[0]!r} as ASCII)" if printable else "")
                    + ", yet the connection completed with no fatal alert: the receiver did "
                    "not check that record's version"
                    + (" (under TLS 1.3 it MUST ignore it for all purposes, RFC 8446 5.1)"
                       if h.negotiated_version == TLS13 else "")
                    + "; a stricter receiver would have rejected the record")
    elif printable:
        summary += (f": the bytes there are not a TLS record; {printable[0]!r} is ASCII text, "
                    "so the peer or a middlebox wrote non-TLS bytes into the stream, or the "
                    "stream is corrupted / out of sync")
    else:
        summary += (": the bytes there are not a TLS record; the stream is corrupted or out of "
                    "sync (a byte lost or added upstream)")
    summary += (". Go prints versions with %x: 'received record with version 3030 when "
                "expecting version 303' means 0x3030, ASCII \"00\", not decimal 3030")
    return Finding("record-version-invalid", summary, evidence)


def _http_start(p: str) -> bool:
    """HTTP, also from the 5-byte preview the engine keeps when previews are off."""
    return p.startswith(HTTP_STARTS) or (len(p) == 5 and any(x.startswith(p)
                                                             for x in HTTP_STARTS))


# How plaintext servers that speak first greet (the 5-byte preview kept without
# --log-preview is enough): what a TLS client finds on a STARTTLS or plaintext port.
_GREETINGS = (("220 ", "an SMTP or FTP greeting, 220"), ("220-", "an SMTP or FTP greeting, 220"),
              ("* OK", "an IMAP greeting, * OK"), ("+OK", "a POP3 greeting, +OK"))


@rule("non-tls-bytes", "RFC 8446 5.1")
def non_tls_bytes(h: History) -> Finding | None:
    """Needs: Anomaly(kind="non_tls", side, value=printable preview of the bytes);
    replace-with-raw faults (facts "raw"), unless their bytes start as a TLS record."""
    seen: list[tuple[Side, str, str]] = [
        (a.side, a.value if isinstance(a.value, str) else "", "")
        for a in h.anomalies if a.kind == "non_tls"]
    for f in _faults(h):
        if "raw" not in f.facts or _tls_header(f.facts["raw"]) is not None:
            continue  # bytes that frame as a TLS record are judged as one (record-overflow)
        data = f.facts["raw"]
        seen.append((f.side, data[:32].decode("latin-1") if isinstance(data, bytes) else "",
                     f" (replaced {f.side} record {f.index}: fault {f.scenario})"))
    if not seen:
        return None
    evidence = []
    for side, preview, note in seen:
        line = f"{side}: non-TLS bytes {preview[:40]!r}{note}"
        if len(preview) >= 3 and all(32 <= ord(c) < 127 and c != "." for c in preview[1:3]):
            # A receiver reads the first 5 bytes as a record header: bytes 2-3 as the version
            # (a "." in the preview stands for a non-printable byte: unknown).
            version = int.from_bytes(preview[1:3].encode("ascii"), "big")
            go = _go_error(h, side, None, version, tls_type=False)
            line += f"; a Go peer reports '{go}'" if go else ""
        evidence.append(line)
    http = [(side, p) for side, p, _ in seen if _http_start(p)]
    if any(side == "client" for side, _ in http):
        summary = ("plain HTTP on a TLS port: the client speaks HTTP without TLS (an http:// URL "
                   "or a plaintext client pointed at the TLS port)")
    elif http:
        summary = ("plain HTTP on a TLS port: the server answered in plaintext (an HTTP server "
                   "or proxy on this port, TLS terminated elsewhere, or a captive portal)")
        if any("plain HTTP request was sent to HTTPS" in p for _, p in http):
            summary += "; it says it received plain HTTP, so TLS was stripped before it"
    elif any(p.startswith("SSH-") for _, p, _ in seen):
        summary = "an SSH server answers on this port, not a TLS server"
    elif greeting := next((name for side, p, _ in seen if side == "server"
                           for start, name in _GREETINGS if p.startswith(start)), None):
        summary = (f"the server greeted in plaintext ({greeting}): a TLS client on a port "
                   "that expects plaintext first, STARTTLS or none (implicit TLS is 465, 993, "
                   "995, 990): point the client at the implicit-TLS port, or have it use "
                   "STARTTLS (RFC 8314 3; `--protocol` lets the inspector follow STARTTLS)")
    else:
        summary = ("bytes that are not TLS records where a record was expected: another "
                   "protocol on this port, or a middlebox that injected data")
    return Finding("non-tls-bytes", summary, evidence)


# What servers answer an SSLv2-format hello they do not take: OpenSSL 3 says
# internal_error, others handshake_failure, protocol_version or decode_error.
_SSLV2_ALERTS = frozenset({HANDSHAKE_FAILURE, DECODE_ERROR, PROTOCOL_VERSION, INTERNAL_ERROR})


@rule("sslv2-client-hello", "RFC 5246 E.2; RFC 6176 3; RFC 8446 D.5", explains=_SSLV2_ALERTS)
def sslv2_client_hello(h: History) -> Finding | None:
    """Needs: Anomaly(kind="sslv2_client_hello") for a first client record in the
    SSLv2-compatible format; the server's alerts, closed_by; whether a ServerHello came."""
    if not any(a.kind == "sslv2_client_hello" for a in h.anomalies):
        return None
    if _server_hello(h) is not None:
        return None  # the server took it (it may, for TLS 1.0-1.2: RFC 5246 E.2)
    alerts = _refusals(h, _SSLV2_ALERTS)
    if not alerts and h.closed_by != "server":
        return None  # no answer seen (a hex dump of the hello alone): nothing refused it
    return Finding(
        "sslv2-client-hello",
        "the client sent its ClientHello in the SSL 2.0-compatible format (a 2-byte record "
        "header, RFC 5246 E.2) and the server refused it"
        + (" with an alert" if alerts else " (closed without a ServerHello)")
        + ": SSL 2.0 is prohibited (RFC 6176) and TLS 1.3 servers never negotiate from such "
        "a hello (RFC 8446 D.5). Old stacks and TLS scanners (testssl.sh, sslscan, nmap "
        "ssl-enum-ciphers) send it to probe for SSL 2.0; otherwise update the client",
        ["client record 1: SSLv2-compatible ClientHello", *[a.text() for a in alerts]])


@rule("alert-decryption-failed-reserved", "RFC 5246 7.2.2; RFC 4346 7.2.2",
      explains=_RESERVED_ALERTS)
def reserved_alert(h: History) -> Finding | None:
    """Needs: AlertSeen with negotiated_version (or record_version before one was
    negotiated); alert faults."""
    alerts = [a for a in _cause_alerts(h)
              if a.description in _RESERVED_ALERTS and a.version >= TLS1_1]
    if not alerts:
        return None
    return Finding(
        "alert-decryption-failed-reserved",
        "alert decryption_failed_RESERVED (21) under TLS 1.1 or later, where it MUST NOT be "
        "sent (telling it apart from bad_record_mac helped CBC padding-oracle attacks): the "
        "sender could not decrypt or verify a record (padding or MAC), so treat it as "
        "bad_record_mac: corruption in transit, mismatched keys, or altered bytes",
        [f"{a.text()} under {names.version_name(a.version)}" for a in alerts])


@rule("renegotiation-scsv", "RFC 5746 3.5, 3.7, 4.4")
def renegotiation_scsv(h: History) -> list[Finding]:
    """Needs: HelloSeen(renegotiation=True) for a ClientHello after both Finished
    (only visible in plaintext, e.g. a renegotiation under SSLv3-era keys or with keys),
    the initial ServerHello (its renegotiation_info says whether renegotiation is secure)."""
    out = []
    sh = _server_hello(h)
    secure = sh is not None and sh[1].extension(EXT_RENEGOTIATION_INFO) is not None
    for seen in h.client_hellos:
        ch = seen.hello
        if not (seen.renegotiation and isinstance(ch, ClientHello)
                and TLS_EMPTY_RENEGOTIATION_INFO_SCSV in ch.cipher_suites):
            continue
        evidence = [f"client record {seen.index}: renegotiation ClientHello with "
                    f"TLS_EMPTY_RENEGOTIATION_INFO_SCSV, "
                    + ("with" if ch.extension(EXT_RENEGOTIATION_INFO) else "without")
                    + " renegotiation_info"]
        if seen.record_version != (h.negotiated_version or seen.record_version):
            evidence.append(f"client record {seen.index}: record version "
                            f"{_version(seen.record_version)} on a connection that negotiated "
                            f"{_version(h.negotiated_version or 0)} (some servers answer "
                            "protocol_version)")
        if sh is not None:
            evidence.append(f"server record {sh[0].index}: initial ServerHello "
                            + ("with renegotiation_info: secure renegotiation was negotiated"
                               if secure else "without renegotiation_info: legacy renegotiation"))
        out.append(Finding(
            "renegotiation-scsv",
            "the client renegotiates with a ClientHello carrying "
            "TLS_EMPTY_RENEGOTIATION_INFO_SCSV, which belongs in initial handshakes only: a "
            "renegotiating client must send renegotiation_info with its previous verify_data, "
            "and an RFC 5746 server MUST abort on the SCSV (the client builds its renegotiation "
            "hello like an initial one)",
            evidence))
    return out


@rule("renegotiation", "RFC 5746 3.5, 3.7, 4.4; RFC 5246 7.4.1.1")
def renegotiation(h: History) -> Finding | None:
    """Needs: Anomaly(kind="encrypted_renegotiation", side, index) for an encrypted
    handshake record after both Finished (TLS <= 1.2); closed_by; alerts."""
    enc = [a for a in h.anomalies if a.kind == "encrypted_renegotiation"]
    if not enc:
        return None
    starter = enc[0].side
    answered = any(a.side != starter for a in enc)
    fatal = [a for a in _alerts(h) if a.level == FATAL]
    refused = not answered and h.closed_by == other(starter)
    if not fatal and not refused:
        return None
    what = ("a renegotiating ClientHello" if starter == "client"
            else "a HelloRequest (the server asks the client to renegotiate)")
    evidence = [f"{a.side} record {a.index}: encrypted handshake record after the handshake"
                for a in enc]
    if not answered:
        evidence.append(f"no handshake record from the {other(starter)} followed")
    evidence += [a.text() for a in fatal]
    if h.closed_by:
        evidence.append(f"closed by {h.closed_by}")
    sh = _server_hello(h)
    if sh is not None:
        evidence.append(f"server record {sh[0].index}: initial ServerHello "
                        + ("with" if sh[1].extension(EXT_RENEGOTIATION_INFO) else "without")
                        + " renegotiation_info")
    return Finding(
        "renegotiation",
        f"after the handshake the {starter} started a renegotiation ({what}, encrypted) and the "
        f"connection then ended: the {other(starter)} refuses renegotiation or rejected the "
        "new hello (e.g. one carrying TLS_EMPTY_RENEGOTIATION_INFO_SCSV or lacking "
        "renegotiation_info); check both sides' renegotiation support",
        evidence)


# -- causes that outrank the alerts they provoke (issue 15) -------------------------

# RFC 8446 4.1.3: a TLS 1.3 server that negotiates TLS 1.2 ends its ServerHello random
# with the first value, one that negotiates TLS 1.1 or below with the second.
DOWNGRADE_SENTINELS = {b"DOWNGRD\x01": "TLS 1.2", b"DOWNGRD\x00": "TLS 1.1 or below"}
# With no fault to blame, a timeout is named only after a silence this long (seconds).
SILENCE = 1.0
# A side that closed less than this after the last bytes toward it did not wait for
# bytes a fault withheld: its close is not a timeout.
WAITED = 0.25


def _too_old(ch: ClientHello) -> bool:
    """The hello offers nothing above TLS 1.1: SSL 3.0 is prohibited (RFC 7568 3),
    TLS 1.0 and 1.1 are deprecated (RFC 8996 2-5) and current servers refuse both."""
    return max(_offered_versions(ch)) <= TLS1_1


def _refusals(h: History, codes: frozenset[int]) -> list[_Alert]:
    """Fatal server alerts that refused the ClientHello (before any ServerHello)."""
    return [a for a in _alerts(h) if a.level == FATAL and a.description in codes
            and _before_server_hello(h, a)]


def _hello_faults(h: History, side: Side = "client") -> list[FaultSeen]:
    """Applied faults that rewrote a hello of ``side`` (their facts list the edit)."""
    return [f for f in _faults(h) if f.side == side and "extensions_removed" in f.facts]


def _suite_list(suites: tuple[int, ...] | list[int]) -> str:
    shown = [names.cipher_suite_name(s) for s in suites if not names.is_grease(s)]
    more = f", ... ({len(shown)} in all)" if len(shown) > 10 else ""
    return (", ".join(shown[:10]) or "none") + more


def _current(suite: int) -> bool:
    """A suite a current server may enable: TLS 1.3's (RFC 8446 9.1) or one with AES,
    ChaCha20, Camellia or ARIA (RC4, 3DES, DES, NULL, export and anonymous suites are
    off by default in current stacks: RFC 7465, RFC 9325 4.1), authenticated by an
    RSA or ECDSA certificate: DSS (DSA keys, gone from TLS 1.3, RFC 8446 4.2.3), static
    DH/ECDH (a DH key in the certificate), PSK, SRP and Kerberos suites need keys a
    server rarely has, and are what TLS scanners probe for one by one."""
    n = names.cipher_suite_name(suite)
    if suite in TLS13_SUITES:
        return True
    return (any(c in n for c in ("AES", "CHACHA20", "CAMELLIA", "ARIA"))
            and not any(w in n for w in ("_anon_", "EXPORT", "NULL", "_DSS_", "PSK", "SRP",
                                         "KRB5"))
            and not n.startswith(("TLS_DH_", "TLS_ECDH_")))


# TLS 1.3's AES-GCM and ChaCha20 suites: every TLS 1.3 server enables at least one
# (RFC 8446 9.1 makes TLS_AES_128_GCM_SHA256 mandatory; CCM and the SM4/integrity-only
# ones are off by default in OpenSSL, Go, GnuTLS and BoringSSL).
_TLS13_COMMON = frozenset({0x1301, 0x1302, 0x1303})


def _mainstream(suites: Sequence[int]) -> bool:
    """An offer any current server shares a suite with, whatever its certificate: a
    common TLS 1.3 suite, or ECDHE with AES or ChaCha20 for RSA *and* for ECDSA
    certificates (what browsers, curl, Go, Python, OpenSSL and wolfSSL all offer). An
    offer short of that (static RSA key exchange and DHE only, one authentication
    type, CCM/ARIA/Camellia only, one suite: TLS scanners' probes) may be refused
    for its suites alone."""
    if any(s in _TLS13_COMMON for s in suites):
        return True
    named = [n for n in map(names.cipher_suite_name, suites)
             if n.startswith("TLS_ECDHE_") and n.endswith(_DEFAULT_BULK)]
    return (any(n.startswith("TLS_ECDHE_RSA_") for n in named)
            and any(n.startswith("TLS_ECDHE_ECDSA_") for n in named))


# The TLS 1.2 ciphers current stacks enable by default (OpenSSL 3's DEFAULT, Go, GnuTLS
# NORMAL): AES-GCM, AES-CBC and ChaCha20-Poly1305 (not the pre-RFC 7905 _OLD code
# points); CCM, ARIA, Camellia are built but off.
_DEFAULT_BULK = ("_AES_128_GCM_SHA256", "_AES_256_GCM_SHA384", "_AES_128_CBC_SHA",
                 "_AES_256_CBC_SHA", "_AES_128_CBC_SHA256", "_AES_256_CBC_SHA384",
                 "_CHACHA20_POLY1305_SHA256")


@rule("version-too-old", "RFC 7568 3; RFC 8996 2-5; RFC 8446 4.2.1, D.5",
      explains=_TOO_OLD_ALERTS)
def version_too_old(h: History) -> Finding | None:
    """Needs: the initial ClientHello as delivered (its highest offered version), the
    server's refusals before any ServerHello or its silent close; hello faults."""
    found = _client_hello(h)
    if found is None or h.server_hellos or not _too_old(found[1]):
        return None
    seen, ch = found
    alerts = _refusals(h, _TOO_OLD_ALERTS)
    if not alerts and (h.closed_by != "server" or _alerts(h)):
        return None
    best = max(_offered_versions(ch))
    count = len(ch.extensions) if ch.extensions else 0
    evidence = [_hello_text(seen) + (f", {count} extensions" if count else ", no extensions")]
    evidence += [a.text() for a in alerts] or ["the server closed without a ServerHello"]
    evidence += [f.text() for f in _hello_faults(h)]
    return Finding(
        "version-too-old",
        f"the client offered at most {names.version_name(best)} and the server refused it: "
        "it has no such old protocol (SSL 3.0 is prohibited by RFC 7568, TLS 1.0 and 1.1 "
        "are deprecated by RFC 8996). Missing extensions (SNI, supported_groups) come with "
        "the old hello and are not the cause. TLS scanners (sslyze, testssl.sh) probing old "
        "versions make many of these; otherwise upgrade or reconfigure the client"
        + ("; OpenSSL 3 servers refuse such a hello with internal_error ('no suitable "
           "signature algorithm': TLS 1.0 and 1.1 sign with SHA-1)"
           if any(a.description == INTERNAL_ERROR for a in alerts) else ""),
        evidence)


@rule("no-shared-cipher", "RFC 8446 4.1.1, 9.1; RFC 5246 7.4.1.3; RFC 9325 4.2",
      explains=_NO_SUITE_ALERTS)
def no_shared_cipher(h: History) -> Finding | None:
    """Needs: the initial ClientHello as delivered, the server's refusals before any
    ServerHello, hello faults' suites_before / suites_after. Fires when a fault changed
    the suite list, or when the offer holds no suite current servers enable."""
    alerts = _refusals(h, _NO_SUITE_ALERTS)
    if not alerts:
        return None
    found = _client_hello(h)
    if found is None or _too_old(found[1]):
        return None
    seen, ch = found
    suites = [s for s in ch.cipher_suites if s not in SIGNALLING and not names.is_grease(s)]
    changed = [f for f in _faults(h) if f.side == "client"
               and f.facts.get("suites_before", ()) != f.facts.get("suites_after", ())]
    current = any(_current(s) for s in suites)
    if not changed and current and (_mainstream(suites) or not ch.extensions):
        return None  # no extensions at all: hello-without-extensions names it
    evidence = [f"client record {seen.index}: the ClientHello the server received offers "
                f"{len(suites)} suites: {_suite_list(suites)}"]
    if not changed and current:
        # A narrow offer (a scanner's probe, an old client): likely, not certain.
        no_sni = ch.extension(EXT_SERVER_NAME) is None
        return Finding(
            "no-shared-cipher",
            "likely no cipher suite in common: the server refused the ClientHello before "
            "choosing parameters, and the offer is narrow: no common TLS 1.3 suite and no "
            "ECDHE suite for both RSA and ECDSA certificates (static RSA key exchange, "
            "DHE, one certificate type or a single suite, as TLS scanners probe one at a "
            "time); a server whose certificate or policy matches none of them refuses it "
            "(RFC 9325 4.1 retires static RSA and DHE; Go 1.22+ and ECDSA-only servers "
            "lack them), or none of the signature algorithms fits its key. The server's "
            "own lists are not on the wire: compare them with the offer"
            + (". The hello also has no server_name: a server that requires SNI refuses "
               "it the same way" if no_sni else ""),
            [_offer_text(found), *[a.text() for a in alerts]])
    for f in changed:
        before = f.facts.get("suites_before", ())
        evidence.append(f"{f.text()}: the client itself offered {len(before)} suites: "
                        f"{_suite_list(before)}")
    evidence += [a.text() for a in alerts]
    by = (f" (the list was rewritten in transit by {'; '.join(f.text() for f in changed)})"
          if changed else "")
    return Finding(
        "no-shared-cipher",
        "no cipher suite in common: the server refused the ClientHello before choosing "
        f"parameters, and the suites it received{by} include none it enables (here no "
        "TLS 1.3 suite and no AES, ChaCha20, Camellia or ARIA one with an RSA or ECDSA "
        "certificate: DSS, static DH/ECDH, PSK and SRP suites need keys servers rarely "
        "have); the server's own list is not on the "
        "wire: compare it with the offer (OpenSSL logs 'no shared cipher', Go 'no cipher "
        "suite supported by both client and server')",
        evidence)


@rule("downgrade-detected", "RFC 8446 4.1.3, 4.2.1, D.1", explains=_DOWNGRADE_ALERTS)
def downgrade_detected(h: History) -> Finding | None:
    """Needs: the ServerHello's random (its last 8 bytes), the ClientHello as delivered
    (the versions it offers), the client's fatal alerts or its close after the
    ServerHello; hello faults."""
    sh = _server_hello(h)
    if sh is None:
        return None
    seen_sh, hello = sh
    tail = hello.random[-8:]
    below = DOWNGRADE_SENTINELS.get(tail)
    if below is None:
        return None
    alerts = [a for a in _alerts(h) if a.side == "client" and a.level == FATAL]
    if not alerts and not (h.closed_by == "client" and not _data_records(h, "client")):
        return None  # a client without the check (TLS 1.2 only) carried on
    ch = _client_hello(h)
    faults = _hello_faults(h)
    # RFC 8446 4.1.3: only a client that offered a higher version checks the sentinel
    # (a TLS 1.3 server sets it for every TLS 1.2 client). A client limited to TLS 1.2
    # that aborts (certificate_expired, ...) aborts for its own reason, unless a fault
    # lowered its offer or its alert is the downgrade check's own (a middlebox before
    # the inspector may have lowered it).
    offered_more = ch is not None and max(_offered_versions(ch[1])) > hello.selected_version
    if not (faults or offered_more or any(a.description in _DOWNGRADE_ALERTS
                                          for a in alerts)):
        return None
    evidence = [f"server record {seen_sh.index}: ServerHello selects "
                f"{_version(hello.selected_version)}, random ends with "
                f"{tail!r} ({tail.hex(' ')}): the RFC 8446 4.1.3 sentinel of a server that "
                f"supports a higher version and negotiated {below}"]
    if ch is not None:
        evidence.append(_hello_text(ch[0]) + ("" if ch[1].extension(EXT_SUPPORTED_VERSIONS)
                                              else ", no supported_versions"))
    evidence += [f.text() for f in faults] + [a.text() for a in alerts]
    if not alerts:
        evidence.append("the client closed right after the ServerHello")
    cause = (f"a fault rewrote the ClientHello ({'; '.join(f.text() for f in faults)})"
             if faults else "something between the client and the server rewrote the "
             "ClientHello (a middlebox that strips supported_versions), or a terminating "
             "proxy that supports only older versions")
    return Finding(
        "downgrade-detected",
        f"downgrade protection fired: the server negotiated {below} because the ClientHello "
        f"it received offered nothing higher, while the client had offered more; the client "
        "found the downgrade sentinel in the ServerHello random and aborted. Cause: "
        + cause, evidence)


@rule("injected-plaintext-alert", "RFC 5246 6.2.3, 7.1, 7.2; RFC 8446 5, 5.2, 6")
def injected_plaintext_alert(h: History) -> list[Finding]:
    """Needs: applied faults that put an alert on the wire (the action's sends_alert)
    with ``alert_encrypted`` (the stream the alert entered was already encrypted) and not
    ``sealed`` (a fault inside the encryption, or on an --intercept leg, seals its alert:
    a protected alert, not a plaintext one); the receiver's fatal alerts."""
    out = []
    for f in _faults(h):
        spec = ACTIONS.get(f.action)
        code = _code(f.params, "description")
        if (spec is None or spec.sends_alert is None or not f.alert_encrypted or f.sealed
                or code is None):
            continue
        sender = other(f.side) if spec.sends_alert == "sender" else f.side
        receiver = other(sender)
        name = names.alert_description_name(code)
        reactions = [a.text() for a in _alerts(h) if a.side == receiver and a.level == FATAL
                     and not a.injected_by]
        out.append(Finding(
            "injected-plaintext-alert",
            f"a plaintext {name} alert was injected into the {sender}'s encrypted stream: "
            f"every record there must be protected (RFC 5246 7.1, RFC 8446 5), so a strict "
            f"{receiver} refuses it (unexpected_message, bad_record_mac) and a lenient one "
            f"believes it and reports that the {sender} sent {name}. The {sender} sent no "
            "such alert: a middlebox (here the proxy's fault) forged it",
            [f"{f.text()}: {name} ({code}) in the clear after the {sender}'s records were "
             "encrypted", *reactions]))
    return out


@rule("finished-mismatch", "RFC 5246 7.4.9, 8.1; RFC 7627 4; RFC 8446 4.4.1, 4.4.4",
      explains=_FINISHED_ALERTS)
def finished_mismatch(h: History) -> Finding | None:
    """Needs: applied transcript-breaking faults on records in the clear, the ServerHello
    (the peers negotiated), fatal Finished-check alerts after it; without a visible alert,
    a TLS 1.3 connection whose client sent no data."""
    sh = _server_hello(h)
    breaking = [f for f in _faults(h) if f.cls == "transcript-breaking" and not f.protected
                and "dropped" not in f.facts]
    if sh is None or not breaking:
        return None
    alerts = [a for a in _cause_alerts(h) if a.level == FATAL
              and a.description in _FINISHED_ALERTS and not _before_server_hello(h, a)]
    # An alert the server sent after the client had left (GnuTLS answers the close
    # with bad_record_mac) answers that close: the client's own failure stays silent.
    silent13 = (not _cause_alerts(h) and h.negotiated_version == TLS13
                and h.closed_by is not None and not _data_records(h, "client"))
    if not alerts and not silent13:
        return None
    how = ("under TLS 1.3 the handshake keys derive from the transcript, so the peers cannot "
           "read each other's encrypted handshake (the alerts are encrypted too)"
           if h.negotiated_version == TLS13 else
           "with extended_master_secret (RFC 7627) the keys differ, so the Finished record "
           "does not decrypt (bad_record_mac); without it the verify_data differs "
           "(decrypt_error)")
    return Finding(
        "finished-mismatch",
        "the handshake failed at Finished because a fault altered handshake bytes: each peer "
        "hashes the handshake as it sent or received it, so the transcripts differ and the "
        f"Finished check cannot pass; {how}. Every transcript-breaking fault ends here unless "
        "a peer rejects the altered message first",
        [f"{f.text()} (transcript-breaking)" for f in breaking] + [a.text() for a in alerts]
        + ([] if alerts else ["no visible alert: the connection closed with no data sent"]))


def _finished_decrypted(h: History, side: Side) -> bool:
    """``side`` sent a Finished the key log opened (TLS 1.3 seals it in an
    application_data record, so handshake_done, set from TLS 1.2's record types,
    never sees it)."""
    return any(d.side == side and d.status == "decrypted"
               and any(m.get("type") == "finished" for m in d.messages) for d in h.decrypted)


def _established(h: History) -> bool:
    done = h.handshake_done
    return (done.get("client", False) and done.get("server", False)) or bool(
        _data_records(h, "client") or _data_records(h, "server")) or (
        _finished_decrypted(h, "client") and _finished_decrypted(h, "server"))


@rule("proxy-closed", "RFC 9293 3.5.2, 3.6; RFC 8446 6.1")
def proxy_closed(h: History) -> Finding | None:
    """Needs: applied faults that closed the connection (facts ``closed``: how, toward),
    whether the handshake had completed, records per side."""
    closes = [f for f in _faults(h) if "closed" in f.facts]
    if not closes:
        return None
    f = closes[0]
    how, toward = f.facts["closed"]
    when = ("mid-stream, after the handshake" if _established(h)
            else "during the handshake")
    what = ("a TCP reset (RST): the peers report 'connection reset by peer' (ECONNRESET, "
            "errno 104; Go may read it as 'unexpected EOF', GnuTLS 'Error in the pull "
            "function')" if how == "rst" else
            "a TCP FIN without a TLS close_notify: the peers report an unexpected EOF "
            "(truncation, RFC 8446 6.1)")
    target = "both sides" if toward == "both" else f"the {toward}"
    return Finding(
        "proxy-closed",
        f"the proxy itself ended the connection {when}, toward {target}, with {what}; "
        "neither peer closed it. A firewall, load balancer or DPI box that resets "
        "connections (idle timeout, policy) looks the same from the peers",
        [f"{f.text()}: {how.upper()} toward {toward}",
         f"records sent before it: client {h.records.get('client', 0)}, "
         f"server {h.records.get('server', 0)}"])


def _cut_short(h: History, sender: Side) -> list[FaultSeen]:
    """Truncate faults on ``sender``'s records that kept the length field: the
    receiver waits for bytes of that record that never come."""
    return [f for f in _faults(h) if f.side == sender
            and f.facts.get("truncated", (0, True))[1] is False]


def _message_cut(f: FaultSeen) -> tuple[int, int, int] | None:
    """A truncate that fixed the length field but cut a handshake message in the
    record (facts ``message_cut``: type, declared length, body bytes kept), in a record
    whose content the fault saw (sent in the clear, or resealed): the record arrives
    whole, the message does not, and its receiver waits for the rest."""
    cut = f.facts.get("message_cut")
    if cut is None or (f.protected and not f.sealed):
        return None
    msg_type, length, kept = cut
    return int(msg_type), int(length), int(kept)


def _withheld(h: History, quitter: Side, end: float) -> list[str]:
    """What faults kept from ``quitter`` until it left: drops of the peer's records,
    delays still holding them at ``end``, records cut short under their length field,
    handshake messages cut short inside a record whose length was fixed."""
    out: list[str] = [f"{f.text()}: cut to {f.facts['truncated'][0]} bytes, length field "
                      f"unchanged: the {quitter} waited for the rest of that record"
                      for f in _cut_short(h, other(quitter))]
    for f in _faults(h):
        if f.side == other(quitter) and (cut := _message_cut(f)) is not None:
            msg_type, length, kept = cut
            out.append(f"{f.text()}: cut to {f.facts['truncated'][0]} bytes, length field "
                       f"fixed: its {names.handshake_type_name(msg_type)} message declares "
                       f"{length} bytes and {kept} of them arrived, so the {quitter} "
                       "waited for the rest of that message")
    dropped = [f for f in _faults(h) if f.side == other(quitter) and "dropped" in f.facts]
    if dropped:
        out.append(f"{dropped[0].text()}" + (f" (and {len(dropped) - 1} more records)"
                                            if len(dropped) > 1 else "")
                   + f": {sum(int(f.facts['dropped']) for f in dropped)} bytes from the "
                   f"{other(quitter)} dropped")
    for f in _faults(h):
        held = f.facts.get("delayed")
        if (f.side == other(quitter) and isinstance(held, float) and f.at is not None
                and f.at + held > end):
            out.append(f"{f.text()}: held for {held:g} s from +{f.at - (h.started_at or f.at):.2f}"
                       f" s, still held when the {quitter} gave up")
    return out


@rule("malformed-hello", "RFC 8446 4.1.2, 6.2; RFC 5246 7.4.1.2",
      explains=frozenset({DECODE_ERROR, ILLEGAL_PARAMETER}))
def malformed_hello(h: History) -> Finding | None:
    """Needs: Anomaly(kind="malformed_hello") (a hello the codec could not parse, as
    it arrived), the peer's fatal alerts or close; faults that changed the hello."""
    bad = [a for a in h.anomalies if a.kind == "malformed_hello"]
    if not bad:
        return None
    first = bad[0]
    answer = [a for a in _alerts(h) if a.side == other(first.side) and a.level == FATAL]
    if not answer and h.closed_by != other(first.side):
        return None
    altered = [f.text() for f in _faults(h) if f.side == first.side
               and f.cls == "transcript-breaking"]
    kind = "ClientHello" if first.side == "client" else "ServerHello"
    return Finding(
        "malformed-hello",
        f"the {first.side}'s {kind} is malformed (the inspector cannot parse it either), "
        f"and the {other(first.side)} refused it"
        + (f": a fault changed its bytes ({'; '.join(altered)})" if altered else
           ": it left the sender this way (a TLS scanner's or fuzzer's deliberate probe, "
           "or a broken stack), it was not altered in transit between the inspector and "
           f"the {other(first.side)}"),
        [f"{first.side} record {first.index}: {printable(first.detail, 200)}",
         *altered, *([a.text() for a in answer]
                     or [f"the {other(first.side)} closed without an alert"])])


_HELLO_LENGTH_ALERTS = frozenset({ILLEGAL_PARAMETER, DECODE_ERROR, INTERNAL_ERROR,
                                  UNEXPECTED_MESSAGE, HANDSHAKE_FAILURE})


@rule("hello-too-long", "RFC 8446 4, 5.1; RFC 5246 7.4", explains=_HELLO_LENGTH_ALERTS)
def hello_too_long(h: History) -> Finding | None:
    """Needs: Anomaly(kind="hello_length") (a hello whose handshake header announces
    more than 65536 bytes, logged where it begins), the receiver's fatal alert or
    close before it was complete. Measured: OpenSSL answers illegal_parameter
    ("excessive message size"), Go internal_error, GnuTLS waits for the rest."""
    long = next((a for a in h.anomalies if a.kind == "hello_length"), None)
    if long is None:
        return None
    at = long.index or 0
    receiver = other(long.side)
    parsed = h.client_hellos if long.side == "client" else h.server_hellos
    if any(s.index >= at for s in parsed):
        return None  # it completed after all: judged as any hello
    answer = [a for a in _alerts(h) if a.side == receiver and a.level == FATAL
              and a.description in _HELLO_LENGTH_ALERTS and not a.after_peer_left]
    if answer or h.closed_by == receiver:
        outcome = f"so the {receiver} refused it before it was complete"
        why = [a.text() for a in answer] or [f"the {receiver} closed without an alert"]
    elif h.closed_by == long.side:
        outcome = (f"and the {receiver} waited for the rest until the {long.side} gave up "
                   "(some stacks, GnuTLS among them, wait rather than refuse)")
        why = [f"the {long.side} closed first, with the {_kind_of(long.side)} incomplete"]
    else:
        return None
    faults = [f.text() for f in _faults(h) if f.side == long.side
              and f.cls == "transcript-breaking" and f.index <= at]
    return Finding(
        "hello-too-long",
        f"the {long.side}'s {_kind_of(long.side)} header announces {long.value} bytes, more "
        "than TLS stacks accept in a hello (Go takes at most 65536 bytes per handshake "
        f"message, OpenSSL 131396 per ClientHello), {outcome}"
        + (": a fault changed it" if faults else
           ": a scanner's or fuzzer's probe, or a corrupted length field"),
        [f"{long.side} record {at}: {long.detail}", *faults, *why])


def _kind_of(side: Side) -> str:
    return "ClientHello" if side == "client" else "ServerHello"


def _alert_before_hello(h: History) -> _Alert | None:
    """The client's fatal alert sent as its first record, with no ClientHello at all."""
    if h.client_hellos or any(a.kind in ("non_tls", "sslv2_client_hello", "malformed_hello")
                              for a in h.anomalies):
        return None
    return next((a for a in _alerts(h) if a.side == "client" and a.index == 1
                 and a.level == FATAL), None)


@rule("alert-before-client-hello", "RFC 8446 6.2, 4.1.2; RFC 5246 7.2.2",
      explains=_UNEXPECTED_ALERTS | {INTERNAL_ERROR})
def alert_before_client_hello(h: History) -> Finding | None:
    """Needs: the client's alerts with indexes, no ClientHello; the server's answer."""
    first = _alert_before_hello(h)
    if first is None:
        return None
    answers = [a.text() for a in _alerts(h) if a.side == "server"]
    return Finding(
        "alert-before-client-hello",
        f"the client sent a fatal {first.name} alert instead of a ClientHello: its own TLS "
        "stack gave up before the handshake began (OpenSSL's 'no ciphers available' or "
        "'no protocols available': its configuration enables no version or cipher suite it "
        "can offer, e.g. TLS 1.0 only under a security level that forbids it); the server "
        "never saw a hello, and its alert answers this one. Fix the client's configuration",
        [first.text(), *answers])


@rule("hello-retry-abandoned", "RFC 8446 4.1.4, 4.2.8")
def hello_retry_abandoned(h: History) -> Finding | None:
    """Needs: the server's HelloRetryRequest (is_hrr) and no ServerHello after it, the
    client's hellos (no second one), its close or fatal alerts, faults on hellos."""
    hrr = next((s for s in h.server_hellos if isinstance(s.hello, ServerHello)
                and s.hello.is_hrr), None)
    initial = [s for s in h.client_hellos if not s.renegotiation]
    if hrr is None or _server_hello(h) is not None or len(initial) != 1:
        return None
    alerts = [a for a in _alerts(h) if a.side == "client" and a.level == FATAL
              and a.index > initial[0].index]
    if not alerts and h.closed_by != "client":
        return None
    assert isinstance(hrr.hello, ServerHello)
    ks = hrr.hello.extension(51)
    asked = decode(51, ks.data, "hello_retry_request") if ks is not None else None
    group = asked.get("selected_group") if isinstance(asked, dict) else None
    listed = initial[0].hello.extension(EXT_SUPPORTED_GROUPS)
    offered = decode(EXT_SUPPORTED_GROUPS, listed.data, "client_hello") if listed else None
    evidence = [f"server record {hrr.index}: HelloRetryRequest"
                + (f" asking for a key share of {printable(str(group), 40)}" if group else
                   " (no key_share: a cookie or another retry)")]
    if isinstance(offered, list):
        evidence.append(f"client record {initial[0].index}: ClientHello offers groups "
                        f"[{', '.join(printable(str(g), 40) for g in offered[:8])}]")
    evidence += [a.text() for a in alerts] or [
        "the client closed without a second ClientHello"]
    return Finding(
        "hello-retry-abandoned",
        "the client gave up after the server's HelloRetryRequest instead of sending a "
        "second ClientHello"
        + (f" with a {printable(str(group), 40)} key share" if group else "")
        + ": the server supports none of the groups the client sent key shares for and "
        "asked for another, which this client cannot retry with (a client that does not "
        "implement HelloRetryRequest, a scanner, or a group it listed but cannot use). "
        "Give the client a key share the server accepts, or let the server accept the "
        "client's first choice", evidence)


@rule("timeout", "RFC 8446 6.1; RFC 9293 3.8.3")
def timeout(h: History) -> Finding | None:
    """Needs: closed_by (the side that gave up), eof_at, last_to (the last bytes toward
    each side), started_at; drop faults and delay faults (facts dropped / delayed, with
    their time) on the other side's records; the quitter's own alerts (then it refused
    something: not a timeout)."""
    quitter = h.closed_by
    if quitter not in ("client", "server") or quitter not in h.eof_at:
        return None
    side: Side = "client" if quitter == "client" else "server"
    end = h.eof_at[side]
    if any(a.side == side and a.level == FATAL for a in _alerts(h)):
        return None
    start = h.started_at if h.started_at is not None else end
    last = h.last_to.get(side, start)
    silence = end - last
    withheld = _withheld(h, side, end) if h.faults else []  # (only faults withhold)
    if withheld and silence < WAITED:
        # It did not wait for what was withheld: it closed as it meant to (dropped
        # NewSessionTickets, which a client never waits for, and a close_notify
        # exchange after the response read "gave up after 0.0 s of silence").
        withheld = []
    if not withheld and not (silence >= SILENCE and not h.server_hellos
                             and h.client_hellos and side == "client"):
        return None
    peer = other(side)
    got = (f"last bytes to it at +{last - start:.2f} s" if side in h.last_to
           else "nothing since the connection opened")
    evidence = [f"the {side} received nothing for {silence:.1f} s ({got}) and closed at "
                f"+{end - start:.2f} s"]
    evidence += withheld
    late = [a.text() for a in _cause_alerts(h, late=True) if a.side == peer]
    evidence += [f"{x}: sent after the {side} had left (a reaction to its close)" for x in late]
    cause = ("a middlebox kept the " + peer + "'s answer from it ("
             + "; ".join(w.split(":")[0] for w in withheld) + ")" if withheld else
             f"the {peer} (or the network) sent nothing: a stalled server, a firewall that "
             "drops packets silently, or a route that loses them")
    return Finding(
        "timeout",
        f"the {side} gave up after {silence:.1f} s of silence (its own timeout): {cause}. "
        f"The {peer} did not refuse anything; alerts it sent after the {side} left answer "
        "that close and are not the cause", evidence)


@rule("hello-without-extensions", "RFC 5246 7.4.1.2, 7.4.1.4; RFC 8446 4.1.2, 9.2",
      explains=_SNI_ALERTS | _GROUPS_ALERTS)
def hello_without_extensions(h: History) -> Finding | None:
    """Needs: the initial ClientHello as delivered, the server's alerts with indexes.
    A hello with no extensions lacks server_name and supported_groups alike, so the
    cause is the whole block, not one extension (missing-sni and
    missing-supported-groups leave such a hello to this rule)."""
    found = _client_hello(h)
    if found is None or found[1].extensions or _too_old(found[1]):
        return None
    seen, ch = found
    alerts = _refusals(h, _SNI_ALERTS | _GROUPS_ALERTS)
    if not alerts:
        return None
    # RFC 5246 7.4.1.2: a hello may end after compression_methods (no block at all);
    # an empty block is legal too. Either way the server learns nothing but suites.
    block = "no extensions block" if ch.extensions is None else "an empty extensions block"
    return Finding(
        "hello-without-extensions",
        "the server rejected a ClientHello without any extensions (no server_name, "
        "supported_groups, signature_algorithms, supported_versions): the hello of an "
        "SSL 3.0 / TLS 1.0-era client or a stack with extensions turned off. TLS 1.3 "
        "cannot be offered without them and current servers expect them for SNI and ECDHE; "
        "update the client or enable its TLS extensions",
        [f"client record {seen.index}: ClientHello "
         f"{names.hex4(ch.legacy_version)} with {block}",
         *[a.text() for a in alerts]])


_DUPLICATE_ALERTS = frozenset({DECODE_ERROR, ILLEGAL_PARAMETER, UNEXPECTED_MESSAGE,
                               UNSUPPORTED_EXTENSION})


def _duplicates(hello: ClientHello | ServerHello) -> list[int]:
    """Extension types that occur more than once in a hello, in order of first repeat."""
    seen: set[int] = set()
    dup: list[int] = []
    for e in hello.extensions or ():
        if e.type in seen and e.type not in dup:
            dup.append(e.type)
        seen.add(e.type)
    return dup


@rule("duplicate-extension", "RFC 8446 4.2; RFC 5246 7.4.1.4", explains=_DUPLICATE_ALERTS)
def duplicate_extension(h: History) -> Finding | None:
    """Needs: the initial ClientHello and the ServerHello as delivered, the peer's
    fatal alerts (or close) after them; faults that rewrote the hello. To a repeat in
    a ClientHello OpenSSL answers illegal_parameter, Go 1.19 unexpected_message (later
    ones decode_error), GnuTLS unsupported_extension."""
    for found in (_client_hello(h), _server_hello(h)):
        if found is None:
            continue
        seen, hello = found
        dup = _duplicates(hello)
        if not dup:
            continue
        sender = seen.side
        if sender == "client":
            answer = _refusals(h, _DUPLICATE_ALERTS)
            refused = bool(answer) or (h.closed_by == "server" and _server_hello(h) is None)
        else:
            answer = [a for a in _alerts(h) if a.side == "client" and a.level == FATAL
                      and a.description in _DUPLICATE_ALERTS and a.index > 0]
            refused = bool(answer)
        if not refused:
            continue
        kind = "ClientHello" if sender == "client" else "ServerHello"
        altered = [f.text() for f in _hello_faults(h, sender)]
        count = [e.type for e in hello.extensions or ()].count
        dups = ", ".join(f"{names.extension_name(t)} ({t}) {count(t)} times" for t in dup)
        return Finding(
            "duplicate-extension",
            f"the {other(sender)} refused a {kind} that carries the same extension more "
            f"than once ({dups}): RFC 8446 4.2 and RFC 5246 7.4.1.4 allow one extension "
            "of each type per hello, and stacks abort on a repeat"
            + (": a fault added it" if altered else
               f": the {sender}'s stack (or a middlebox before the inspector) wrote it "
               "twice, often an extension added by application code on top of the one the "
               "library already sends"),
            [f"{sender} record {seen.index}: {kind} with {dups} "
             f"({len(hello.extensions or ())} extensions)",
             *altered,
             *([a.text() for a in answer] or [f"the {other(sender)} closed without an alert"])])
    return None


# RFC 8446 9.2: what a TLS 1.3 ClientHello must carry (for a full handshake with a
# certificate: signature_algorithms; for (EC)DHE: supported_groups and key_share), a
# server missing one aborts with missing_extension. Code points from RFC 8446 4.2.
_TLS13_MANDATORY = ((13, "signature_algorithms"), (EXT_SUPPORTED_GROUPS, "supported_groups"),
                    (51, "key_share"))


def _tls13_missing(ch: ClientHello) -> list[str]:
    """The RFC 8446 9.2 extensions a ClientHello offering TLS 1.3 lacks (none when it
    does not offer TLS 1.3; a PSK hello may go without groups and key_share)."""
    if TLS13 not in _offered_versions(ch) or not ch.extensions:
        return []
    psk = ch.extension(EXT_PRE_SHARED_KEY) is not None
    return [name for code, name in _TLS13_MANDATORY
            if ch.extension(code) is None and not (psk and code != 13)]


@rule("tls13-extension-missing", "RFC 8446 9.2, 4.2", explains=frozenset({MISSING_EXTENSION}))
def tls13_extension_missing(h: History) -> Finding | None:
    """Needs: the initial ClientHello as delivered, the server's missing_extension
    before any ServerHello; faults that removed extensions."""
    found = _client_hello(h)
    alerts = _refusals(h, frozenset({MISSING_EXTENSION}))
    if found is None or not alerts:
        return None
    seen, ch = found
    missing = _tls13_missing(ch)
    if not missing:
        return None
    removed = [f.text() for f in _faults(h) if f.side == "client"
               and {13, EXT_SUPPORTED_GROUPS, 51} & set(f.facts.get("extensions_removed", ()))]
    return Finding(
        "tls13-extension-missing",
        f"the server refused a ClientHello that offers TLS 1.3 without {', '.join(missing)}: "
        "RFC 8446 9.2 requires signature_algorithms (certificate authentication), "
        "supported_groups and key_share ((EC)DHE) in every TLS 1.3 ClientHello, and a "
        "server aborts with missing_extension without them"
        + (": a middlebox (here a fault) stripped them" if removed else
           ": the client's stack left them out (built without them, or a middlebox before "
           "the inspector stripped them)"),
        [_hello_text(seen) + f", no {', no '.join(missing)}", *removed,
         *[a.text() for a in alerts]])


# Groups current stacks enable (RFC 8446 9.1: secp256r1 mandatory, x25519 SHOULD; the
# other NIST curves, x448, RFC 7919's FFDHE groups and the ML-KEM hybrids).
_COMMON_GROUPS = frozenset({23, 24, 25, 29, 30, 256, 257, 258, 259, 260,
                            0x11EB, 0x11EC, 0x11ED})


def _offered_groups(ch: ClientHello) -> list[int] | None:
    """The hello's supported_groups without GREASE; None without the extension."""
    ext = ch.extension(EXT_SUPPORTED_GROUPS)
    if ext is None or len(ext.data) < 2:
        return None
    groups = (int.from_bytes(ext.data[i:i + 2], "big") for i in range(2, len(ext.data) - 1, 2))
    return [g for g in groups if not names.is_grease(g)]


def _uncommon_groups(ch: ClientHello) -> list[int] | None:
    """The groups of a hello that needs one (TLS 1.3, or ECDHE suites only) when none
    of them is a group servers enable; None otherwise."""
    offered = _offered_groups(ch)
    if offered is None or any(g in _COMMON_GROUPS for g in offered):
        return None
    suites = [s for s in ch.cipher_suites if _current(s)]
    needs = TLS13 in _offered_versions(ch) or (suites and all(
        names.cipher_suite_name(s).startswith("TLS_ECDHE_") for s in suites))
    return offered if needs else None


# TLS 1.3's suites (RFC 8446 B.4) that a server implements: a hello offering them all
# is not refused for its suites.
_TLS13_STANDARD_SUITES = frozenset({0x1301, 0x1302, 0x1303})


def _narrow_groups(h: History, seen: HelloSeen, ch: ClientHello,
                   alerts: list[_Alert]) -> Finding | None:
    """A TLS 1.3 hello offering the standard suites but one common group,
    refused with handshake_failure before any ServerHello: a server that shared a group
    would have answered (with a HelloRetryRequest for a missing key share, RFC 8446
    4.1.4), so it most likely enables none of them (a client and a server each
    limited to other groups: -groups, curves settings)."""
    groups = _offered_groups(ch)
    if (groups is None or TLS13 not in _offered_versions(ch)
            or not _TLS13_STANDARD_SUITES <= set(ch.cipher_suites)):
        return None
    refusal = [a for a in alerts if a.description == HANDSHAKE_FAILURE]
    if len(groups) != 1 or not refusal:
        return None  # (two or more: the offer is shown to compare, alert-handshake-failure)
    listed = printable(names.group_name(groups[0]), 40)
    return Finding(
        "no-common-group",
        f"the server refused a ClientHello that offers only {listed} for the key exchange, "
        "with every standard TLS 1.3 cipher suite: most likely it enables none of those "
        "groups (a server sharing one would answer, with a HelloRetryRequest if the key "
        "share was missing, RFC 8446 4.1.4, 4.2.7); enable a common group on either side "
        "(x25519 and secp256r1 are what servers enable; secp256r1 is mandatory, 9.1)",
        [f"client record {seen.index}: ClientHello offers 1 group: {listed}",
         *[a.text() for a in refusal]])


@rule("no-common-group", "RFC 8446 4.2.7, 9.1; RFC 8422 5.1.1", explains=_GROUPS_ALERTS)
def no_common_group(h: History) -> Finding | None:
    """Needs: the initial ClientHello as delivered (supported_groups), the server's
    refusals before any ServerHello."""
    found = _client_hello(h)
    alerts = _refusals(h, _GROUPS_ALERTS)
    if found is None or not alerts:
        return None
    seen, ch = found
    groups = _uncommon_groups(ch)
    if groups is None:
        return _narrow_groups(h, seen, ch, alerts)
    listed = [printable(names.group_name(g), 40) for g in groups[:6]]
    return Finding(
        "no-common-group",
        "the server refused a ClientHello whose supported_groups holds none of the groups "
        "servers enable (secp256r1, which RFC 8446 9.1 makes mandatory, x25519, the other "
        "NIST curves, x448, FFDHE, the ML-KEM hybrids): no key exchange is possible. The "
        "client offers only groups the server does not implement (GOST, SM2, brainpool, "
        "unassigned codes, as tlsfuzzer probes); offer a common group",
        [f"client record {seen.index}: ClientHello offers {len(groups)} groups: "
         + ", ".join(listed) + (", ..." if len(groups) > 6 else ""),
         *[a.text() for a in alerts]])


@rule("missing-supported-groups", "RFC 8422 4, 5.1; RFC 4492 4; RFC 8446 9.2",
      explains=_GROUPS_ALERTS)
def missing_supported_groups(h: History) -> Finding | None:
    """Needs: the initial ClientHello as delivered, the server's alerts with record
    indexes and the ServerHello's index (an alert before it rejects the ClientHello)."""
    found = _client_hello(h)
    if found is None:
        return None
    seen, ch = found
    if ch.extension(EXT_SUPPORTED_GROUPS) is not None or _too_old(ch) or not ch.extensions:
        return None  # no extensions at all: hello-without-extensions
    alerts = [a for a in _alerts(h) if a.level == FATAL and a.description in _GROUPS_ALERTS
              and _before_server_hello(h, a)
              and not (a.description == MISSING_EXTENSION and _tls13_missing(ch))]
    suites = [s for s in ch.cipher_suites if s not in SIGNALLING and not names.is_grease(s)]
    ecc = [s for s in suites
           if "ECDH" in (n := names.cipher_suite_name(s)) or "ECDSA" in n or s in TLS13_SUITES]
    if not alerts or not ecc:
        return None
    others = len(suites) - len(ecc)
    evidence = [f"client record {seen.index}: ClientHello with no supported_groups extension, "
                f"offering {len(ecc)} suites that need a curve or group ("
                + ", ".join(names.cipher_suite_name(s) for s in ecc[:3])
                + (", ..." if len(ecc) > 3 else "") + ")"
                + (f" and {others} that do not" if others else " and nothing else")]
    evidence += [a.text() for a in alerts]
    if others:
        cause = (f"the client also offers {others} suites without ECDHE, which the server did "
                 "not accept either, so the server likely accepts only ECDHE suites")
    else:
        cause = "every suite offered needs one, so nothing is left to negotiate"
    return Finding(
        "missing-supported-groups",
        "the server rejected a ClientHello that offers ECDHE/ECDSA suites but no "
        "supported_groups (elliptic_curves) extension: RFC 8422 lets a server then pick any "
        "curve, but many will not negotiate ECDHE without the client's list (Go's crypto/tls "
        f"among them); {cause}. Enable the extension in the client (wolfSSL: "
        "--enable-supportedcurves)",
        evidence)


@rule("missing-sni", "RFC 6066 3; RFC 8446 9.2", explains=_SNI_ALERTS)
def missing_sni(h: History) -> Finding | None:
    """Needs: the initial ClientHello as delivered (its extensions and suites), the
    server's alerts with indexes."""
    found = _client_hello(h)
    if (found is None or found[1].extension(EXT_SERVER_NAME) is not None
            or _too_old(found[1]) or not found[1].extensions):
        return None  # no extensions at all: hello-without-extensions
    if not _mainstream(found[1].cipher_suites):
        return None  # a narrow offer: no-shared-cipher names both possible causes
    if _uncommon_groups(found[1]) is not None:
        return None  # no group a server enables: no-common-group is the cause
    seen = found[0]
    alerts = [a for a in _alerts(h) if a.level == FATAL and a.description in _SNI_ALERTS
              and _before_server_hello(h, a)
              and not (a.description == MISSING_EXTENSION and _tls13_missing(found[1]))]
    if not alerts:
        return None
    removed = [f.text() for f in _faults(h)
               if EXT_SERVER_NAME in f.facts.get("extensions_removed", ())]
    return Finding(
        "missing-sni",
        "the server rejected a ClientHello without server_name: it probably requires SNI to "
        "choose a certificate or virtual host. Send the host name (wolfSSL: --enable-sni and "
        "wolfSSL_UseSNI); a client that connects by IP address sends none",
        [f"client record {seen.index}: ClientHello with no server_name extension"
         + (f" (removed by {'; '.join(removed)})" if removed else ""),
         *[a.text() for a in alerts]])


def _explaining(h: History, alert: int) -> list[FaultSeen]:
    """Applied faults whose action declares it can provoke ``alert`` (actions.py)."""
    out = []
    for f in _faults(h):
        spec = ACTIONS.get(f.action)
        if spec is None or alert not in spec.explains:
            continue
        if spec.attributes is None or spec.attributes(alert, f.cls, f.params):
            out.append(f)
    return out


def _ciphertext_splits(h: History) -> list[FaultSeen]:
    """Faults that split an encrypted record outside the encryption (a fragment
    matched by content type, without ``encrypted: true``): each piece is a slice of
    ciphertext that no receiver can authenticate (RFC 5246 6.2.3, RFC 8446 5.2)."""
    return [f for f in _faults(h) if f.protected and not f.sealed
            and f.facts.get("records_after", 1) > 1]


@rule("bad-record-mac", "RFC 5246 7.2.2; RFC 8446 6.2", explains=_MAC_ALERTS)
def bad_record_mac(h: History) -> Finding | None:
    """Needs: alerts (a plaintext bad_record_mac); applied faults with their class,
    ``protected`` and ``sealed`` (a fragment of an encrypted record's ciphertext)."""
    alerts = [a for a in _cause_alerts(h) if a.description in _MAC_ALERTS]
    # Faults that make a bad_record_mac expected: an altered handshake record (the
    # transcripts differ, so Finished fails) or an altered encrypted record.
    splits = _ciphertext_splits(h)
    faults = _explaining(h, BAD_RECORD_MAC) + splits
    # A handshake message cut inside its record never completes at the receiver: it
    # waits for the rest (timeout), or misreads the next records as the rest; it never
    # reaches a MAC check on that transcript.
    faults = [f for f in faults if _message_cut(f) is None]
    corrupt = [f for f in faults if ACTIONS[f.action].alters_bytes or f in splits]
    if not alerts and not corrupt:
        return None
    summary = ("bad_record_mac: a record failed its MAC/AEAD check. Causes: corruption in "
               "transit, mismatched keys, broken crypto (report 003: STM32F4 hardware crypto "
               "driven as an F2's), or a middlebox that altered handshake bytes so the "
               "transcripts differ")
    if faults:
        summary += "; here the fault that altered the bytes explains it"
    if not alerts:
        summary += (" (the receiver's alert is encrypted once keys are in use, so it is not "
                    "visible here)")
    if splits:
        summary += ("; a fault split an encrypted record's ciphertext into pieces, each "
                    "of which fails authentication (to fragment what is inside, match it "
                    "with encrypted: true and give --keylog)")
    sh = _server_hello(h)
    if (not faults and sh is not None and names.cipher_suite_name(
            sh[1].cipher_suite).startswith("TLS_RSA_WITH_")
            and any(a.side == "server" for a in alerts) and not _data_records(h, "client")):
        # RFC 5246 7.4.7.1: a server answers a ClientKeyExchange with bad PKCS#1 padding
        # by going on with a random premaster, so the client's Finished fails its MAC.
        summary += ("; the key exchange is static RSA and the server refused the client's "
                    "first encrypted record: that is also how a server answers a "
                    "deliberately malformed ClientKeyExchange (RFC 5246 7.4.7.1), as TLS "
                    "scanners' ROBOT / Bleichenbacher probes (sslyze, testssl.sh -BB) send")
    return Finding("bad-record-mac", summary,
                   [a.text() for a in alerts] + [
                       f"{f.text()}: encrypted record split into {f.facts['records_after']} "
                       "records of ciphertext" if f in splits else f.text() for f in faults])


@rule("inappropriate-fallback", "RFC 7507 3", explains=_FALLBACK_ALERTS)
def inappropriate_fallback(h: History) -> Finding | None:
    """Needs: the initial ClientHello as delivered; alerts."""
    found = _client_hello(h)
    alerts = [a for a in _alerts(h) if a.description in _FALLBACK_ALERTS]
    if found is None or not alerts:
        return None
    seen, ch = found
    if TLS_FALLBACK_SCSV not in ch.cipher_suites:
        return None
    offered = max(_offered_versions(ch))
    return Finding(
        "inappropriate-fallback",
        f"the client retried with at most {names.version_name(offered)} and TLS_FALLBACK_SCSV, "
        "but the server supports a higher version: an earlier attempt at the higher version "
        "failed for another reason (a middlebox, a timeout, a reset); find that failure",
        [f"client record {seen.index}: ClientHello with TLS_FALLBACK_SCSV offering at most "
         f"{_version(offered)}",
         *[f"{a.text()}: the server supports a version above {names.version_name(offered)}"
           for a in alerts]])


@rule("protocol-version", "RFC 8446 4.2.1, D; RFC 5246 E.1", explains=_VERSION_ALERTS)
def protocol_version(h: History) -> Finding | None:
    """Needs: alerts (not those an intercepting inspector passed on from the server
    leg); the hellos with their record versions; record_version anomalies."""
    alerts = [a for a in _cause_alerts(h) if a.description in _VERSION_ALERTS
              and not _passed_on(h, a)]
    if not alerts:
        return None
    ch, sh = _client_hello(h), _server_hello(h)
    if ch is None and any(a.kind == "sslv2_client_hello" for a in h.anomalies):
        return None  # sslv2-client-hello names what the server refused
    reneg = [s for s in h.client_hellos if s.renegotiation]
    odd = _bad_record_versions(h)
    mismatched = _mismatched_record_versions(h)
    odd.update(mismatched)
    evidence = [a.text() for a in alerts]
    evidence += [_hello_text(s) for s in (ch and ch[0], sh and sh[0], *reneg) if s is not None]
    evidence += [f"{side} record {i}: record version {hex4(v)}{note}"
                 for (side, i), (v, note) in sorted(odd.items())]
    offered = _offered_versions(ch[1]) if ch else []
    listed = ", ".join(names.version_name(v) for v in offered)
    if ch and offered and all(v in names.TLS13_DRAFTS for v in offered) and any(
            _before_server_hello(h, a) for a in alerts):
        # Chrome 65-70, Firefox 57-62 and OpenSSL 1.1.1-pre builds offered these; no
        # released stack speaks them (RFC 8446 4.2.1: TLS 1.3 is 0x0304).
        summary = (f"the client offered only pre-standard TLS 1.3 drafts ({listed}), which "
                   "no released server speaks (TLS 1.3 is 0x0304, RFC 8446): the client is "
                   "a 2016-2018 pre-release build; update it or let it offer TLS 1.2")
    elif ch and offered and min(offered) >= TLS13 and any(
            _before_server_hello(h, a) for a in alerts):
        # The client allows nothing below TLS 1.3: it is the server that is too old.
        summary = (f"the server supports none of the versions the client offered ({listed}): "
                   "the client requires TLS 1.3 and the server's maximum is below it (a TLS "
                   "1.2-only server, or TLS 1.3 turned off); enable TLS 1.3 on the server or "
                   "let the client offer TLS 1.2")
    elif ch and any(_before_server_hello(h, a) for a in alerts):
        summary = (f"the server supports none of the versions the client offered ({listed}): "
                   "the client is too old or limited to old versions, or the server's minimum "
                   "is above them (or a middlebox lowered the offer)")
    elif odd:
        # Which stack aborted is not known here: say what the wire shows.
        summary = ("a record carried a version other than the negotiated one and the receiver "
                   "aborted with a protocol_version alert")
        if mismatched and sh:
            (side, index), (value, _) = min(mismatched.items())
            expected = names.record_version(sh[1].selected_version)
            summary += (f": {side} record {index} carries {hex4(value)} after the ServerHello "
                        f"chose {names.version_name(sh[1].selected_version)}, whose records "
                        f"carry {hex4(expected)} (RFC 5246 6.2.1, E.1; RFC 8446 5.1). Strict "
                        f"stacks check it: Go reports 'received record with version {value:x} "
                        f"when expecting version {expected:x}', OpenSSL and curl 'wrong "
                        "version number'")
    elif sh and any(a.side == "client" for a in alerts):
        chosen = sh[1].selected_version
        summary = (f"the client refused the server's choice {names.version_name(chosen)}"
                   + (f", which it did not offer ({listed})" if chosen not in offered else
                      ", which is below the client's minimum"))
    elif reneg:
        summary = ("protocol_version during renegotiation: the new ClientHello's version does "
                   "not match the negotiated one")
    else:
        summary = ("protocol_version: the peers share no TLS version, or a hello or record "
                   "carried a version the receiver refused")
    return Finding("protocol-version", summary, evidence)


# RFC 6520 4: a HeartbeatMessage is type (1) + payload_length (2) + payload + at
# least 16 bytes of padding.
_HEARTBEAT_OVERHEAD = 3 + 16


@rule("heartbeat", "RFC 6520 2, 4; CVE-2014-0160", explains=_UNEXPECTED_ALERTS)
def heartbeat(h: History) -> Finding | None:
    """Needs: Anomaly(kind="heartbeat") with its (type, payload_length, record length)
    when in the clear; the receiver's alerts and close. A request announcing more
    payload than its record holds is the Heartbleed probe TLS scanners send; an answer
    longer than the request could echo is a leak."""
    beats = [a for a in h.anomalies if a.kind == "heartbeat"]
    if not beats:
        return None
    first = beats[0]
    receiver = other(first.side)
    probe = isinstance(first.value, tuple) and first.value[0] == 1 and \
        first.value[1] + _HEARTBEAT_OVERHEAD > first.value[2]
    answers = [a for a in beats if a.side == receiver]
    leak = probe and any(isinstance(a.value, tuple) and a.value[0] == 2
                         and a.value[2] > first.value[2] for a in answers)
    alerts = [a for a in _alerts(h) if a.side == receiver and a.level == FATAL]
    if leak:
        verdict = (f"and the {receiver} answered with a longer heartbeat response: it "
                   "echoed memory it was never sent, the Heartbleed leak (upgrade its "
                   "OpenSSL, or turn heartbeats off)")
    elif answers:
        verdict = f"and the {receiver} answered with a heartbeat of its own"
    elif alerts:
        verdict = (f"and the {receiver} aborted (it did not negotiate heartbeats, RFC 6520 "
                   "2: a heartbeat without the extension is an unexpected message): not "
                   "vulnerable to this probe")
    elif h.closed_by == receiver:
        verdict = f"and the {receiver} closed the connection"
    else:
        verdict = f"and the {receiver} did not answer it"
    what = ("a heartbeat request that announces more payload than its record holds, the "
            "Heartbleed probe (CVE-2014-0160) that TLS scanners send"
            if probe else "a heartbeat record (RFC 6520)")
    evidence = [f"{a.side} record {a.index}: {a.detail}" for a in beats[:3]]
    if len(beats) > 3:
        evidence.append(f"... and {len(beats) - 3} more heartbeat records")
    return Finding("heartbeat", f"the {first.side} sent {what}, {verdict}",
                   [*evidence, *[a.text() for a in alerts[:1]]])


_EMPTY_ALERTS = frozenset({UNEXPECTED_MESSAGE, DECODE_ERROR})


@rule("empty-record", "RFC 8446 5.1; RFC 5246 6.2.1", explains=_EMPTY_ALERTS)
def empty_record(h: History) -> Finding | None:
    """Needs: Anomaly(kind="empty_record") (as a peer sent it), insert-record faults of
    an empty record (facts ``inserted``, ``inserted_length``), the receiver's fatal
    alerts or its close. OpenSSL skips an empty handshake record; Go and GnuTLS answer
    unexpected_message: only a refusal is a finding."""
    sent = [(a.side, f"{a.side} record {a.index}: {a.detail}")
            for a in h.anomalies if a.kind == "empty_record"]
    inserted = [(f.side, f"{f.text()}: a zero-length "
                 f"{names.content_type_name(f.facts['inserted'][0])} record inserted "
                 f"{f.facts['inserted'][1]} it")
                for f in _faults(h) if f.facts.get("inserted_length") == 0
                and f.facts["inserted"][0] in (CT_ALERT, CT_CHANGE_CIPHER_SPEC, CT_HANDSHAKE)]
    found = sent + inserted
    if not found:
        return None
    sender = found[0][0]
    receiver = other(sender)
    answer = [a for a in _alerts(h) if a.side == receiver and a.level == FATAL
              and a.description in _EMPTY_ALERTS]
    if not answer and h.closed_by != receiver:
        return None
    evidence = [text for side, text in found if side == sender]
    if len(evidence) > 3:  # bounded: a flood of them is one finding
        evidence = [*evidence[:3], f"... and {len(evidence) - 3} more"]
    return Finding(
        "empty-record",
        f"the {receiver} refused a zero-length record from the {sender} (RFC 8446 5.1 and "
        "RFC 5246 6.2.1 forbid empty handshake, alert and change_cipher_spec records)"
        + (": a fault inserted it" if inserted else
           f": the {sender}'s stack (or a middlebox before the inspector) wrote it") +
        "; some stacks skip such records (OpenSSL), others abort (Go, GnuTLS)",
        [*evidence, *([a.text() for a in answer] or [f"the {receiver} closed without an alert"])])


@rule("unexpected-message", "RFC 8446 5, 6.2; RFC 5246 7.1, 7.2.2", explains=_UNEXPECTED_ALERTS)
def unexpected_message(h: History) -> Finding | None:
    """Needs: alerts; faults that add, drop or split records."""
    alerts = [a for a in _cause_alerts(h) if a.description in _UNEXPECTED_ALERTS]
    if not alerts or _alert_before_hello(h) is not None:
        return None  # the answer to an alert in place of a ClientHello: that rule says
    return Finding(
        "unexpected-message",
        "unexpected_message: a record or handshake message arrived where the receiver's state "
        "machine does not allow it (e.g. a ChangeCipherSpec before the ServerHello, "
        "CVE-2014-0224, or a message a middlebox dropped or injected)",
        [a.text() for a in alerts]
        + [f.text() for f in _explaining(h, UNEXPECTED_MESSAGE)])


@rule("early-ccs", "RFC 5246 7.1; RFC 8446 5")
def early_ccs(h: History) -> Finding | None:
    """Needs: Anomaly(kind="early_ccs"); insert-record faults of change_cipher_spec."""
    early = [a for a in h.anomalies if a.kind == "early_ccs"]
    evidence = [f"{a.side} record {a.index}: {a.detail}" for a in early[:3]]
    if len(early) > 3:
        # A flood (a CCS-injection probe sends thousands): one line each buried the rest.
        evidence.append(f"... and {'at least ' if len(early) >= MAX_ITEMS else ''}"
                        f"{len(early) - 3} more such record{'s' if len(early) > 4 else ''}")
    evidence += [f"{f.text()}: change_cipher_spec inserted {f.facts['inserted'][1]}"
                 for f in _faults(h)
                 if f.facts.get("inserted", (None,))[0] == CT_CHANGE_CIPHER_SPEC]
    if not evidence:
        return None
    return Finding(
        "early-ccs",
        "a ChangeCipherSpec arrived before the keys exist (before the ServerHello): correct "
        "stacks abort with unexpected_message; one that accepts it is open to CCS injection "
        "(CVE-2014-0224)", evidence)


@rule("fragmented-handshake-rejected", "RFC 8446 5.1; RFC 5246 6.2.1")
def fragmentation_failure(h: History) -> Finding | None:
    """Needs: fragment faults (with ``protected``/``sealed``: a split of ciphertext is
    not a reassembly failure); closed_by; app_records per side."""
    if _ciphertext_splits(h):
        return None  # the receiver failed on split ciphertext: bad-record-mac says so
    frags = [f for f in _faults(h)
             if "records_after" in f.facts and h.closed_by == other(f.side)]
    if not frags or h.app_records.get(other(frags[0].side), 0):
        return None
    receiver = other(frags[0].side)
    return Finding(
        "fragmented-handshake-rejected",
        f"the {receiver} gave up after handshake messages were split across records, which "
        "TLS allows: the receiver (or a middlebox) cannot reassemble fragmented messages",
        [f"{f.text()}: split into {f.facts['records_after']} records" for f in frags]
        + [f"closed by {h.closed_by}"])


@rule("no-server-hello", "RFC 8446 4.1.1, 6.2; RFC 5246 7.2.2")
def no_server_hello(h: History) -> Finding | None:
    """Needs: client_hellos, server_hellos, alerts, closed_by, records per side,
    non_tls / record_version / partial_record anomalies (which explain it instead)."""
    found = _client_hello(h)
    # An alert answering the silent close (OpenSSL's decode_error after the server's
    # EOF) is no answer to the hello: the close is still the cause.
    if found is None or h.server_hellos or h.closed_by is None or _cause_alerts(h):
        return None
    if any(a.kind in ("non_tls", "record_version", "partial_record") for a in h.anomalies):
        return None
    if "client" in (getattr(h.plain, "unasked", None) or {}):
        return None  # a ClientHello where a plaintext command was due: tls-plaintext-mismatch
    facts = _facts(h, "client")
    if facts is not None and isinstance(facts.other, History) and (
            facts.other.upstream_error is not None
            or any(a.side == "client" and a.level == FATAL for a in _alerts(facts.other))):
        # --intercept: the server leg failed (unreachable, or the inspector refused the
        # server, e.g. its certificate), so the inspector closed the client leg: the
        # server leg's finding is why, not a server that closed without answering.
        return None
    seen, sni = found[0], _sni(found[1])
    closes = [f.text() for f in _faults(h) if "closed" in f.facts or "dropped" in f.facts]
    by = {"client": "the client gave up first (a timeout?)",
          "server": "the server closed without answering",
          "proxy": "a fault closed the connection"}.get(h.closed_by, f"{h.closed_by} closed")
    # An alert sent once the client had closed (listed as its own finding) is still
    # on the wire: "no alert" would contradict the record log.
    alert = (f"no alert before the {h.closed_by} closed" if _cause_alerts(h, late=True)
             else "no alert")
    return Finding(
        "no-server-hello",
        f"the connection ended after the ClientHello with no ServerHello and {alert}: {by}. "
        "A silent reject: a firewall or SNI filter, a server that crashed or refuses the "
        "client's parameters without an alert, or a reset",
        [f"client record {seen.index}: ClientHello" + (f" for {sni!r}" if sni else ""),
         f"closed by {h.closed_by}; records sent: client {h.records.get('client', 0)}, "
         f"server {h.records.get('server', 0)}", *closes])


_RECORD_OVERFLOW = 22


def _tls_header(data: object) -> int | None:
    """The length a TLS record header at the start of ``data`` announces (content type
    20-24, version 3.x, RFC 8446 5.1), or None when the bytes do not start like one."""
    if not isinstance(data, bytes) or len(data) < 5 or not 20 <= data[0] <= 24 \
            or data[1] != 3:
        return None
    return int.from_bytes(data[3:5], "big")


@rule("record-overflow", "RFC 8446 5.1, 5.2; RFC 5246 6.2.1-6.2.3; RFC 6066 4; RFC 8449 4",
      explains=frozenset({_RECORD_OVERFLOW}))
def record_overflow(h: History) -> Finding | None:
    """Needs: Anomaly(kind="oversized") and partial_record anomalies whose header
    announced more than any record may hold (value); replace-with-raw faults whose
    bytes are such a record (facts "raw"); record_overflow alerts (also those sent
    after the peer left: a header is refused as soon as it is read)."""
    big = [f"{a.side} record {a.index}: {a.detail}" for a in h.anomalies
           if a.kind == "oversized"]
    big += [f"{a.side} record {a.index}: its header announces {a.value} bytes"
            for a in h.anomalies if a.kind == "partial_record"
            and isinstance(a.value, int) and a.value > MAX_CIPHERTEXT]
    for f in _faults(h):
        declared = _tls_header(f.facts.get("raw"))
        if declared is not None and declared > MAX_CIPHERTEXT:
            big.append(f"{f.text()}: sent a record whose header announces {declared} bytes")
    alerts = [a for a in _alerts(h) if a.description == _RECORD_OVERFLOW and a.level == FATAL]
    if not big and not alerts:
        return None
    if big:
        summary = ("a record longer than TLS allows (2^14 bytes of plaintext; 2^14 + 256 of "
                   "TLS 1.3 ciphertext, 2^14 + 2048 in TLS 1.2): the receiver must refuse it "
                   "with record_overflow (Go 'tls: oversized record received with length N', "
                   "OpenSSL 'packet length too long' or 'record overflow'); the sender, or a "
                   "middlebox that merged or rewrote records, broke the limit")
    else:
        summary = ("the receiver refused a record as too long although none here exceeds "
                   "TLS's own limit: it enforces a smaller one the peers negotiated "
                   "(max_fragment_length, RFC 6066 4; record_size_limit, RFC 8449) or "
                   "decrypted a record longer than it allows")
    return Finding("record-overflow", summary, big + [a.text() for a in alerts])


@rule("partial-record", "RFC 8446 5.1, 6.1; RFC 5246 7.2.1")
def partial_record(h: History) -> Finding | None:
    """Needs: Anomaly(kind="partial_record"); truncate faults that kept the length field.
    A record cut short when its receiver had already closed (a client that left in
    the middle of a download: an alert, a timeout, Ctrl-C) is the sender's write that
    the close interrupted, not an unexpected EOF anyone saw: not this finding."""
    evidence = [f"{a.side}" + (f" record {a.index}" if a.index else "") + f": {a.detail}"
                for a in h.anomalies if a.kind == "partial_record" and not a.after_peer_left]
    # A receiver that gave up waiting for the rest first saw no end of the stream: that
    # is a timeout (which names the fault), not an unexpected EOF.
    evidence += [f"{f.text()}: cut to {f.facts['truncated'][0]} bytes, length field unchanged"
                 for side in ("client", "server") if h.closed_by != other(side)
                 for f in _cut_short(h, side)]
    if not evidence:
        return None
    return Finding(
        "partial-record",
        "the stream ended inside a record (a truncated flight): the sender or a middlebox "
        "closed the connection mid-record, so the receiver sees an unexpected EOF",
        evidence)


ALERT_HINTS = {
    22: "a record longer than allowed (a peer or middlebox that ignores the size limit)",
    40: "the sender found no acceptable set of parameters in what the peer offered (cipher "
        "suites, signature algorithms, groups, a required client certificate)",
    42: "a certificate was rejected",
    43: "a certificate of an unsupported type",
    44: "a revoked certificate",
    45: "an expired or not yet valid certificate (check both clocks)",
    46: "a certificate could not be verified",
    47: "a handshake field was out of range or inconsistent",
    48: "the certificate chain does not lead to a CA the receiver trusts",
    49: "access denied by the receiver's policy",
    50: "a message could not be parsed: malformed, or altered in transit",
    51: "a signature or the Finished check failed: keys or transcripts differ (altered "
        "handshake bytes?)",
    71: "the sender requires stronger parameters than the peer offered",
    80: "the sender hit an internal error unrelated to the peer",
    90: "the sender's application cancelled the handshake",
    109: "a required extension is missing",
    110: "the peer sent an extension the sender did not offer",
    112: "the server does not serve the requested name",
    116: "the server requires a client certificate",
    120: "no ALPN protocol in common",
}


# -- with keys: what the encrypted records held (issue 14) ----------------------------


def _messages(h: History, side: Side, kind: str) -> list[tuple[int, dict[str, Any]]]:
    """(record index, fields) of the decoded handshake messages ``side`` sent of ``kind``."""
    return [(d.index, m) for d in h.decrypted if d.side == side for m in d.messages
            if m.get("type") == kind]


def _fatal(h: History, codes: frozenset[int]) -> list[_Alert]:
    return [a for a in _alerts(h) if a.level == FATAL and a.description in codes]


@rule("certificate-required", "RFC 8446 4.4.2, 6.2; RFC 5246 7.4.6",
      explains=_CERT_REQUIRED_ALERTS)
def certificate_required(h: History) -> Finding | None:
    """Needs: alerts (decrypted ones too); decrypted CertificateRequest and the client's
    Certificate. TLS 1.3 names the case (certificate_required); TLS 1.2 servers send
    handshake_failure after an empty client Certificate."""
    alerts = _fatal(h, _CERT_REQUIRED_ALERTS)
    refusals = alerts or _fatal(h, frozenset({HANDSHAKE_FAILURE}))  # (TLS 1.2's answer)
    if not refusals:
        return None
    asked = _messages(h, "server", "certificate_request")
    empty = [(i, m) for i, m in _messages(h, "client", "certificate")
             if m.get("chain_length") == 0]
    if not alerts and not (asked and empty):
        return None
    evidence = [f"server record {i}: CertificateRequest" for i, _ in asked[:1]]
    evidence += [f"client record {i}: Certificate with an empty chain" for i, _ in empty[:1]]
    if asked and not _messages(h, "client", "certificate"):
        evidence.append("no client Certificate was seen")
    evidence += [a.text() for a in refusals]
    return Finding("certificate-required",
                   "the server requires a client certificate and the client sent none: "
                   "configure the client's certificate and key (curl --cert/--key, "
                   "openssl s_client -cert/-key), or relax the server's client "
                   "verification", evidence)


def _cert_problems(cert: dict[str, Any], sni: str | None, now: float | None) -> list[str]:
    """What is wrong with a certificate on its own fields, as evidence lines."""
    out: list[str] = []
    when = (datetime.datetime.fromtimestamp(now, datetime.UTC) if now is not None else None)
    try:
        after = datetime.datetime.fromisoformat(str(cert["not_after"]))
        before = datetime.datetime.fromisoformat(str(cert["not_before"]))
    except (KeyError, ValueError):
        return out
    if when is not None and when > after:
        out.append(f"expired on {after:%Y-%m-%d %H:%M:%S} UTC "
                   f"({(when - after).days} days before this connection)")
    if when is not None and when < before:
        out.append(f"not valid before {before:%Y-%m-%d %H:%M:%S} UTC (check both clocks)")
    sans = [str(s) for s in cert.get("san", [])]
    if sni and not any(_name_matches(sni, s) for s in sans):
        shown = ", ".join(printable(s, 60, backslash=True) for s in sans[:6]) or "none"
        out.append(f"SAN [{shown}] does not contain the SNI {printable(sni, 80)}")
    if cert.get("self_signed"):
        out.append("self-signed")
    return out


def _name_matches(name: str, pattern: str) -> bool:
    """RFC 6125 6.4: exact (case-insensitive) or a left-most ``*.`` wildcard label."""
    name, pattern = name.lower().rstrip("."), pattern.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return name == pattern


def _chain_text(cert: dict[str, Any]) -> str:
    if "error" in cert:
        return f"unparsed certificate: {printable(str(cert['error']))}"
    return (f"subject {printable(str(cert.get('subject', '')))}, issuer "
            f"{printable(str(cert.get('issuer', '')))}, valid {str(cert['not_before'])[:10]} "
            f"to {str(cert['not_after'])[:10]}")


@rule("certificate-rejected", "RFC 8446 4.4.2.4, 6.2; RFC 5246 7.2.2; RFC 5280 4.1.2.5; "
      "RFC 6125 6", explains=_CERT_ALERTS)
def certificate_rejected(h: History) -> list[Finding]:
    """Needs: alerts; the peer's decoded Certificate (decrypted in TLS 1.3, in the
    clear in TLS 1.2); the ClientHello's SNI; finished_at. The certificate's own
    fields are the evidence: its dates against the time of the connection, its SAN
    against the SNI, its issuer."""
    out: list[Finding] = []
    found = _client_hello(h)
    sni = _sni(found[1]) if found else None
    for a in _fatal(h, _CERT_ALERTS | frozenset({HANDSHAKE_FAILURE})):
        chains = _messages(h, other(a.side), "certificate")
        if not chains:
            continue
        index, msg = chains[-1]
        chain = msg.get("chain") or []
        if not chain:
            continue
        leaf = chain[0]
        if a.side == "client" and _facts(h, "client") is not None and (
                (r := _refusal(h)) is not None and r.cause() is None):
            # --intercept's client leg: the leaf is the inspector's own, and
            # interception-ca-rejected names the refusal (not a missing intermediate).
            continue
        problems = _cert_problems(leaf, sni if a.side == "client" else None, h.finished_at)
        if a.description == HANDSHAKE_FAILURE and not problems:
            continue  # a handshake_failure about something else
        who = other(a.side)
        lone = None if problems else _lone_leaf(chain, a.description)
        summary = (f"the {a.side} rejected the {who}'s certificate ({a.name})"
                   + (": " + "; ".join(problems) if problems else
                      f": {lone}" if lone else
                      ": its chain does not verify for the receiver (trust store, "
                      "intermediate certificates, key usage)"))
        if a.side == "client" and _facts(h, "server") is not None:
            # --intercept's server leg: the client is the inspector itself.
            summary = (f"the inspector (the client of the server leg) rejected the server's "
                       f"certificate ({a.name})" + summary.split(f"({a.name})", 1)[1]
                       + "; it verifies the server's chain (against the system's CAs, or "
                       "--upstream-ca FILE) and name (the client's SNI, else the upstream's "
                       "address): give the server's CA with --upstream-ca, have the client "
                       "send the server's name, or use a policy with server.verify: false")
        evidence = [a.text(), f"{who} record {index}: certificate chain of "
                    f"{msg.get('chain_length', len(chain))}: {_chain_text(leaf)}"]
        evidence += [f"certificate {p}" for p in problems]
        if lone:
            evidence.append(f"no certificate for the leaf's issuer "
                            f"{printable(str(leaf.get('issuer', '')))} was sent")
        out.append(Finding("certificate-rejected", summary, evidence))
    if not out:
        out += _closed_after_certificate(h, sni)
    return out[:2]


def _lone_leaf(chain: list[dict[str, Any]], alert: int) -> str | None:
    """A chain of only a leaf that someone else issued, refused as untrusted. From
    the bytes alone two causes remain, and the sender's side is the likelier: a
    server configured without its intermediate certificate(s) (RFC 8446 4.4.2, RFC
    5246 7.4.2: the chain follows the leaf; public CAs sign leaves only from
    intermediates, CA/Browser Forum Baseline Requirements 6.1.7), or a private CA
    the receiver does not trust (RFC 5280 6.1: each issuer up to a trust anchor)."""
    leaf = chain[0]
    if (len(chain) != 1 or "error" in leaf or leaf.get("self_signed")
            or alert not in (UNKNOWN_CA, BAD_CERTIFICATE, CERTIFICATE_UNKNOWN)):
        return None
    issuer = printable(str(leaf.get("issuer", "")))
    return (f"the chain is only the leaf and its issuer {issuer} was not sent: an "
            "intermediate certificate is likely missing from the sender's configuration "
            "(send the intermediates after the leaf, RFC 8446 4.4.2, RFC 5246 7.4.2), or "
            f"{issuer} is a CA the receiver does not trust")


def _ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _closed_after_certificate(h: History, sni: str | None) -> list[Finding]:
    """With keys: the client finished the handshake, sent no application data and
    closed (curl checks the name itself after the handshake, without an alert)."""
    chains = _messages(h, "server", "certificate")
    if not (h.keys and chains and h.handshake_done.get("client") is not None
            and not h.inner_app.get("client") and h.closed_by == "client"
            and not _fatal(h, frozenset(names.ALERT_DESCRIPTIONS))):
        return []
    if not any(d.side == "client" and any(m.get("type") == "finished" for m in d.messages)
               for d in h.decrypted):
        return []
    index, msg = chains[-1]
    chain = msg.get("chain") or []
    if sni is not None and _ip_literal(sni):
        # RFC 6066 3 allows no address in server_name: a client that sends one is a
        # scanner or a hand-made test (curl and browsers send none for an address),
        # and what name it checks, if any, is unknown: no name evidence.
        sni = None
    problems = _cert_problems(chain[0], sni, h.finished_at) if chain else []
    problems = [p for p in problems if p != "self-signed"]
    if not problems:
        return []
    return [Finding("certificate-rejected",
                    "the client closed right after the handshake without sending a request: "
                    "it most likely rejected the server's certificate itself (no fatal alert; "
                    "or it only wanted the handshake, as TLS scanners and health checks "
                    "do): " + "; ".join(problems),
                    [f"server record {index}: certificate chain of "
                     f"{msg.get('chain_length', len(chain))}: {_chain_text(chain[0])}",
                     *[f"certificate {p}" for p in problems],
                     "client: Finished, then no application data before its close"])]


@rule("key-mismatch", "RFC 8446 5.2; RFC 5246 6.2.3")
def key_mismatch(h: History) -> Finding | None:
    """Needs: undecryptable (records that did not open with the logged keys) and the
    first such record's reason; transcript-breaking faults (the peers' keys differ)."""
    bad = {s: n for s, n in h.undecryptable.items() if n}
    if not bad:
        return None
    first = [f"{d.side} record {d.index}: {d.reason}" for d in h.decrypted
             if d.status == "undecryptable"][:2]
    counts = ", ".join(f"{n} from the {s}" for s, n in bad.items())
    breaking = [f.text() for f in _faults(h) if f.cls == "transcript-breaking"]
    why = ("; here a fault changed handshake bytes, so each peer derived its keys from a "
           "different transcript and the two key logs disagree" if breaking else "")
    return Finding("key-mismatch",
                   f"records did not decrypt with the logged keys ({counts}): the key log is "
                   "from another run of the peer, or the bytes were changed in transit "
                   f"(what a peer reports as bad_record_mac){why}", first + breaking)


def _alert_shaped_last(h: History, side: Side) -> EncryptedSeen | None:
    """``side``'s last record when it is encrypted, not opened, and shaped like an
    alert: in TLS 1.3 exactly an alert's sealed size (RFC 8446 5.2: 2 bytes + type +
    tag), in TLS 1.2 an alert record. Without keys it may be a fatal alert."""
    sh = _server_hello(h)
    rec = h.last_encrypted.get(side)
    if sh is None or rec is None or rec.index != h.records.get(side) or any(
            d.side == side and d.index == rec.index and d.status == "decrypted"
            for d in h.decrypted):
        return None
    hello = sh[1]
    if hello.selected_version != TLS13:
        return rec if rec.content_type == CT_ALERT else None
    suite = keyschedule.suite(hello.cipher_suite)
    etm = hello.extension(EXT_ENCRYPT_THEN_MAC) is not None
    return rec if (rec.content_type == CT_APPLICATION_DATA and suite is not None
                   and rec.length == sealed_length(suite, 2, etm)) else None


@rule("likely-encrypted-alert", "RFC 8446 5.2, 6; RFC 5246 6.2.3, 7.2")
def likely_encrypted_alert(h: History) -> list[Finding]:
    """Needs: last_encrypted, encrypted_after_peer, records, the ServerHello; no
    decrypted view of that record. Without keys: a side whose only record after the
    peer started encrypting is alert-sized (RFC 8446 5.2: 2 bytes + type + tag) and
    is its last one, or a TLS 1.2 encrypted alert record from a side that sent no
    application data, most likely carried a fatal alert; so, in TLS 1.3, does a server's
    only encrypted record when the client sent none (a refusal right after the
    ServerHello, e.g. Go's no_application_protocol: EncryptedExtensions, the first
    record it seals otherwise, is never that short). Both sides' last records such
    an alert is the orderly close_notify exchange (`echo Q | openssl s_client`): a
    close_notify must be answered with one (RFC 5246 7.2.1, RFC 8446 6.1), while after
    a fatal alert both parties just close (RFC 5246 7.2.2, RFC 8446 6.2), so nothing
    is said then."""
    sh = _server_hello(h)
    if sh is None or not h.last_encrypted:
        return []
    suite = keyschedule.suite(sh[1].cipher_suite)
    tls13 = sh[1].selected_version == TLS13
    out: list[Finding] = []
    sides: tuple[Side, ...] = ("client", "server")
    for side in sides:
        rec = _alert_shaped_last(h, side)
        if rec is None:
            continue
        if rec.after_peer_left:
            # RFC 8446 6.1, RFC 5246 7.2.1: sent once the peer had closed, it answers
            # that close (OpenSSL's s_server sends close_notify on a client's EOF).
            continue
        if tls13:
            first = h.encrypted.get(side) == 1 and not h.encrypted.get(other(rec.side))
            hit = h.encrypted_after_peer.get(side) == 1 or first
        else:
            hit = not h.app_records.get(side)
        if not hit:
            continue
        # Undecryptable because the keys did not open it (a mismatch), not because the
        # wait for keys that never arrived was given up (proxy/decrypt.py _give_up).
        failed = any(d.side == side and d.index == rec.index and d.status == "undecryptable"
                     and "never arrived" not in d.reason for d in h.decrypted)
        rerun = ("rerun with --keylog to name it" if not h.keys else
                 "the logged keys do not open it (key-mismatch)" if failed else
                 "the key log has no keys for this connection")
        out.append(Finding(
            "likely-encrypted-alert",
            f"the {side}'s last record is likely an encrypted alert, then the connection "
            f"closed; {rerun}",
            [f"{side} record {rec.index}: {names.content_type_name(rec.content_type)} "
             f"len={rec.length}" + (f" = an alert sealed with {suite.name}" if tls13 and suite
                                   else " (an alert record, encrypted)")]))
    return [] if len(out) == 2 else out



# -- --intercept: causes only a terminating middlebox has (issue 21) -------------------
# Each rule reads History.intercept (proxy/policy.InterceptFacts: the leg, the
# policy in force, the other leg's History), set by addons/intercept.py before
# the diagnosis; on the transparent path it is None and these rules say nothing.
# The inspector is an endpoint of both legs and decrypts both with its own keys.

_INTERCEPT_CERT_ALERTS = frozenset({BAD_CERTIFICATE, CERTIFICATE_UNKNOWN, UNKNOWN_CA})


def _facts(h: History, leg: str) -> Any:
    """The leg's InterceptFacts when this History is that leg of an interception."""
    f = h.intercept
    return f if f is not None and getattr(f, "leg", None) == leg else None


def _leaf(h: History, side: Side) -> tuple[int, dict[str, Any]] | None:
    chains = _messages(h, side, "certificate")
    if not chains or not chains[-1][1].get("chain"):
        return None
    return chains[-1][0], chains[-1][1]["chain"][0]


def _covers(cert: dict[str, Any], sni: str | None) -> bool:
    return sni is None or any(_name_matches(sni, str(n)) for n in cert.get("san", []))


def _cert_refusal(h: History) -> list[_Alert]:
    """The client's fatal alerts about the inspector's certificate."""
    return [a for a in _fatal(h, _INTERCEPT_CERT_ALERTS) if a.side == "client"]


@dataclass(frozen=True, slots=True)
class _Refusal:
    """The client refused the inspector's certificate, which names the client's SNI:
    what the interception certificate rules share."""

    facts: Any                    # the client leg's InterceptFacts
    index: int                    # the inspector's record that carried the Certificate
    message: dict[str, Any]       # that Certificate message (decoded chain)
    leaf: dict[str, Any]
    alerts: list[_Alert]          # the client's certificate alerts (none: a silent close)

    def evidence(self) -> list[str]:
        """The client's alert (or its silent close), then the chain presented."""
        out = [a.text() for a in self.alerts[:1]] or [
            "client: closed after the inspector's Certificate without sending a request"]
        out.append(f"inspector (server) record {self.index}: certificate chain of "
                   f"{self.message.get('chain_length', len(self.message['chain']))}: "
                   f"{_chain_text(self.leaf)}")
        return out

    def cause(self) -> str | None:
        """What the inspector knows it got wrong in this certificate, beyond an
        untrusted CA: the rule code that names it, or None."""
        issuer = self.leaf.get("issuer")
        if self.facts.policy.certificate == "no-intermediate" and \
                not self.leaf.get("self_signed") and \
                not any(c.get("subject") == issuer for c in self.message["chain"][1:]):
            # (with chain: with-ca the root follows the leaf: still no intermediate)
            return "interception-missing-intermediate"
        if _weak_key(self.leaf) is not None:
            return "interception-weak-key"
        return None


def _presented(h: History) -> tuple[Any, int, dict[str, Any]] | None:
    """Client leg: its InterceptFacts and the inspector's (decrypted) Certificate."""
    facts = _facts(h, "client")
    chains = _messages(h, "server", "certificate") if facts is not None else []
    if not chains or not chains[-1][1].get("chain"):
        return None
    return facts, chains[-1][0], chains[-1][1]


def _refusal(h: History, presented: tuple[Any, int, dict[str, Any]] | None = None
             ) -> _Refusal | None:
    """Client leg. Needs: the client's fatal certificate alert (or its close right
    after the handshake), the inspector's Certificate (decrypted), the client's SNI."""
    presented = presented or _presented(h)
    if presented is None:
        return None
    facts, index, message = presented
    leaf = message["chain"][0]
    found = _client_hello(h)
    sni = _sni(found[1]) if found else None
    if not _covers(leaf, sni):
        return None
    alerts = _cert_refusal(h)
    if not alerts and not _silent_reject(h):
        return None
    return _Refusal(facts, index, message, leaf, alerts)


WEAK_RSA_BITS = 2048


def _weak_key(cert: dict[str, Any]) -> int | None:
    """The RSA modulus size below 2048 bits (OpenSSL security level 2, CA/Browser
    Forum Baseline Requirements 6.1.5), or None."""
    size = cert.get("key_size")
    return size if cert.get("key_type") == "RSA" and isinstance(size, int) and \
        size < WEAK_RSA_BITS else None


@rule("interception-missing-intermediate", "RFC 8446 4.4.2; RFC 5246 7.4.2; RFC 5280 6.1",
      explains=_INTERCEPT_CERT_ALERTS)
def interception_missing_intermediate(h: History) -> Finding | None:
    """Client leg. Needs: the client's refusal (:func:`_refusal`), a chain without
    the leaf's issuer (the leaf not self-signed), and the policy saying the inspector signed
    with an intermediate it does not send: from the bytes alone a missing
    intermediate and an untrusted root look the same; the inspector knows which."""
    presented = _presented(h)
    if presented is None or presented[0].policy.certificate != "no-intermediate":
        return None
    r = _refusal(h, presented)
    if r is None or r.cause() != "interception-missing-intermediate":
        return None
    issuer = printable(str(r.leaf.get("issuer")))
    return Finding("interception-missing-intermediate",
                   "the inspector presented its certificate without the intermediate CA "
                   f"that signed it ({issuer}; policy {printable(r.facts.policy.name)}): "
                   "a client that trusts the interception root cannot build the chain to "
                   "it (Go: certificate signed by unknown authority, OpenSSL: unable to "
                   "get local issuer certificate); send the intermediate after the leaf "
                   "(RFC 8446 4.4.2) or install the intermediate on the clients",
                   [*r.evidence(), f"the inspector signed with {issuer} and did not send it"])


@rule("interception-weak-key", "RFC 8446 4.4.2.4; RFC 5280 6.1; CA/B Forum BR 6.1.5",
      explains=_INTERCEPT_CERT_ALERTS)
def interception_weak_key(h: History) -> Finding | None:
    """Client leg. Needs: the client's refusal (:func:`_refusal`) and the leaf's RSA
    key size (decoded certificate). Clients differ: OpenSSL at its default security
    level 2 (curl, Python, s_client) requires 2048 bits; Go and GnuTLS accept 1024."""
    presented = _presented(h)
    if presented is None or _weak_key(presented[2]["chain"][0]) is None:
        return None
    r = _refusal(h, presented)
    if r is None or r.cause() != "interception-weak-key":
        return None
    bits = _weak_key(r.leaf)
    return Finding("interception-weak-key",
                   f"the client rejected the inspector's certificate for its {bits}-bit "
                   f"RSA key (policy {printable(r.facts.policy.name)}): OpenSSL at its "
                   "default security level 2 (curl, Python, s_client: \"EE certificate "
                   f"key too weak\") requires {WEAK_RSA_BITS} bits, while Go and GnuTLS "
                   "accept 1024; re-sign with RSA 2048 or ECDSA P-256 keys",
                   [*r.evidence(), f"certificate key: RSA {bits} bits, below {WEAK_RSA_BITS}"])


@rule("interception-ca-rejected", "RFC 8446 4.4.2.4, 6.2; RFC 5280 6.1",
      explains=_INTERCEPT_CERT_ALERTS)
def interception_ca_rejected(h: History) -> Finding | None:
    """Client leg. Needs: the client's refusal (:func:`_refusal`). The leaf names the
    SNI, so the refusal is the trust in the interception CA, unless a missing
    intermediate or a weak key explains it (:meth:`_Refusal.cause`)."""
    r = _refusal(h)
    if r is None or r.cause() is not None:
        return None
    leaf, evidence = (r.index, r.leaf), r.evidence()
    return Finding("interception-ca-rejected",
                   "the client does not trust the interception CA that signed the "
                   f"inspector's certificate (issuer {printable(str(leaf[1].get('issuer')))})"
                   ": install the CA that `tlsinspector ca` prints in the client's trust "
                   "store (npm: NODE_EXTRA_CA_CERTS, Python: SSL_CERT_FILE or "
                   "REQUESTS_CA_BUNDLE, curl: --cacert), or exempt the destination from "
                   "inspection", evidence)


def _silent_reject(h: History) -> bool:
    """The client finished the handshake, sent nothing and closed (curl, Go)."""
    return bool(h.keys and h.closed_by == "client" and not h.inner_app.get("client")
                and _messages(h, "server", "certificate"))


@rule("interception-version-capped", "RFC 8446 4.2.1, D; RFC 5246 E.1",
      explains=frozenset({PROTOCOL_VERSION}))
def interception_version_capped(h: History) -> Finding | None:
    """Client leg. Needs: the client's ClientHello (supported_versions), the
    inspector's protocol_version alert, the policy's client version cap and the
    server leg's ServerHello (what the server itself would have spoken)."""
    facts = _facts(h, "client")
    found = _client_hello(h)
    if facts is None or found is None:
        return None
    alerts = [a for a in _fatal(h, frozenset({PROTOCOL_VERSION})) if a.side == "server"]
    if not alerts or _server_leg_abort(facts) is not None:
        return None  # the server's own protocol_version, passed on: interception-server-aborted
    offered = _offered_versions(found[1])
    cap = facts.policy.client.max_version
    other_sh = _server_hello(facts.other)
    evidence = [f"client record {found[0].index}: ClientHello offers "
                + ", ".join(_version(v) for v in offered), alerts[0].text()]
    if other_sh is not None:
        evidence.append("server leg: the server chose "
                        f"{_version(other_sh[1].selected_version)}")
    capped = f"at TLS {cap}" if cap else "below what the client requires"
    return Finding("interception-version-capped",
                   f"the inspector caps the client leg {capped} (policy "
                   f"{printable(facts.policy.name)}) and the client allows only "
                   + ", ".join(names.version_name(v) for v in offered)
                   + ": the middlebox, not the server, refused the version; allow the "
                   "client's version on the inspector or exempt the destination",
                   evidence)


@rule("interception-alpn-not-offered", "RFC 7301 3.1, 3.2")
def interception_alpn_not_offered(h: History) -> Finding | None:
    """Client leg. Needs: the client's ALPN offer, the inspector's EncryptedExtensions
    (decrypted; TLS 1.2: the ServerHello) without ALPN, the policy."""
    facts = _facts(h, "client")
    found = _client_hello(h)
    if facts is None or found is None:
        return None
    offered = _alpn_list(decode(ALPN, ext.data, "client_hello")) if (
        ext := found[1].extension(ALPN)) is not None else []
    if not offered or _server_alpn(h) is not None:
        return None
    if not h.handshake_done.get("server") and _server_hello(h) is None:
        return None
    other_alpn = _server_alpn(facts.other)
    if facts.policy.client_alpn and other_alpn is None:
        return None  # the inspector mirrored a server that speaks no ALPN: not its doing
    evidence = [f"client record {found[0].index}: ALPN offer "
                + ", ".join(printable(a, 40) for a in offered),
                "inspector (server): no ALPN in its answer"]
    if other_alpn:
        evidence.append(f"server leg: the server agreed on {printable(other_alpn, 40)}")
    why = ("the policy never selects one" if not facts.policy.client_alpn
           else "it did not pass the server's choice on")
    return Finding("interception-alpn-not-offered",
                   f"the inspector agreed on no ALPN protocol with the client ({why}): the "
                   "client falls back to HTTP/1.1 (curl) or fails if it requires h2 "
                   "(gRPC); the server itself "
                   + (f"speaks {printable(other_alpn, 40)}" if other_alpn else
                      "was not asked") + "", evidence)


def _server_alpn(h: History) -> str | None:
    """The ALPN protocol the server side selected (ServerHello in TLS 1.2,
    EncryptedExtensions in TLS 1.3, decrypted)."""
    sh = _server_hello(h)
    if sh is not None and (ext := sh[1].extension(ALPN)) is not None:
        got = _alpn_list(decode(ALPN, ext.data, "server_hello"))
        return got[0] if got else None
    for _, m in _messages(h, "server", "encrypted_extensions"):
        for item in m.get("extensions") or ():
            if isinstance(item, dict) and item.get("type") in (
                    "application_layer_protocol_negotiation", ALPN):
                got = _alpn_list(item.get("value"))
                return got[0] if got else None
    return None


def _alpn_list(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


@rule("interception-client-cert-not-forwarded", "RFC 8446 4.3.2, 4.4.2.4; RFC 5246 7.4.4",
      explains=_CERT_REQUIRED_ALERTS)
def interception_client_cert_not_forwarded(h: History) -> Finding | None:
    """Client leg. Needs: the server leg's CertificateRequest and the server's
    certificate_required/handshake_failure, the policy (no client certificate)."""
    facts = _facts(h, "client")  # once per connection: the client leg's view
    if facts is None:
        return None
    server_leg = facts.other
    if not isinstance(server_leg, History) or facts.policy.client_cert is not None:
        return None
    asked = _messages(server_leg, "server", "certificate_request")
    alerts = [a for a in _fatal(server_leg, _CERT_REQUIRED_ALERTS | frozenset(
        {HANDSHAKE_FAILURE})) if a.side == "server"]
    if not asked or not alerts:
        return None
    evidence = [f"server leg, server record {asked[0][0]}: CertificateRequest",
                "server leg: the inspector sent an empty Certificate (it holds no client "
                "key to present)", "server leg, " + alerts[0].text()]
    evidence.append("client leg: the server's alert was passed to the client")
    return Finding("interception-client-cert-not-forwarded",
                   "the server requires a client certificate and the inspector has none to "
                   "present: a terminating middlebox cannot forward the client's (it does "
                   "not hold the client's key); exempt the destination from inspection or "
                   "give the inspector a client certificate (policy server.client_cert)",
                   evidence)


def _server_leg_abort(facts: Any, sender: Side = "server") -> _Alert | None:
    """A fatal alert on the server leg before that leg's handshake was done: from the
    server, it rejected the inspector's own handshake; from the client (``sender``),
    the inspector refused the server (a certificate it does not trust, a version
    outside its policy)."""
    server_leg = facts.other
    if not isinstance(server_leg, History):
        return None
    return next((a for a in _alerts(server_leg) if a.side == sender and a.level == FATAL
                 and not a.injected_by and not server_leg.handshake_done.get("server")),
                None)


def _passed_on(h: History, a: _Alert) -> bool:
    """On the client leg of an interception, the inspector's alert that passes on the
    server's rejection of the inspector's own handshake (interception-server-aborted
    names it), or the inspector's own refusal of the server (interception-server-
    refused): not a verdict on the client's hello."""
    facts = _facts(h, "client")
    if facts is None or a.side != "server":
        return False
    return any(x is not None and x.description == a.description
               for x in (_server_leg_abort(facts), _server_leg_abort(facts, "client")))


@rule("interception-server-aborted", "RFC 8446 6.2; RFC 5246 7.2.2")
def interception_server_aborted(h: History) -> Finding | None:
    """Client leg. Needs: the server leg's fatal alert from the server during the
    inspector's handshake with it, the inspector's alert to the client (it passes the
    server's on), the server leg's faults. Not the case of a client certificate the
    inspector cannot present (interception-client-cert-not-forwarded)."""
    facts = _facts(h, "client")
    if facts is None:
        return None
    abort = _server_leg_abort(facts)
    server_leg = facts.other
    if abort is None or not isinstance(server_leg, History):
        return None
    if _messages(server_leg, "server", "certificate_request") and \
            facts.policy.client_cert is None:
        return None
    passed = [a for a in _fatal(h, frozenset({abort.description})) if a.side == "server"]
    if not passed:
        return None
    faults = [f.text() for f in _faults(server_leg)]
    evidence = [f"server leg, {abort.text()}",
                f"client leg, the inspector passed it on: {passed[0].text()}"]
    evidence += [f"server leg: {t}" for t in faults]
    why = (" (a fault on the server leg changed what the inspector sent it)"
           if faults else "")
    return Finding("interception-server-aborted",
                   f"the server rejected the inspector's own handshake with a fatal "
                   f"{abort.name} alert on the server leg{why}, and the inspector passed that "
                   "alert to the client: the client's error names the server leg's problem, "
                   "not its own; look at the inspector's ClientHello and records toward the "
                   "server (its TLS stack, its policy), not at the client", evidence)


@rule("interception-server-refused", "RFC 8446 4.4.2.4, 6.2; RFC 5246 7.2.2")
def interception_server_refused(h: History) -> Finding | None:
    """Client leg. Needs: the inspector's own fatal alert to the server on the server
    leg during its handshake with it (it refused the server: certificate, version),
    the same alert from the inspector on the client leg (it passes its verdict on);
    the server leg's own finding (certificate-rejected, ...) says what was wrong."""
    facts = _facts(h, "client")
    if facts is None:
        return None
    refusal = _server_leg_abort(facts, "client")
    if refusal is None or _server_leg_abort(facts) is not None:
        return None
    passed = [a for a in _fatal(h, frozenset({refusal.description})) if a.side == "server"]
    if not passed:
        return None
    return Finding(
        "interception-server-refused",
        f"the inspector refused the server on the server leg with a fatal {refusal.name} "
        "alert (its own TLS stack: the server's certificate or version did not pass its "
        "checks) and passed that alert to the client: the client's error names the "
        "inspector's verdict on the server, not a problem of the client; the server leg's "
        "findings say what failed (for a certificate: --upstream-ca FILE, or a policy with "
        "server.verify: false)",
        [f"server leg, the inspector sent {refusal.text()}",
         f"client leg, the inspector passed it on: {passed[0].text()}"])


@rule("interception-sni-not-forwarded", "RFC 6066 3; RFC 6125 6")
def interception_sni_not_forwarded(h: History) -> Finding | None:
    """Client leg. Needs: the client's SNI, the server leg's ClientHello without
    server_name, the server's certificate there (its default one) and the client's
    refusal of the inspector's certificate that copied its names."""
    facts = _facts(h, "client")
    found = _client_hello(h)
    if facts is None or found is None or not isinstance(facts.other, History):
        return None
    sni = _sni(found[1])
    upstream = _client_hello(facts.other)
    if sni is None or upstream is None or _sni(upstream[1]) is not None:
        return None
    leaf = _leaf(h, "server")
    default = _leaf(facts.other, "server")
    if leaf is None or _covers(leaf[1], sni):
        return None
    evidence = [f"client record {found[0].index}: ClientHello for {printable(sni, 80)}",
                f"server leg, inspector record {upstream[0].index}: ClientHello without "
                "server_name"]
    if default is not None:
        evidence.append(f"server leg: the server answered with {_chain_text(default[1])}")
    evidence.append(f"client leg: the inspector presented {_chain_text(leaf[1])}")
    evidence += [a.text() for a in _cert_refusal(h)[:1]]
    return Finding("interception-sni-not-forwarded",
                   "the inspector did not forward the client's SNI: the server answered "
                   "with its default certificate, whose names the inspector copied, so the "
                   f"client sees a certificate that does not name {printable(sni, 80)}; "
                   "forward SNI upstream (policy server.sni)", evidence)


def alert_finding_code(description: int) -> str:
    """The code of the fallback finding for a fatal alert: ``alert-`` and its name in
    kebab case (``alert-bad-record-mac``), its number when unnamed (``alert-255``).
    Scenario files' ``expect:`` entries are checked against these."""
    name = names.alert_description_name(description)
    return "alert-" + name.removesuffix("_RESERVED").replace("_", "-").lower()


_OFFER_ALERTS = frozenset({HANDSHAKE_FAILURE, INSUFFICIENT_SECURITY, ILLEGAL_PARAMETER})


def _offer_text(found: tuple[HelloSeen, ClientHello]) -> str:
    """What a refused ClientHello offered: suites, groups, key shares, signature
    algorithms (names, or hex for unknown codes; peer bytes never reach the text)."""
    seen, ch = found
    suites = [s for s in ch.cipher_suites if s not in SIGNALLING and not names.is_grease(s)]
    more = ", ..." if len(suites) > 3 else ""
    parts = [f"{len(suites)} suites ({_suite_list(suites[:3])}{more})"]
    for code, label in ((EXT_SUPPORTED_GROUPS, "groups"), (51, "key_share"),
                        (13, "signature_algorithms")):
        ext = ch.extension(code)
        value = decode(code, ext.data, "client_hello") if ext is not None else None
        if isinstance(value, list):
            shown = [v.get("group") if isinstance(v, dict) else v for v in value]
            listed = [printable(str(v), 40) for v in shown if not str(v).startswith("grease")]
            parts.append(f"{label} [{', '.join(listed[:6])}{', ...' if len(listed) > 6 else ''}]")
        else:
            parts.append(f"no {label}")
    return f"client record {seen.index}: the refused ClientHello offers " + ", ".join(parts)


def _asked_text(found: tuple[HelloSeen, ClientHello], description: int) -> str:
    """What the ClientHello asked for that unrecognized_name (its server name) or
    no_application_protocol (its ALPN list) refuses, to compare with what the server
    serves (printable: these are peer bytes)."""
    seen, ch = found
    if description == UNRECOGNIZED_NAME:
        sni = _sni(ch)
        asked = f"server_name {printable(sni, 80)}" if sni is not None else "no server_name"
    else:
        ext = ch.extension(ALPN)
        offered = _alpn_list(decode(ALPN, ext.data, "client_hello")) if ext else []
        asked = ("ALPN " + ", ".join(printable(a, 40) for a in offered[:8])
                 + (", ..." if len(offered) > 8 else "")) if offered else "no ALPN"
    return f"client record {seen.index}: the ClientHello asks for {asked}"


@rule("alert-*", "RFC 8446 6.2; RFC 5246 7.2.2", fallback=True)
def other_fatal_alert(h: History, covered: frozenset[int] = frozenset()) -> list[Finding]:
    """Needs: alerts. Any fatal alert no other rule explains (``covered``: what the
    rules that fired declared they explain), named, so no failure ends without a
    finding."""
    # A Finished that does not verify is decrypt_error (RFC 5246 7.4.9, RFC 8446 4.4.4).
    altered = [f.text() for f in _faults(h) if f.cls == "transcript-breaking"]
    out = []
    for a in _alerts(h):
        if (a.level != FATAL or a.description == CLOSE_NOTIFY or a.description in covered
                or _passed_on(h, a)):  # interception-server-aborted names that one
            continue
        hint = ALERT_HINTS.get(a.description)
        evidence = [a.text()]
        if a.after_peer_left:
            # RFC 8446 6.1: a side that reads the peer's close mid-handshake may still
            # answer it with an alert; that alert reports the close, not what caused it.
            hint = (f"sent after the {other(a.side)} had already closed its side, so it "
                    f"answers that close and is not the cause; look at why the "
                    f"{other(a.side)} left")
        elif a.injected_by:
            # The inspector's fault wrote this alert (reply-alert, replace-with-alert,
            # insert-alert): no peer judged a message, so the alert's generic meaning
            # (ALERT_HINTS: "could not be parsed" for decode_error) would blame one.
            out.append(Finding(
                alert_finding_code(a.description),
                f"the {other(a.side)} received a fatal {a.name} alert that a configured "
                f"fault sent in the {a.side}'s name: the {a.side} did not send it, and "
                f"the {other(a.side)} reports it as the {a.side}'s",
                evidence))
            continue
        elif a.description == DECRYPT_ERROR and altered:
            hint = f"{hint}; here a fault altered handshake bytes"
            evidence += altered
        elif a.description in _OFFER_ALERTS and _before_server_hello(h, a) and (
                found := _client_hello(h)) is not None:
            # A refusal of the hello itself: the offer is the evidence to compare with
            # the server's configuration, which is not on the wire.
            rewrote = [f.text() for f in _faults(h)
                       if f.cls == "transcript-breaking" and f.side == "client"]
            if rewrote:
                # The server judged the hello a fault changed, not the client's own.
                hint = (f"{hint}; here a fault changed the client's hello before the "
                        "server read it, so the server refused what the fault sent, not "
                        "what the client sent")
                evidence += rewrote
            else:
                hint = (f"{hint}; compare the offer with the server's configuration (its "
                        "own suites, groups and signature algorithms are not on the wire)")
            evidence.append(_offer_text(found))
        elif a.description in (UNRECOGNIZED_NAME, NO_APPLICATION_PROTOCOL) and (
                found := _client_hello(h)) is not None:
            evidence.append(_asked_text(found, a.description))
        out.append(Finding(alert_finding_code(a.description),
                           f"the {a.side} aborted with a fatal {a.name} alert"
                           + (f": {hint}" if hint else ""),
                           evidence))
    # Reactions to the peer's close come after the alerts that may be a cause.
    out.sort(key=lambda f: "had already closed its side" in f.summary)
    return out[:3]


@rule("fault-not-applied", "tlsinspector scenario")
def fault_not_applied(h: History) -> list[Finding]:
    """Needs: unapplied_faults (one description per configured fault that never fired)."""
    return [Finding("fault-not-applied", f"a configured fault never applied: {u}", [u])
            for u in h.unapplied_faults]


def _data_records(h: History, side: Side) -> int:
    """Records of application data ``side`` sent after its handshake. With keys the
    decrypted inner types say; without, TLS 1.3 seals the handshake and alerts in
    application_data records too (RFC 8446 5.2): the client's first one after the
    server's flight is its Finished, and a last alert-sized one is likely an alert."""
    if h.keys and any(d.side == side and d.status == "decrypted" for d in h.decrypted):
        return h.inner_app.get(side, 0)
    if h.negotiated_version != TLS13:
        return h.app_records.get(side, 0)
    n = h.encrypted_after_peer.get(side, 0) - (1 if side == "client" else 0)
    last = h.last_encrypted.get(side)
    sh = _server_hello(h)
    suite = keyschedule.suite(sh[1].cipher_suite) if sh else None
    if (last is not None and suite is not None and last.index == h.records.get(side)
            and last.length == sealed_length(suite, 2, False)):
        n -= 1  # its last record has the size of a sealed alert
    return max(n, 0)


@rule("fault-outcome", "RFC 8446 4.4.4; RFC 5246 7.4.9")
def fault_outcome(h: History) -> Finding | None:
    """Needs: applied faults with their class; alerts; app_records per side.

    Only the surprise is a finding: a transcript-breaking fault after which data
    flowed both ways with no fatal alert (a peer that does not check Finished, or a
    fault that hit a record outside the transcript)."""
    breaking = [f for f in _faults(h) if f.cls == "transcript-breaking"]
    if not breaking or any(a.level == FATAL for a in _alerts(h)):
        return None
    app = {side: _data_records(h, side) for side in ("client", "server")}
    if not (app["client"] and app["server"]):
        return None
    return Finding(
        "fault-outcome",
        "application data flowed both ways after a transcript-breaking fault: either the fault "
        "hit a record outside the handshake transcript, or a peer does not verify Finished",
        [f"{f.text()} ({f.cls})" for f in breaking]
        + [f"application records: client {app['client']}, server {app['server']}"])


# =====================================================================================
# STARTTLS and the plaintext phase before TLS (issue 17). A separate block: these
# rules read only the plaintext session (History.plain: proxy/plaintext.py's
# Session, its described lines) and the plaintext faults' facts.
# =====================================================================================

_REQUEST = {"smtp": "STARTTLS", "lmtp": "STARTTLS", "imap": "STARTTLS", "pop3": "STLS",
            "ftp": "AUTH TLS", "xmpp": "<starttls/>", "ldap": "the StartTLS extended operation",
            "postgres": "SSLRequest", "mysql": "SSLRequest"}
# Commands that mean the session is being used, not just negotiated.
_SESSION_VERBS = frozenset({"MAIL", "RCPT", "DATA", "BDAT", "AUTH", "LOGIN", "AUTHENTICATE",
                            "USER", "PASS", "APOP", "RETR", "STOR", "LIST", "SELECT", "FETCH",
                            "APPEND", "StartupMessage", "PasswordMessage", "Query",
                            "HandshakeResponse", "bindRequest", "searchRequest", "auth",
                            "message", "iq", "presence"})


# Commands that carry a password or a secret response (never logged: their names are).
_CREDENTIAL_VERBS = frozenset({"AUTH", "LOGIN", "AUTHENTICATE", "PASS", "APOP",
                               "PasswordMessage", "HandshakeResponse", "bindRequest", "auth"})


def _plain_lines(h: History) -> list[Any]:
    session = h.plain
    return list(getattr(session, "lines", ()) or ())


def _request_name(h: History) -> str:
    return _REQUEST.get(h.plain_protocol or "", "STARTTLS")


def _line_text(line: Any) -> str:
    return f"{line.side}: {line.protocol} {line.text()}"


@rule("starttls-not-used", "RFC 3207 4; RFC 2595 4; RFC 8314 3")
def starttls_not_used(h: History) -> Finding | None:
    """Needs: the plaintext lines; TLS offered (as the client received it) and the
    client going on with session commands in plaintext, never requesting TLS."""
    lines = _plain_lines(h)
    offers = [x for x in lines if x.starttls == "offered"]
    if not offers or any(x.starttls == "requested" for x in lines) or h.tls_at:
        return None
    used = [x for x in lines if x.side == "client" and (x.verb in _SESSION_VERBS
                                                         or x.hidden is not None)]
    if not used:
        return None
    creds = [x for x in lines if x.side == "client" and (x.hidden == "credentials"
                                                         or x.verb in _CREDENTIAL_VERBS)]
    summary = (f"PLAINTEXT SESSION: the server offered TLS ({_request_name(h)}) but the client "
               "never asked for it and went on in the clear")
    if creds:
        summary += ", credentials included"
    return Finding("starttls-not-used", summary + " (a client that does not require TLS, or "
                   "one that never saw the offer: see starttls-capability-altered)",
                   [f"offered: {_line_text(offers[0])}"]
                   + [f"in plaintext: {_line_text(x)}" for x in used[:6]])


_MASKED = ("XXXXXXXA", "XXXXXXXX", "XXXXXXX")


@rule("starttls-capability-altered", "RFC 3207 4, 4.1; RFC 2595 4; RFC 4217 4")
def starttls_capability_altered(h: History) -> Finding | None:
    """Needs: plaintext faults whose facts say they changed an offering line
    (facts["starttls"] == "offered"), and capability words that are a masked
    STARTTLS (all X's: what ESMTP-inspection firewalls wrote) seen from the server."""
    changed = [f for f in _faults(h) if f.facts.get("starttls") == "offered"]
    masked = [x for x in _plain_lines(h) if x.side == "server"
              and any(w.upper().startswith(_MASKED) for w in x.words)]
    if not changed and not masked:
        return None
    evidence = [f"{f.text()}: {f.facts.get('plaintext', '')} -> {detail_text(f.detail)}"
                for f in changed]
    evidence += [f"masked capability from the server side: {_line_text(x)}" for x in masked]
    asked = any(x.starttls == "requested" for x in _plain_lines(h))
    who = ("the proxy's own fault changed it" if changed else
           "a middlebox between here and the server masked it (ESMTP inspection's 250-XXXXXXXA)")
    tail = ("; the client asked for TLS anyway" if asked else
            "; the client never asked for TLS: it did not see the offer")
    return Finding("starttls-capability-altered",
                   f"the STARTTLS capability was altered on the way: {who}{tail}", evidence)


@rule("starttls-refused", "RFC 3207 4; RFC 2595 4; RFC 4217 4; RFC 9051 6.2.1")
def starttls_refused(h: History) -> Finding | None:
    """Needs: a plaintext line with starttls "refused" (the server's answer), or a
    plaintext fault that answered the request itself (reply-error: facts starttls
    "requested" and the unit withheld)."""
    lines = _plain_lines(h)
    refused = [x for x in lines if x.starttls == "refused"]
    by_proxy = [f for f in _faults(h) if f.facts.get("starttls") == "requested"
                and "answered_sender" in f.detail]
    if not refused and not by_proxy:
        return None
    after = [x for x in lines if x.side == "client" and x.verb in _SESSION_VERBS]
    who = "the proxy's own fault (reply-error)" if by_proxy and not refused else "the server"
    summary = f"TLS was requested ({_request_name(h)}) and refused by {who}"
    summary += ("; the client then went on IN PLAINTEXT" if after else
                "; a client that requires TLS stops here")
    evidence = [f"refused: {_line_text(x)}" for x in refused]
    evidence += [f"{f.text()}: answered {f.detail.get('answered_sender', '')!r}"
                 for f in by_proxy]
    evidence += [f"in plaintext: {_line_text(x)}" for x in after[:4]]
    return Finding("starttls-refused", summary, evidence)


@rule("tls-plaintext-mismatch", "RFC 8314 3; RFC 3207 4; RFC 8446 5.1")
def tls_plaintext_mismatch(h: History) -> Finding | None:
    """Needs: the plaintext session's ``unasked`` (a side that sent a TLS record where
    a plaintext line was due) and its protocol."""
    unasked = dict(getattr(h.plain, "unasked", {}) or {})
    if not unasked:
        return None
    proto = h.plain_protocol or "plaintext"
    lines = _plain_lines(h)
    asked = any(x.side == "client" and x.starttls == "requested" for x in lines) or any(
        f.facts.get("starttls") == "requested" for f in _faults(h))
    if "client" in unasked and asked:
        # It did ask: a client that goes on after a refusal (openssl s_client
        # -starttls does), not one that speaks implicit TLS.
        refused = any(x.starttls == "refused" for x in lines) or any(
            f.facts.get("starttls") == "requested" and "answered_sender" in f.detail
            for f in _faults(h))
        summary = (f"the client asked for TLS ({_request_name(h)}), which was "
                   f"{'refused' if refused else 'not accepted'}, and sent its ClientHello "
                   f"anyway (openssl s_client -starttls does): the {proto} server reads the "
                   "TLS bytes as plaintext commands and answers in plaintext")
    elif "client" in unasked:
        summary = (f"a TLS client on a {proto} port that expects {_request_name(h)} first: "
                   "the client speaks implicit TLS (e.g. 465, 993, 995) to a STARTTLS port")
    else:
        summary = (f"a plaintext {proto} client on a TLS port: the server answered with TLS "
                   "records (implicit TLS expects a ClientHello first)")
    return Finding("tls-plaintext-mismatch", summary,
                   [f"{side}: a TLS record after {at} plaintext bytes, no TLS agreed"
                    for side, at in unasked.items()])


RULES: tuple[Rule, ...] = tuple(r.check for r in RULE_SPECS)


def diagnose(h: History) -> list[Finding]:
    """Every rule's findings, in declaration order, each with its rule's reference.
    The histories do not change during the call: their alerts are computed once."""
    global _ALERTS_MEMO
    out: list[Finding] = []
    covered: set[int] = set()
    outer, _ALERTS_MEMO = _ALERTS_MEMO, {}
    try:
        for spec in RULE_SPECS:
            found = spec.check(h, frozenset(covered)) if spec.fallback else spec.check(h)
            if not found:  # (most rules, most connections: nothing more to do)
                continue
            if isinstance(found, Finding):
                found = [found]
            covered |= spec.explains
            out += [f if f.reference else replace(f, reference=spec.reference) for f in found]
    finally:
        _ALERTS_MEMO = outer
    return out
