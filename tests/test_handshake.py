"""proxy/handshake.py and the engine under hostile fragmentation (issue 12, item 1).

Work must be linear in the bytes for any fragmentation. The measure is not
time: it is the memory each read allocates (tracemalloc's peak above the
level at the start of the read). The quadratic reassembler copied its whole
record-index list on every record, so that peak grew with the message and
the sum over a 64k-record hello was ~2700x the 1k one instead of ~64x.
"""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Iterable

import orjson

from tlsinspector.proxy import engine, faults, scenario
from tlsinspector.proxy.coalesce import Coalescer
from tlsinspector.proxy.handshake import (
    CLIENT_HELLO,
    HandshakeReassembler,
    encode_message,
)
from tlsinspector.proxy.hello import ClientHello, Extension


def client_hello(size: int, sni: bytes = b"example.test") -> bytes:
    """A valid ClientHello handshake message of about ``size`` bytes (built with the
    project's codec), padded with an unknown extension (and cipher suites when
    one extension block cannot hold it: RFC 8446 4.1.2 caps both at 2^16 - 2)."""
    name = b"\x00" + len(sni).to_bytes(2, "big") + sni
    exts = [Extension(0, len(name).to_bytes(2, "big") + name),
            Extension(43, b"\x02\x03\x04")]
    base = ClientHello(0x0303, bytes(32), b"", (0x1301,), b"\x00", tuple(exts))
    room = size - len(encode_message(CLIENT_HELLO, base.encode()))
    pad = max(0, min(room - 4, 60000))
    suites = max(0, (room - pad - 4) // 2)
    hello = ClientHello(0x0303, bytes(32), b"", (0x1301,) + (0x00FF,) * min(suites, 30000),
                        b"\x00", (*exts, Extension(0xFEED, bytes(pad))))
    return encode_message(CLIENT_HELLO, hello.encode())


def one_byte_records(msg: bytes) -> bytes:
    return b"".join(b"\x16\x03\x01\x00\x01" + msg[i : i + 1] for i in range(len(msg)))


def chunks(data: bytes, size: int = 4096) -> Iterable[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


def remove_sni_plan() -> faults.FaultPlanner:
    s = scenario.load_scenario_text(
        "name: rx\nfaults:\n  - match: {from: client, handshake: client_hello}\n"
        "    action: remove-extensions\n    extensions: [server_name]\n")
    return faults.FaultPlanner([s], 1, random.Random(0))


def work(data: bytes, plan: faults.FaultPlanner | None = None, measure: bool = True
         ) -> tuple[int, list[dict[str, object]], bytes]:
    """Bytes allocated at the peak of each read, summed; the coalesced log; what was sent."""
    conn = engine.Connection("1", "c:1", "s:2", faults=plan)
    co = Coalescer()
    log: list[dict[str, object]] = []
    sent = bytearray()
    total = 0
    if measure:
        tracemalloc.start()
    try:
        # One record per read (as an attacker's segments would arrive): what a
        # read allocates then shows any copy proportional to the message so far.
        for chunk in chunks(data, 6 if measure else 4096):
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            outs = conn.receive("client", chunk, 0.0)
            total += tracemalloc.get_traced_memory()[1] - base
            log += co.feed([o.event for o in outs if isinstance(o, engine.Emit)])
            sent += b"".join(o.data for o in outs if isinstance(o, engine.Send))
    finally:
        if measure:
            tracemalloc.stop()
    log += co.flush()
    return total, log, bytes(sent)


def log_bytes(log: list[dict[str, object]]) -> int:
    return sum(len(orjson.dumps(e)) + 1 for e in log)


def test_reassembly_work_is_linear_in_one_byte_records() -> None:
    small = one_byte_records(client_hello(1000))
    large = one_byte_records(client_hello(64000))
    w_small, log_small, sent_small = work(small)
    w_large, log_large, sent_large = work(large)
    assert sent_small == small and sent_large == large
    ratio = len(large) / len(small)
    # Linear: the 64x larger input costs at most ~64x (2x headroom for noise in
    # what the allocator reports); the quadratic version measured ~2700x.
    assert w_large < 2 * ratio * w_small, (w_small, w_large)
    # The hello is parsed, and the log is bounded relative to the traffic.
    [hello] = [m for e in log_large for m in e.get("messages", [])]  # type: ignore[attr-defined]
    assert hello["sni"] == "example.test" and hello["record_count"] == len(large) // 6
    assert len(hello["records"]) == 2
    # (most of what is left is the decoded hello itself: ~2000 cipher suite names)
    assert log_bytes(log_large) < len(large) // 4
    assert [e["event"] for e in log_large] == ["fragments", "record"]


def test_hello_rewrite_in_one_byte_records_is_linear() -> None:
    small = one_byte_records(client_hello(1000))
    large = one_byte_records(client_hello(64000))
    w_small, _, sent_small = work(small, remove_sni_plan())
    w_large, log, sent_large = work(large, remove_sni_plan())
    assert w_large < 2 * (len(large) / len(small)) * w_small, (w_small, w_large)
    # The fault applied: the SNI is gone from what the server got.
    assert b"example.test" not in sent_large and sent_large.startswith(b"\x16\x03\x01\x40")
    assert log_bytes(log) < len(large) // 4


def test_hello_rewrite_256k_in_one_byte_records_completes() -> None:
    # A valid ClientHello tops out near 128 KB (two 2^16 vectors); the rest of
    # the 256 KiB is the next handshake message, in 1-byte records too.
    msg = client_hello(120_000)
    extra = encode_message(11, bytes(256 * 1024 - len(msg) - 4))
    data = one_byte_records(msg + extra)
    _, log, sent = work(data, remove_sni_plan(), measure=False)
    assert b"example.test" not in sent
    assert log_bytes(log) < len(data) // 4


def test_limits_pass_through_unparsed_and_say_so() -> None:
    hs = HandshakeReassembler(max_message=1000, max_records=50)
    assert hs.feed(encode_message(1, bytes(2000))[:100], 1) == []
    assert hs.overflowed is not None and "2000 bytes exceeds the limit of 1000" in hs.overflowed
    assert hs.pending == 0 and hs.feed(b"\x01\x00\x00\x00", 2) == []

    hs = HandshakeReassembler(max_records=50)
    msg = encode_message(1, bytes(200))
    for i in range(50):
        hs.feed(msg[i : i + 1], i + 1)
    assert hs.overflowed is None  # 50 records: at the limit, not over it
    hs.feed(msg[50:51], 51)
    assert hs.overflowed == "handshake message spans more than 50 records"
    assert hs.pending == 0


def test_the_default_record_limit_is_2_to_the_17() -> None:
    """The documented default (handshake.py: 2^17 records carry a 16 MB message in
    128-byte records): a message may span 131072 records, the next one stops the
    assembly (memory stays bounded for a hello in 1-byte records, RFC 8446 5.1)."""
    hs = HandshakeReassembler()
    hs.feed(b"\x01\xff\xff\xff", 1)  # a ClientHello of 2^24 - 1 bytes: the most TLS allows
    for i in range(2, (1 << 17) + 1):
        hs.feed(b"\x00", i)
    assert hs.overflowed is None and hs.pending == 4 + (1 << 17) - 1
    hs.feed(b"\x00", (1 << 17) + 1)
    assert hs.overflowed == "handshake message spans more than 131072 records"
    assert hs.pending == 0


def test_engine_logs_the_limit_and_forwards_everything() -> None:
    import tlsinspector.proxy.handshake as handshake

    data = one_byte_records(client_hello(1000))
    conn = engine.Connection("1", "c:1", "s:2")
    for d in conn._dirs.values():
        d.hs = HandshakeReassembler(max_records=100)
    outs = conn.receive("client", data, 0.0)
    assert b"".join(o.data for o in outs if isinstance(o, engine.Send)) == data
    notes = [o.event["note"] for o in outs if isinstance(o, engine.Emit) and "note" in o.event]
    assert notes == ["unparsed from here: handshake message spans more than 100 records"]
    assert handshake.MAX_MESSAGE == (1 << 24) - 1  # a 16 MB hello (tlsfuzzer) still parses


def test_sixteen_mb_hello_in_large_records_parses() -> None:
    # tlsfuzzer's large-hello: 2^24 - 1 bytes is what the 3-byte length allows.
    body = bytes(16 * 1024 * 1024 - 5)
    msg = encode_message(1, body)
    data = b"".join(b"\x16\x03\x01" + len(c).to_bytes(2, "big") + c for c in chunks(msg, 16384))
    conn = engine.Connection("1", "c:1", "s:2")
    outs: list[engine.Output] = []
    for c in chunks(data, 65536):
        outs += conn.receive("client", c, 0.0)
    msgs = [m for o in outs if isinstance(o, engine.Emit) for m in o.event.get("messages", [])]
    assert [m["length"] for m in msgs] == [len(body)]
    assert sum(len(o.data) for o in outs if isinstance(o, engine.Send)) == len(data)
