"""Hold many idle established TLS connections open, for bench/quick.py's idle-memory row.

    python bench/hold.py PORT CAFILE N [THREADS]

Connects N times to 127.0.0.1:PORT, completes a TLS handshake on each
(server name "localhost", verified against CAFILE), then lets go of the TLS
state and keeps only the socket: what is measured is the proxy's memory, and
this process holding 10,000 OpenSSL objects would only slow the machine down.
Prints "held N" once all are up, then holds them until stdin closes (or a line
arrives), and exits (the kernel closes the sockets).

A separate process so that its sockets do not count against the bench's own
open-file limit (each side of 10,000 connections needs 10,000 descriptors).
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading
from concurrent.futures import ThreadPoolExecutor


def one(port: int, ctx: ssl.SSLContext) -> socket.socket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=60)
    tls = ctx.wrap_socket(raw, server_hostname="localhost")  # the handshake, verified
    # Keep the descriptor, drop OpenSSL's state: the connection stays established
    # and idle (nothing more is read or written on it).
    return socket.socket(fileno=tls.detach())


def main() -> None:
    port, cafile, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    threads = int(sys.argv[4]) if len(sys.argv) > 4 else 8
    ctx = ssl.create_default_context(cafile=cafile)
    held: list[socket.socket] = []
    lock = threading.Lock()

    def task(_: int) -> None:
        s = one(port, ctx)
        with lock:
            held.append(s)

    with ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(task, i) for i in range(n)]:
            f.result()
    print(f"held {len(held)}", flush=True)
    sys.stdin.readline()


if __name__ == "__main__":
    main()
