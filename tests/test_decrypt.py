"""The decryptor's state machine on synthetic connections: epochs, late keys,
wrong keys, other connections' keys, bounded queues, unsupported suites, and
arbitrary input (real peers are in test_decrypt_real.py / test_reseal_real.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tlsinspector.proxy import keyschedule as ks
from tlsinspector.proxy.decrypt import Decryptor
from tlsinspector.proxy.handshake import encode_message
from tlsinspector.proxy.hello import ClientHello, Extension, ServerHello
from tlsinspector.proxy.keylog import KeyLog
from tlsinspector.proxy.protection import RecordProtection, tls12, tls13
from tlsinspector.proxy.records import Record

CR, SR = bytes(range(32)), bytes(range(100, 132))
SHS, CHS, SAP = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


def hello_records(version: int, suite: int, etm: bool = False) -> list[tuple[str, Record]]:
    ch = ClientHello(0x0303, CR, b"", (suite,), b"\x00", ())
    exts: tuple[Extension, ...] = ((Extension(43, b"\x03\x04"),) if version == 0x0304 else
                                   ((Extension(22, b""),) if etm else ()))
    sh = ServerHello(0x0303, SR, b"", suite, 0, exts)
    return [("client", Record(22, 0x0301, encode_message(1, ch.encode()))),
            ("server", Record(22, 0x0303, encode_message(2, sh.encode())))]


def sealed(p: RecordProtection, inner: int, data: bytes) -> Record:
    payload = p.seal(inner, data, 0x0303)
    return Record(p.outer_type(inner), 0x0303, payload)


def keylog(text_lines: list[str]) -> KeyLog:
    log = KeyLog()
    log.feed("\n".join(text_lines) + "\n")
    return log


def tls13_server_flight() -> list[Record]:
    s = ks.suite(0x1301)
    assert s is not None
    hs_p, ap_p = tls13(s, SHS), tls13(s, SAP)
    return [sealed(hs_p, 22, encode_message(8, b"\x00\x00")),
            sealed(hs_p, 22, encode_message(20, bytes(32))),
            sealed(ap_p, 21, b"\x02\x74")]  # certificate_required, under application keys


def test_tls13_epochs_and_late_keys() -> None:
    dec = Decryptor()
    for side, rec in hello_records(0x0304, 0x1301):
        assert dec.record(side, 1, rec.header(), rec.payload).status == "plaintext"  # type: ignore[arg-type]
    assert dec.wanted() == {CR}
    flight = tls13_server_flight()
    got = [dec.record("server", i + 2, r.header(), r.payload) for i, r in enumerate(flight)]
    assert [g.status for g in got] == ["pending"] * 3
    assert "SERVER_HANDSHAKE_TRAFFIC_SECRET" in got[0].reason
    other = keylog([f"SERVER_HANDSHAKE_TRAFFIC_SECRET {SR.hex()} {SHS.hex()}"]).get(SR)
    assert other is not None and dec.add_keys(other) == []  # another connection's keys
    log = keylog([f"SERVER_HANDSHAKE_TRAFFIC_SECRET {CR.hex()} {SHS.hex()}"])
    k = log.get(CR)
    assert k is not None
    late = dec.add_keys(k)
    # The handshake records open; the alert waits for the application secret.
    assert [(r.index, r.status, r.epoch) for r in late] == [(2, "decrypted", "handshake"),
                                                            (3, "decrypted", "handshake")]
    assert late[1].messages[0].summary == "finished verify_data=32"
    log.feed(f"SERVER_TRAFFIC_SECRET_0 {CR.hex()} {SAP.hex()}\n")
    [alert] = dec.add_keys(k)
    assert (alert.index, alert.late, alert.epoch) == (4, True, "application")
    assert alert.summary() == "ALERT fatal certificate_required (116)"
    assert alert.to_json() == {
        "status": "decrypted", "inner_type": "alert", "length": 2, "epoch": "application",
        "seq": 0, "alert": {"level": "fatal", "description": "certificate_required",
                            "code": 116},
        "record": {"side": "server", "index": 4}}


def test_wrong_keys_are_undecryptable_with_a_reason() -> None:
    dec = Decryptor()
    for side, rec in hello_records(0x0304, 0x1301):
        dec.record(side, 1, rec.header(), rec.payload)  # type: ignore[arg-type]
    k = keylog([f"SERVER_HANDSHAKE_TRAFFIC_SECRET {CR.hex()} {CHS.hex()}"]).get(CR)
    assert k is not None
    dec.add_keys(k)
    r = tls13_server_flight()[0]
    res = dec.record("server", 2, r.header(), r.payload)
    assert res.status == "undecryptable" and res.reason.startswith("bad_tag")
    assert res.summary().startswith("undecryptable: bad_tag")


def _hellos_then_look(dec: Decryptor, log: KeyLog) -> None:
    """The hellos go by and the decryptor looks at the key log after each (as the
    engine does in the same call as the record): the ClientHello's look pins it."""
    for side, rec in hello_records(0x0304, 0x1301):
        dec.record(side, 1, rec.header(), rec.payload)  # type: ignore[arg-type]
        dec.keys_from(log)


def test_a_secret_logged_before_the_client_hello_is_awaited_anew_when_it_fails() -> None:
    """testssl.sh sends one fixed client random: the key log holds another connection's
    secrets under it before this ClientHello. They are tried; the first record that
    does not open waits (pending) for this connection's own line, which opens it and
    the records queued behind it; the old secret is not taken again."""
    log = keylog([f"SERVER_HANDSHAKE_TRAFFIC_SECRET {CR.hex()} {CHS.hex()}"])  # stale
    dec = Decryptor()
    _hellos_then_look(dec, log)
    flight = tls13_server_flight()
    first = dec.record("server", 2, flight[0].header(), flight[0].payload)
    assert first.status == "pending" and first.reason.startswith(
        "waiting for a newer SERVER_HANDSHAKE_TRAFFIC_SECRET")
    assert dec.record("server", 3, flight[1].header(), flight[1].payload).status == "pending"
    log.feed(f"SERVER_HANDSHAKE_TRAFFIC_SECRET {CR.hex()} {SHS.hex()}\n")
    late = dec.keys_from(log)
    assert [(r.index, r.status, r.late) for r in late] == [(2, "decrypted", True),
                                                           (3, "decrypted", True)]
    # Never arriving: the wait ends as any wait for keys does.
    log = keylog([f"SERVER_HANDSHAKE_TRAFFIC_SECRET {CR.hex()} {CHS.hex()}"])
    dec = Decryptor(key_wait=1.0)
    _hellos_then_look(dec, log)
    assert dec.record("server", 2, flight[0].header(), flight[0].payload,
                      now=10.0).status == "pending"
    later = dec.record("server", 3, flight[1].header(), flight[1].payload, now=11.5)
    assert later.status == "undecryptable" and "never arrived" in later.reason


def test_an_old_secret_that_opens_the_record_is_kept() -> None:
    """A TLS 1.2 resumption logs its session's master secret again, the same line: a
    secret from before the ClientHello that opens the record is simply used."""
    log = keylog([f"SERVER_HANDSHAKE_TRAFFIC_SECRET {CR.hex()} {SHS.hex()}"])
    dec = Decryptor()
    _hellos_then_look(dec, log)
    r = tls13_server_flight()[0]
    assert dec.record("server", 2, r.header(), r.payload).status == "decrypted"


def test_a_newer_line_for_the_same_label_is_tried_when_the_first_record_fails() -> None:
    """A wrong secret logged after the ClientHello, then the right one (a writer that
    logged again): the first record that does not open with the installed one is
    opened with the newer line; a record that opens with neither is undecryptable."""
    log = KeyLog()
    dec = Decryptor()
    _hellos_then_look(dec, log)
    log.feed(f"SERVER_HANDSHAKE_TRAFFIC_SECRET {CR.hex()} {CHS.hex()}\n")
    assert dec.keys_from(log) == []  # installed: the wrong one
    log.feed(f"SERVER_HANDSHAKE_TRAFFIC_SECRET {CR.hex()} {SHS.hex()}\n")
    dec.keys_from(log)
    flight = tls13_server_flight()
    got = [dec.record("server", i + 2, r.header(), r.payload) for i, r in enumerate(flight[:2])]
    assert [g.status for g in got] == ["decrypted", "decrypted"]
    dec = Decryptor()
    _hellos_then_look(dec, log)  # SHS is logged before this hello (stale)
    log.feed(f"SERVER_HANDSHAKE_TRAFFIC_SECRET {CR.hex()} {SAP.hex()}\n")
    dec.keys_from(log)
    suite = ks.suite(0x1301)
    assert suite is not None
    neither = sealed(tls13(suite, CHS), 22, encode_message(8, b"\x00\x00"))
    bad = dec.record("server", 2, neither.header(), neither.payload)
    assert bad.status == "undecryptable" and bad.reason.startswith("bad_tag")


def test_pending_queue_is_bounded() -> None:
    dec = Decryptor(max_pending=2)
    for side, rec in hello_records(0x0304, 0x1301):
        dec.record(side, 1, rec.header(), rec.payload)  # type: ignore[arg-type]
    r = tls13_server_flight()[0]
    st = [dec.record("server", i, r.header(), r.payload).status for i in range(2, 6)]
    assert st == ["pending", "pending", "undecryptable", "undecryptable"]


def test_tls12_ccs_and_unsupported_suite() -> None:
    s = ks.suite(0xC013)
    assert s is not None
    ms = b"\x07" * 48
    c_keys, _ = ks.key_block(s, ms, CR, SR)
    dec = Decryptor()
    for side, rec in hello_records(0x0303, 0xC013, etm=True):
        dec.record(side, 1, rec.header(), rec.payload)  # type: ignore[arg-type]
    k = keylog([f"CLIENT_RANDOM {CR.hex()} {ms.hex()}"]).get(CR)
    assert k is not None
    dec.add_keys(k)
    fin = sealed(tls12(s, c_keys, encrypt_then_mac=True), 22, encode_message(20, bytes(12)))
    assert dec.record("client", 2, b"\x16\x03\x03\x00\x05", b"x" * 5).status == "plaintext"
    assert dec.record("client", 3, b"\x14\x03\x03\x00\x01", b"\x01").status == "plaintext"
    res = dec.record("client", 4, fin.header(), fin.payload)
    assert res.status == "decrypted" and res.epoch == "tls12"
    assert res.messages[0].summary == "finished verify_data=12"
    dec3 = Decryptor()
    for side, rec in hello_records(0x0303, 0x000A):  # 3DES
        dec3.record(side, 1, rec.header(), rec.payload)  # type: ignore[arg-type]
    dec3.record("server", 2, b"\x14\x03\x03\x00\x01", b"\x01")
    res = dec3.record("server", 3, b"\x16\x03\x03\x00\x20", bytes(32))
    assert res.status == "undecryptable" and "not supported" in res.reason
    assert "TLS_RSA_WITH_3DES_EDE_CBC_SHA" in res.reason


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["client", "server"]), st.integers(20, 24),
                          st.binary(max_size=80)), max_size=12),
       st.sampled_from([0x0303, 0x0304]), st.sampled_from([0x1301, 0xC02F, 0xC013, 0x000A]))
def test_any_records_never_raise(recs: list[tuple[str, int, bytes]], version: int,
                                 suite: int) -> None:
    dec = Decryptor(max_pending=4)
    for side, rec in hello_records(version, suite):
        dec.record(side, 1, rec.header(), rec.payload)  # type: ignore[arg-type]
    dec.add_keys(keylog([f"CLIENT_RANDOM {CR.hex()} {'07' * 48}",
                         f"SERVER_HANDSHAKE_TRAFFIC_SECRET {CR.hex()} {SHS.hex()}",
                         f"CLIENT_HANDSHAKE_TRAFFIC_SECRET {CR.hex()} {CHS.hex()}"]).get(CR)
                 or keylog([]).get(CR))  # type: ignore[arg-type]
    for i, (side, ct, payload) in enumerate(recs):
        r = Record(ct, 0x0303, payload)
        res = dec.record(side, i + 2, r.header(), r.payload)  # type: ignore[arg-type]
        assert res.status in ("plaintext", "decrypted", "pending", "undecryptable")
        assert isinstance(res.to_json(), dict) and isinstance(res.summary(), str)


def _tls13_waiting(**kw: object) -> Decryptor:
    dec = Decryptor(**kw)  # type: ignore[arg-type]
    for side, rec in hello_records(0x0304, 0x1301):
        dec.record(side, 1, rec.header(), rec.payload, 0.0)  # type: ignore[arg-type]
    return dec


def test_keys_within_the_wait_bound_still_open_every_queued_record() -> None:
    dec = _tls13_waiting(key_wait=2.0)
    flight = tls13_server_flight()
    got = [dec.record("server", i + 2, r.header(), r.payload, 0.5 + i * 0.6)
           for i, r in enumerate(flight[:2])]
    assert [g.status for g in got] == ["pending", "pending"]
    assert not dec.expire(1.99)  # 1.99 s after the first queued record: still waiting
    k = keylog([f"SERVER_HANDSHAKE_TRAFFIC_SECRET {CR.hex()} {SHS.hex()}"]).get(CR)
    assert k is not None
    late = dec.add_keys(k)
    assert [(r.index, r.status) for r in late] == [(2, "decrypted"), (3, "decrypted")]
    assert dec.take_note() == "" and not dec.gave_up("server")
    # The next wait (for the application secret) has a bound of its own, from its own
    # first record: 1.5 s after the handshake keys' wait began is not past it.
    third = flight[2]
    assert dec.record("server", 4, third.header(), third.payload, 2.4).status == "pending"
    assert not dec.expire(4.3)
    assert dec.expire(4.4)


def test_keys_that_never_arrive_are_given_up_after_the_wait_bound() -> None:
    """Both sides wait for keys of one client random; once the first queued record is
    key_wait old, both give up at once, say why on that record, and one note (once)
    names the client random (on the wire, not a secret) and the labels; later
    records are bulk, never queued; keys arriving after it open nothing."""
    dec = _tls13_waiting(key_wait=2.0)
    r = tls13_server_flight()[0]
    assert dec.record("server", 2, r.header(), r.payload, 0.1).status == "pending"
    assert dec.record("client", 2, r.header(), r.payload, 0.2).status == "pending"
    assert dec.record("server", 3, r.header(), r.payload, 2.0).status == "pending"
    assert dec.needs_keys() and not dec.settled()
    res = dec.record("server", 4, r.header(), r.payload, 2.1)
    assert res.status == "undecryptable"
    assert res.reason == "keys for SERVER_HANDSHAKE_TRAFFIC_SECRET never arrived"
    assert dec.gave_up("client") == "keys for CLIENT_HANDSHAKE_TRAFFIC_SECRET never arrived"
    note = dec.take_note()
    assert note.startswith(f"keys never arrived for client_random {CR.hex()[:16]}... "
                           "within 2000 ms (CLIENT_HANDSHAKE_TRAFFIC_SECRET, "
                           "SERVER_HANDSHAKE_TRAFFIC_SECRET)"), note
    assert SHS.hex() not in note and CHS.hex() not in note
    assert "3 records logged pending stay pending" in note
    assert dec.take_note() == ""  # once per connection
    assert dec.keys_from(KeyLog()) == []  # (pins the client random, as the engine does)
    assert not dec.needs_keys() and not dec.expects_keys() and dec.settled()
    assert dec.bulk("server") and dec.bulk("client")
    assert dec.record("server", 5, r.header(), r.payload, 2.2).status == "undecryptable"
    k = keylog([f"SERVER_HANDSHAKE_TRAFFIC_SECRET {CR.hex()} {SHS.hex()}"]).get(CR)
    assert k is not None and dec.add_keys(k) == []


def test_a_side_that_sends_nothing_more_stops_waiting_on_expire() -> None:
    dec = _tls13_waiting(key_wait=0.5)
    r = tls13_server_flight()[0]
    dec.record("client", 2, r.header(), r.payload, 1.0)  # its Finished: then silence
    assert not dec.expire(1.4) and dec.needs_keys()
    assert dec.expire(1.5)
    dec.keys_from(KeyLog())
    assert dec.gave_up("client") and dec.gave_up("server") and dec.settled()
    assert "within 500 ms" in dec.take_note()


def test_no_clock_no_time_bound_but_the_queue_bytes_bound() -> None:
    """Without ``now`` (callers that pass no time) only the size bounds apply: here
    max_pending_bytes, a side clearly past any handshake flight without its keys."""
    dec = _tls13_waiting(key_wait=0.001, max_pending_bytes=100)
    r = tls13_server_flight()[0]
    assert len(r.payload) < 100
    st = [dec.record("server", i, r.header(), r.payload).status for i in range(2, 9)]
    n = -(-100 // len(r.payload))  # records until 100 bytes are queued
    assert st == ["pending"] * n + ["undecryptable"] * (7 - n)
    assert "records (" in dec.take_note() and "bytes) waited" in dec._note


def test_an_ech_secret_for_the_random_says_why_its_traffic_keys_never_come() -> None:
    """RFC 9850 3, 4: with Encrypted Client Hello accepted, the traffic secrets are
    logged under the inner ClientHello's random, which the proxy never sees; the
    ECH_SECRET line is under the outer one. The note says so (and only then)."""
    def note_with(lines: list[str]) -> str:
        dec = _tls13_waiting(key_wait=1.0)
        log = keylog(lines)
        dec.keys_from(log)
        r = tls13_server_flight()[0]
        assert dec.record("server", 2, r.header(), r.payload, 0.1).status == "pending"
        assert dec.expire(1.2)
        return dec.take_note()

    ech = "ab" * 32
    note = note_with([f"ECH_SECRET {CR.hex()} {ech}", f"ECH_CONFIG {CR.hex()} {'cd' * 70}"])
    assert "ECH_SECRET" in note and "inner ClientHello's random" in note and ech not in note
    assert "ECH" not in note_with([f"EXPORTER_SECRET {CR.hex()} {ech}"])
