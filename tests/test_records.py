"""Record framing: whole, byte at a time, with trailing data, cut at close, fuzzed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsinspector.proxy.records import (
    Header,
    Opaque,
    Record,
    RecordFramer,
    Run,
    is_sslv2_client_hello,
    preview,
)

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


@given(st.lists(st.tuples(st.sampled_from([21, 22, 23]), st.binary(max_size=60)),
                min_size=1, max_size=8),
       st.lists(st.integers(1, 40), max_size=30), st.integers(1, 50))
def test_skim_keep_copies_the_payloads_feed_sees(records: list[tuple[int, bytes]],
                                                  cuts: list[int], keep: int) -> None:
    """skim(keep=...) hands over every non-application_data payload and every
    application_data payload of at most ``keep`` bytes, whole, once the read that
    completes it arrives; the others as headers only. Any segmentation."""
    data = b"".join(Record(t, 0x0303, p).raw for t, p in records)
    skim, got, pos = RecordFramer(), [], 0
    for cut in [*cuts, len(data)]:
        got += skim.skim(data[pos : pos + cut], keep=keep)
        pos += cut
        if pos >= len(data):
            break
    assert [(h.content_type, h.length) for h in got] == [(t, len(p)) for t, p in records]
    assert [h.payload for h in got] == [  # type: ignore[union-attr]
        p if t != 23 or len(p) <= keep else None for t, p in records]
    assert skim.records == len(records)
    assert not skim.in_record and skim.missing == 0


def test_record_counter_and_missing_bytes_on_both_paths() -> None:
    stream = ALERT + CCS + APPDATA
    full = RecordFramer()
    assert full.records == 0
    full.feed(stream)
    assert full.records == 3
    fast = RecordFramer()
    assert fast.records == 0
    fast.skim(ALERT + APPDATA[:2])  # one record, then 2 of the next header's 5 bytes
    assert fast.records == 1 and fast.in_record
    assert fast.missing == 3  # RFC 5246 6.2.1: a 5-byte header
    fast.skim(APPDATA[2:7])  # the header completes; 2 of the 5 payload bytes
    assert fast.records == 2 and fast.missing == 3
    fast.skim(APPDATA[7:])
    assert fast.missing == 0 and not fast.in_record
    # The size a cut record would have had: header plus the length field's value.
    assert RecordFramer.pending_length_of(APPDATA[:5]) == 10
    assert RecordFramer.pending_length_of(bytes.fromhex("1703030102")) == 5 + 0x0102
    assert RecordFramer.pending_length_of(APPDATA[:4]) is None


def test_ssh_banner_is_named() -> None:
    # RFC 4253 4.2: an SSH server (or client) opens with "SSH-protoversion-softwareversion".
    for path in ("feed", "skim"):
        f = RecordFramer()
        banner = b"SSH-2.0-OpenSSH_9.6p1 Debian-3\r\n"
        [out] = f.feed(banner) if path == "feed" else f.skim(banner)
        assert isinstance(out, Opaque) and out.raw == banner
        assert out.reason == "SSH banner where a TLS record was expected", path
    [other] = RecordFramer().feed(b"Z\x01\x03\x00\x01x")
    assert other.reason == "content type 90 is not a TLS content type"  # type: ignore[union-attr]


def test_non_tls_first_bytes_are_judged_at_once() -> None:
    # Only a first byte with the top bit set may start an SSLv2 hello (RFC 5246 E.2) and
    # is worth waiting for; other non-TLS bytes go out as soon as they arrive.
    [out] = RecordFramer().feed(b"GE")
    assert isinstance(out, Opaque) and out.raw == b"GE"
    f = RecordFramer()
    assert f.feed(b"\x80\x2e") == []  # maybe SSLv2: wait for 5 bytes


def test_registered_content_types_frame_and_others_do_not() -> None:
    # IANA TLS ContentType: 20-24 (RFC 8446 5.1, RFC 6520), 25 tls12_cid (RFC 9146),
    # 26 ack (RFC 9147) frame whatever follows. 19 and 27 are unassigned: a record
    # only with a TLS (3.x) version after them (a hostile or fuzzing peer's record of
    # an unknown type, see test_unknown_content_type_...), otherwise not TLS.
    for ctype in range(20, 27):
        for raw in (Record(ctype, 0x0303, b"x").raw, Record(ctype, 0x4745, b"x").raw):
            [rec] = RecordFramer().feed(raw)
            assert isinstance(rec, Record) and rec.content_type == ctype
            [head] = RecordFramer().skim(raw)
            assert isinstance(head, Header) and head.content_type == ctype
    for ctype in (19, 27):
        [rec] = RecordFramer().feed(Record(ctype, 0x0303, b"x").raw)
        assert isinstance(rec, Record) and rec.content_type == ctype
        [out] = RecordFramer().feed(Record(ctype, 0x0203, b"x").raw)
        assert isinstance(out, Opaque)


def test_sslv2_hello_needs_msg_type_1_and_version_3_x_or_2() -> None:
    # RFC 5246 E.2: msg_type 1, version {3, x} (or SSL 2.0's 0x0002).
    assert is_sslv2_client_hello(bytes([0x80, 0x2E, 1, 3, 1]))
    assert is_sslv2_client_hello(bytes([0x80, 0x2E, 1, 0, 2]))
    assert not is_sslv2_client_hello(bytes([0x80, 0x2E, 1, 4, 1]))  # no TLS major 4
    assert not is_sslv2_client_hello(bytes([0x80, 0x2E, 1, 2, 0]))
    assert not is_sslv2_client_hello(bytes([0x80, 0x2E, 1, 0, 3]))
    assert not is_sslv2_client_hello(bytes([0x80, 0x2E, 1, 1, 2]))  # {1, 2}: no version
    assert not is_sslv2_client_hello(bytes([0x80, 0x2E, 2, 3, 1]))
    assert not is_sslv2_client_hello(bytes([0x00, 0x2E, 1, 3, 1]))
    assert not is_sslv2_client_hello(bytes([0x80, 0x2E, 1, 3]))


def test_fast_path_header_writes_what_the_record_header_writes() -> None:
    for ctype, version, length in ((22, 0x0301, 0), (23, 0x0303, 0x4800), (21, 0xFEFD, 0x01FF),
                                   (23, 0x0304, 0xFFFF)):
        rec = Record(ctype, version, bytes(length))
        assert Header(ctype, version, length).header() == rec.header() == rec.raw[:5]


def test_fast_path_stays_opaque_after_a_cut_non_tls_header() -> None:
    f = RecordFramer()
    assert f.skim(b"GE") == []  # fewer than 5 bytes: not judged yet
    [first] = f.skim(b"T / HTTP/1.1\r\n")
    assert isinstance(first, Opaque) and first.raw == b"GET / HTTP/1.1\r\n"
    assert first.reason == "plain HTTP where a TLS record was expected"
    assert f.opaque
    assert f.skim(ALERT) == [Opaque(ALERT, "after non-TLS bytes")]


def test_fast_path_keeps_application_data_of_exactly_keep_bytes_across_a_cut_header() -> None:
    for split in range(1, 5):  # the header cut after 1..4 of its bytes
        f = RecordFramer()
        got = f.skim(APPDATA[:split], keep=5) + f.skim(APPDATA[split:], keep=5)
        assert [h.payload for h in got] == [b"hello"]  # type: ignore[union-attr]
        f = RecordFramer()
        got = f.skim(APPDATA[:split], keep=4) + f.skim(APPDATA[split:], keep=4)
        assert [h.payload for h in got] == [None]  # type: ignore[union-attr]


def test_sslv2_hello_byte_by_byte_and_only_first() -> None:
    # The SSLv2-compatible hello of test_sslv2_hello_is_framed_as_opaque_unit, fed one
    # byte at a time: one unit, judged only once its first 5 bytes are in.
    body = bytes([1, 3, 1, 0, 3, 0, 0, 0, 16, 0, 0, 0x2F]) + bytes(16)
    hello = bytes([0x80, len(body)]) + body
    f = RecordFramer()
    out = [x for i in range(len(hello)) for x in f.feed(hello[i : i + 1])]
    assert out == [Opaque(hello, "SSLv2-compatible ClientHello")]
    # A 5-byte unit (a 3-byte body) is complete at once: forwarded, not held.
    assert RecordFramer().feed(bytes([0x80, 3, 1, 3, 1])) == [
        Opaque(bytes([0x80, 3, 1, 3, 1]), "SSLv2-compatible ClientHello")]
    # Only the first message of a stream may be one: after it, the same bytes are not TLS.
    f = RecordFramer()
    first = f.feed(hello)
    [second] = f.feed(hello)
    assert first == [Opaque(hello, "SSLv2-compatible ClientHello")]
    assert isinstance(second, Opaque)
    assert second.reason == "content type 128 is not a TLS content type"


def test_fast_path_without_keep_copies_no_payload() -> None:
    got = RecordFramer().skim(ALERT + CCS + APPDATA)
    assert [(h.content_type, h.length, h.payload) for h in got] == [  # type: ignore[union-attr]
        (21, 2, None), (20, 1, None), (23, 5, None)]


def test_records_are_frozen_and_slotted() -> None:
    import dataclasses

    for obj, attr in ((Record(21, 0x0303, b"\x02\x28"), "payload"), (Opaque(b"x", "why"), "raw")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, attr, b"")
        assert not hasattr(obj, "__dict__")
    assert not hasattr(Header(23, 0x0303, 5), "__dict__")  # slotted (mutable on purpose)
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
    # Only a first byte with the high bit set starts an SSLv2 header (RFC 5246 E.2.1);
    # a TLS header cut short (an alert, content type 0x15, odd like 0x81) stays TLS.
    for head in (b"\x15\x03", b"\x17\x03\x03\x00"):
        f = RecordFramer()
        assert f.feed(head) == []
        cut = f.close()
        assert cut is not None
        assert cut.reason == f"partial record header at close ({len(head)} of 5 bytes)"


# tlsfuzzer-style: a record of an unregistered content type (0x2a) with a TLS
# header, then a real record. RFC 8446 5: the receiver answers unexpected_message;
# the inspector frames it (logged with the type's number) and goes on framing.
# Before, the framer called the rest of the stream non-TLS and the ClientHello
# after it was never decoded (found by tests/record_probes.py through the proxy).
UNKNOWN_TYPE = bytes.fromhex("2a 0303 0001 00")


def test_unknown_content_type_with_a_tls_header_is_a_record_whole_bytewise_and_skimmed(
) -> None:
    stream = UNKNOWN_TYPE + APPDATA + b"\xff\x03\x01\x00\x00" + ALERT
    want = [Record(0x2A, 0x0303, b"\x00"), Record(23, 0x0303, b"hello"),
            Record(0xFF, 0x0301, b""), Record(21, 0x0303, ALERT[5:])]
    assert RecordFramer().feed(stream) == want
    f = RecordFramer()
    assert [r for i in range(len(stream)) for r in f.feed(stream[i:i + 1])] == want
    assert f.close() is None and not f.opaque
    for split in range(len(stream) + 1):
        f = RecordFramer()
        got = f.skim(stream[:split], keep=64) + f.skim(stream[split:], keep=64)
        assert [(h.content_type, h.version, h.length, h.payload)  # type: ignore[union-attr]
                for h in got] == [(r.content_type, r.version, r.length, r.payload)
                                  for r in want], split
        assert not f.opaque
    # Not 3.x after an unknown type: not a record, opaque from there on (one byte
    # is waited for, not five).
    f = RecordFramer()
    assert f.feed(b"\x2a") == []
    [rest] = f.feed(b"\x00junk")
    assert rest == Opaque(b"\x2a\x00junk", "content type 42 is not a TLS content type")


def test_content_type_constants_are_the_iana_codes() -> None:
    # The constants users' scripts import, against the content type table that
    # tests/test_names_oracle.py checks against tshark (RFC 5246 6.2.1, RFC 6520 for
    # heartbeat).
    from tlsinspector.proxy import names, records

    want = {"CHANGE_CIPHER_SPEC": "change_cipher_spec", "ALERT": "alert",
            "HANDSHAKE": "handshake", "APPLICATION_DATA": "application_data",
            "HEARTBEAT": "heartbeat"}
    for const, name in want.items():
        assert names.content_type_name(getattr(records, const)) == name, const


# -- runs of bulk records (skim's ``bulk``, issue 19) -----------------------------------


def _unpacked(items: list[Header | Opaque | Run]) -> list[tuple[int, int, int, bytes | None]]:
    """skim's items with every Run spelt out as the headers it stands for."""
    out: list[tuple[int, int, int, bytes | None]] = []
    for i in items:
        if isinstance(i, Run):
            out += [(23, i.version, n, None) for n in i.lengths]
        elif isinstance(i, Header):
            out.append((i.content_type, i.version, i.length, i.payload))
        else:
            out.append((-1, 0, len(i.raw), i.raw))
    return out


def test_skim_packs_consecutive_bulk_records_into_runs() -> None:
    big = [Record(23, 0x0303, bytes(100)).raw for _ in range(3)]
    small = Record(23, 0x0303, bytes(10)).raw
    other = Record(23, 0x0301, bytes(100)).raw
    stream = b"".join(big) + small + big[0] + other + ALERT + big[0]
    assert RecordFramer().skim(stream, bulk=64) == [
        Run(0x0303, [100, 100, 100]), Header(23, 0x0303, 10), Run(0x0303, [100]),
        Run(0x0301, [100]), Header(21, 0x0303, 2), Run(0x0303, [100])]
    # A header cut by the end of a read ends the run; the rest come in the next.
    f = RecordFramer()
    assert f.skim(stream[:2 * 105 + 3], bulk=64) == [Run(0x0303, [100, 100])]
    assert f.skim(stream[2 * 105 + 3:], bulk=64)[:2] == [Header(23, 0x0303, 100),
                                                         Header(23, 0x0303, 10)]
    # Not above bulk or keep: a header (a kept record carries its payload).
    assert RecordFramer().skim(small + big[0], keep=100, bulk=5) == [
        Header(23, 0x0303, 10, bytes(10)), Header(23, 0x0303, 100, bytes(100))]


# Record lengths: mostly a few repeated ones (a download's records are alike, and runs
# check alike headers column by column), some any length, some that differ only in the
# low or the high byte of the length.
_LENGTHS = st.one_of(st.sampled_from([70, 70, 70, 100, 326, 326, 582]), st.integers(0, 600))


@settings(deadline=None)  # (no timing here: a loaded machine must not fail it)
@given(st.lists(st.tuples(st.sampled_from([21, 22, 23, 23, 23, 23, 23]),
                          st.sampled_from([0x0303, 0x0303, 0x0303, 0x0301, 0x0302]),
                          _LENGTHS),
                max_size=24),
       st.lists(st.integers(1, 900), max_size=20), st.sampled_from([0, 40, 100]),
       st.sampled_from([1, 64]), st.booleans(), st.booleans())
def test_skim_with_runs_sees_what_skim_without_them_sees(
        records: list[tuple[int, int, int]], cuts: list[int], keep: int, bulk: int,
        garbage: bool, view: bool) -> None:
    """Runs are only packing: any segmentation gives the same records (type, version,
    length, kept payload), the same counts and the same state at every read, also
    from memoryview reads (the hot relay hands the engine views of its buffer)."""
    data = b"".join(Record(t, v, bytes([i % 251]) * n).raw
                    for i, (t, v, n) in enumerate(records)) + (b"GET /" if garbage else b"")
    packed, plain, pos = RecordFramer(), RecordFramer(), 0
    got: list[Header | Opaque | Run] = []
    want: list[Header | Opaque | Run] = []
    for cut in [*cuts, len(data)]:
        chunk = data[pos : pos + cut]
        got += packed.skim(memoryview(chunk) if view else chunk, keep, bulk)  # type: ignore[arg-type]
        want += plain.skim(chunk, keep)
        assert (packed.records, packed.in_record, packed.missing, packed.opaque) == (
            plain.records, plain.in_record, plain.missing, plain.opaque)
        pos += cut
        if pos >= len(data):
            break
    assert _unpacked(got) == _unpacked(want)
    assert not any(isinstance(i, Run) for i in want)


@pytest.mark.parametrize("column", range(5))
def test_a_run_ends_at_a_header_that_differs_in_any_one_byte(column: int) -> None:
    """Alike headers are checked column by column (skim's runs): a last record whose
    header differs from the run's in one byte only (type, version, length high or low)
    is still seen for what it is, however long the payloads."""
    head = bytearray(b"\x17\x03\x03\x01\x46")   # application_data, TLS 1.2, 326 bytes
    odd = bytearray(head)
    odd[column] ^= 0x01
    same = bytes(head) + bytes(326)
    last = bytes(odd) + bytes(int.from_bytes(odd[3:5], "big"))
    for n in (2, 3, 7):
        data = same * n + last
        for view in (False, True):
            packed = RecordFramer().skim(memoryview(data) if view else data,  # type: ignore[arg-type]
                                         bulk=64)
            assert _unpacked(packed) == _unpacked(RecordFramer().skim(data)), (n, view)
