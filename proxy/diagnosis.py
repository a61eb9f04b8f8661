"""Diagnosis at close: rules that name the likely cause of a failed connection.

Each rule is one small function over the connection's :class:`History`; it
returns a :class:`Finding` (or a list, or None) with a stable code, a one-line
summary a support engineer can act on, the evidence (side and record index)
and the RFC section it relies on. Adding a rule is one function plus its entry
in :data:`RULES`; findings come out in rule order.

Rules judge what each receiver got, so they diagnose real failures and
injected ones alike. The engine records hellos as delivered (a rewritten hello
replaces the original) and alerts and anomalies as sent, so rules also read
``History.faults`` for what a fault put on the wire (an alert, a record
version, raw bytes). What a rule needs from History is listed in its
docstring. Rules never raise: History's types are checked, not trusted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tlsinspector.proxy import names
from tlsinspector.proxy.actions import ACTIONS
from tlsinspector.proxy.extensions import (
    RENEGOTIATION_INFO,
    SERVER_NAME,
    SUPPORTED_GROUPS,
    SUPPORTED_VERSIONS,
)
from tlsinspector.proxy.hello import ClientHello, ServerHello
from tlsinspector.proxy.history import HelloSeen, History, Side, other

TLS11, TLS13 = 0x0302, 0x0304
DTLS_VERSIONS = frozenset({0xFEFF, 0xFEFD, 0xFEFC})
EMPTY_RENEGOTIATION_INFO_SCSV, FALLBACK_SCSV = 0x00FF, 0x5600
SIGNALLING = frozenset({EMPTY_RENEGOTIATION_INFO_SCSV, FALLBACK_SCSV})
TLS13_SUITES = frozenset({0x1301, 0x1302, 0x1303, 0x1304, 0x1305, 0x00C6, 0x00C7})
FATAL = 2
HTTP_STARTS = ("HTTP/1.", "HTTP/2", "GET ", "POST ", "HEAD ", "PUT ", "DELETE ", "OPTIONS ",
               "CONNECT ", "PATCH ", "TRACE ")


@dataclass(frozen=True, slots=True)
class Finding:
    code: str            # stable kebab-case id, e.g. "record-version-invalid"
    summary: str         # one line: what happened and the likely cause
    evidence: list[str]  # which records, from which side
    reference: str       # RFC section(s)

    def to_json(self) -> dict[str, object]:
        return {"code": self.code, "summary": self.summary, "evidence": list(self.evidence),
                "reference": self.reference}


# -- typed views of History ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Fault:
    """An applied fault as logged (a fault that could not apply is skipped)."""

    scenario: str
    action: str
    side: Side          # the side whose record it matched
    index: int
    cls: str            # transcript-safe | transcript-breaking | needs-keys
    detail: dict[str, Any]

    def text(self) -> str:
        return f"fault {self.scenario}: {self.action} on {self.side} record {self.index}"


def _faults(h: History, *actions: str) -> list[_Fault]:
    out = []
    for f in h.faults:
        detail, index = f.get("detail"), f.get("index")
        if not isinstance(detail, dict) or "not_applied" in detail or not isinstance(index, int):
            continue
        if actions and f.get("action") not in actions:
            continue
        side: Side = "server" if f.get("from") == "server" else "client"
        out.append(_Fault(str(f.get("scenario", "?")), str(f.get("action", "?")), side, index,
                          str(f.get("class", "")), detail))
    return out


@dataclass(frozen=True, slots=True)
class _Alert:
    """An alert as its receiver got it: sent by the peer, or put there by a fault."""

    side: Side             # who sent it (for a fault: who the receiver believes sent it)
    index: int             # record index on that side; 0 when a fault added it
    level: int
    description: int
    version: int           # negotiated version when sent, else the record's version
    injected_by: str = ""

    @property
    def name(self) -> str:
        return names.alert_description_name(self.description)

    def text(self) -> str:
        where = f" record {self.index}" if self.index else ""
        by = f" (put there by {self.injected_by})" if self.injected_by else ""
        level = names.name_of(names.ALERT_LEVELS, self.level, 2)
        return f"{self.side}{where}: {level} alert {self.name} ({self.description}){by}"


def _alerts(h: History) -> list[_Alert]:
    out = [_Alert(a.side, a.index, a.level, a.description,
                  a.negotiated_version or a.record_version) for a in h.alerts]
    seen = {(a.side, a.index, a.description) for a in out}
    for f in _faults(h):
        spec = ACTIONS.get(f.action)
        level, code = f.detail.get("level"), f.detail.get("code")
        if (spec is None or spec.sends_alert is None or not isinstance(level, int)
                or not isinstance(code, int)):
            continue
        # reply-alert answers the matched record's sender as if its peer had refused it.
        side, index = (other(f.side), 0) if spec.sends_alert == "sender" else (f.side, f.index)
        if (side, index, code) not in seen:
            out.append(_Alert(side, index, level, code, h.negotiated_version or 0, f.text()))
    return out


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


def _hex(v: int) -> str:
    return f"0x{v:04x}"


def _version(v: int) -> str:
    return f"{_hex(v)} ({names.version_name(v)})" if v in names.VERSIONS else _hex(v)


def _ascii(v: int) -> str | None:
    """The two bytes of a 16-bit field as text, when both are printable ASCII."""
    b = v.to_bytes(2, "big")
    return b.decode("ascii") if all(32 <= x < 127 for x in b) else None


def _offered_versions(ch: ClientHello) -> list[int]:
    """Versions a ClientHello offers: supported_versions (RFC 8446 4.2.1), GREASE
    left out, or else legacy_version (the highest, RFC 5246 E.1)."""
    ext = ch.extension(SUPPORTED_VERSIONS)
    if ext is None or not ext.data:
        return [ch.legacy_version]
    body = ext.data[1 : 1 + ext.data[0]]
    found = [int.from_bytes(body[i : i + 2], "big") for i in range(0, len(body) - 1, 2)]
    return [v for v in found if not names.is_grease(v)] or [ch.legacy_version]


def _hello_text(seen: HelloSeen) -> str:
    h = seen.hello
    kind = "ClientHello" if isinstance(h, ClientHello) else "ServerHello"
    text = (f"{seen.side} record {seen.index}: {kind}, record version "
            f"{_hex(seen.record_version)}, legacy_version {_hex(h.legacy_version)}")
    if isinstance(h, ClientHello) and h.extension(SUPPORTED_VERSIONS) is not None:
        text += f", supported_versions [{', '.join(map(_hex, _offered_versions(h)))}]"
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
    ext = ch.extension(SERVER_NAME)
    if ext is None:
        return None
    # server_name_list: u16 list length, then u8 name_type, u16 length, name (RFC 6066 3)
    return ext.data[5 : 5 + int.from_bytes(ext.data[3:5], "big")].decode("ascii", "replace")


# -- the rules ---------------------------------------------------------------------


def _bad_record_versions(h: History) -> dict[tuple[Side, int], tuple[int, str]]:
    """(side, index) -> (version, note) of records received with a non-TLS version:
    record_version anomalies and set-record-version faults (DTLS versions left out)."""
    bad: dict[tuple[Side, int], tuple[int, str]] = {}
    for a in h.anomalies:
        value = _u16(a.value)
        if a.kind == "record_version" and value is not None and a.index is not None:
            bad[(a.side, a.index)] = (value, "")
    for f in _faults(h, "set-record-version"):
        value = _u16(f.detail.get("after"))
        if value is not None and not 0x0300 <= value <= TLS13:
            bad[(f.side, f.index)] = (value, f" (set by fault {f.scenario})")
    return {k: v for k, v in bad.items() if v[0] not in DTLS_VERSIONS}


def _u16(value: object) -> int | None:
    """A 16-bit field from an int or a "0x...." string as the log writes them."""
    if isinstance(value, str) and value[:2] == "0x" and 3 <= len(value) <= 6:
        digits = value[2:]
        if all(c in "0123456789abcdefABCDEF" for c in digits):
            return int(digits, 16)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFF:
        return value
    return None


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
        evidence.append(f"{side} record {index}: version {_hex(value)}"
                        + (f" (ASCII {text!r})" if text else "") + note
                        + (f"; a Go peer reports '{go}'" if go else ""))
    printable = [t for (v, _) in bad.values() if (t := _ascii(v))]
    summary = ("a record header carries a version that is no TLS version: the bytes there are "
               "not a TLS record")
    if printable:
        summary += (f"; {printable[0]!r} is ASCII text, so the peer or a middlebox wrote non-TLS "
                    "bytes into the stream, or the stream is corrupted / out of sync")
    else:
        summary += "; the stream is corrupted or out of sync (a byte lost or added upstream)"
    summary += (". Go prints versions with %x: 'received record with version 3030 when "
                "expecting version 303' means 0x3030, ASCII \"00\", not decimal 3030")
    return Finding("record-version-invalid", summary, evidence, "RFC 8446 5.1; RFC 5246 6.2.1")


def non_tls_bytes(h: History) -> Finding | None:
    """Needs: Anomaly(kind="non_tls", side, value=printable preview of the bytes);
    replace-with-raw faults (detail "preview")."""
    seen: list[tuple[Side, str, str]] = [
        (a.side, a.value if isinstance(a.value, str) else "", "")
        for a in h.anomalies if a.kind == "non_tls"]
    for f in _faults(h, "replace-with-raw"):
        preview = f.detail.get("preview")
        seen.append((f.side, preview if isinstance(preview, str) else "",
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
    http = [(side, p) for side, p, _ in seen if p.startswith(HTTP_STARTS)]
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
    else:
        summary = ("bytes that are not TLS records where a record was expected: another "
                   "protocol on this port, or a middlebox that injected data")
    return Finding("non-tls-bytes", summary, evidence, "RFC 8446 5.1")


def reserved_alert(h: History) -> Finding | None:
    """Needs: AlertSeen with negotiated_version (or record_version before one was
    negotiated); alert faults."""
    alerts = [a for a in _alerts(h) if a.description == 21 and a.version >= TLS11]
    if not alerts:
        return None
    return Finding(
        "alert-decryption-failed-reserved",
        "alert decryption_failed_RESERVED (21) under TLS 1.1 or later, where it MUST NOT be "
        "sent (telling it apart from bad_record_mac helped CBC padding-oracle attacks): the "
        "sender could not decrypt or verify a record (padding or MAC), so treat it as "
        "bad_record_mac: corruption in transit, mismatched keys, or altered bytes",
        [f"{a.text()} under {names.version_name(a.version)}" for a in alerts],
        "RFC 5246 7.2.2; RFC 4346 7.2.2")


def renegotiation_scsv(h: History) -> list[Finding]:
    """Needs: HelloSeen(renegotiation=True) for a ClientHello after both Finished
    (only visible in plaintext, e.g. a renegotiation under SSLv3-era keys or with keys),
    the initial ServerHello (its renegotiation_info says whether renegotiation is secure)."""
    out = []
    sh = _server_hello(h)
    secure = sh is not None and sh[1].extension(RENEGOTIATION_INFO) is not None
    for seen in h.client_hellos:
        ch = seen.hello
        if not (seen.renegotiation and isinstance(ch, ClientHello)
                and EMPTY_RENEGOTIATION_INFO_SCSV in ch.cipher_suites):
            continue
        evidence = [f"client record {seen.index}: renegotiation ClientHello with "
                    f"TLS_EMPTY_RENEGOTIATION_INFO_SCSV, "
                    + ("with" if ch.extension(RENEGOTIATION_INFO) else "without")
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
            evidence, "RFC 5746 3.5, 3.7, 4.4"))
    return out


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
                        + ("with" if sh[1].extension(RENEGOTIATION_INFO) else "without")
                        + " renegotiation_info")
    return Finding(
        "renegotiation",
        f"after the handshake the {starter} started a renegotiation ({what}, encrypted) and the "
        f"connection then ended: the {other(starter)} refuses renegotiation or rejected the "
        "new hello (e.g. one carrying TLS_EMPTY_RENEGOTIATION_INFO_SCSV or lacking "
        "renegotiation_info); check both sides' renegotiation support",
        evidence, "RFC 5746 3.5, 3.7, 4.4; RFC 5246 7.4.1.1")


def missing_supported_groups(h: History) -> Finding | None:
    """Needs: the initial ClientHello as delivered, the server's alerts with record
    indexes and the ServerHello's index (an alert before it rejects the ClientHello)."""
    found = _client_hello(h)
    if found is None:
        return None
    seen, ch = found
    if ch.extension(SUPPORTED_GROUPS) is not None:
        return None
    alerts = [a for a in _alerts(h) if a.level == FATAL and a.description in (40, 71, 109)
              and _before_server_hello(h, a)]
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
        evidence, "RFC 8422 4, 5.1; RFC 4492 4; RFC 8446 9.2")


def missing_sni(h: History) -> Finding | None:
    """Needs: the initial ClientHello as delivered, the server's alerts with indexes."""
    found = _client_hello(h)
    if found is None or found[1].extension(SERVER_NAME) is not None:
        return None
    seen = found[0]
    alerts = [a for a in _alerts(h) if a.level == FATAL and a.description in (40, 109, 112)
              and _before_server_hello(h, a)]
    if not alerts:
        return None
    removed = [f.text() for f in _faults(h, "remove-extensions")
               if "server_name" in str(f.detail.get("after", ""))]
    return Finding(
        "missing-sni",
        "the server rejected a ClientHello without server_name: it probably requires SNI to "
        "choose a certificate or virtual host. Send the host name (wolfSSL: --enable-sni and "
        "wolfSSL_UseSNI); a client that connects by IP address sends none",
        [f"client record {seen.index}: ClientHello with no server_name extension"
         + (f" (removed by {'; '.join(removed)})" if removed else ""),
         *[a.text() for a in alerts]],
        "RFC 6066 3; RFC 8446 9.2")


def _explaining(h: History, alert: int) -> list[_Fault]:
    """Applied faults whose action declares it can provoke ``alert`` (actions.py)."""
    out = []
    for f in _faults(h):
        spec = ACTIONS.get(f.action)
        if spec is None or alert not in spec.explains:
            continue
        if spec.attributes is None or spec.attributes(alert, f.cls, f.detail):
            out.append(f)
    return out


def bad_record_mac(h: History) -> Finding | None:
    """Needs: alerts (a plaintext bad_record_mac); applied faults with their class."""
    alerts = [a for a in _alerts(h) if a.description == 20]
    # Faults that make a bad_record_mac expected: an altered handshake record (the
    # transcripts differ, so Finished fails) or an altered encrypted record.
    faults = _explaining(h, 20)
    corrupt = [f for f in faults if ACTIONS[f.action].alters_bytes]
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
    return Finding("bad-record-mac", summary,
                   [a.text() for a in alerts] + [f.text() for f in faults],
                   "RFC 5246 7.2.2; RFC 8446 6.2")


def inappropriate_fallback(h: History) -> Finding | None:
    """Needs: the initial ClientHello as delivered; alerts."""
    found = _client_hello(h)
    alerts = [a for a in _alerts(h) if a.description == 86]
    if found is None or not alerts:
        return None
    seen, ch = found
    if FALLBACK_SCSV not in ch.cipher_suites:
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
           for a in alerts]],
        "RFC 7507 3")


def protocol_version(h: History) -> Finding | None:
    """Needs: alerts; the hellos with their record versions; record_version anomalies."""
    alerts = [a for a in _alerts(h) if a.description == 70]
    if not alerts:
        return None
    ch, sh = _client_hello(h), _server_hello(h)
    reneg = [s for s in h.client_hellos if s.renegotiation]
    odd = _bad_record_versions(h)
    evidence = [a.text() for a in alerts]
    evidence += [_hello_text(s) for s in (ch and ch[0], sh and sh[0], *reneg) if s is not None]
    evidence += [f"{side} record {i}: record version {_hex(v)}{note}"
                 for (side, i), (v, note) in sorted(odd.items())]
    offered = _offered_versions(ch[1]) if ch else []
    listed = ", ".join(names.version_name(v) for v in offered)
    if ch and any(_before_server_hello(h, a) for a in alerts):
        summary = (f"the server supports none of the versions the client offered ({listed}): "
                   "the client is too old or limited to old versions, or the server's minimum "
                   "is above them (or a middlebox lowered the offer)")
    elif odd:
        summary = ("a record carried a version other than the negotiated one and the receiver "
                   "aborted (Go's crypto/tls answers that with protocol_version)")
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
    return Finding("protocol-version", summary, evidence, "RFC 8446 4.2.1, D; RFC 5246 E.1")


def unexpected_message(h: History) -> Finding | None:
    """Needs: alerts; faults that add, drop or split records."""
    alerts = [a for a in _alerts(h) if a.description == 10]
    if not alerts:
        return None
    return Finding(
        "unexpected-message",
        "unexpected_message: a record or handshake message arrived where the receiver's state "
        "machine does not allow it (e.g. a ChangeCipherSpec before the ServerHello, "
        "CVE-2014-0224, or a message a middlebox dropped or injected)",
        [a.text() for a in alerts]
        + [f.text() for f in _explaining(h, 10)],
        "RFC 8446 5, 6.2; RFC 5246 7.1, 7.2.2")


def early_ccs(h: History) -> Finding | None:
    """Needs: Anomaly(kind="early_ccs"); insert-record faults of change_cipher_spec."""
    evidence = [f"{a.side} record {a.index}: {a.detail}" for a in h.anomalies
                if a.kind == "early_ccs"]
    evidence += [f"{f.text()}: change_cipher_spec inserted {f.detail.get('position', '')}"
                 for f in _faults(h, "insert-record")
                 if f.detail.get("content_type") == "change_cipher_spec"]
    if not evidence:
        return None
    return Finding(
        "early-ccs",
        "a ChangeCipherSpec arrived before the keys exist (before the ServerHello): correct "
        "stacks abort with unexpected_message; one that accepts it is open to CCS injection "
        "(CVE-2014-0224)", evidence, "RFC 5246 7.1; RFC 8446 5")


def fragmentation_failure(h: History) -> Finding | None:
    """Needs: fragment faults; closed_by; app_records per side."""
    frags = [f for f in _faults(h, "fragment") if h.closed_by == other(f.side)]
    if not frags or h.app_records.get(other(frags[0].side), 0):
        return None
    receiver = other(frags[0].side)
    return Finding(
        "fragmented-handshake-rejected",
        f"the {receiver} gave up after handshake messages were split across records, which "
        "TLS allows: the receiver (or a middlebox) cannot reassemble fragmented messages",
        [f"{f.text()}: split into {f.detail.get('records_after', '?')} records" for f in frags]
        + [f"closed by {h.closed_by}"], "RFC 8446 5.1; RFC 5246 6.2.1")


def no_server_hello(h: History) -> Finding | None:
    """Needs: client_hellos, server_hellos, alerts, closed_by, records per side,
    non_tls / record_version / partial_record anomalies (which explain it instead)."""
    found = _client_hello(h)
    if found is None or h.server_hellos or h.closed_by is None or _alerts(h):
        return None
    if any(a.kind in ("non_tls", "record_version", "partial_record") for a in h.anomalies):
        return None
    seen, sni = found[0], _sni(found[1])
    closes = [f.text() for f in _faults(h, "close", "drop")]
    by = {"client": "the client gave up first (a timeout?)",
          "server": "the server closed without answering",
          "proxy": "a fault closed the connection"}.get(h.closed_by, f"{h.closed_by} closed")
    return Finding(
        "no-server-hello",
        f"the connection ended after the ClientHello with no ServerHello and no alert: {by}. "
        "A silent reject: a firewall or SNI filter, a server that crashed or refuses the "
        "client's parameters without an alert, or a reset",
        [f"client record {seen.index}: ClientHello" + (f" for {sni!r}" if sni else ""),
         f"closed by {h.closed_by}; records sent: client {h.records.get('client', 0)}, "
         f"server {h.records.get('server', 0)}", *closes],
        "RFC 8446 4.1.1, 6.2; RFC 5246 7.2.2")


def partial_record(h: History) -> Finding | None:
    """Needs: Anomaly(kind="partial_record"); truncate faults that kept the length field."""
    evidence = [f"{a.side}" + (f" record {a.index}" if a.index else "") + f": {a.detail}"
                for a in h.anomalies if a.kind == "partial_record"]
    evidence += [f"{f.text()}: cut to {f.detail.get('after', '?')} bytes, length field unchanged"
                 for f in _faults(h, "truncate") if f.detail.get("length_field") == "unchanged"]
    if not evidence:
        return None
    return Finding(
        "partial-record",
        "the stream ended inside a record (a truncated flight): the sender or a middlebox "
        "closed the connection mid-record, so the receiver sees an unexpected EOF",
        evidence, "RFC 8446 5.1, 6.1; RFC 5246 7.2.1")


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


def _covered(h: History) -> set[int]:
    """Alert descriptions another rule already explains for this connection."""
    codes = {10, 20, 70}
    for descriptions, rule in ((frozenset({21}), reserved_alert),
                               (frozenset({40, 71, 109}), missing_supported_groups),
                               (frozenset({40, 109, 112}), missing_sni),
                               (frozenset({86}), inappropriate_fallback)):
        if rule(h) is not None:
            codes |= descriptions
    return codes


def other_fatal_alert(h: History) -> list[Finding]:
    """Needs: alerts. Any fatal alert no other rule explains, named, so no failure
    ends without a finding."""
    covered = _covered(h)
    # A Finished that does not verify is decrypt_error (RFC 5246 7.4.9, RFC 8446 4.4.4).
    altered = [f.text() for f in _faults(h) if f.cls == "transcript-breaking"]
    out = []
    for a in _alerts(h):
        if a.level != FATAL or a.description == 0 or a.description in covered:
            continue
        hint = ALERT_HINTS.get(a.description)
        evidence = [a.text()]
        if a.description == 51 and altered:
            hint = f"{hint}; here a fault altered handshake bytes"
            evidence += altered
        code = a.name.removesuffix("_RESERVED").replace("_", "-").lower()
        out.append(Finding(f"alert-{code}",
                           f"the {a.side} aborted with a fatal {a.name} alert"
                           + (f": {hint}" if hint else ""),
                           evidence, "RFC 8446 6.2; RFC 5246 7.2.2"))
    return out[:3]


def fault_not_applied(h: History) -> list[Finding]:
    """Needs: unapplied_faults (one description per configured fault that never fired)."""
    return [Finding("fault-not-applied", f"a configured fault never applied: {u}", [u],
                    "tlsinspector scenario") for u in h.unapplied_faults]


def fault_outcome(h: History) -> Finding | None:
    """Needs: applied faults with their class; alerts; app_records per side.

    Only the surprise is a finding: a transcript-breaking fault after which data
    flowed both ways with no fatal alert (a peer that does not check Finished, or a
    fault that hit a record outside the transcript)."""
    breaking = [f for f in _faults(h) if f.cls == "transcript-breaking"]
    if not breaking or any(a.level == FATAL for a in _alerts(h)):
        return None
    app = {side: h.app_records.get(side, 0) for side in ("client", "server")}
    if not (app["client"] and app["server"]):
        return None
    return Finding(
        "fault-outcome",
        "application data flowed both ways after a transcript-breaking fault: either the fault "
        "hit a record outside the handshake transcript, or a peer does not verify Finished",
        [f"{f.text()} ({f.cls})" for f in breaking]
        + [f"application records: client {app['client']}, server {app['server']}"],
        "RFC 8446 4.4.4; RFC 5246 7.4.9")


Rule = Callable[[History], Finding | None | list[Finding]]

RULES: tuple[Rule, ...] = (
    record_version_invalid,
    non_tls_bytes,
    reserved_alert,
    renegotiation_scsv,
    renegotiation,
    missing_supported_groups,
    missing_sni,
    bad_record_mac,
    inappropriate_fallback,
    protocol_version,
    unexpected_message,
    early_ccs,
    fragmentation_failure,
    no_server_hello,
    partial_record,
    other_fatal_alert,
    fault_not_applied,
    fault_outcome,
)


def diagnose(h: History) -> list[Finding]:
    """Every rule's findings, in rule order."""
    out: list[Finding] = []
    for rule in RULES:
        found = rule(h)
        if isinstance(found, Finding):
            out.append(found)
        elif found is not None:
            out.extend(found)
    return out
