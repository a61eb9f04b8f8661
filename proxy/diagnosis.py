"""Diagnosis at close: rules that name the likely cause of a failed connection.

Each rule is one small function over the connection's :class:`History` and
returns findings with a stable code, a one-line summary, the evidence (which
records, from which side) and the RFC section it relies on. Rules look at what
the receiving side got: records as sent, and what faults changed or added
(``History.faults``), so they diagnose real failures and injected ones alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxy import names
from proxy.hello import ClientHello
from proxy.history import AlertSeen, History, other

SUPPORTED_GROUPS, SERVER_NAME = 10, 0
SCSV_RENEGOTIATION, SCSV_FALLBACK = 0x00FF, 0x5600
TRANSCRIPT_BREAKING = {"set-hello-version", "add-cipher-suites", "remove-cipher-suites",
                       "remove-extensions", "add-extension", "set-supported-versions"}


@dataclass(frozen=True, slots=True)
class Finding:
    code: str
    summary: str
    evidence: list[str] = field(default_factory=list)
    reference: str = ""

    def to_json(self) -> dict[str, object]:
        return {"code": self.code, "summary": self.summary, "evidence": list(self.evidence),
                "reference": self.reference}


def _hex(v: int) -> str:
    return f"0x{v:04x}"


def _ascii(v: int) -> str | None:
    b = v.to_bytes(2, "big")
    return b.decode() if all(32 <= x < 127 for x in b) else None


def _alerts(h: History) -> list[AlertSeen]:
    """Alerts as the receivers got them: sent by a peer, or put there by a fault."""
    out = list(h.alerts)
    for f in h.faults:
        d = f.get("detail", {})
        if f.get("action") in ("replace-with-alert", "insert-alert") and "code" in d:
            out.append(AlertSeen(f["from"], f["index"], d["level"], d["code"], 0,
                                 h.negotiated_version))
        elif f.get("action") == "reply-alert" and "code" in d:
            out.append(AlertSeen(other(f["from"]), 0, d["level"], d["code"], 0,
                                 h.negotiated_version))
    return out


def _who(a: AlertSeen) -> str:
    where = f" record {a.index}" if a.index else ""
    return (f"{a.side}{where}: alert {names.name_of(names.ALERT_LEVELS, a.level, 2)} "
            f"{names.alert_description_name(a.description)} ({a.description})")


def _first_hello(h: History) -> ClientHello | None:
    for seen in h.client_hellos:
        if isinstance(seen.hello, ClientHello) and not seen.renegotiation:
            return seen.hello
    return None


def _fault_note(h: History, actions: set[str]) -> str:
    hits = [f"{f['scenario']}: {f['action']} on {f['from']} record {f['index']}"
            for f in h.faults if f.get("action") in actions]
    return f" (injected by {'; '.join(hits)})" if hits else ""


def record_version_invalid(h: History) -> Finding | None:
    ev = [f"{a.side} record {a.index}: version {_hex(a.value)}"
          + (f" (ASCII {_ascii(a.value)!r})" if _ascii(a.value) else "")
          for a in h.anomalies if a.kind == "record_version"]
    for f in h.faults:
        if f.get("action") == "set-record-version":
            after = int(f["detail"]["after"], 16)
            if not 0x0300 <= after <= 0x0304:
                ev.append(f"{f['from']} record {f['index']}: version {_hex(after)} "
                          f"(changed by fault {f['scenario']})"
                          + (f" (ASCII {_ascii(after)!r})" if _ascii(after) else ""))
    if not ev:
        return None
    return Finding(
        "record-version-invalid",
        "a record header carries a version that is no TLS version: the bytes are not a TLS "
        "record (a peer or middlebox wrote other data into the stream, or the stream is "
        "corrupted or out of sync); Go reports it as 'received record with version 3030 when "
        "expecting version 303' (%x, so 3030 is 0x3030, ASCII \"00\")",
        ev, "RFC 8446 5.1; RFC 5246 6.2.1")


def non_tls_bytes(h: History) -> Finding | None:
    ev = [f"{a.side}: {a.detail}: {a.value!r}" for a in h.anomalies if a.kind == "non_tls"]
    ev += [f"{f['from']} record {f['index']} replaced by {f['detail'].get('preview', '')!r} "
           f"(fault {f['scenario']})" for f in h.faults if f.get("action") == "replace-with-raw"]
    if not ev:
        return None
    http = any("HTTP" in e for e in ev)
    return Finding(
        "non-tls-bytes",
        "plain HTTP on a TLS port: one side speaks HTTP without TLS" if http else
        "bytes that are not TLS records where a record was expected",
        ev, "RFC 8446 5.1")


def reserved_alert(h: History) -> Finding | None:
    ev = []
    for a in _alerts(h):
        version = a.negotiated_version or a.record_version
        if a.description == 21 and version >= 0x0302:
            ev.append(_who(a) + f" under {names.version_name(version)}")
    if not ev:
        return None
    return Finding(
        "alert-decryption-failed-reserved",
        "alert decryption_failed_RESERVED (21) under TLS 1.1 or later: RFC 5246 says it MUST "
        "NOT be sent (it leaks a padding oracle); the sender failed to decrypt or verify a "
        "record, so read it as bad_record_mac: corruption, a key mismatch or altered bytes",
        ev, "RFC 5246 7.2.2; RFC 4346 7.2.2")


def renegotiation(h: History) -> list[Finding]:
    out = []
    for seen in h.client_hellos:
        if seen.renegotiation and isinstance(seen.hello, ClientHello) and \
                SCSV_RENEGOTIATION in seen.hello.cipher_suites:
            out.append(Finding(
                "renegotiation-scsv",
                "a renegotiation ClientHello carries TLS_EMPTY_RENEGOTIATION_INFO_SCSV: the "
                "SCSV belongs in initial handshakes only; a renegotiating client must send "
                "renegotiation_info with the previous verify_data, and servers abort otherwise",
                [f"client record {seen.index}: ClientHello (record version "
                 f"{_hex(seen.record_version)}) with the SCSV"], "RFC 5746 3.5, 3.7"))
    enc = [a for a in h.anomalies if a.kind == "encrypted_renegotiation"]
    fatal = [a for a in _alerts(h) if a.level == 2]
    if enc and (fatal or h.closed_by):
        out.append(Finding(
            "renegotiation",
            "an encrypted handshake record after the handshake (a renegotiation) was followed "
            "by the connection's end: check that both sides support secure renegotiation "
            "(renegotiation_info) and allow it",
            [f"{a.side} record {a.index}: {a.detail}" for a in enc]
            + [_who(a) for a in fatal], "RFC 5746"))
    return out


def _rejected(h: History, codes: set[int]) -> list[AlertSeen]:
    return [a for a in _alerts(h) if a.side == "server" and a.description in codes]


def missing_supported_groups(h: History) -> Finding | None:
    ch = _first_hello(h)
    alerts = _rejected(h, {40})
    if ch is None or not alerts or ch.extension(SUPPORTED_GROUPS) is not None:
        return None
    ecdhe = [names.cipher_suite_name(s) for s in ch.cipher_suites
             if "ECDHE" in names.cipher_suite_name(s)]
    if not ecdhe:
        return None
    return Finding(
        "missing-supported-groups",
        "handshake_failure after a ClientHello offering ECDHE suites without supported_groups: "
        "a server that only accepts ECDHE suites cannot pick a curve (wolfSSL needs "
        "--enable-supportedcurves)",
        [f"client record 1: {len(ecdhe)} ECDHE suites, no supported_groups extension",
         *map(_who, alerts)], "RFC 8422 4, 5.1.1")


def missing_sni(h: History) -> Finding | None:
    ch = _first_hello(h)
    alerts = _rejected(h, {40, 112})
    if ch is None or not alerts or ch.extension(SERVER_NAME) is not None:
        return None
    return Finding(
        "missing-sni",
        "the server rejected a ClientHello without server_name: it probably requires SNI to "
        "choose a certificate or virtual host (wolfSSL needs --enable-sni and wolfSSL_UseSNI)",
        ["client record 1: no server_name extension" + _fault_note(h, {"remove-extensions"}),
         *map(_who, alerts)], "RFC 6066 3")


def bad_record_mac(h: History) -> Finding | None:
    alerts = [a for a in _alerts(h) if a.description == 20]
    breaking = [f for f in h.faults if f.get("action") in TRANSCRIPT_BREAKING | {"corrupt"}]
    corrupted = [f for f in breaking if f.get("action") == "corrupt"]
    if not alerts and not corrupted:
        return None
    summary = ("bad_record_mac: a record failed its MAC/AEAD check: corruption in transit, "
               "mismatched keys, broken (hardware) crypto, or a middlebox that altered "
               "handshake bytes so the transcripts differ")
    if breaking:
        summary += "; here the configured fault explains it"
    if not alerts:
        summary += (" (the receiver's bad_record_mac alert is itself encrypted once keys are "
                    "in use, so it is not visible here)")
    return Finding("bad-record-mac", summary,
                   [*map(_who, alerts)]
                   + [f"fault {f['scenario']}: {f['action']} on {f['from']} record {f['index']}"
                      for f in breaking], "RFC 5246 7.2.2; RFC 8446 5.2, 6.2")


def inappropriate_fallback(h: History) -> Finding | None:
    ch = _first_hello(h)
    alerts = [a for a in _alerts(h) if a.description == 86]
    if ch is None or not alerts or SCSV_FALLBACK not in ch.cipher_suites:
        return None
    return Finding(
        "inappropriate-fallback",
        "the client retried with a lower version and TLS_FALLBACK_SCSV, but the server "
        "supports a higher one: the first attempt failed for another reason (a middlebox, "
        "a timeout); find that failure",
        [f"client record 1: legacy_version {_hex(ch.legacy_version)} with TLS_FALLBACK_SCSV",
         *map(_who, alerts)], "RFC 7507 3")


def protocol_version(h: History) -> Finding | None:
    alerts = [a for a in _alerts(h) if a.description == 70]
    if not alerts:
        return None
    ev = list(map(_who, alerts))
    ch = _first_hello(h)
    if ch is not None:
        sv = ch.extension(43)
        offered = [_hex(int.from_bytes(sv.data[i:i + 2], "big"))
                   for i in range(1, len(sv.data) - 1, 2)] if sv else []
        ev.append(f"client offered legacy_version {_hex(ch.legacy_version)}"
                  + (f", supported_versions {offered}" if offered else ""))
    if h.negotiated_version:
        ev.append(f"server selected {_hex(h.negotiated_version)}")
    return Finding("protocol-version",
                   "protocol_version: the peers share no TLS version (or a record version was "
                   "not the expected one)", ev, "RFC 8446 4.2.1; RFC 5246 E.1")


def no_server_hello(h: History) -> Finding | None:
    if not h.client_hellos or h.server_hellos or _alerts(h) or h.closed_by is None:
        return None
    if any(a.kind in ("non_tls", "record_version") for a in h.anomalies):
        return None
    return Finding(
        "no-server-hello",
        f"the connection ended after the ClientHello without a ServerHello or an alert "
        f"(closed by {h.closed_by}): a silent reject (firewall, SNI filter, crash) or a reset",
        [f"client record {h.client_hellos[0].index}: ClientHello",
         f"closed by {h.closed_by}" + _fault_note(h, {"close", "drop"})], "RFC 8446 4.1")


def partial_record(h: History) -> Finding | None:
    ev = [f"{a.side}: {a.detail}" for a in h.anomalies if a.kind == "partial_record"]
    ev += [f"{f['from']} record {f['index']} truncated to {f['detail'].get('after')} bytes with "
           f"its length field unchanged (fault {f['scenario']})"
           for f in h.faults if f.get("action") == "truncate"
           and f.get("detail", {}).get("length_field") == "unchanged"]
    if not ev:
        return None
    return Finding("partial-record",
                   "the stream ended inside a record: the sender or a middlebox closed the "
                   "connection mid-flight (the receiver sees an unexpected EOF)",
                   ev, "RFC 8446 5.1; RFC 5246 7.2.1")


def unexpected_message(h: History) -> Finding | None:
    alerts = [a for a in _alerts(h) if a.description == 10]
    if not alerts:
        return None
    return Finding(
        "unexpected-message",
        "unexpected_message: a record or handshake message arrived where the state machine "
        "does not allow it (e.g. a ChangeCipherSpec before the ServerHello, CVE-2014-0224)",
        [*map(_who, alerts)] + [
            f"fault {f['scenario']}: {f['action']} at {f['from']} record {f['index']}"
            for f in h.faults if f.get("action") in ("insert-record", "drop", "fragment")],
        "RFC 8446 5, 6.2; RFC 5246 7.1")


def early_ccs(h: History) -> Finding | None:
    ev = [f"{a.side} record {a.index}: {a.detail}" for a in h.anomalies if a.kind == "early_ccs"]
    ev += [f"fault {f['scenario']}: change_cipher_spec inserted {f['detail'].get('position')} "
           f"{f['from']} record {f['index']}" for f in h.faults
           if f.get("action") == "insert-record"
           and f.get("detail", {}).get("content_type") == "change_cipher_spec"]
    if not ev:
        return None
    return Finding(
        "early-ccs",
        "a ChangeCipherSpec arrived before the keys exist (before the ServerHello): correct "
        "stacks abort with unexpected_message; one that accepts it is open to CCS injection "
        "(CVE-2014-0224)", ev, "RFC 5246 7.1; RFC 8446 5")


def fragmentation_failure(h: History) -> Finding | None:
    frags = [f for f in h.faults if f.get("action") == "fragment"
             and h.closed_by == other(f["from"])]
    if not frags:
        return None
    receiver = other(frags[0]["from"])
    if h.app_records[receiver]:
        return None
    return Finding(
        "fragmented-handshake-rejected",
        f"the {receiver} gave up after handshake messages were split across records, which "
        "TLS allows: the receiver (or a middlebox) cannot reassemble fragmented messages",
        [f"fault {f['scenario']}: {f['from']} record {f['index']} split into "
         f"{f['detail'].get('records_after')} records" for f in frags]
        + [f"closed by {h.closed_by}"], "RFC 8446 5.1; RFC 5246 6.2.1")


EXPLAINED = {10, 20, 21, 40, 70, 86, 112}


def other_fatal_alert(h: History) -> list[Finding]:
    """Any other fatal alert, named, so no failure ends without a finding."""
    return [Finding(f"alert-{names.alert_description_name(a.description).replace('_', '-')}",
                    f"{a.side} aborted with a fatal "
                    f"{names.alert_description_name(a.description)} alert",
                    [_who(a)], "RFC 8446 6.2; RFC 5246 7.2.2")
            for a in _alerts(h) if a.level == 2 and a.description not in EXPLAINED
            and a.description != 0][:3]


def fault_not_applied(h: History) -> list[Finding]:
    return [Finding("fault-not-applied", f"a configured fault never applied: {u}", [u],
                    "tlsinspector scenario") for u in h.unapplied_faults]


def fault_prediction(h: History) -> list[Finding]:
    """Whether a transcript-breaking fault ended as its class predicts: in a failure."""
    out = []
    breaking = [f for f in h.faults if f.get("class") == "transcript-breaking"
                and "not_applied" not in f.get("detail", {})]
    if breaking:
        fatal = [a for a in _alerts(h) if a.level == 2]
        failed = bool(fatal) or not h.app_records["client"]
        verdict = "as predicted, the handshake failed" if failed else \
            "NOT as predicted: application data flowed after a transcript-breaking fault"
        out.append(Finding("fault-outcome", verdict,
                           [f"fault {f['scenario']}: {f['action']} ({f['class']})"
                            for f in breaking] + list(map(_who, fatal)),
                           "RFC 8446 4.4.4 (Finished covers the transcript)"))
    return out


Rule = Callable[[History], Finding | None | list[Finding]]
RULES: tuple[Rule, ...] = (
    record_version_invalid, non_tls_bytes, reserved_alert, renegotiation,
    missing_supported_groups, missing_sni, bad_record_mac, inappropriate_fallback,
    protocol_version, unexpected_message, early_ccs, fragmentation_failure, other_fatal_alert,
    no_server_hello, partial_record, fault_not_applied, fault_prediction,
)


def diagnose(h: History) -> list[Finding]:
    out: list[Finding] = []
    for rule in RULES:
        found: Any = rule(h)
        if isinstance(found, Finding):
            out.append(found)
        elif found:
            out.extend(found)
    return out
