"""The contract with mitmproxy's and asyncio's internals (addons/mitm_internals.py).

If a mitmproxy or Python release changes one of the internals the inspector
relies on, these tests fail and say which one. The behaviour is checked on real
asyncio sockets over loopback, not on stand-ins.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import socket
from typing import Any

import pytest
from mitmproxy import options
from mitmproxy.proxy import context as mcontext
from mitmproxy.proxy import layer, server
from mitmproxy.test import tflow

from tlsinspector.addons import mitm_internals

TIMEOUT = 10


def test_the_installed_mitmproxy_keeps_the_contract() -> None:
    problems = mitm_internals.contract_problems()
    assert problems == [], ("mitmproxy/asyncio internals the inspector relies on changed; "
                            "update addons/mitm_internals.py:\n  " + "\n  ".join(problems))


def test_a_changed_internal_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclasses.dataclass
    class ConnectionIO:  # a release that renamed the writer
        handler: Any = None
        reader: Any = None
        stream: Any = None
    monkeypatch.setattr(server, "ConnectionIO", ConnectionIO)
    assert mitm_internals.contract_problems() == [
        "mitmproxy.proxy.server.ConnectionIO no longer has fields 'reader' and 'writer'"]


Peer = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _pair() -> tuple[Any, Peer, asyncio.AbstractServer]:
    accepted: asyncio.Queue[Peer] = asyncio.Queue()

    async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await accepted.put((r, w))
    srv = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port),
                                            TIMEOUT)
    peer = await asyncio.wait_for(accepted.get(), TIMEOUT)
    return server.ConnectionIO(reader=reader, writer=writer), peer, srv


def test_pause_and_resume_reading_on_a_real_socket() -> None:
    async def main() -> None:
        io, (_, peer), srv = await _pair()
        transport = io.writer.transport
        io.reader._paused = True  # as if the StreamReader had paused the transport itself
        assert mitm_internals.pause_reading(io, True)
        assert not transport.is_reading()
        # The reader forgot its own pause, so draining its buffer cannot resume reads.
        assert io.reader._paused is False
        peer.write(b"x" * 10)
        await peer.drain()
        assert mitm_internals.pause_reading(io, False)
        assert transport.is_reading()
        assert await asyncio.wait_for(io.reader.readexactly(10), TIMEOUT) == b"x" * 10
        io.writer.close()
        peer.close()
        srv.close()
        await srv.wait_closed()
    asyncio.run(main())


def test_linger_zero_makes_the_close_a_reset() -> None:
    async def main() -> None:
        io, (peer_reader, peer), srv = await _pair()
        sock = mitm_internals.raw_socket(io)
        assert sock is not None and sock.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER) == 0
        assert mitm_internals.set_linger_zero(io)
        io.writer.close()
        # The peer's read sees the RST (RFC 9293 3.6.1), not an orderly EOF (b"").
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(peer_reader.read(1), TIMEOUT)
        peer.close()
        srv.close()
        await srv.wait_closed()
    asyncio.run(main())


class _RustStream:
    """What WireGuard and local modes hand out instead of an asyncio StreamWriter:
    no ``transport`` attribute."""

    def write(self, data: bytes) -> None:
        pass


def test_writers_without_a_transport_are_out_of_reach_not_errors() -> None:
    io = server.ConnectionIO(reader=_RustStream(), writer=_RustStream())  # type: ignore[arg-type]
    assert mitm_internals.pause_reading(io, True) is False
    assert mitm_internals.pause_reading(io, False) is False
    assert mitm_internals.raw_socket(io) is None
    assert mitm_internals.set_linger_zero(io) is False


def test_connection_io_without_a_running_proxy_is_none() -> None:
    ctx_ = mcontext.Context(tflow.tclient_conn(), options.Options())
    assert mitm_internals.connection_io(ctx_, ctx_.client) is None


def test_undoing_another_addons_layer_choice() -> None:
    ctx_ = mcontext.Context(tflow.tclient_conn(), options.Options())
    first, chosen, extra = (layer.NextLayer(ctx_) for _ in range(3))
    ctx_.layers = [first, chosen, extra]
    ctx_.client.tls = ctx_.server.tls = True
    assert mitm_internals.stack_before(ctx_, chosen) == [first]
    assert mitm_internals.stack_before(ctx_, None) == [first, chosen, extra]
    mitm_internals.undo_layer_choice(ctx_, chosen)
    assert ctx_.layers == [first]
    assert ctx_.client.tls is False and ctx_.server.tls is False


def test_slim_idle_swaps_only_empty_deques_for_lists_that_still_serve_their_owners() -> None:
    async def noop() -> None:
        pass

    async def run() -> None:
        ctx_ = mcontext.Context(tflow.tclient_conn(), options.Options())
        idle, busy = layer.NextLayer(ctx_), layer.NextLayer(ctx_)
        ctx_.layers = [idle, busy]  # (NextLayers leave Context.layers; the handler's
        # chain, walked in a running proxy, is not there in this harness)
        busy._paused_event_queue.append("queued")  # type: ignore[arg-type]
        io, (_, peer_w), srv = await _pair()
        old = io.writer.transport.get_protocol()
        dog = server.TimeoutWatchdog(600, noop)
        try:
            assert mitm_internals.slim_idle(ctx_, [old], dog) == 3
            assert type(busy._paused_event_queue) is collections.deque
            assert list(busy._paused_event_queue) == ["queued"]
            for small in (idle._paused_event_queue, old._drain_waiters,
                          dog.can_timeout._waiters):
                assert isinstance(small, list) and not small
            # The layer's queue, as Layer uses it: append while paused, popleft on resume.
            queue = idle._paused_event_queue
            queue.append("a")  # type: ignore[arg-type]
            queue.append("b")  # type: ignore[arg-type]
            assert queue.popleft() == "a" and list(queue) == ["b"]
            # A drain waits for resume_writing (FlowControlMixin), stepped by hand.
            old.pause_writing()
            drain = old._drain_helper()
            waiter = drain.send(None)
            assert old._drain_waiters == [waiter]
            old.resume_writing()
            with pytest.raises(StopIteration):
                drain.send(None)
            assert old._drain_waiters == []
            # The watchdog's Event while disarmed (a blocking hook), then set again.
            with dog.disarm():
                wait = dog.can_timeout.wait()
                fut = wait.send(None)
                assert dog.can_timeout._waiters == [fut]
            with pytest.raises(StopIteration):
                wait.send(None)
            assert dog.can_timeout._waiters == []
        finally:
            io.writer.close()
            peer_w.close()
            srv.close()
            await srv.wait_closed()
    asyncio.run(asyncio.wait_for(run(), TIMEOUT))


def test_the_handlers_task_sets_as_lists_keep_set_semantics() -> None:
    """slim_idle's stand-in for ConnectionHandler.wakeup_timer / hook_tasks: add does
    not duplicate, discard ignores what is absent, remove and pop take one."""
    tasks = mitm_internals._TaskSet()
    tasks.add("a")
    tasks.add("a")
    tasks.add("b")
    assert list(tasks) == ["a", "b"]
    tasks.discard("x")
    tasks.discard("a")
    assert list(tasks) == ["b"]
    tasks.remove("b")
    assert not tasks
    tasks.add("c")
    assert tasks.pop() == "c" and not tasks
    with pytest.raises(ValueError):
        tasks.remove("c")  # as set.remove raises (KeyError) for what is absent


def test_drop_read_chunks_names_a_changed_read_loop_and_needs_a_handler(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """drop_read_chunks hands mitmproxy's read tasks a byte: the contract fails by name
    if handle_connection no longer reads and hands chunks on as DataReceived, and
    without a proxyserver (no handler) nothing is handed."""
    async def handle_connection(self: Any, connection: Any) -> None:  # a changed release
        await asyncio.sleep(0)
    monkeypatch.setattr(server.ConnectionHandler, "handle_connection", handle_connection)
    assert mitm_internals.contract_problems() == [
        "ConnectionHandler.handle_connection no longer reads with reader.read() and hands "
        "each chunk on as DataReceived (drop_read_chunks)",
        "ConnectionHandler.handle_connection no longer ends a cancelled connection by "
        "closing its writer and forgetting it (detach)"]
    ctx = mcontext.Context(tflow.tclient_conn(), options.Options())
    assert mitm_internals.drop_read_chunks(ctx, object()) == 0


def test_detach_names_a_changed_client_handler_and_needs_a_handler(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """detach relies on handle_client cancelling the other connections' tasks once the
    client's ended: a release that does not is named; without a proxyserver (no
    handler) nothing is detached."""
    async def handle_client(self: Any) -> None:  # a changed release
        await asyncio.sleep(0)
    monkeypatch.setattr(server.ConnectionHandler, "handle_client", handle_client)
    problems = mitm_internals.contract_problems()
    assert ("ConnectionHandler.handle_client no longer waits for the client's task and "
            "then cancels the other connections' tasks (detach)") in problems
    ctx = mcontext.Context(tflow.tclient_conn(), options.Options())
    assert mitm_internals.detach(ctx) is False


def test_an_inert_transport_keeps_mitmproxys_writer_off_the_socket() -> None:
    """What detach gives mitmproxy's StreamWriter: its write, write_eof, close and
    drain reach nothing (the peer gets no byte and no FIN, the socket stays open and
    writable through the real transport), and it always says it is closing (so
    StreamWriter.__del__ closes nothing); extra info still comes from the socket."""
    async def run() -> None:
        io, (peer_r, peer_w), srv = await _pair()
        try:
            real = io.writer.transport
            io.writer._transport = mitm_internals.InertTransport(real)
            assert io.writer.transport is not real and io.writer.is_closing()
            assert io.writer.get_extra_info("sockname") == real.get_extra_info("sockname")
            io.writer.write(b"lost")
            io.writer.write_eof()
            io.writer.close()
            await io.writer.drain()
            assert not real.is_closing()
            real.write(b"kept")
            assert await asyncio.wait_for(peer_r.readexactly(4), TIMEOUT) == b"kept"
            del io
            real.close()
            assert await asyncio.wait_for(peer_r.read(), TIMEOUT) == b""
        finally:
            peer_w.close()
            srv.close()
            await srv.wait_closed()
    asyncio.run(asyncio.wait_for(run(), TIMEOUT))
