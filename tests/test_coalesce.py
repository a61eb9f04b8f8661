"""proxy/coalesce.py: runs of tiny handshake fragments become one ``fragments`` event."""

from __future__ import annotations

from typing import Any

from tlsinspector.proxy.coalesce import Coalescer


def rec(i: int, side: str = "client", length: int = 1, **kw: Any) -> dict[str, Any]:
    return {"event": "record", "ts": float(i), "conn": "1", "from": side, "index": i,
            "content_type": "handshake", "version": "0x0301", "length": length,
            "encrypted": False, "fragment": {"have": i, "want": 100}, **kw}


def test_a_run_becomes_one_event_and_order_is_kept() -> None:
    c = Coalescer()
    out = c.feed([rec(1), rec(2), rec(3)])
    assert out == []  # the run may go on in the next read
    msg = rec(4, messages=[{"type": "client_hello"}])
    out = c.feed([msg])
    assert out == [{"event": "fragments", "ts": 1.0, "conn": "1", "from": "client",
                    "first_index": 1, "last_index": 3, "count": 3, "bytes": 3,
                    "content_type": "handshake", "held": False, "have": 3, "want": 100},
                   msg]


def test_lone_tiny_and_large_records_are_logged_as_themselves() -> None:
    c = Coalescer()
    a, big, b = rec(1), rec(2, length=65), rec(1, side="server")
    assert c.feed([a, big, b]) == [a, big]
    assert c.flush() == [b]
    assert c.flush() == []


def test_runs_break_at_side_held_and_gaps() -> None:
    c = Coalescer()
    evs = [rec(1), rec(2), rec(1, side="server"), rec(2, side="server"), rec(3, held=True),
           rec(4, held=True), rec(6), rec(7)]
    out = c.feed(evs) + c.flush()
    assert [(e["event"], e.get("first_index"), e.get("count"), e.get("held")) for e in out] == [
        ("fragments", 1, 2, False), ("fragments", 1, 2, False), ("fragments", 3, 2, True),
        ("fragments", 6, 2, False)]


def test_notable_records_are_never_folded() -> None:
    c = Coalescer()
    evs = [rec(1, fault={"action": "x"}), rec(2, note="unparsed from here"),
           rec(3, alert={"level": "fatal"}), rec(4, encrypted=True)]
    assert c.feed(evs) == evs
