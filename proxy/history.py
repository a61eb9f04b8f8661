"""What a connection did, kept small enough to hold for its whole life.

The engine records here only what diagnosis needs (hellos, alerts, anomalies,
faults), never application data, and caps every list so a long connection
costs O(1) memory (DESIGN.md "Bounded memory").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

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


@dataclass(frozen=True, slots=True)
class AlertSeen:
    side: Side                      # who sent it
    index: int
    level: int
    description: int
    record_version: int
    negotiated_version: int | None  # the version in force when it was sent


@dataclass(frozen=True, slots=True)
class Anomaly:
    """Something on the wire that no correct peer sends."""

    side: Side
    index: int | None
    kind: str                       # "record_version" | "non_tls" | "partial_record" | "unparsed"
                                    # | "oversized" | "encrypted_renegotiation"
    detail: str
    value: Any = None               # e.g. the record version, the non-TLS preview


@dataclass(slots=True)
class History:
    client_hellos: list[HelloSeen] = field(default_factory=list)
    server_hellos: list[HelloSeen] = field(default_factory=list)
    alerts: list[AlertSeen] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)   # "fault" dicts as logged
    unapplied_faults: list[str] = field(default_factory=list)    # faults that never applied
    negotiated_version: int | None = None
    handshake_done: dict[str, bool] = field(
        default_factory=lambda: {"client": False, "server": False})
    records: dict[str, int] = field(default_factory=lambda: {"client": 0, "server": 0})
    app_records: dict[str, int] = field(default_factory=lambda: {"client": 0, "server": 0})
    closed_by: str | None = None

    def add(self, items: list[Any], item: Any) -> None:
        """Append unless the list is at its cap (the first items matter most)."""
        if len(items) < MAX_ITEMS:
            items.append(item)
