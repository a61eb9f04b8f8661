"""Bad input: mutated real captures and odd records through the engine lose nothing.

TLSINSPECTOR_FUZZ_EXAMPLES sets the hypothesis budget: the suite (and so CI) runs a
fixed 2,000 inputs in about 8 s; `make reliability` runs 5,000.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conversation import conversation
from tests.figures import figure
from tlsinspector.proxy.engine import Connection, Emit, Output, Send
from tlsinspector.proxy.records import Record

EXAMPLES = int(os.environ.get("TLSINSPECTOR_FUZZ_EXAMPLES", "2000"))
CLIENT = b"".join(d for s, d in conversation("1.3") if s == "client")
SERVER = b"".join(d for s, d in conversation("1.2") if s == "server")


def through(side: str, data: bytes, cut: int = 7) -> tuple[bytes, list[dict]]:  # type: ignore[type-arg]
    c = Connection("1", "c:1", "s:2")
    outs: list[Output] = []
    for i in range(0, len(data), cut):
        outs += c.receive(side, data[i : i + cut], 1.0)  # type: ignore[arg-type]
    outs += c.eof(side, 2.0)  # type: ignore[arg-type]
    outs += c.finish(2.0)
    got = b"".join(o.data for o in outs if isinstance(o, Send))
    return got, [o.event for o in outs if isinstance(o, Emit)]


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    side, base = draw(st.sampled_from([("client", CLIENT), ("server", SERVER)]))
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=20))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 20))]
    return side, bytes(data)


TRIED = {"inputs": 0, "bytes": 0}


@pytest.fixture(scope="module", autouse=True)
def report_inputs() -> Iterator[None]:
    yield
    if TRIED["inputs"]:
        figure("fuzz: mutated real TLS 1.2/1.3 captures through the engine (hypothesis)",
               f"{TRIED['inputs']:,} inputs ({TRIED['bytes']:,} bytes), 0 failures: every byte "
               "relayed unchanged, a close event at the end")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.integers(1, 400))
def test_mutated_captures_are_relayed_exactly(case: tuple[str, bytes], cut: int) -> None:
    side, data = case
    got, events = through(side, data, cut)
    assert got == data
    assert events[-1]["event"] == "close"
    TRIED["inputs"] += 1
    TRIED["bytes"] += len(data)


def test_oversized_zero_length_and_garbage_records() -> None:
    data = (Record(23, 0x0303, bytes(2**14 + 2049)).raw + Record(23, 0x0303, b"").raw
            + b"\x00garbage")
    got, events = through("server", data, 1000)
    assert got == data
    recs = [e for e in events if e["event"] == "record"]
    assert recs[0].get("oversized") and recs[1]["length"] == 0
    assert any(e["event"] == "non_tls" for e in events)


def test_largest_legal_record_is_not_reported_oversized() -> None:
    # RFC 5246 6.2.3: 2^14 + 2048 bytes is the largest legal ciphertext; the event of
    # such a record has no "oversized" flag, the one after it (one byte more) does.
    data = (Record(23, 0x0303, bytes(2**14 + 2048)).raw
            + Record(23, 0x0303, bytes(2**14 + 2049)).raw)
    got, events = through("server", data, 4096)
    assert got == data
    recs = [e for e in events if e["event"] == "record"]
    assert [r.get("oversized", False) for r in recs] == [False, True]


def test_64k_client_hello_over_many_records_is_one_message() -> None:
    ext = (0xFFAA).to_bytes(2, "big") + (60000).to_bytes(2, "big") + bytes(60000)
    body = (bytes.fromhex("0303") + bytes(32) + b"\x00" + bytes.fromhex("0002002f") + b"\x01\x00"
            + len(ext).to_bytes(2, "big") + ext)
    msg = b"\x01" + len(body).to_bytes(3, "big") + body
    data = b"".join(Record(22, 0x0301, msg[i : i + 1000]).raw for i in range(0, len(msg), 1000))
    got, events = through("client", data, 4096)
    assert got == data
    hellos = [m for e in events if e["event"] == "record" for m in e.get("messages", [])]
    assert len(hellos) == 1 and hellos[0]["type"] == "client_hello"
    assert hellos[0]["records"] == list(range(1, 62))
    assert hellos[0]["extensions"] == [{"type": "0xffaa", "length": 60000}]


def test_a_record_in_the_clear_over_two_to_the_14_is_oversized() -> None:
    # RFC 8446 5.1 / RFC 5246 6.2.1: a TLSPlaintext fragment holds at most 2^14 bytes;
    # the 2^14 + 2048 allowance is for protected records only. A ClientHello record
    # of 2^14 + 1 bytes is over the limit (the receiver answers record_overflow),
    # one of exactly 2^14 is not; the diagnosis names the record, not a negotiated
    # smaller limit.
    legal = Record(22, 0x0301, b"\x01" + (2**14 - 4).to_bytes(3, "big") + bytes(2**14 - 4))
    over = Record(22, 0x0301, b"\x01" + (2**14 - 3).to_bytes(3, "big") + bytes(2**14 - 3))
    for rec, flagged in ((legal, False), (over, True)):
        got, events = through("client", rec.raw, 4096)
        assert got == rec.raw
        recs = [e for e in events if e["event"] == "record"]
        assert [r.get("oversized", False) for r in recs] == [flagged]
        codes = [f["code"] for f in events[-1]["diagnosis"]]
        assert ("record-overflow" in codes) is flagged
    found = next(f for f in events[-1]["diagnosis"] if f["code"] == "record-overflow")
    assert "client record 1: record of 16385 bytes in the clear" in str(found["evidence"])
