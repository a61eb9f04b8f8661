"""proxy/coalesce.py: runs of tiny handshake fragments become one ``fragments`` event."""

from __future__ import annotations

from typing import Any

from tlsinspector.proxy.coalesce import TINY, Coalescer


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


def plain(i: int, ctype: str = "change_cipher_spec", length: int = 1,
          **kw: Any) -> dict[str, Any]:
    return {"event": "record", "ts": float(i), "conn": "1", "from": "client", "index": i,
            "content_type": ctype, "version": "0x0303", "length": length,
            "encrypted": False, **kw}


def test_identical_tiny_records_fold_into_one_repeated_event() -> None:
    c = Coalescer()
    alert = {"level": "warning", "description": "close_notify", "code": 0}
    evs = ([plain(i) for i in range(1, 4)]
           + [plain(i, "alert", 2, alert=alert) for i in range(4, 7)]
           + [plain(7, "alert", 2, alert={**alert, "code": 1})])
    out = c.feed(evs) + c.flush()
    assert [(e["event"], e.get("first_index"), e.get("count")) for e in out] == [
        ("repeated", 1, 3), ("repeated", 4, 3), ("record", None, None)]
    assert out[0]["record"] == evs[0] and out[0]["bytes"] == 3


def test_ordinary_records_are_not_folded() -> None:
    c = Coalescer()
    # Application data as real AEAD ciphers make it (>= 17 bytes) stays per record,
    # and so does anything a fault touched.
    evs = [plain(i, "application_data", 17, encrypted=True) for i in range(1, 4)]
    evs += [plain(i, fault={"action": "x"}) for i in range(4, 6)]
    assert c.feed(evs) + c.flush() == evs
    flood = [plain(i, "application_data", 1, encrypted=True) for i in range(1, 100)]
    [ev] = c.feed(flood) + c.flush()
    assert ev["event"] == "repeated" and ev["count"] == 99


def test_floods_through_the_engine_cost_one_event() -> None:
    import orjson

    from tlsinspector.proxy import engine

    for rec in (b"\x14\x03\x03\x00\x01\x01", b"\x15\x03\x03\x00\x02\x01\x00",
                b"\x16\x03\x03\x00\x04\x00\x00\x00\x00", b"\x17\x03\x03\x00\x01\x01"):
        conn, c = engine.Connection("1", "a", "b"), Coalescer()
        outs = conn.receive("client", rec * 20_000, 0.0)
        log = c.feed([o.event for o in outs if isinstance(o, engine.Emit)]) + c.flush()
        # Per-record events were 21-29x the input; now one event for the flood.
        assert sum(len(orjson.dumps(e)) for e in log) < 1000, log[:3]
        assert sum(e.get("count", 1) for e in log if e["event"] != "connect") == 20_000


def test_packed_runs_pass_whole_as_their_records_would() -> None:
    """feed_packed over packed runs equals feed over the same events unpacked, with
    tiny fragments before, between and after (a run ends a pending tiny run)."""
    from tlsinspector.proxy.engine import ALERT_SIZED
    from tlsinspector.proxy.messages import app_data_event
    from tlsinspector.proxy.outbox import EmitRecords, unpacked

    # The engine packs only application_data records longer than ALERT_SIZED, and the
    # coalescer passes every record longer than TINY as itself: the one makes the other.
    assert ALERT_SIZED >= TINY

    def run(first: int) -> EmitRecords:
        return EmitRecords(app_data_event(2.0, "1", "server", 0, 0x0303, 0), first,
                           [16401, 70])

    sequences: list[list[Any]] = [
        [rec(1), rec(2), run(3), rec(5), rec(6)],
        [run(1), rec(3), run(4)],
        [rec(1), rec(2), rec(3)],
        [run(1), run(3)],
    ]
    for items in sequences:
        a, b = Coalescer(), Coalescer()
        got = unpacked(a.feed_packed(items)) + a.flush()
        want = b.feed(unpacked(items)) + b.flush()
        assert got == want
