"""A one-connection TCP relay that records both directions' bytes in the order they passed.

For decryption tests: the relay sits between two real peers, forwards every
byte unchanged, and keeps ``(sender, chunk)`` in one ordered list (a lock
around "forward + append", so a reply is never recorded before what caused it).
"""

from __future__ import annotations

import socket
import threading
from typing import Literal

Side = Literal["client", "server"]


class Relay:
    #: How long the relay waits for its one connection. Generous: the relay is made
    #: before what connects to it starts (a proxy, a capture), which takes long on a
    #: loaded machine; a relay that timed out never accepts, and the connection that
    #: lands in its backlog later is never answered (a handshake timeout).
    ACCEPT_TIMEOUT = 120.0

    def __init__(self, upstream_port: int, timeout: float = 30) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(max(timeout, self.ACCEPT_TIMEOUT))
        self.port: int = self.sock.getsockname()[1]
        self.upstream_port = upstream_port
        self.timeout = timeout
        self.chunks: list[tuple[Side, bytes]] = []
        self._lock = threading.Lock()
        self.done = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, side: Side) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    self.chunks.append((side, data))
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _run(self) -> None:
        try:
            conn, _ = self.sock.accept()
            up = socket.create_connection(("127.0.0.1", self.upstream_port), self.timeout)
        except OSError:
            self.sock.close()  # refused from now on, not left unanswered
            self.done.set()
            return
        conn.settimeout(self.timeout)
        up.settimeout(self.timeout)
        t = threading.Thread(target=self._pump, args=(up, conn, "server"), daemon=True)
        t.start()
        self._pump(conn, up, "client")
        t.join(self.timeout)
        conn.close()
        up.close()
        self.sock.close()
        self.done.set()

    def wait(self, timeout: float = 30) -> list[tuple[Side, bytes]]:
        if not self.done.wait(timeout):
            raise TimeoutError("relay: connection did not finish")
        return list(self.chunks)
