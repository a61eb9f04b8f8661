"""tlsfuzzer-style record probes for the suite: a real TLS client (Python's ssl over
memory BIOs) whose bytes are altered on the wire the way tlsfuzzer's scripts do
(test-record-layer-fragmentation, test-invalid-content-type, test-fuzzed-ciphertext,
test-large-hello, test-zero-length-data), against a real server. tlsfuzzer itself is
not on PyPI, so it runs only in `make thirdparty`; these run in `make test`.

Each probe returns what the client saw: the server's reply line, the TLS error the
client raised (an alert from the server names it), or how the connection ended.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Callable

Mutate = Callable[[str, bytes], bytes]
TIMEOUT = 15.0


def records(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """Split whole TLS records: (content type, version bytes, payload)."""
    out, i = [], 0
    while i + 5 <= len(data):
        length = struct.unpack(">H", data[i + 3:i + 5])[0]
        out.append((data[i], data[i + 1:i + 3], data[i + 5:i + 5 + length]))
        i += 5 + length
    return out


def record(ctype: int, version: bytes, payload: bytes) -> bytes:
    return bytes([ctype]) + version + struct.pack(">H", len(payload)) + payload


def fragment(size: int) -> Mutate:
    """Every handshake record of the first flight re-cut into records of ``size``
    bytes (RFC 8446 5.1 and RFC 5246 6.2.1 allow it)."""
    def mutate(phase: str, data: bytes) -> bytes:
        if phase != "hello":
            return data
        return b"".join(record(t, v, p[i:i + size])
                        for t, v, p in records(data) for i in range(0, len(p), size))
    return mutate


def prepend(raw: bytes, phase: str = "hello") -> Mutate:
    def mutate(p: str, data: bytes) -> bytes:
        return raw + data if p == phase else data
    return mutate


def flip_last_byte(phase: str) -> Mutate:
    """A bit flipped in the last record's last byte (its AEAD tag or MAC)."""
    def mutate(p: str, data: bytes) -> bytes:
        if p != phase or not data:
            return data
        return data[:-1] + bytes([data[-1] ^ 0x01])
    return mutate


def padded_hello(pad: int) -> Mutate:
    """The ClientHello grown by a padding extension (RFC 7685) of ``pad`` bytes and
    split across records of 2^14; every length re-encoded. The client's transcript
    keeps the original hello, so the handshake fails at the latest at Finished,
    the same way directly and through the inspector."""
    def mutate(phase: str, data: bytes) -> bytes:
        if phase != "hello":
            return data
        [(ctype, version, body)] = records(data)
        ext = struct.pack(">HH", 21, pad) + bytes(pad)
        start = _extensions_at(body)
        exts = body[start + 2:] + ext
        hello = body[4:start] + struct.pack(">H", len(exts)) + exts
        msg = bytes([1]) + len(hello).to_bytes(3, "big") + hello
        return b"".join(record(ctype, version, msg[i:i + 2 ** 14])
                        for i in range(0, len(msg), 2 ** 14))
    return mutate


def _extensions_at(body: bytes) -> int:
    """Where a ClientHello's extensions block (its length) starts (RFC 8446 4.1.2)."""
    i = 4 + 2 + 32
    i += 1 + body[i]                                      # session id
    i += 2 + struct.unpack(">H", body[i:i + 2])[0]        # cipher suites
    i += 1 + body[i]                                      # compression methods
    return i


def close_mid_record(phase: str, data: bytes) -> bytes:
    """Half the first record, then nothing (the caller closes)."""
    return data[: max(1, len(data) // 2)] if phase == "hello" else data


def probe(port: int, tls: str, mutate: Mutate, close_early: bool = False) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    version = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[tls]
    ctx.minimum_version = ctx.maximum_version = version
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        try:
            return _converse(sock, tls_obj, inc, out, mutate, close_early)
        except ssl.SSLError as e:
            return f"tls error {e.reason}"
        except OSError as e:
            return f"socket {type(e).__name__}"


def _pump(sock: socket.socket, inc: ssl.MemoryBIO) -> bool:
    chunk = sock.recv(65536)
    if not chunk:
        inc.write_eof()
        return False
    inc.write(chunk)
    return True


def _converse(sock: socket.socket, tls: ssl.SSLObject, inc: ssl.MemoryBIO,
              out: ssl.MemoryBIO, mutate: Mutate, close_early: bool) -> str:
    phase = "hello"
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            data = out.read()
            if data:
                sock.sendall(mutate(phase, data))
                phase = "handshake"
                if close_early:
                    sock.shutdown(socket.SHUT_WR)
            if not _pump(sock, inc):
                return "closed during the handshake"
    tls.write(b"GET / HTTP/1.0\r\n\r\n")
    sock.sendall(mutate("request", out.read()))
    reply = b""
    while b"\n" not in reply:
        try:
            reply += tls.read(65536)
        except ssl.SSLWantReadError:
            sock.sendall(out.read())  # TLS 1.3: nothing; a key update's answer
            if not _pump(sock, inc):
                return "closed before the reply"
        except ssl.SSLZeroReturnError:
            break
    return "reply " + reply.split(b"\r\n", 1)[0].decode(errors="replace")


#: name -> (TLS version, mutation, close early)
PROBES: dict[str, tuple[str, Mutate, bool]] = {
    "sanity 1.2": ("1.2", lambda p, d: d, False),
    "sanity 1.3": ("1.3", lambda p, d: d, False),
    "ClientHello in 1-byte records 1.3": ("1.3", fragment(1), False),
    "ClientHello in 7-byte records 1.2": ("1.2", fragment(7), False),
    "zero-length handshake record first": ("1.3", prepend(b"\x16\x03\x01\x00\x00"), False),
    "zero-length application_data first": ("1.2", prepend(b"\x17\x03\x03\x00\x00"), False),
    "unknown content type 0x2a first": ("1.3", prepend(b"\x2a\x03\x03\x00\x01\x00"), False),
    "ChangeCipherSpec before the ClientHello": ("1.2", prepend(b"\x14\x03\x01\x00\x01\x01"),
                                                False),
    "heartbeat before the ClientHello": ("1.2", prepend(b"\x18\x03\x01\x00\x03\x01\x40\x00"),
                                         False),
    "flipped ciphertext byte 1.2": ("1.2", flip_last_byte("request"), False),
    "flipped ciphertext byte 1.3": ("1.3", flip_last_byte("request"), False),
    # TLS 1.2: the client's second flight (key exchange, CCS, Finished) goes out while
    # the handshake still waits for the server's; its last byte is the Finished's tag.
    "flipped Finished byte 1.2": ("1.2", flip_last_byte("handshake"), False),
    "ClientHello of 40 KB over 3 records": ("1.3", padded_hello(40000), False),
    "close in the middle of the ClientHello": ("1.3", close_mid_record, True),
}
