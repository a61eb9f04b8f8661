"""Golden ClientHellos recorded live from every real client in the test setup.

Each hello decodes to the fields the client was asked to send and re-encodes
byte for byte, whole and fed one byte at a time.
"""

from __future__ import annotations

import pytest

from tests.capture import HelloCatcher
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.peers import CLIENT_KINDS, client_command, run_command
from tlsinspector.proxy.handshake import HandshakeReassembler
from tlsinspector.proxy.hello import parse_client_hello
from tlsinspector.proxy.messages import describe
from tlsinspector.proxy.records import Record, RecordFramer


def capture(kind: str, certs: Certs, tls: str) -> bytes:
    # The command once before the catcher listens: it builds the Go or wolfSSL client
    # on first use, which on a cold cache (a fresh CI machine) takes longer than the
    # catcher waits for its connection.
    client_command(kind, "127.0.0.1", 9, certs, tls=tls)
    catcher = HelloCatcher()
    cmd, stdin = client_command(kind, "127.0.0.1", catcher.port, certs, tls=tls)
    run_command(kind, cmd, stdin, timeout=20)  # fails: the catcher hangs up after the hello
    return catcher.wait()


@pytest.mark.parametrize("tls", ["1.2", "1.3"])
@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_live_client_hello_roundtrips(kind: str, tls: str, certs: Certs) -> None:
    stream = capture(kind, certs, tls)
    for chunks in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
        framer, hs = RecordFramer(), HandshakeReassembler()
        msgs = []
        records: list[Record] = []
        for c in chunks:
            for item in framer.feed(c):
                assert isinstance(item, Record)
                records.append(item)
                msgs += hs.feed(item.payload, len(records))
        assert b"".join(r.raw for r in records) == stream
        [msg] = msgs
        ch = parse_client_hello(msg.body)
        assert ch.encode() == msg.body
        desc, _ = describe(msg)
        assert desc.get("sni") == "localhost"
        if tls == "1.3":
            assert "0x0304" in desc["supported_versions"]
        else:
            assert "0x0304" not in desc.get("supported_versions", [])
        assert desc["ja4"].startswith("t1")
