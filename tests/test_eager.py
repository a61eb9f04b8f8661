"""Eager connect (issue 17): the upstream opens when the client connects.

A server that speaks first (an SMTP 220 banner) gets its greeting to the client
before the client sends a byte, in reverse, regular (HTTP CONNECT) and SOCKS5
mode; a client that connects and closes without a byte reaches the server
exactly as it does directly, and the log has its connect and close events.
The three proxies run at once (one test, threads) to keep the suite short.
"""

from __future__ import annotations

import socket
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.proxyproc import Proxy, free_port

BANNER = b"220 banner.test ESMTP ready\r\n"
TIMEOUT = 30.0  # generous: three proxies start at once on a loaded CI machine


class BannerServer:
    """Speaks first (while ``speak`` is set), then records every byte each connection
    sends until its EOF. Quiet, it is a TLS server's view of connect-then-close
    (a banner the client never reads would make the client's close an RST)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(TIMEOUT)
        self.port = self.sock.getsockname()[1]
        self.seen: list[bytes] = []
        self.speak = False
        self.done = threading.Semaphore(0)
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                # No connection yet (the proxy may take longer than TIMEOUT to start
                # on a loaded machine): wait on. The timeout only lets close() end this.
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        got = b""
        with conn:
            conn.settimeout(TIMEOUT)
            try:
                if self.speak:
                    conn.sendall(BANNER)
                while chunk := conn.recv(4096):
                    got += chunk
            except OSError:
                got += b"<error>"
        self.seen.append(got)
        self.done.release()

    def wait_one(self) -> bytes:
        assert self.done.acquire(timeout=TIMEOUT), "the server saw no connection end"
        return self.seen[-1]

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def _recv_until(s: socket.socket, end: bytes, got: bytes = b"") -> bytes:
    while end not in got:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


def _open(mode: str, proxy_port: int, server_port: int) -> tuple[socket.socket, bytes]:
    """A connection to the server through the proxy in ``mode`` (the tunnel set up),
    and what already arrived after the proxy's reply (the banner may come with it)."""
    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=TIMEOUT)
    rest = b""
    if mode == "regular":
        s.sendall(f"CONNECT 127.0.0.1:{server_port} HTTP/1.1\r\n"
                  f"Host: 127.0.0.1:{server_port}\r\n\r\n".encode())
        reply, _, rest = _recv_until(s, b"\r\n\r\n").partition(b"\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200"), reply


    elif mode == "socks5":
        s.sendall(b"\x05\x01\x00")
        assert s.recv(2) == b"\x05\x00"
        s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1")
                  + struct.pack("!H", server_port))
        reply = b""
        while len(reply) < 10:
            chunk = s.recv(10 - len(reply))
            assert chunk, "SOCKS5 reply cut short"
            reply += chunk
        assert reply[1] == 0, reply
    return s, rest


def _check_mode(mode: str, tmp: Path) -> dict[str, Any]:
    server = BannerServer()
    try:
        # Directly first: what the server receives from connect-then-close.
        socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT).close()
        direct = server.wait_one()
        extra = [] if mode == "reverse" else ["--mode", mode]
        with Proxy(f"127.0.0.1:{server.port}", tmp / f"{mode}.jsonl", extra=extra,
                   start_timeout=90) as proxy:
            # 1. The server speaks first: its banner arrives with no client byte sent.
            server.speak = True
            s, rest = _open(mode, proxy.port, server.port)
            with s:
                banner = _recv_until(s, b"\r\n", rest)
                s.sendall(b"QUIT\r\n")
            after_quit = server.wait_one()
            # 2. Connect, then close without a byte.
            server.speak = False
            _open(mode, proxy.port, server.port)[0].close()
            through = server.wait_one()
            events = proxy.wait_closes(2)
        return {"banner": banner, "after_quit": after_quit, "direct": direct,
                "through": through, "events": events}
    finally:
        server.close()


def _named_check(mode: str, tmp: Path) -> dict[str, Any]:
    try:
        return _check_mode(mode, tmp)
    except Exception as e:  # say which mode failed: the threads hide it otherwise
        raise AssertionError(f"{mode} mode: {type(e).__name__}: {e}") from e


def test_server_speaks_first_and_connect_then_close_in_every_mode(tmp_path: Path) -> None:
    modes = ("reverse", "regular", "socks5")
    with ThreadPoolExecutor(len(modes)) as pool:
        results = dict(zip(modes, pool.map(lambda m: _named_check(m, tmp_path), modes),
                           strict=True))
    for mode, r in results.items():
        assert r["banner"] == BANNER, mode
        assert r["after_quit"] == b"QUIT\r\n", mode
        # What the server receives from connect-then-close: the same through the proxy.
        assert r["direct"] == r["through"] == b"", mode
        evs = r["events"]
        conns = [e["conn"] for e in evs if e["event"] == "connect"]
        assert len(conns) == 2, (mode, evs)
        quiet = [e for e in evs if e["conn"] == conns[-1]]
        assert [e["event"] for e in quiet] == ["connect", "close"], (mode, quiet)
        assert quiet[0]["mode"] == mode and quiet[1]["by"] == "client"
        assert quiet[1]["bytes"] == {"client": 0, "server": 0}


def test_upstream_refused_after_eager_connect_is_logged(tmp_path: Path) -> None:
    dead = free_port()
    with Proxy(f"127.0.0.1:{dead}", tmp_path / "log.jsonl") as proxy:
        socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT).close()
        evs = proxy.wait_closes(1)
    assert [e["event"] for e in evs] == ["connect", "error", "close"]
    assert f"127.0.0.1:{dead} unreachable" in evs[1]["message"]
