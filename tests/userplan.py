"""A fault plan of a user's own: engine.FaultPlan, the protocol alone (no
FaultPlanner, none of its optional methods such as wants_plaintext), changing
nothing. Tests subclass it to override the one call they are about."""

from __future__ import annotations

from typing import Any


class ProtocolOnlyPlan:
    def next_timer(self, started: float, last: float) -> float | None:
        return None

    def on_timer(self, now: float, started: float, last: float) -> None:
        return None

    def may_apply(self, side: str, records_seen: int) -> bool:
        return True

    def on_record(self, view: Any) -> Any:
        return None

    def wants_whole_hello(self, side: str) -> bool:
        return False

    def wants_inside(self, side: str) -> bool:
        return False

    def may_need_keys(self, side: str, index: int, outer: int | None = None) -> bool:
        return False

    def give_up_keys(self, side: str, index: int, reason: str,
                     outer: int | None = None) -> tuple[Any, ...]:
        return ()

    def unapplied(self, records: Any = None) -> list[str]:
        return []

    def on_plaintext(self, unit: Any, number: int) -> None:
        return None
