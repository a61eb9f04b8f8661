"""proxy/reseal.py: after any series of changes, inserts and drops, the receiver's
sequence numbers stay contiguous, per key epoch, for every cipher family."""

from __future__ import annotations

from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsinspector.proxy import keyschedule as ks
from tlsinspector.proxy.decrypt import Decrypted
from tlsinspector.proxy.protection import ProtectionError, RecordProtection, tls12, tls13
from tlsinspector.proxy.records import Record
from tlsinspector.proxy.reseal import Resealer, ResealError

SUITES = ks.supported_suites()
APP, ALERT = 23, 21
Op = Literal["keep", "change", "before", "after", "drop", "inject"]
OPS: tuple[Op, ...] = ("keep", "change", "before", "after", "drop", "inject")


def make(s: ks.Suite, etm: bool, material: bytes) -> RecordProtection:
    if s.tls13:
        return tls13(s, (material * 48)[: ks.HASH_LEN[s.prf_hash]])
    c, _ = ks.key_block(s, (material * 48)[:48], bytes(32), bytes(range(32)))
    return tls12(s, c, etm)


class Epoch:
    """One key epoch: the sender, the proxy's Decryptor state and the receiver."""

    def __init__(self, name: str, s: ks.Suite, etm: bool, material: bytes) -> None:
        self.name = name
        self.sender, self.dec, self.receiver = (make(s, etm, material) for _ in range(3))

    def send(self, n: int, plaintext: bytes) -> tuple[Decrypted, Record]:
        rec = Record(self.sender.outer_type(APP), 0x0303, self.sender.seal(APP, plaintext))
        seq = self.dec.seq
        inner, pt = self.dec.open(rec.header(), rec.payload)  # what the Decryptor does
        res = Decrypted("client", n, "decrypted", inner, len(pt), epoch=self.name, seq=seq,
                        protection=self.dec)
        return res, rec


def run(epochs: list[Epoch], plan: list[tuple[int, Op, bytes]]
        ) -> tuple[list[tuple[Epoch, Record]], list[bytes]]:
    """Pass the plan's records through one Resealer; returns (sent, expected plaintexts)."""
    rs = Resealer()
    sent: list[tuple[Epoch, Record]] = []
    expected: list[bytes] = []
    for n, (e, op, data) in enumerate(plan, 1):
        ep = epochs[e]
        original = b"record %d" % n
        # A new record between two originals (e.g. reply-alert's direction): sealed
        # while the Decryptor waits for the sender's next record.
        injected = rs.inject(ep.dec, ep.name, [Record(APP, 0x0303, data)]) \
            if op == "inject" else []
        res, rec = ep.send(n, original)
        new = Record(APP, 0x0303, data)
        if op == "keep":
            out, want = rs.forward(res, rec), [original]
        elif op == "change":
            out, want = rs.replace(res, rec, [new]), [data]
        elif op == "before":
            out, want = rs.replace(res, rec, [new, rs.open(res, rec)]), [data, original]
        elif op == "after":
            out, want = rs.replace(res, rec, [rs.open(res, rec), new]), [original, data]
        elif op == "drop":
            out, want = rs.replace(res, rec, []), []
        else:
            out, want = injected + rs.forward(res, rec), [data, original]
        sent += [(ep, r) for r in out]
        expected += want
    return sent, expected


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(SUITES), st.booleans(), st.data())
def test_receiver_sequence_numbers_stay_contiguous(s: ks.Suite, etm: bool,
                                                   data: st.DataObject) -> None:
    epochs = [Epoch("application", s, etm, b"\x01"), Epoch("application+1", s, etm, b"\x02")]
    steps = data.draw(st.lists(st.tuples(st.sampled_from(OPS), st.binary(max_size=40)),
                               max_size=14))
    switch = data.draw(st.integers(0, len(steps)))  # the epoch changes here (a KeyUpdate)
    plan = [(0 if i < switch else 1, op, d) for i, (op, d) in enumerate(steps)]
    sent, expected = run(epochs, plan)
    got = []
    for ep, r in sent:
        inner, pt = ep.receiver.open(r.header(), r.payload)  # raises on a wrong number
        assert inner == APP and r.content_type == ep.receiver.outer_type(APP)
        got.append(pt)
    assert got == expected


@pytest.mark.parametrize("code", [0x1301, 0x1303, 0xC02F, 0xCCA8, 0xC013])
def test_unchanged_records_are_passed_as_they_are_until_a_shift(code: int) -> None:
    s = ks.suite(code)
    assert s is not None
    ep = Epoch("tls12", s, True, b"\x07")
    rs = Resealer()
    res, rec = ep.send(1, b"one")
    assert rs.forward(res, rec) == [rec] and not rs.shifted(res)
    assert ep.receiver.open(rec.header(), rec.payload) == (APP, b"one")
    res, rec = ep.send(2, b"two")
    assert rs.replace(res, rec, []) == [] and rs.shift("tls12") == -1
    res, rec = ep.send(3, b"three")
    (out,) = rs.forward(res, rec)
    assert out != rec and len(out.payload) == len(rec.payload)  # same size, new seal
    assert ep.receiver.open(out.header(), out.payload) == (APP, b"three")
    assert rs.shift("application") == 0  # another epoch is not shifted


def test_forgetting_the_shift_is_caught_by_the_receiver() -> None:
    # The planted mistake: a drop re-sealed without moving the later numbers.
    s = ks.suite(0xC02F)
    assert s is not None
    ep = Epoch("tls12", s, False, b"\x03")
    rs = Resealer()
    res, rec = ep.send(1, b"one")
    rs.replace(res, rec, [])
    rs._shift.clear()  # forget it
    res, rec = ep.send(2, b"two")
    (out,) = rs.forward(res, rec)
    with pytest.raises(ProtectionError):
        ep.receiver.open(out.header(), out.payload)


def test_version_change_is_in_the_additional_data() -> None:
    # TLS 1.2 AAD holds the record version (RFC 5246 6.2.3.3): re-sealed with the
    # new version, the receiver opens it; the version alone changed does not.
    s = ks.suite(0xC02F)
    assert s is not None
    ep = Epoch("tls12", s, False, b"\x04")
    rs = Resealer()
    res, rec = ep.send(1, b"x")
    plain = rs.open(res, rec)
    (out,) = rs.replace(res, rec, [Record(plain.content_type, 0x0301, plain.payload)])
    assert out.version == 0x0301
    probe = make(s, False, b"\x04")
    assert probe.clone().open(out.header(), out.payload) == (APP, b"x")
    tampered = Record(rec.content_type, 0x0301, rec.payload)
    with pytest.raises(ProtectionError):
        probe.clone().open(tampered.header(), tampered.payload)


def test_records_without_keys_cannot_be_resealed() -> None:
    rs = Resealer()
    pending = Decrypted("server", 4, "pending", reason="waiting for CLIENT_RANDOM")
    rec = Record(APP, 0x0303, b"\x00" * 30)
    with pytest.raises(ResealError, match="pending.*CLIENT_RANDOM"):
        rs.replace(pending, rec, [])
    with pytest.raises(ResealError):
        rs.inject(None, "tls12", [Record(ALERT, 0x0303, b"\x01\x00")])
    plain = Decrypted("server", 1, "plaintext")
    assert rs.forward(plain, rec) == [rec]
