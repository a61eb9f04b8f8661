"""Capture what a real client sends first: its ClientHello record(s).

A plain TCP listener accepts one connection, reads until a whole ClientHello
has arrived (possibly over several records), then closes. Used by golden tests
to record hellos from real stacks in the test setup.
"""

from __future__ import annotations

import socket
import threading

from tlsinspector.proxy.handshake import HandshakeReassembler
from tlsinspector.proxy.records import Record, RecordFramer


class HelloCatcher:
    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(30)
        self.port: int = self.sock.getsockname()[1]
        self.data = b""
        self.done = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            self.done.set()
            return
        conn.settimeout(20)
        framer, hs = RecordFramer(), HandshakeReassembler()
        buf = bytearray()
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                buf += chunk
                msgs = []
                for item in framer.feed(chunk):
                    if isinstance(item, Record) and item.content_type == 22:
                        msgs += hs.feed(item.payload, 1)
                if msgs:
                    break
        except OSError:
            pass
        finally:
            self.data = bytes(buf)
            conn.close()
            self.sock.close()
            self.done.set()

    def wait(self, timeout: float = 30) -> bytes:
        if not self.done.wait(timeout):
            raise TimeoutError("no ClientHello arrived")
        return self.data
