"""Every use of mitmproxy's (and asyncio's) internals, behind one wall (DESIGN.md 6).

The public hooks cannot pause one socket's reads, make a close abortive or
undo another addon's choice of layers, so the inspector reaches a few internals
for that; ``--intercept`` (addons/intercept.py) adds mitmproxy's certificate
store, tlsconfig's ALPN answer and the TLS layers' SSL objects. They live here
and nowhere else, each with what it relies on; tests/test_mitm_internals.py
checks that contract against the installed mitmproxy and fails naming what a
release changed (``contract_problems``).

Not an addon: imported by addons/inspector.py, which is run with
``mitmdump -s "$(tlsinspector addon-path)"``.

Writers are not always asyncio StreamWriters: in WireGuard and local modes
mitmproxy hands out ``mitmproxy_rs.Stream`` objects without a ``transport``.
Every helper treats a missing attribute like a connection out of reach
(AttributeError is caught with RuntimeError and OSError) and reports False/None.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gc
import inspect
import re
import socket
import struct
import time
from typing import Any

from mitmproxy import connection, ctx
from mitmproxy.addons import proxyserver
from mitmproxy.proxy import context as mcontext
from mitmproxy.proxy import layer, server

# What an I/O failure on an already closing connection, or a writer of another
# kind, raises here.
_OUT_OF_REACH = (RuntimeError, OSError, AttributeError)


def connection_io(context: Any, conn: Any) -> Any | None:
    """mitmproxy's reader/writer pair (``server.ConnectionIO``) for ``conn``, or None
    where it cannot be reached (the connection is gone, or no proxyserver, as in
    unit harnesses). Relies on: the ``proxyserver`` addon's ``connections`` dict,
    keyed by the client connection's id, and its handler's ``transports`` dict."""
    master = getattr(ctx, "master", None)
    try:
        addon = master.addons.get("proxyserver") if master is not None else None
        handler = addon.connections.get(context.client.id) if addon is not None else None
        io = handler.transports.get(conn) if handler is not None else None
    except _OUT_OF_REACH:
        return None
    return io if io is not None and getattr(io, "writer", None) is not None else None


def open_handlers() -> list[Any]:
    """The proxyserver's handlers of the connections still open (none without a
    proxyserver). Relies on: the ``proxyserver`` addon's ``connections`` dict,
    from which a handler is removed once its client connection is done."""
    master = getattr(ctx, "master", None)
    try:
        addon = master.addons.get("proxyserver") if master is not None else None
        return list(addon.connections.values()) if addon is not None else []
    except _OUT_OF_REACH:
        return []


def _close(handler: Any, conn: Any) -> None:
    """Close ``conn`` from outside the layer's event flow (at shutdown), the way a
    CloseConnection command does. Relies on: ``ConnectionHandler.close_connection``,
    which marks the connection closed and cancels its reader task; that task then
    closes the socket after what is already written."""
    try:
        if conn in handler.transports and conn.state is not connection.ConnectionState.CLOSED:
            handler.close_connection(conn)
    except _OUT_OF_REACH:
        return


def close_connection(context: Any, conn: Any) -> None:
    """Close ``conn`` of ``context`` (see _close)."""
    master = getattr(ctx, "master", None)
    try:
        addon = master.addons.get("proxyserver") if master is not None else None
        handler = addon.connections.get(context.client.id) if addon is not None else None
    except _OUT_OF_REACH:
        return
    if handler is not None:
        _close(handler, conn)


def close_every_client() -> None:
    """Close the client connection of every open handler (see _close). Relies on:
    ``ConnectionHandler.client``."""
    for handler in open_handlers():
        _close(handler, getattr(handler, "client", None))


def pause_reading(io: Any, pause: bool) -> bool:
    """Pause or resume reading from ``io``'s socket; False if it is out of reach.

    Relies on: an asyncio writer's ``transport.pause_reading()`` /
    ``resume_reading()``, and asyncio's ``StreamReader._paused``: a StreamReader
    resumes a transport it paused itself (its buffer over 2 x limit) once the
    buffer drains, which would undo this pause, so it is made to forget its own.
    """
    try:
        transport = io.writer.transport
        if pause:
            transport.pause_reading()
            reader = io.reader
            if reader is not None and hasattr(reader, "_paused"):
                reader._paused = False
        else:
            transport.resume_reading()
    except _OUT_OF_REACH:
        return False
    return True


def raw_socket(io: Any) -> socket.socket | None:
    """The socket under ``io``'s asyncio writer, or None (another kind of writer)."""
    try:
        sock = io.writer.transport.get_extra_info("socket")
    except _OUT_OF_REACH:
        return None
    return sock if isinstance(sock, socket.socket) or hasattr(sock, "setsockopt") else None


def set_nodelay(io: Any) -> bool:
    """Disable Nagle's algorithm on ``io``'s socket (TCP_NODELAY, RFC 9293 3.7.4), so
    each small write leaves as its own segment instead of waiting to be merged."""
    sock = raw_socket(io)
    if sock is None:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        return False
    return True


def set_linger_zero(io: Any) -> bool:
    """Make closing ``io``'s socket an abortive close (RST, RFC 9293 3.6.1)."""
    sock = raw_socket(io)
    if sock is None:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        return False
    return True


def abort_if_holding(io: Any) -> bool:
    """Reset ``io``'s socket now (SO_LINGER 0, then the transport's abort) if its
    writer still holds bytes: its peer read nothing for as long as the caller's
    timeout, and a close would wait for them to be written, for a peer that never
    reads again forever (the socket open). False, nothing changed: nothing held, or
    out of reach. Relies on: the writer's ``transport.get_write_buffer_size()`` and
    ``abort()`` (asyncio and uvloop)."""
    try:
        transport = io.writer.transport
    except _OUT_OF_REACH:
        return False
    return abort_transport_if_holding(transport)


def abort_transport_if_holding(transport: Any) -> bool:
    """:func:`abort_if_holding` for a transport (the hot relay's own): SO_LINGER 0, so
    that the kernel's send queue toward the peer goes too, then ``abort()``."""
    try:
        if not transport.get_write_buffer_size():
            return False
        linger_zero_transport(transport)
        transport.abort()
    except _OUT_OF_REACH:
        return False
    return True


# -- the hot path's hand-over (addons/hotpath.py, issue 19) --------------------------


def transport_parts(context: Any, conn: Any) -> tuple[Any, Any, Any] | None:
    """(transport, StreamReader, protocol) of ``conn`` if the hot path may take its
    socket over, else None; changes nothing. Relies on: ``ConnectionIO.writer``
    being an asyncio StreamWriter whose transport has ``get_protocol``/
    ``set_protocol`` (asyncio and uvloop both), and ``StreamReader._eof``/
    ``_buffer``: a reader that saw the end of the stream or an error stays with
    mitmproxy, whose handler is about to report it."""
    io = connection_io(context, conn)
    if io is None or io.reader is None:
        return None
    try:
        transport = io.writer.transport
        reader = io.reader
        if (transport.is_closing() or reader.exception() is not None
                or reader._eof or not hasattr(reader, "_buffer")
                or not callable(getattr(transport, "set_protocol", None))):
            return None
        return transport, reader, transport.get_protocol()
    except _OUT_OF_REACH:
        return None


def take_transport(parts: tuple[Any, Any, Any]) -> tuple[Any, Any, bytes, bool]:
    """Take a socket over from mitmproxy's StreamReader (see transport_parts):
    returns the transport, the protocol to tell of the end and of write flow
    control, the bytes the reader had buffered but mitmproxy had not yet read
    (they are the caller's now), and whether the writer was waiting for a drain.
    mitmproxy's read task stays blocked in ``reader.read()`` until the handler
    closes the connection (close_connection) or the protocol learns of its end
    (hand_back_lost). The caller sets its own protocol on the transport."""
    transport, reader, old = parts
    buffered = bytes(reader._buffer)
    reader._buffer.clear()
    reader._paused = False  # it must not resume or pause this transport any more
    return transport, old, buffered, bool(getattr(old, "_paused", False))


def timeout_watchdog(context: Any) -> Any | None:
    """mitmproxy's inactivity watchdog of ``context``'s handler (it only sees
    activity through server_event, which the hot path bypasses). Relies on:
    ``ConnectionHandler.timeout_watchdog.register_activity()``."""
    master = getattr(ctx, "master", None)
    try:
        addon = master.addons.get("proxyserver") if master is not None else None
        handler = addon.connections.get(context.client.id) if addon is not None else None
        dog = handler.timeout_watchdog if handler is not None else None
    except _OUT_OF_REACH:
        return None
    return dog if callable(getattr(dog, "register_activity", None)) else None


def take_watchdog(client_protocol: Any, dog: Any) -> float:
    """End the task that runs mitmproxy's inactivity watchdog ``dog`` for this
    connection (a task, its coroutines, a future and a timer per idle connection:
    issue 19's RSS row); the caller then owns the watchdog's job: call
    :func:`watchdog_expired` from its own timer. Returns the watchdog's timeout in
    seconds, or 0.0 with nothing changed (the task out of reach).

    Relies on: the client's StreamReaderProtocol (the one the hot path replaced)
    keeping the connection's task in ``_task`` (asyncio.start_server's
    client_connected_cb), that task awaiting ``ConnectionHandler.handle_client``
    through mitmproxy's ``handle_stream``, and handle_client holding the task of
    ``TimeoutWatchdog.watch`` (which returns when cancelled, and which handle_client
    cancels again at its end: a no-op on a finished task). The coroutines are read
    with gc.get_referents (what their frames hold) so that no frame object is made."""
    try:
        coro = client_protocol._task.get_coro()
        watch_code = server.TimeoutWatchdog.watch.__code__
        for _ in range(8):  # handle_stream -> handle_client (-> whatever awaits it)
            if coro is None:
                return 0.0
            for ref in gc.get_referents(coro):
                if (isinstance(ref, asyncio.Task) and not ref.done()
                        and getattr(ref.get_coro(), "cr_code", None) is watch_code
                        and any(x is dog for x in gc.get_referents(ref.get_coro()))):
                    ref.cancel()
                    return float(dog.timeout)
            coro = getattr(coro, "cr_await", None)
    except _OUT_OF_REACH:
        return 0.0
    return 0.0


def cancel_wakeups(context: Any) -> int:
    """Cancel the wakeup timers (RequestWakeup) the connection's layers asked for and
    that are still sleeping: once the hot relay has the sockets, the layers ignore
    Wakeup events (the relay's own timer keeps the idle timeout), and each sleeping
    timer is a task with its coroutines, a future and a timer handle. Returns how many.
    Relies on: ``ConnectionHandler.wakeup_timer``, the set of those tasks (a timer
    leaves it only when it fires; handle_client cancels the rest at its end)."""
    master = getattr(ctx, "master", None)
    try:
        addon = master.addons.get("proxyserver") if master is not None else None
        handler = addon.connections.get(context.client.id) if addon is not None else None
        timers = list(handler.wakeup_timer) if handler is not None else []
        for task in timers:
            task.cancel()
            handler.wakeup_timer.discard(task)
    except _OUT_OF_REACH:
        return 0
    return len(timers)


def watchdog_expired(dog: Any, timeout: float, loop: asyncio.AbstractEventLoop) -> float:
    """The watchdog's check, for a watchdog whose task :func:`take_watchdog` ended:
    seconds until it may expire (> 0), or 0.0 once it did, in which case its
    callback (``ConnectionHandler.on_timeout``: the client's handler task is
    cancelled, mitmproxy closes the connection as usual) was started, as ``watch()``
    does. While a blocking hook has it disarmed (``can_timeout`` clear) it waits a
    full timeout: the hook's end registers activity. Relies on: ``last_activity``,
    ``can_timeout``, ``callback``."""
    now = time.time()
    if not dog.can_timeout.is_set():
        return timeout
    left = dog.last_activity + timeout - now
    if left >= 0:
        return max(left, 0.001)
    loop.create_task(dog.callback())
    return 0.0


def hand_back_lost(old: Any, exc: Exception | None) -> None:
    """Tell the replaced StreamReaderProtocol its socket is gone: its reader ends,
    so mitmproxy's read task and StreamWriter.wait_closed() finish as usual."""
    try:
        old.connection_lost(exc)
    except _OUT_OF_REACH:
        return


def hand_back_flow(old: Any, paused: bool) -> None:
    """Mirror write flow control into the replaced protocol (asyncio's
    FlowControlMixin asserts its ``_paused`` state on each call, hence the checks),
    so a StreamWriter.drain() by mitmproxy never waits for a resume that went
    elsewhere."""
    try:
        if paused and not old._paused:
            old.pause_writing()
        elif not paused and old._paused:
            old.resume_writing()
    except _OUT_OF_REACH:
        return


class _EventQueue(list[Any]):
    """A layer's queue of events that came while it was paused, as a list: the two
    operations mitmproxy's Layer uses (append, popleft) and iteration. An empty
    deque is 760 bytes (CPython allocates its first 64-slot block up front), an empty
    list 56; a hot connection's layers never pause again, so the list stays empty."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


def slim_event_queue(layer_: Any) -> bool:
    """A layer's empty ``_paused_event_queue`` deque as a list (see _EventQueue), for
    a layer that will not pause again (a detached hot connection's)."""
    queue = getattr(layer_, "_paused_event_queue", None)
    if type(queue) is collections.deque and not queue:
        layer_._paused_event_queue = _EventQueue()
        return True
    return False


class _TaskSet(list[Any]):
    """A handler's set of tasks (wakeup timers, hook tasks), as a list: the operations
    mitmproxy's ConnectionHandler uses (add, discard, remove, pop) and truth. An empty
    set is 216 bytes, an empty list 56; a hot connection's stay empty."""

    __slots__ = ()

    def add(self, item: Any) -> None:
        if item not in self:
            self.append(item)

    def discard(self, item: Any) -> None:
        if item in self:
            self.remove(item)


def _handler(context: Any) -> Any:
    """The proxyserver's ConnectionHandler of ``context``'s connection, or None."""
    master = getattr(ctx, "master", None)
    try:
        addon = master.addons.get("proxyserver") if master is not None else None
        return addon.connections.get(context.client.id) if addon is not None else None
    except _OUT_OF_REACH:
        return None


def _layers(context: Any) -> list[Any]:
    """The connection's layers: ``Context.layers`` and those only the handler's chain
    reaches (a NextLayer removes itself from ``Context.layers``): from the handler's
    top layer down, each layer's ``child_layer`` (the mode layers), its
    ``_handle_event`` when it is a bound method of another layer (a mode layer hands
    its events on so), and a NextLayer's ``layer``. Relies on:
    ``ConnectionHandler.layer`` and those three attributes."""
    handler = _handler(context)
    layers = list(getattr(context, "layers", ()))
    found: list[Any] = []
    node = getattr(handler, "layer", None)
    for _ in range(16):  # a chain of a few layers; bounded whatever it holds
        if not isinstance(node, layer.Layer):
            break
        if all(x is not node for x in layers + found):
            found.append(node)
        # getattr, not vars(): a layer's __dict__ is made on first access (64 bytes).
        nxt = getattr(node, "child_layer", None)
        if not isinstance(nxt, layer.Layer):
            nxt = getattr(getattr(node, "_handle_event", None), "__self__", None)
        if not isinstance(nxt, layer.Layer) or nxt is node:
            nxt = getattr(node, "layer", None)
        node = nxt
    return found + layers


def slim_idle(context: Any, protocols: list[Any], watchdog: Any | None) -> int:
    """Once the hot relay has a connection's sockets (issue 19's RSS row), replace
    the empty deques and sets that mitmproxy and asyncio keep per connection and
    that the hot path no longer uses with lists (56 instead of 760 bytes a deque, 216
    a set): each layer's ``_paused_event_queue``, each replaced
    StreamReaderProtocol's ``_drain_waiters`` (FlowControlMixin), the watchdog's
    ``can_timeout`` Event's ``_waiters`` and the handler's ``wakeup_timer`` and
    ``hook_tasks`` (mitmproxy 11) sets. Only ever an empty one is replaced, and only
    with a list that supports every operation its owner's code applies to it (the
    contract checks which). Returns how many were replaced. Relies on: those
    attributes."""
    slots: list[tuple[Any, str]] = [(lay, "_paused_event_queue")
                                    for lay in _layers(context)]
    slots += [(old, "_drain_waiters") for old in protocols]
    if watchdog is not None:
        slots.append((getattr(watchdog, "can_timeout", None), "_waiters"))
    handler = _handler(context)
    replaced = 0
    for owner, name in slots:
        queue = getattr(owner, name, None)
        if type(queue) is collections.deque and not queue:
            setattr(owner, name, _EventQueue() if name == "_paused_event_queue" else [])
            replaced += 1
    for name in ("wakeup_timer", "hook_tasks"):
        tasks = getattr(handler, name, None)
        if type(tasks) is set and not tasks:
            setattr(handler, name, _TaskSet())
            replaced += 1
    return replaced


# What each of mitmproxy's read tasks is handed so that it lets go of its last chunk
# (drop_read_chunks): one byte, an object CPython shares (one per byte value).
NUDGE = b"\x00"


def events_queued(context: Any, ours: Any, current: int = 0) -> bool:
    """Whether mitmproxy still holds events for ``ours`` that it has not handed to it:
    a NextLayer's ``events`` (what came before the next_layer hook decided, replayed
    into the chosen layer) or any layer's paused queue (what came while it waited
    for a blocking command, such as that hook: handed on one by one once it
    returned). A hand-over while they are handed on would leave the rest, bytes
    already read from the sockets, to a layer that ignores them (a client that
    sends at once, before the layers are in place). ``current``: the ``id()`` of the
    event ``ours`` is handling (alive while it is handled); when it is the last of a
    NextLayer's list (the replay's last), nothing comes after it. Relies on:
    ``NextLayer.events``, ``Layer._paused_event_queue``, and what :func:`_layers`
    relies on."""
    for lay in [ours, *_layers(context)]:
        if getattr(lay, "_paused_event_queue", None):
            return True
        if type(lay) is layer.NextLayer:
            replay = getattr(lay, "events", None)
            if replay and id(replay[-1]) != current:
                return True
    return False


def _relays_only(context: Any, ours: Any) -> bool:
    """Between the handler and ``ours`` only mitmproxy's mode layers and NextLayers
    (which hand every event down unchanged), none of them logging events
    (``proxy_debug``). Relies on: ``ConnectionHandler.layer``, ``Layer.debug``, a mode
    layer's ``child_layer`` or ``_handle_event`` bound to its NextLayer, and
    ``NextLayer.layer``."""
    from mitmproxy.proxy.layers import modes

    node = getattr(_handler(context), "layer", None)
    for _ in range(16):  # a chain of a few layers; bounded whatever it holds
        if not isinstance(node, layer.Layer) or node.debug is not None:
            return False
        if node is ours:
            return True
        if type(node) is layer.NextLayer:
            node = node.layer
        elif type(node).__module__ == modes.__name__:
            nxt = getattr(node, "child_layer", None)
            if not isinstance(nxt, layer.Layer):
                nxt = getattr(getattr(node, "_handle_event", None), "__self__", None)
            node = nxt if nxt is not node else None
        else:
            return False
    return False


def drop_read_chunks(context: Any, ours: Any) -> int:
    """Make mitmproxy's two read tasks of a hot connection let go of the last chunk
    each read (``data`` in ``handle_connection``'s frame, held while the task waits
    in ``reader.read()``: the last read before the hand-over, up to 64 KiB, often a
    whole handshake flight; issue 19's RSS row). Each StreamReader is handed
    :data:`NUDGE`: its task reads it, delivers it as a DataReceived down the layers
    to ``ours`` (the hot path's layer, which ignores every event), drains the writers
    and waits in ``read()`` again, holding that shared byte instead. Only where
    nothing but mitmproxy's pass-through layers sees the byte on its way
    (_relays_only) and the reader is an asyncio StreamReader that has not ended and
    holds nothing; ``ours`` must ignore events before the byte arrives (it arrives
    after the current event at the earliest: server_event is synchronous under the
    handler's lock). Returns how many readers were handed it.

    Relies on: ``handle_connection`` reading with ``reader.read(...)`` and handing
    each chunk to ``server_event(events.DataReceived(...))``; ``ConnectionIO.reader``;
    StreamReader ``feed_data``, ``_eof``, ``_buffer``."""
    handler = _handler(context)
    if handler is None or not _relays_only(context, ours):
        return 0
    fed = 0
    for conn in (context.client, context.server):
        try:
            reader: Any = handler.transports[conn].reader
            if (type(reader) is asyncio.StreamReader and not reader._eof
                    and reader.exception() is None and not reader._buffer):
                reader.feed_data(NUDGE)
                fed += 1
        except (KeyError, *_OUT_OF_REACH):
            continue
    return fed


class InertTransport:
    """What mitmproxy's StreamWriter and StreamReader of a detached connection hold
    instead of the socket's transport (:func:`detach`): nothing they do reaches the
    socket. Writes, a FIN, a close or an abort are ignored, it is always closing (so
    mitmproxy writes nothing, and StreamWriter.__del__ closes nothing), and extra
    info is answered from the real transport (peername, sockname)."""

    __slots__ = ("_real",)

    def __init__(self, real: Any) -> None:
        self._real = real

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        try:
            return self._real.get_extra_info(name, default)
        except _OUT_OF_REACH:
            return default

    def is_closing(self) -> bool:
        return True

    def is_reading(self) -> bool:
        return False

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def get_protocol(self) -> None:
        return None

    def _ignore(self, *args: Any, **kwargs: Any) -> None:
        return None

    write = writelines = write_eof = close = abort = _ignore
    pause_reading = resume_reading = set_write_buffer_limits = set_protocol = _ignore


class _NoData(asyncio.Protocol):
    """A protocol set for a moment only (forget_protocol)."""

    def data_received(self, data: bytes) -> None:
        return None


_NO_DATA = _NoData()


def forget_protocol(transport: Any) -> None:
    """Make ``transport`` let go of every protocol it had before its current one.
    uvloop's stream transport keeps the last plain protocol's bound
    ``data_received`` when a BufferedProtocol is set (it only replaces the buffer
    callbacks): the hot relay's takes over from mitmproxy's StreamReaderProtocol,
    which would stay alive through it, with its StreamReader and StreamWriter. A
    shared plain protocol set for a moment replaces that method, then the current
    one is set again. Relies on: ``set_protocol``/``get_protocol`` (asyncio, uvloop)."""
    try:
        current = transport.get_protocol()
        transport.set_protocol(_NO_DATA)
        transport.set_protocol(current)
        if transport.is_reading():  # (uvloop picks its read callbacks as reading starts)
            transport.pause_reading()
            transport.resume_reading()
    except _OUT_OF_REACH:
        return


def detach(context: Any) -> bool:
    """Let mitmproxy end its handling of a hot connection whose two sockets the hot
    relay owns (``tlsinspector_detach``, issue 19's RSS row): its StreamWriters and
    StreamReaders get an :class:`InertTransport` instead of the real ones, then its
    client connection is closed the way ``close_connection`` does (the client's read
    task is cancelled; ``handle_client`` then cancels the server's). mitmproxy runs
    its usual end: ConnectionClosed through the layers (ours ignores them), the
    writers' close (inert), the server_disconnected and client_disconnected hooks
    (now, not at the real close: only for a master whose addons do not care), and the
    proxyserver forgets the handler. Its handler, tasks, streams and layers are then
    freed; the sockets are untouched and stay the relay's, which must close them.
    Returns False (nothing changed) when the connection is not exactly an asyncio
    client and server stream pair with their tasks.

    Relies on: ``ConnectionHandler.transports`` (ConnectionIO ``handler``, ``reader``,
    ``writer``), ``close_connection`` cancelling the connection's task,
    ``handle_client`` cancelling the other transports' tasks at its end,
    ``handle_connection`` ending on CancelledError by closing its writer; asyncio's
    StreamWriter/StreamReader/StreamReaderProtocol ``_transport``."""
    handler = _handler(context)
    try:
        ios = [handler.transports[context.client], handler.transports[context.server]]
        if len(handler.transports) != 2 or any(
                io.handler is None or type(io.writer) is not asyncio.StreamWriter
                or type(io.reader) is not asyncio.StreamReader
                or not hasattr(io.writer, "_transport") for io in ios):
            return False
        for io in ios:
            inert = InertTransport(io.writer._transport)
            io.writer._transport = inert
            io.reader._transport = inert
            protocol = getattr(io.writer, "_protocol", None)
            if getattr(protocol, "_transport", None) is not None:
                protocol._transport = inert
        handler.close_connection(context.client)
    except (KeyError, *_OUT_OF_REACH):
        return False
    return True


def linger_zero_transport(transport: Any) -> bool:
    """SO_LINGER 0 on a transport's socket: its close is then a TCP RST."""
    try:
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except _OUT_OF_REACH:
        return False
    return True


def stack_before(context: Any, chosen: Any) -> list[Any]:
    """The layer stack as it was before ``chosen`` was appended to it (mitmproxy's
    own NextLayer addon may already have appended the layers it chose). Relies on:
    ``Context.layers``, the list of layers from the outermost in."""
    layers: list[Any] = context.layers
    return layers[:layers.index(chosen)] if chosen in layers else layers


def undo_layer_choice(context: Any, chosen: Any) -> None:
    """Undo another addon's choice of next layer before it handled any event: drop
    it (and what it stacked) from ``Context.layers`` and clear the TLS flags it set
    on ``Client.tls`` / ``Server.tls``."""
    if chosen in context.layers:
        del context.layers[context.layers.index(chosen):]
    context.client.tls = False
    context.server.tls = False


# -- --intercept (addons/intercept.py) ------------------------------------------------


def certstore() -> Any:
    """mitmproxy's certificate store (its CA in confdir). Relies on: the
    ``tlsconfig`` addon's ``certstore`` attribute, made by its configure hook."""
    return ctx.master.addons.get("tlsconfig").certstore


def ca_certificate(store: Any) -> Any:
    """The CA certificate of ``store`` as a ``cryptography`` object. Relies on:
    ``CertStore.default_ca`` (a ``mitmproxy.certs.Cert``) and its ``_cert``."""
    return store.default_ca._cert


def default_ciphers() -> tuple[str, ...]:
    """mitmproxy's own TLS 1.2 cipher list for the client leg (what it uses when
    ``ciphers_client`` is unset). Relies on: ``tlsconfig._DEFAULT_CIPHERS``."""
    from mitmproxy.addons import tlsconfig

    return tuple(tlsconfig._DEFAULT_CIPHERS)


def refuse_alpn(ssl_conn: Any) -> None:
    """Make the client-facing SSL object select no ALPN protocol, whatever the
    client offers (no ALPN extension in the ServerHello, RFC 7301 3.2). Relies on:
    tlsconfig's ``alpn_select_callback`` reading an ``AppData`` from the
    connection's app data, which answers NO_OVERLAPPING_PROTOCOLS when the
    server's ALPN is b"" and the client's None."""
    from mitmproxy.addons import tlsconfig

    ssl_conn.set_app_data(tlsconfig.AppData(client_alpn=None, server_alpn=b"", http2=False))


# -- the contract --------------------------------------------------------------------


def _field_names(cls: Any) -> set[str]:
    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls)}
    return set(inspect.get_annotations(cls))


def _annotations(cls: Any) -> set[str]:
    out: set[str] = set()
    for klass in getattr(cls, "__mro__", (cls,)):
        out |= set(getattr(klass, "__annotations__", {}))
    return out


def bound_addresses(master: Any) -> list[tuple[str, int]]:
    """The (host, port) pairs mitmproxy's servers listen on once running: for a
    port 0 asked for, the port the kernel picked. Empty when out of reach. Relies on:
    the ``proxyserver`` addon's ``servers`` (iterating its ServerInstances) and
    ``ServerInstance.listen_addrs``."""
    try:
        addon = master.addons.get("proxyserver") if master is not None else None
        if addon is None:
            return []
        return [(str(a[0]), int(a[1])) for inst in addon.servers for a in inst.listen_addrs]
    except (*_OUT_OF_REACH, TypeError, IndexError):
        return []


def contract_problems() -> list[str]:
    """What the installed mitmproxy/asyncio no longer provide of what this module
    relies on, one sentence each (empty: the contract holds)."""
    problems: list[str] = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    need({"reader", "writer"} <= _field_names(server.ConnectionIO),
         "mitmproxy.proxy.server.ConnectionIO no longer has fields 'reader' and 'writer'")
    need("transports" in _annotations(server.ConnectionHandler),
         "mitmproxy.proxy.server.ConnectionHandler no longer declares 'transports'")
    need(callable(getattr(server.ConnectionHandler, "close_connection", None))
         and "handler.cancel" in inspect.getsource(server.ConnectionHandler.close_connection),
         "mitmproxy.proxy.server.ConnectionHandler.close_connection no longer cancels the "
         "connection's handler task")
    need("self.client = " in inspect.getsource(server.ConnectionHandler.__init__),
         "mitmproxy.proxy.server.ConnectionHandler no longer sets 'client'")
    need("connections" in _annotations(proxyserver.Proxyserver),
         "mitmproxy.addons.proxyserver.Proxyserver no longer declares 'connections'")
    need("self.connections[connection_id] = handler"
         in inspect.getsource(proxyserver.Proxyserver),
         "Proxyserver.connections is no longer keyed by the client connection's id")
    resume = getattr(asyncio.StreamReader, "_maybe_resume_transport", None)
    need(resume is not None and "self._paused" in inspect.getsource(resume),
         "asyncio.StreamReader._maybe_resume_transport no longer reads self._paused")
    need("layers" in inspect.getsource(mcontext.Context.__init__),
         "mitmproxy.proxy.context.Context no longer sets 'layers'")
    for cls in (connection.Client, connection.Server):
        need("tls" in _field_names(cls) or "tls" in _annotations(cls),
             f"mitmproxy.connection.{cls.__name__} no longer has a 'tls' field")
    reader_src = inspect.getsource(asyncio.StreamReader.__init__)
    need("self._buffer = bytearray()" in reader_src and "self._eof = False" in reader_src,
         "asyncio.StreamReader no longer keeps '_buffer' (bytearray) and '_eof'")
    flow = inspect.getsource(asyncio.streams.FlowControlMixin)
    need("self._paused" in flow and "def pause_writing" in flow,
         "asyncio.streams.FlowControlMixin no longer tracks '_paused' in pause_writing")
    need(callable(getattr(asyncio.BaseTransport, "set_protocol", None)),
         "asyncio transports no longer have set_protocol")
    need("timeout_watchdog" in _annotations(server.ConnectionHandler)
         and callable(getattr(server.TimeoutWatchdog, "register_activity", None)),
         "mitmproxy.proxy.server.ConnectionHandler.timeout_watchdog.register_activity is gone")
    need({"layer", "context"} <= set(layer.NextLayer.__init__.__code__.co_names),
         "mitmproxy.proxy.layer.NextLayer no longer sets 'layer' and 'context'")
    nxt = inspect.getsource(layer.NextLayer)
    need("self.events = []" in nxt and "for e in self.events:" in nxt
         and "self.events.clear()" in nxt,
         "mitmproxy.proxy.layer.NextLayer no longer replays its 'events' list into the "
         "chosen layer, then clears it (events_queued)")
    from mitmproxy.proxy import mode_servers
    need("servers" in inspect.getsource(proxyserver.Proxyserver.__init__)
         and callable(getattr(proxyserver.Servers, "__iter__", None))
         and isinstance(getattr(mode_servers.ServerInstance, "listen_addrs", None), property),
         "mitmproxy.addons.proxyserver.Proxyserver.servers no longer iterates ServerInstances "
         "with a 'listen_addrs' property")
    problems += _slim_idle_problems()
    problems += _hot_idle_problems()
    problems += _detach_problems()
    problems += _intercept_problems()
    return problems


def _methods_used(source: str, attribute: str) -> set[str]:
    return set(re.findall(rf"\b{attribute}\.(\w+)", source))


def _slim_idle_problems() -> list[str]:
    """slim_idle's lists must support every method their owners call on them."""
    from mitmproxy.proxy.layers import http

    out = []
    layer_src = inspect.getsource(layer) + inspect.getsource(http)
    if ("self._paused_event_queue = collections.deque()" not in layer_src
            or _methods_used(layer_src, "_paused_event_queue") - {"append", "popleft"}):
        out.append("mitmproxy's Layer._paused_event_queue is no longer a deque used only "
                   "with append and popleft")
    flow = inspect.getsource(asyncio.streams.FlowControlMixin)
    if ("self._drain_waiters = collections.deque()" not in flow
            or _methods_used(flow, "_drain_waiters") - {"append", "remove"}):
        out.append("asyncio.streams.FlowControlMixin._drain_waiters is no longer a deque "
                   "used only with append and remove")
    event = inspect.getsource(asyncio.Event)
    if ("self._waiters = collections.deque()" not in event
            or _methods_used(event, "_waiters") - {"append", "remove"}):
        out.append("asyncio.Event._waiters is no longer a deque used only with append "
                   "and remove")
    if "layer" not in _annotations(server.ConnectionHandler):
        out.append("mitmproxy.proxy.server.ConnectionHandler no longer declares 'layer'")
    handler_src = inspect.getsource(server)
    if ("self.wakeup_timer = set()" not in handler_src
            or _methods_used(handler_src, "wakeup_timer") - {"add", "discard", "pop"}):
        out.append("ConnectionHandler.wakeup_timer is no longer a set used only with add, "
                   "discard and pop")
    if "hook_tasks" in _annotations(server.ConnectionHandler) and (
            _methods_used(handler_src, "hook_tasks") - {"add", "remove"}):
        out.append("ConnectionHandler.hook_tasks is no longer a set used only with add and "
                   "remove")
    if "can_timeout" not in _annotations(server.TimeoutWatchdog):
        out.append("mitmproxy.proxy.server.TimeoutWatchdog no longer declares can_timeout")
    return out


def _hot_idle_problems() -> list[str]:
    """take_watchdog, watchdog_expired, cancel_wakeups and drop_read_chunks (a hot idle
    connection)."""
    from mitmproxy.proxy import mode_servers

    out = []
    made = inspect.getsource(asyncio.StreamReaderProtocol.connection_made)
    if "self._task = self._loop.create_task(res)" not in made:
        out.append("asyncio.StreamReaderProtocol no longer keeps the client_connected_cb "
                   "task in '_task'")
    if "await handler.handle_client()" not in inspect.getsource(
            mode_servers.ServerInstance.handle_stream):
        out.append("mitmproxy's ServerInstance.handle_stream no longer awaits "
                   "handler.handle_client()")
    client = inspect.getsource(server.ConnectionHandler.handle_client)
    if "self.timeout_watchdog.watch()" not in client or "watch.cancel()" not in client:
        out.append("ConnectionHandler.handle_client no longer runs (and at its end "
                   "cancels) the TimeoutWatchdog.watch() task")
    watch = inspect.getsource(server.TimeoutWatchdog.watch)
    if not ("self.last_activity + self.timeout < time.time()" in watch
            and "await self.callback()" in watch and "self.can_timeout.wait()" in watch):
        out.append("TimeoutWatchdog.watch no longer calls its callback once last_activity "
                   "+ timeout has passed while can_timeout is set")
    conn = inspect.getsource(server.ConnectionHandler.handle_connection)
    if ("await reader.read(" not in conn
            or "await self.server_event(events.DataReceived(connection, data))" not in conn):
        out.append("ConnectionHandler.handle_connection no longer reads with reader.read() "
                   "and hands each chunk on as DataReceived (drop_read_chunks)")
    if "self.debug" not in inspect.getsource(layer.Layer.__init__) or not callable(
            getattr(asyncio.StreamReader, "feed_data", None)):
        out.append("mitmproxy's Layer no longer sets 'debug', or asyncio.StreamReader has "
                   "no feed_data (drop_read_chunks)")
    if "self.wakeup_timer.discard(task)" not in inspect.getsource(
            server.ConnectionHandler.wakeup):
        out.append("ConnectionHandler.wakeup no longer leaves wakeup_timer itself when "
                   "it fires")
    return out


def _detach_problems() -> list[str]:
    """detach and InertTransport (tlsinspector_detach)."""
    out = []
    if "handler" not in _field_names(server.ConnectionIO):
        out.append("mitmproxy.proxy.server.ConnectionIO no longer has a 'handler' field "
                   "(detach)")
    client = inspect.getsource(server.ConnectionHandler.handle_client)
    if "io.handler.cancel(" not in client or "await asyncio.wait([handler])" not in client:
        out.append("ConnectionHandler.handle_client no longer waits for the client's task "
                   "and then cancels the other connections' tasks (detach)")
    conn = inspect.getsource(server.ConnectionHandler.handle_connection)
    if not ("except asyncio.CancelledError" in conn and "writer.close()" in conn
            and "self.transports.pop(connection)" in conn):
        out.append("ConnectionHandler.handle_connection no longer ends a cancelled "
                   "connection by closing its writer and forgetting it (detach)")
    writer = inspect.getsource(asyncio.StreamWriter)
    for use in ("self._transport.close()", "self._transport.is_closing()",
                "self._transport.write(", "self._transport.write_eof()",
                "return self._transport\n"):
        if use not in writer:
            out.append(f"asyncio.StreamWriter no longer uses {use!r} on '_transport' "
                       "(detach's InertTransport)")
    reader = inspect.getsource(asyncio.StreamReader)
    if "self._transport = " not in reader:
        out.append("asyncio.StreamReader no longer keeps its transport in '_transport' "
                   "(detach)")
    return out


def _intercept_problems() -> list[str]:
    from mitmproxy import certs
    from mitmproxy.addons import tlsconfig

    out = []
    if {"client_alpn", "server_alpn", "http2"} - _field_names(tlsconfig.AppData):
        out.append("mitmproxy.addons.tlsconfig.AppData no longer has client_alpn, "
                   "server_alpn and http2")
    src = inspect.getsource(tlsconfig.alpn_select_callback)
    if 'server_alpn == b""' not in src or "NO_OVERLAPPING_PROTOCOLS" not in src:
        out.append("tlsconfig.alpn_select_callback no longer refuses ALPN for "
                   'server_alpn == b""')
    if "self.certstore = " not in inspect.getsource(tlsconfig.TlsConfig.configure):
        out.append("mitmproxy.addons.tlsconfig.TlsConfig.configure no longer sets certstore")
    dc = getattr(tlsconfig, "_DEFAULT_CIPHERS", None)
    if not (isinstance(dc, tuple) and dc and all(isinstance(c, str) for c in dc)):
        out.append("mitmproxy.addons.tlsconfig._DEFAULT_CIPHERS is no longer a tuple of "
                   "cipher names")
    if "self._cert = " not in inspect.getsource(certs.Cert.__init__):
        out.append("mitmproxy.certs.Cert no longer keeps its cryptography object in _cert")
    # addons/intercept.py stacks mitmproxy's layers itself and reads their SSL objects.
    from mitmproxy.proxy.layers import tcp, tls

    if "tls" not in _annotations(tls.TLSLayer):
        out.append("mitmproxy.proxy.layers.tls.TLSLayer no longer declares 'tls' (its "
                   "OpenSSL connection)")
    if "ignore" not in inspect.signature(tcp.TCPLayer.__init__).parameters:
        out.append("mitmproxy.proxy.layers.tcp.TCPLayer no longer takes 'ignore'")
    if "layers[-2], ServerTLSLayer" not in inspect.getsource(tls.ClientTLSLayer.__init__):
        out.append("ClientTLSLayer no longer finds its ServerTLSLayer as the layer above it")
    if "establish_server_tls_first" not in inspect.getsource(tls.ClientTLSLayer):
        out.append("ClientTLSLayer no longer honours ClientHelloData.establish_server_tls_first")
    return out
