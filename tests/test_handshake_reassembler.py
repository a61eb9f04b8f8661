"""HandshakeReassembler and HandshakeMessage (RFC 8446 4, RFC 5246 7.4): message
framing across records, the records each message came from, fragments, the
size cap, and the message type numbers against the IANA table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tlsinspector.proxy import handshake as hs
from tlsinspector.proxy import names
from tlsinspector.proxy.handshake import (
    MAX_MESSAGE,
    Fragment,
    HandshakeMessage,
    HandshakeReassembler,
    encode_message,
)

# finished (20), 12 bytes of verify_data: the smallest real message of TLS 1.2.
FINISHED = bytes.fromhex("1400000c") + bytes(range(12))


def test_message_types_are_the_iana_numbers() -> None:
    for const, name in [("HELLO_REQUEST", "hello_request"), ("CLIENT_HELLO", "client_hello"),
                        ("SERVER_HELLO", "server_hello"),
                        ("NEW_SESSION_TICKET", "new_session_ticket"),
                        ("ENCRYPTED_EXTENSIONS", "encrypted_extensions"),
                        ("CERTIFICATE", "certificate"),
                        ("SERVER_KEY_EXCHANGE", "server_key_exchange"),
                        ("CERTIFICATE_REQUEST", "certificate_request"),
                        ("SERVER_HELLO_DONE", "server_hello_done"),
                        ("CERTIFICATE_VERIFY", "certificate_verify"),
                        ("CLIENT_KEY_EXCHANGE", "client_key_exchange"),
                        ("FINISHED", "finished"), ("KEY_UPDATE", "key_update")]:
        assert getattr(hs, const) == names.code_of("handshake_type", name), const
    assert hs.HEADER_LEN == 4 and MAX_MESSAGE == (1 << 24) - 1  # the length field's own limit


def test_encode_and_raw_write_type_then_a_24_bit_length() -> None:
    msg = HandshakeMessage(20, bytes(range(12)), (3,))
    assert msg.raw == FINISHED == encode_message(20, bytes(range(12)))
    assert encode_message(1, b"") == b"\x01\x00\x00\x00"
    big = encode_message(11, bytes(0x012345))
    assert big[:4] == b"\x0b\x01\x23\x45" and len(big) == 4 + 0x012345


def test_one_record_two_messages_then_one_message_over_three_records() -> None:
    r = HandshakeReassembler()
    assert r.want() is None and r.fragment() is None and r.pending_type() is None
    out = r.feed(FINISHED + FINISHED, 1)
    assert out == [HandshakeMessage(20, bytes(range(12)), (1,))] * 2
    assert r.pending == 0 and r.fragment() is None
    assert r.feed(FINISHED[:2], 2) == []
    assert r.want() is None  # the length is not complete yet
    assert r.fragment() == Fragment(2, None, 2, 1) and r.pending_type() == 20
    assert r.feed(FINISHED[2:9], 3) == []
    assert r.want() == 16 and r.fragment() == Fragment(9, 16, 2, 2)
    assert r.feed(b"", 4) == []  # an empty record owns nothing
    assert r.fragment() == Fragment(9, 16, 2, 2)
    [m] = r.feed(FINISHED[9:], 5)
    assert m.records == (2, 3, 5) and m.raw == FINISHED
    assert r.pending == 0 and r.fragment() is None


def test_a_message_ending_inside_a_record_hands_that_record_to_the_next() -> None:
    r = HandshakeReassembler()
    r.feed(FINISHED[:10], 1)
    [first] = r.feed(FINISHED[10:] + FINISHED[:6], 2)
    assert first.records == (1, 2)
    assert r.fragment() == Fragment(6, 16, 2, 1)
    [second] = r.feed(FINISHED[6:], 3)
    assert second.records == (2, 3)
    # Ends exactly at the record end: the next message starts with the next record.
    [third] = r.feed(FINISHED, 4)
    assert third.records == (4,)


def test_reset_forgets_the_partial_message() -> None:
    r = HandshakeReassembler()
    r.feed(FINISHED[:7], 1)
    r.reset()
    assert r.pending == 0 and r.fragment() is None
    [m] = r.feed(FINISHED, 2)
    assert m.records == (2,)


@given(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), min_size=1,
                max_size=6), st.lists(st.integers(1, 30), min_size=1, max_size=20))
def test_any_record_split_gives_the_same_messages(msgs: list[tuple[int, bytes]],
                                                  cuts: list[int]) -> None:
    stream = b"".join(encode_message(t, b) for t, b in msgs)
    r = HandshakeReassembler()
    got: list[HandshakeMessage] = []
    pos, index = 0, 0
    while pos < len(stream):
        n = cuts[index % len(cuts)]
        index += 1
        got += r.feed(stream[pos : pos + n], index)
        pos += n
    assert [(m.msg_type, m.body) for m in got] == msgs
    assert b"".join(m.raw for m in got) == stream
    assert r.pending == 0
    for m in got:  # each message's records are consecutive and cover its bytes
        assert list(m.records) == list(range(m.records[0], m.records[-1] + 1))


@pytest.mark.parametrize("cut", range(1, len(FINISHED)))
def test_every_cut_of_a_message(cut: int) -> None:
    r = HandshakeReassembler()
    assert r.feed(FINISHED[:cut], 1) == []
    assert r.fragment() == Fragment(cut, 16 if cut >= 4 else None, 1, 1)
    [m] = r.feed(FINISHED[cut:], 2)
    assert m.records == (1, 2)


def test_a_large_message_ending_at_the_record_end_owns_no_later_record() -> None:
    # Lengths above 256 too (Python caches small ints: an identity check would pass
    # for short messages only).
    cert = encode_message(11, bytes(3000))
    r = HandshakeReassembler()
    assert r.feed(cert[:1000], 1) == []
    [m] = r.feed(cert[1000:], 2)
    assert m.records == (1, 2) and r.fragment() is None
    [f] = r.feed(FINISHED, 3)
    assert f.records == (3,)


def test_messages_and_fragments_are_frozen_and_slotted() -> None:
    import dataclasses

    msg = HandshakeMessage(20, b"x", (1,))
    frag = Fragment(1, None, 1, 1)
    for obj, field in ((msg, "records"), (frag, "have")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, field, ())
        assert not hasattr(obj, "__dict__")


def test_whole_messages_and_a_tail_in_one_record_match_the_buffered_path() -> None:
    """The fast path (nothing buffered: messages cut from the record itself) gives what
    the buffered path gives: the same messages, record indexes, pending bytes and
    fragment, for whole messages followed by a partial one, and bodies as bytes."""
    from tlsinspector.proxy.handshake import HandshakeReassembler, encode_message

    a, b, c = encode_message(8, b"\x00\x00"), encode_message(11, b"x" * 300), \
        encode_message(15, b"y" * 100)
    fast = HandshakeReassembler()
    slow = HandshakeReassembler()
    got_fast = fast.feed(a + b + c[:7], 3)
    got_slow = slow._feed_buffered(a + b + c[:7], 3)
    assert got_fast == got_slow and [m.records for m in got_fast] == [(3,), (3,)]
    assert all(type(m.body) is bytes for m in got_fast)
    assert fast.pending == slow.pending == 7 and fast.fragment() == slow.fragment()
    assert fast.feed(c[7:], 4) == slow.feed(c[7:], 4) == [
        type(got_fast[0])(15, b"y" * 100, (3, 4))]
    # Over the size limit in the middle of a record: the same message count, the same
    # reason.
    small_f, small_s = HandshakeReassembler(max_message=200), HandshakeReassembler(200)
    assert small_f.feed(a + b, 1) == small_s._feed_buffered(a + b, 1)
    assert small_f.overflowed == small_s.overflowed is not None


@pytest.mark.parametrize("size", [199, 200, 201])
def test_a_whole_message_over_the_limit_in_one_record_is_not_assembled(size: int) -> None:
    """The size limit holds on the fast path too (a record that holds the whole message
    and nothing else): up to max_message bytes it is a message, one more and the side
    stops being parsed, with the reason."""
    from tlsinspector.proxy.handshake import HandshakeReassembler, encode_message

    hs = HandshakeReassembler(max_message=200)
    got = hs.feed(encode_message(11, b"z" * size), 1)
    if size <= 200:
        assert [len(m.body) for m in got] == [size] and hs.overflowed is None
    else:
        assert got == [] and hs.overflowed == (
            "handshake message of 201 bytes exceeds the limit of 200")


@pytest.mark.parametrize("spans", [1024, 1025])
def test_a_message_over_more_than_1024_records_logs_only_their_ends(spans: int) -> None:
    """README: a handshake message spanning more than 1024 records lists only the first
    and last in ``records``, with ``record_count``; up to 1024 it lists them all."""
    from tlsinspector.proxy import messages
    from tlsinspector.proxy.handshake import HandshakeReassembler, encode_message

    msg = encode_message(11, bytes(spans - 4))
    hs = HandshakeReassembler()
    got = [m for i in range(spans) for m in hs.feed(msg[i:i + 1], i + 1)]
    [desc] = [messages.describe(m)[0] for m in got]
    if spans == 1024:
        assert desc["records"] == list(range(1, 1025)) and "record_count" not in desc
    else:
        assert desc["records"] == [1, 1025] and desc["record_count"] == 1025
