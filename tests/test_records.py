"""Record framing: whole, byte at a time, with trailing data, cut at close, fuzzed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tlsinspector.proxy.records import Header, Opaque, Record, RecordFramer, preview

# A TLS 1.2 alert record (fatal handshake_failure) as smtp.gmail.com sent it in
# report 003: 15 (alert) 0303 (TLS 1.2) 0002 (length) 02 (fatal) 28 (40).
ALERT = bytes.fromhex("15030300020228")
CCS = bytes.fromhex("140303000101")
APPDATA = bytes.fromhex("1703030005") + b"hello"


def feed_all(chunks: list[bytes]) -> list[Record | Opaque]:
    f = RecordFramer()
    out: list[Record | Opaque] = []
    for c in chunks:
        out += f.feed(c)
    rest = f.close()
    if rest is not None:
        out.append(rest)
    return out


def test_single_record_decodes_and_reencodes() -> None:
    [rec] = feed_all([ALERT])
    assert isinstance(rec, Record)
    assert (rec.content_type, rec.version, rec.payload) == (21, 0x0303, b"\x02\x28")
    assert rec.raw == ALERT


def test_whole_bytewise_and_trailing_give_the_same_records() -> None:
    stream = ALERT + CCS + APPDATA
    whole = feed_all([stream])
    bytewise = feed_all([stream[i : i + 1] for i in range(len(stream))])
    assert whole == bytewise
    assert [r.raw for r in whole] == [ALERT, CCS, APPDATA]  # type: ignore[union-attr]
    with_trailing = feed_all([stream + APPDATA[:3]])
    assert with_trailing[:3] == whole
    cut = with_trailing[3]
    assert isinstance(cut, Opaque) and cut.raw == APPDATA[:3]
    assert "partial record header" in cut.reason


def test_partial_record_at_close_is_kept_with_its_size() -> None:
    out = feed_all([APPDATA[:7]])
    assert len(out) == 1 and isinstance(out[0], Opaque)
    assert out[0].raw == APPDATA[:7]
    assert out[0].reason == "partial record at close (7 of 10 bytes)"


def test_plain_http_becomes_opaque_and_stays_opaque() -> None:
    f = RecordFramer()
    first = f.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(first) == 1 and isinstance(first[0], Opaque)
    assert first[0].reason == "plain HTTP where a TLS record was expected"
    assert f.opaque
    later = f.feed(ALERT)  # even valid-looking records: no resynchronisation
    assert later == [Opaque(ALERT, "after non-TLS bytes")]


def test_record_with_nonsense_version_is_still_a_record() -> None:
    # Report 000: Go printed "version 3030" = 0x3030, ASCII "00".
    data = bytes.fromhex("1630300002") + b"ab"
    [rec] = feed_all([data])
    assert isinstance(rec, Record) and rec.version == 0x3030 and rec.raw == data


def test_sslv2_hello_is_framed_as_opaque_unit() -> None:
    # SSLv2-compatible ClientHello: len 0x801f... msg 1, version 0x0301
    body = bytes([1, 3, 1, 0, 3, 0, 0, 0, 16, 0, 0, 0x2F]) + bytes(16)
    hello = bytes([0x80 | (len(body) >> 8), len(body) & 0xFF]) + body
    out = feed_all([hello + ALERT])
    assert isinstance(out[0], Opaque) and out[0].raw == hello
    assert out[0].reason == "SSLv2-compatible ClientHello"
    assert isinstance(out[1], Record) and out[1].raw == ALERT


def test_oversized_and_zero_length_records() -> None:
    big = Record(23, 0x0303, bytes(2**14 + 2049))
    empty = Record(23, 0x0303, b"")
    out = feed_all([big.raw + empty.raw])
    assert out == [big, empty]
    assert big.oversized and not empty.oversized


def test_oversized_boundary_is_exactly_two_to_the_14_plus_2048() -> None:
    # RFC 5246 6.2.3: TLSCiphertext.length MUST NOT exceed 2^14 + 2048; a record of
    # exactly that size is legal and must not be flagged, one byte more is.
    limit = 2**14 + 2048
    legal = Record(23, 0x0303, bytes(limit))
    over = Record(23, 0x0303, bytes(limit + 1))
    assert feed_all([legal.raw + over.raw]) == [legal, over]
    assert not legal.oversized
    assert over.oversized


def test_length_field_override_writes_the_lie() -> None:
    r = Record(22, 0x0301, b"abc", length_field=10)
    assert r.raw == bytes.fromhex("160301000a") + b"abc"


def test_preview_is_printable_and_bounded() -> None:
    assert preview(b"HTTP/1.1 400\r\n") == "HTTP/1.1 400.."
    assert preview(bytes(100), 4) == "....."[:4] + "..."


@given(st.binary(max_size=400), st.lists(st.integers(1, 50), max_size=30))
def test_any_bytes_any_segmentation_roundtrip(data: bytes, cuts: list[int]) -> None:
    chunks, pos = [], 0
    for c in cuts:
        chunks.append(data[pos : pos + c])
        pos += c
    chunks.append(data[pos:])
    out = feed_all(chunks)
    assert b"".join(x.raw for x in out) == data
    whole = feed_all([data])
    assert [x for x in out if isinstance(x, Record)] == [x for x in whole if isinstance(x, Record)]


@given(st.lists(st.tuples(st.sampled_from([20, 21, 22, 23, 24]), st.integers(0, 0xFFFF),
                          st.integers(0, 300)), max_size=12),
       st.one_of(st.just(b""), st.binary(min_size=5, max_size=12)),
       st.lists(st.integers(1, 700), max_size=40))
def test_skim_sees_the_records_feed_sees(records: list[tuple[int, int, int]], tail: bytes,
                                         cuts: list[int]) -> None:
    """The fast path (headers only) and the full framer agree on any segmentation."""
    data = b"".join(Record(t, v, bytes(n)).raw for t, v, n in records) + tail
    full = RecordFramer()
    want = [(r.content_type, r.version, r.length) if isinstance(r, Record) else r.raw
            for r in full.feed(data)]
    pending = full.held_bytes()
    if len(pending) >= 5 and not full.opaque:
        # skim names a record at its header; feed when its payload is complete.
        want.append((pending[0], pending[1] << 8 | pending[2], pending[3] << 8 | pending[4]))
    skim, got, pos = RecordFramer(), [], 0
    for cut in [*cuts, len(data)]:
        for item in skim.skim(data[pos : pos + cut]):
            got.append((item.content_type, item.version, item.length)
                       if isinstance(item, Header) else item.raw)
        pos += cut
        if pos >= len(data):
            break
    if got and isinstance(got[-1], bytes) and want and isinstance(want[-1], bytes):
        # Opaque bytes after the records: skim reports them per read, feed at once.
        i = next(i for i, x in enumerate(got) if isinstance(x, bytes))
        got = [*got[:i], b"".join(x for x in got[i:] if isinstance(x, bytes))]
    assert got == want
    assert skim.in_record == (full.buffered > 0 and not full.opaque)


def test_truncated_sslv2_hello_at_close_counts_sslv2_framing() -> None:
    # Issue 15 bug 12: "partial record at close (45 of 774 bytes)": the TLS 5-byte
    # header was read over an SSLv2 one (0x0301 taken as the length).
    body = bytes([1, 3, 1, 0, 30, 0, 0, 0, 16]) + bytes(30) + bytes(16)
    hello = bytes([0x80 | (len(body) >> 8), len(body) & 0xFF]) + body
    f = RecordFramer()
    assert f.feed(hello[:45]) == []
    cut = f.close()
    assert cut is not None and cut.raw == hello[:45]
    assert cut.reason == (f"partial record at close: SSLv2-compatible ClientHello "
                          f"(45 of {len(hello)} bytes)")
    assert cut.reason.startswith("partial record")  # the engine's partial_record anomaly
