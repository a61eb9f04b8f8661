"""Every use of mitmproxy's (and asyncio's) internals, behind one wall (DESIGN.md 6).

The public hooks cannot pause one socket's reads, make a close abortive or
undo another addon's choice of layers, so the inspector reaches a few internals
for that. They live here and nowhere else, each with what it relies on;
tests/test_mitm_internals.py checks that contract against the installed
mitmproxy and fails naming what a release changed (``contract_problems``).

Not an addon: imported by addons/inspector.py, which is run with
``mitmdump -s "$(tlsinspector addon-path)"``.

Writers are not always asyncio StreamWriters: in WireGuard and local modes
mitmproxy hands out ``mitmproxy_rs.Stream`` objects without a ``transport``.
Every helper treats a missing attribute like a connection out of reach
(AttributeError is caught with RuntimeError and OSError) and reports False/None.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import socket
import struct
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
    need({"layer", "context"} <= set(layer.NextLayer.__init__.__code__.co_names),
         "mitmproxy.proxy.layer.NextLayer no longer sets 'layer' and 'context'")
    return problems
