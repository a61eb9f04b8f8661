"""The record layer in isolation, playbook style: mitmproxy events in, commands out.

mitmproxy's own layer tests use ``tutils.Playbook``, which the installed
mitmproxy does not ship (it lives in its test tree); :class:`Play` is the
minimal equivalent: it feeds one event to the layer and returns the commands it
yields, answering the blocking OpenConnection. The bytes are a real TLS
conversation (Python ssl in memory); the clock is a counter the test moves.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from mitmproxy import options
from mitmproxy.connection import ConnectionState
from mitmproxy.proxy import commands, events
from mitmproxy.proxy import context as mcontext
from mitmproxy.test import tflow

import tlsinspector.addons.inspector as inspector_mod
from tests.conversation import conversation
from tlsinspector.addons.inspector import Inspector, RecordLayer
from tlsinspector.proxy import engine, messages
from tlsinspector.proxy.scenario import load_scenario_text

CONV = conversation("1.3")
HELLO = CONV[0][1]
FLIGHT = CONV[1][1]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now


class Play:
    """Events in, commands out, for one RecordLayer."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, faults: str | None = None) -> None:
        self.clock = Clock()
        monkeypatch.setattr(inspector_mod, "time", self.clock)
        self.inspector = Inspector()
        self.inspector.quiet = True
        self.events: list[dict[str, Any]] = []
        monkeypatch.setattr(self.inspector, "emit_many", self.events.extend)
        if faults:
            self.inspector.scenarios = (load_scenario_text(f"name: t\nfaults:\n{faults}"),)
            self.inspector.rng = random.Random(1)
        self.ctx = mcontext.Context(tflow.tclient_conn(), options.Options())
        self.ctx.client.proxy_mode = None  # reverse mode, as the runner sets it up
        self.ctx.server = tflow.tserver_conn()
        self.ctx.server.timestamp_start = None
        self.client, self.server = self.ctx.client, self.ctx.server
        self.layer = RecordLayer(self.ctx, self.inspector)

    def __call__(self, event: events.Event) -> list[commands.Command]:
        return list(self.layer.handle_event(event))

    def start(self) -> None:
        (opened,) = self(events.Start())
        assert isinstance(opened, commands.OpenConnection) and opened.connection is self.server
        assert self(events.OpenConnectionCompleted(opened, None)) == []
        self.server.state = ConnectionState.OPEN
        assert [e["event"] for e in self.events] == ["connect"]


def sends(cmds: list[commands.Command]) -> list[tuple[str, bytes]]:
    return [("client" if c.connection.__class__.__name__ == "Client" else "server", c.data)
            for c in cmds if isinstance(c, commands.SendData)]


def test_bytes_relay_both_ways_and_half_closes_follow(monkeypatch: pytest.MonkeyPatch) -> None:
    p = Play(monkeypatch)
    p.start()
    assert sends(p(events.DataReceived(p.client, HELLO))) == [("server", HELLO)]
    assert sends(p(events.DataReceived(p.server, FLIGHT))) == [("client", FLIGHT)]
    records = [e for e in p.events if e["event"] == "record"]
    assert records[0]["messages"][0]["type"] == "client_hello"
    # The client's FIN becomes a half-close toward the server; the layer stays up.
    p.client.state = ConnectionState.CAN_WRITE
    (half,) = p(events.ConnectionClosed(p.client))
    assert isinstance(half, commands.CloseTcpConnection) and half.half_close
    assert half.connection is p.server
    # The server's FIN: both directions are done, so the layer closes and logs close.
    p.server.state = ConnectionState.CAN_WRITE
    cmds = p(events.ConnectionClosed(p.server))
    assert any(isinstance(c, commands.CloseConnection) for c in cmds)
    assert p.events[-1]["event"] == "close" and p.events[-1]["by"] == "client"
    assert p(events.DataReceived(p.client, b"late")) == []  # done: nothing more


def test_a_delay_fault_asks_for_a_wakeup_and_sends_when_it_comes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    p = Play(monkeypatch, "  - match: {from: client, index: 1}\n    action: delay\n"
                          "    ms: 250\n")
    p.start()
    cmds = p(events.DataReceived(p.client, HELLO))
    (wake,) = [c for c in cmds if isinstance(c, commands.RequestWakeup)]
    assert wake.delay == pytest.approx(0.25)
    assert sends(cmds) == []
    p.clock.now += 0.1
    assert sends(p(events.Wakeup(wake))) == []          # early: nothing due yet
    p.clock.now += 0.2
    assert sends(p(events.Wakeup(wake))) == [("server", HELLO)]


def test_both_sides_closing_during_a_delay_log_the_close_then_the_bytes_go_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The close event is the real close: both peers left while a delay held the
    server's flight (a client that timed out). The close is logged then; the held
    bytes and the FIN behind them still go out at their time, then the sockets close."""
    p = Play(monkeypatch, "  - match: {from: server, index: 1}\n    action: delay\n"
                          "    ms: 5000\n")
    p.start()
    assert sends(p(events.DataReceived(p.client, HELLO))) == [("server", HELLO)]
    cmds = p(events.DataReceived(p.server, FLIGHT))
    (wake,) = [c for c in cmds if isinstance(c, commands.RequestWakeup)]
    assert sends(cmds) == []
    p.clock.now += 2.0  # the client gives up
    p.client.state = ConnectionState.CAN_WRITE
    p(events.ConnectionClosed(p.client))
    p.clock.now += 0.01
    p.server.state = ConnectionState.CAN_WRITE
    cmds = p(events.ConnectionClosed(p.server))
    assert sends(cmds) == [] and not any(isinstance(c, commands.CloseConnection) for c in cmds)
    close = p.events[-1]
    assert close["event"] == "close" and close["ts"] == pytest.approx(1002.01)
    assert close["by"] == "client" and "timeout" in [d["code"] for d in close["diagnosis"]]
    # The server's flight was read (bytes) but is still held: the close says how much.
    assert close["bytes"]["server"] == len(FLIGHT)
    assert close["held"] == {"client": 0, "server": len(FLIGHT)}
    p.clock.now += 1.0
    assert sends(p(events.Wakeup(wake))) == []  # not due yet
    p.clock.now += 2.0
    cmds = p(events.Wakeup(wake))
    got = sends(cmds)  # delivered, never dropped silently
    assert {to for to, _ in got} == {"client"} and b"".join(d for _, d in got) == FLIGHT
    assert p.client in [c.connection for c in cmds if type(c) is commands.CloseConnection]
    assert [e["event"] for e in p.events].count("close") == 1
    assert p(events.DataReceived(p.client, b"late")) == []  # done


def test_a_reset_fault_closes_both_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    p = Play(monkeypatch, "  - match: {from: client, index: 1}\n    action: close\n"
                          "    how: rst\n")
    p.start()
    cmds = p(events.DataReceived(p.client, HELLO))
    closed = [c.connection for c in cmds if type(c) is commands.CloseConnection]
    assert p.server in closed and p.client in closed
    # The matched record still goes out, then the connection is torn down.
    assert sends(cmds) == [("server", HELLO)]
    kinds = [type(c).__name__ for c in cmds]
    assert kinds.index("SendData") < kinds.index("CloseConnection")
    # mitmproxy closes both and reports it; the close event names the proxy.
    p.client.state = p.server.state = ConnectionState.CLOSED
    p(events.ConnectionClosed(p.client))
    assert p.events[-1]["event"] == "close" and p.events[-1]["by"] == "proxy"


def test_an_engine_failure_keeps_the_relay_byte_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(msg: Any) -> Any:
        raise RuntimeError("planted failure")
    monkeypatch.setattr(messages, "describe", broken)
    p = Play(monkeypatch)
    p.start()
    assert sends(p(events.DataReceived(p.client, HELLO))) == [("server", HELLO)]
    assert sends(p(events.DataReceived(p.server, FLIGHT))) == [("client", FLIGHT)]
    errors = [e for e in p.events if e["event"] == "internal_error"]
    assert len(errors) == 1 and errors[0]["conn"] == p.layer.engine.conn_id  # type: ignore[union-attr]


def _app(n: int) -> bytes:
    return b"\x17\x03\x03" + n.to_bytes(2, "big") + bytes(n)


def test_a_side_paused_for_slices_reads_again_when_its_bytes_drain(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Found with `run --pcap` under load (bulk downloads stalled): a side paused
    because many bytes waited for slices must be resumed however the waiting bytes
    drain, also when a later read's larger slice takes them before the turn."""
    p = Play(monkeypatch)
    p.start()
    p(events.DataReceived(p.client, HELLO))
    p(events.DataReceived(p.server, FLIGHT))
    # Until a side pauses, its layer holds no set of its own (issue 19's idle RSS).
    assert p.layer._slice_paused is engine.NO_SIDES is p.layer._not_reading
    paused: dict[str, bool] = {}

    def pause(context: Any, conn: Any, on: bool) -> bool:
        paused["client" if conn is p.client else "server"] = on
        return True

    monkeypatch.setattr(p.inspector, "pause_reading", pause)
    ticks = iter([0.0, 1.0] + [x * 1e-9 for x in range(2, 10_000)])
    monkeypatch.setattr(inspector_mod, "perf_counter", lambda: next(ticks))
    # A slow receive (1 s for the first slice) shrinks the slice to its minimum, so
    # most of a large read waits: reading from the server pauses, a turn is asked for.
    cmds = p(events.DataReceived(p.server, _app(16000) * 8))
    assert paused == {"server": True}
    assert p.layer._slice_paused == {"server"}
    assert engine.NO_SIDES == frozenset()  # the shared empty set was not changed
    assert any(isinstance(c, commands.RequestWakeup) for c in cmds)
    # Bytes the socket had already read arrive; the receive is fast now, the slice
    # grows, and the waiting bytes drain by this read rather than by the turn.
    p(events.DataReceived(p.server, _app(100)))   # (the slice grows after this one)
    p(events.DataReceived(p.server, _app(100)))
    assert not p.layer._waiting["server"]
    wake = next(c for c in cmds if isinstance(c, commands.RequestWakeup))
    p(events.Wakeup(wake))
    assert paused == {"server": False}   # reading again: no stall
    assert not p.layer._slice_paused


@pytest.mark.parametrize("fault", [None, "  - match: {from: client, index: 9}\n    action: drop\n"])
def test_a_chunk_nothing_can_change_is_written_before_it_is_logged(
        monkeypatch: pytest.MonkeyPatch, fault: str | None) -> None:
    """Issue 14: the server's flight goes to the client before the engine parses it
    and the log gets its records (with keys, opening it is most of a handshake's
    cost); while a fault may still apply, the records are logged, then sent."""
    p = Play(monkeypatch, faults=fault)
    p.start()
    list(p(events.DataReceived(p.client, HELLO)))
    logged = len(p.events)
    gen = p.layer.handle_event(events.DataReceived(p.server, FLIGHT))
    first = next(gen)
    at_send = len(p.events)
    rest = list(gen)
    assert sends([first, *rest]) == [("client", FLIGHT)]
    server_records = [e for e in p.events[logged:] if e["event"] == "record"]
    assert server_records and all(e["from"] == "server" for e in server_records)
    if fault is None:
        assert isinstance(first, commands.SendData) and at_send == logged
    else:
        assert at_send == logged + len(server_records)


def test_a_hand_over_to_the_hot_relay_during_a_turn_ends_the_full_path_there(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The last waiting slice of a big read settles the connection inside a turn (a
    Wakeup), and the hot relay takes it and detaches it (the layer's context is
    let go). The Wakeup branch went on to _maybe_done and read the context: "mitmproxy
    has crashed!" (tlsfuzzer's test-tls13-zero-length-data: 16 KiB records right after
    the handshake)."""
    import tlsinspector.addons.hotpath as hotpath_mod

    class Detached:
        detached = True

    taken: list[RecordLayer] = []

    def take(layer: RecordLayer, idle: float) -> Detached | None:
        taken.append(layer)
        return Detached()

    p = Play(monkeypatch)
    p.start()
    for side, data in CONV:
        p(events.DataReceived(p.client if side == "client" else p.server, data))
    assert p.layer.engine is not None and p.layer.engine.relayable
    monkeypatch.setattr(hotpath_mod, "maybe_take_over", take)
    monkeypatch.setattr(inspector_mod.mitm_internals, "slim_event_queue", lambda layer: None)
    big = bytes.fromhex("1703034000") + bytes(0x4000)
    cmds = p(events.DataReceived(p.client, big * 3))  # more than one slice: a turn waits
    assert not taken and any(isinstance(c, commands.RequestWakeup) for c in cmds)
    (wake,) = [c for c in cmds if isinstance(c, commands.RequestWakeup)]
    while not taken:
        cmds = p(events.Wakeup(wake))  # raised AttributeError on the context before
        wake = next((c for c in cmds if isinstance(c, commands.RequestWakeup)), wake)
    assert p.layer.context is None and p.layer.hot is not None
    sent = sends(cmds)
    assert sent and {to for to, _ in sent} == {"server"}
