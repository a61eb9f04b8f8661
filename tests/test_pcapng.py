"""proxy/pcapng.py: the writer's pieces that tshark tests do not pin down alone."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from tlsinspector.proxy.pcapng import CaptureWriter, _Walker, secrets_block
from tlsinspector.proxy.records import Record

RECORDS = st.lists(st.tuples(st.sampled_from([20, 21, 22, 23]),
                             st.binary(min_size=0, max_size=40)), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(records=RECORDS, cuts=st.lists(st.integers(0, 400), max_size=10))
def test_headers_only_zeroes_app_data_for_any_split(records: list[tuple[int, bytes]],
                                                    cuts: list[int]) -> None:
    raw = [Record(t, 0x0303, p).raw for t, p in records]
    want = b"".join(Record(t, 0x0303, bytes(len(p)) if t == 23 else p).raw
                    for t, p in records)
    data = b"".join(raw)
    w, out, pos = _Walker(), b"", 0
    for cut in sorted(c for c in set(cuts) if c < len(data)) + [len(data)]:
        out += w.zero(data[pos:cut])
        pos = cut
    assert out == want


def test_secrets_block_layout() -> None:
    keys = b"CLIENT_RANDOM " + b"ab" * 32 + b" " + b"cd" * 48 + b"\n"
    blk = secrets_block(keys)
    btype, total, stype, slen = struct.unpack_from("<IIII", blk)
    assert (btype, stype, slen) == (0x0A, 0x544C534B, len(keys))
    assert total == len(blk) and total % 4 == 0
    assert struct.unpack_from("<I", blk, total - 4)[0] == total
    assert blk[16:16 + slen] == keys


def test_sequence_numbers_follow_the_bytes() -> None:
    w = CaptureWriter(("127.0.0.1", 1000), ("127.0.0.1", 2000), 5)
    first = w.data("client", False, b"x" * 10, 1.0)
    leg = w.legs["client"]
    assert leg.seq["a"] - leg.seq["b"] == 10 - 7777   # both ISNs + 1, plus 10 bytes one way
    assert w.data("client", False, b"", 1.0) == b""
    assert first.count(b"x" * 10) == 1
    assert w.close("client", False, "fin", 2.0) and not w.close("client", False, "fin", 2.0)
