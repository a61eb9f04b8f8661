"""A small threaded TLS server on Python's ssl, for the demo and for tests.

Subclasses say what to do with each accepted, handshaken connection in
:meth:`ThreadedTLSServer.handle`; one thread per connection, errors of one
connection never stop the server.
"""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path


class ThreadedTLSServer(threading.Thread):
    def __init__(self, cert: Path, key: Path, timeout: float = 60.0) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port: int = self.sock.getsockname()[1]
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.timeout = timeout

    def run(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return  # the listening socket was closed
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(self.timeout)
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as tls:
                self.handle(tls)
        except (OSError, ssl.SSLError):
            pass  # a client that leaves early, or a fault under test

    def handle(self, tls: ssl.SSLSocket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()


class HelloServer(ThreadedTLSServer):
    """Answers one HTTP request with a short page, then close_notify."""

    body = b"hello from the demo server\n"

    def handle(self, tls: ssl.SSLSocket) -> None:
        tls.recv(4096)
        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (len(self.body), self.body))
        tls.unwrap()  # close_notify, so clients see a clean end


class EchoServer(ThreadedTLSServer):
    """Echoes every byte back until the client closes."""

    def handle(self, tls: ssl.SSLSocket) -> None:
        while data := tls.recv(65536):
            tls.sendall(data)
