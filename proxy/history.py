"""What a connection did, kept small enough to hold for its whole life.

The engine records here only what diagnosis needs (hellos, alerts, anomalies,
faults), never application data, and caps every list so a long connection
costs O(1) memory (DESIGN.md "Bounded memory").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tlsinspector.proxy.frozen import fast_init
from tlsinspector.proxy.hello import ClientHello, ServerHello

Side = Literal["client", "server"]

MAX_ITEMS = 32


def other(side: Side) -> Side:
    return "server" if side == "client" else "client"


@dataclass(frozen=True, slots=True)
class HelloSeen:
    side: Side
    index: int                      # record index (1-based, per side) where the hello started
    record_version: int             # version field of that record's header
    hello: ClientHello | ServerHello
    renegotiation: bool = False     # a second ClientHello on an established connection


@fast_init
@dataclass(frozen=True, slots=True)
class AlertSeen:
    side: Side                      # who sent it
    index: int
    level: int
    description: int
    record_version: int
    negotiated_version: int | None  # the version in force when it was sent
    # The other side had already closed its sending half (FIN) when this was sent:
    # a reaction to that close, which must not outrank its cause in the diagnosis.
    after_peer_left: bool = False


@dataclass(frozen=True, slots=True)
class Anomaly:
    """Something on the wire that no correct peer sends."""

    side: Side
    index: int | None
    kind: str                       # "record_version" | "record_version_mismatch"
                                    # | "non_tls" | "partial_record" | "unparsed"
                                    # | "oversized" | "encrypted_renegotiation"
                                    # | "malformed_hello" | "empty_record" | "heartbeat"
                                    # | "hello_length"
    detail: str
    value: Any = None               # e.g. the record version, the non-TLS preview
    # partial_record: the receiver had already closed when the sender's stream ended
    # (the rest of that record was never owed to anyone: no truncation it saw).
    after_peer_left: bool = False


@dataclass(frozen=True, slots=True)
class FaultSeen:
    """A fault that matched a record, as typed values (the log gets :meth:`to_json`).

    Diagnosis reads ``params`` (the scenario's normalized parameters: numbers and
    bytes, never the log's hex strings) and ``facts`` (typed results an action
    reports, e.g. the extension codes it really removed); ``detail`` is the
    human before/after the log shows and is only ever displayed.
    """

    scenario: str
    action: str
    side: Side                      # the side whose record it matched
    index: int                      # that record's index (the last one of a held hello)
    cls: str                        # transcript-safe | transcript-breaking | needs-keys
    detail: Mapping[str, Any]
    params: Mapping[str, Any] = field(default_factory=dict)
    facts: Mapping[str, Any] = field(default_factory=dict)
    not_applied: str | None = None  # why it could not apply (then nothing changed)
    protected: bool = False         # the matched side's records were already encrypted
                                    # (before this record: a TLS 1.3 ServerHello or a
                                    # CCS is itself in the clear)
    # An alert the fault sent entered a direction whose records were already encrypted
    # at that point (RFC 5246 7.1, RFC 8446 5): before or after the matched record, or
    # toward its sender (reply-alert); the engine knows which from the action.
    alert_encrypted: bool = False
    # What the fault put in the record's place was sealed with the side's keys (a fault
    # inside the encryption, or --intercept, where the inspector holds the keys): an
    # alert it sent is then a protected one, not a plaintext alert (RFC 8446 5.2).
    sealed: bool = False
    at: float | None = None         # when it applied (the engine's ``now``)

    @property
    def applied(self) -> bool:
        return self.not_applied is None

    def to_json(self) -> dict[str, Any]:
        if self.not_applied is not None:
            return {"scenario": self.scenario, "action": self.action,
                    "detail": {"not_applied": self.not_applied}}
        return {"scenario": self.scenario, "action": self.action, "detail": dict(self.detail),
                "class": self.cls}

    def text(self) -> str:
        timer = self.facts.get("timer")
        if isinstance(timer, Mapping) and timer:
            # A timer fault fired without a record ("on server record 0" named none).
            key, ms = next(iter(timer.items()))
            return f"fault {self.scenario}: {self.action} on its timer ({key} {ms})"
        if "plaintext" in self.facts:
            # A STARTTLS line before TLS: no record ("on server record 0" named none).
            return f"fault {self.scenario}: {self.action} on a {self.side} plaintext line"
        return f"fault {self.scenario}: {self.action} on {self.side} record {self.index}"


@fast_init
@dataclass(frozen=True, slots=True)
class DecryptedSeen:
    """An encrypted record as the key log let the engine see it (issue 14).

    ``messages`` are the decoded handshake messages' JSON fields (certificates
    included); never application data. ``status`` is "decrypted" or
    "undecryptable" (then ``reason``).
    """

    side: Side
    index: int
    status: str
    inner_type: int | None = None
    messages: tuple[dict[str, Any], ...] = ()
    alert: tuple[int, int] | None = None   # (level, description)
    reason: str = ""


@fast_init
@dataclass(frozen=True, slots=True)
class EncryptedSeen:
    """The last encrypted record a side sent (what the keyless diagnosis needs)."""

    side: Side
    index: int
    content_type: int
    length: int
    after_peer_left: bool = False   # sent once the peer had closed: it answers that close


@dataclass(slots=True)
class History:
    client_hellos: list[HelloSeen] = field(default_factory=list)
    server_hellos: list[HelloSeen] = field(default_factory=list)
    alerts: list[AlertSeen] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    faults: list[FaultSeen] = field(default_factory=list)        # faults that matched
    unapplied_faults: list[str] = field(default_factory=list)    # faults that never applied
    negotiated_version: int | None = None
    handshake_done: dict[str, bool] = field(
        default_factory=lambda: {"client": False, "server": False})
    records: dict[str, int] = field(default_factory=lambda: {"client": 0, "server": 0})
    app_records: dict[str, int] = field(default_factory=lambda: {"client": 0, "server": 0})
    closed_by: str | None = None
    keys: bool = False                    # a key log was configured
    decrypted: list[DecryptedSeen] = field(default_factory=list)  # handshake, alerts, failures
    # Records the logged keys did not open (not those whose keys never arrived).
    undecryptable: dict[str, int] = field(default_factory=lambda: {"client": 0, "server": 0})
    last_encrypted: dict[str, EncryptedSeen] = field(default_factory=dict)
    # Encrypted records per side, and those sent once the peer had sent encrypted
    # ones too (TLS 1.3: after the peer's Finished or its first alert).
    encrypted: dict[str, int] = field(default_factory=lambda: {"client": 0, "server": 0})
    encrypted_after_peer: dict[str, int] = field(
        default_factory=lambda: {"client": 0, "server": 0})
    # With keys: records whose inner type is application_data (bulk ones counted unopened).
    inner_app: dict[str, int] = field(default_factory=lambda: {"client": 0, "server": 0})
    finished_at: float | None = None      # unix time of the close (certificate validity)
    # --intercept: this leg's InterceptFacts (proxy/intercept.py), set before the
    # diagnosis; None on the transparent path.
    intercept: Any = None
    # Timing, for "who waited how long" (a timeout after a drop or a delay): when the
    # connection started, when bytes last came from each side and last went toward
    # each side, and when each side closed its sending half.
    started_at: float | None = None
    last_from: dict[str, float] = field(default_factory=dict)
    last_to: dict[str, float] = field(default_factory=dict)
    eof_at: dict[str, float] = field(default_factory=dict)
    # The plaintext phase (issue 17): the session (its lines, capped) and its
    # protocol, and where each side's TLS began (stream offset).
    plain: Any = None
    plain_protocol: str | None = None
    tls_at: dict[str, int] = field(default_factory=dict)
    # The upstream connection could not be opened: (address, the OS error's text).
    upstream_error: tuple[str, str] | None = None

    def add(self, items: list[Any], item: Any) -> None:
        """Append unless the list is at its cap (the first items matter most)."""
        if len(items) < MAX_ITEMS:
            items.append(item)
