"""What the engine promises in its log and on the wire, one behaviour a test: each
test here was written for a mutant of proxy/engine.py that ``make mutation`` found
alive (bench/mutation.py), and asserts the documented behaviour the mutant broke
(README's JSONL section, docs/events.schema.json), never a constant for its own sake.
All sans-io: the engine driven directly with real OpenSSL conversations
(tests/conversation.py)."""

from __future__ import annotations

import random
import ssl
from pathlib import Path
from typing import Any

import pytest

from tests.conversation import conversation
from tests.test_engine import failing_on, one_internal_error, records, run, sent
from tests.test_engine_keyhold import Run
from tests.test_engine_keys import _keylog, _run
from tests.userplan import ProtocolOnlyPlan
from tlsinspector.lab.certs import make_certs
from tlsinspector.proxy import messages, plaintext
from tlsinspector.proxy.engine import (
    Close,
    Connection,
    Emit,
    Outcome,
    Output,
    RecordView,
    Send,
    Wakeup,
)
from tlsinspector.proxy.faults import FaultPlanner
from tlsinspector.proxy.keylog import KeyLog
from tlsinspector.proxy.records import Record, RecordFramer
from tlsinspector.proxy.reseal import Resealer
from tlsinspector.proxy.scenario import load_scenario_text

CONV12 = conversation("1.2")


def plan(faults_yaml: str) -> FaultPlanner:
    return FaultPlanner([load_scenario_text(f"name: t\nfaults:\n{faults_yaml}", "t.yaml")],
                        1, random.Random(1))


def test_without_app_records_a_record_a_fault_touched_is_still_logged() -> None:
    # README: --no-app-records leaves application_data records out of the log; the
    # one a fault dropped is still logged, with its "fault", so the log says what the
    # proxy did to the conversation.
    conn = Connection("1", "c:1", "s:2", log_app_data=False, faults=plan(
        "  - match: {from: client, content_type: application_data, times: 1}\n"
        "    action: drop\n"))
    _, events, _ = run(CONV12, conn=conn)
    app = [e for e in records(events, "client") if e["content_type"] == "application_data"]
    assert len(app) == 1, app
    assert [f["action"] for f in app[0]["fault"]] == ["drop"]
    assert all(e["content_type"] != "application_data" for e in records(events, "server"))


SMTP = [
    ("server", b"220 mail.example ESMTP Postfix\r\n"),
    ("client", b"EHLO client.example\r\n"),
    ("server", b"250-mail.example\r\n250-STARTTLS\r\n250 8BITMIME\r\n"),
    ("client", b"STARTTLS\r\n"),
    ("server", b"220 2.0.0 Ready to start TLS\r\n"),
]


@pytest.mark.parametrize("nth", [1, 3])
def test_a_failure_in_the_plaintext_phase_costs_no_byte(monkeypatch: pytest.MonkeyPatch,
                                                        nth: int) -> None:
    # The error boundary covers the STARTTLS phase too: an internal_error event, then
    # every byte (the line being read, and the TLS after it) relayed as it came.
    failing_on(monkeypatch, plaintext.Session, "feed", nth)
    flights = SMTP + CONV12
    got, events, _ = run(flights)
    one_internal_error(events, "1")
    assert got["server"] == sent(flights, "client")
    assert got["client"] == sent(flights, "server")


def test_held_bytes_sum_records_held_for_keys_and_a_partial_record(tmp_path: Path) -> None:
    # --max-held sums held_bytes(): records a fault holds for keys count their bytes
    # and their overhead, beside the partial record the framer keeps.
    r = Run(tmp_path)
    (c1, hello), (s1, flight) = r.flights[:2]
    assert (c1, s1) == ("client", "server")
    r.take(r.conn.receive("client", hello, 100.0))
    r.take(r.conn.receive("server", flight[:-3], 100.0))  # a partial record at the end
    held = [e for e in r.of("record") if e.get("held")]
    waiting = sum(5 + e["length"] for e in held)
    partial = len(flight) - 3 - len(r.out_bytes("server")) - waiting
    assert held and partial > 0
    assert r.conn.held_bytes() == partial + waiting + len(held) * Connection.HELD_RECORD_COST


@pytest.mark.parametrize(("version", "index", "plaintext_alert"),
                         [("1.2", 4, False), ("1.3", 3, True)])
def test_a_reply_alert_is_judged_by_the_stream_it_entered(version: str, index: int,
                                                          plaintext_alert: bool) -> None:
    # reply-alert answers the record's sender: the alert travels the other direction,
    # so "injected into an encrypted stream" depends on that direction. The client's
    # Finished: in TLS 1.2 the server has not sent its ChangeCipherSpec yet, so the
    # client still reads in the clear (a plain alert is legal, RFC 5246 7.1); in TLS
    # 1.3 the server's records are already protected (RFC 8446 5).
    conv = CONV12 if version == "1.2" else conversation("1.3")
    conn = Connection("1", "c:1", "s:2", faults=plan(
        f"  - match: {{from: client, index: {index}}}\n    action: reply-alert\n"
        "    description: handshake_failure\n"))
    got, events, _ = run(conv, conn=conn)
    [hit] = [e for e in records(events, "client") if e.get("fault")]
    assert hit["index"] == index and hit["fault"][0]["detail"]["answered_sender"]
    codes = [f["code"] for f in events[-1]["diagnosis"]]
    assert ("injected-plaintext-alert" in codes) is plaintext_alert, codes
    assert "alert-handshake-failure" in codes


def test_after_a_starttls_phase_only_each_sides_first_record_says_where_tls_began() -> None:
    # README: "After a plaintext phase (STARTTLS), a side's first record carries
    # after_plaintext: the stream offset of its first TLS byte" (and no other record).
    flights = SMTP + CONV12
    _, events, _ = run(flights)
    for side in ("client", "server"):
        recs = records(events, side)
        assert len(recs) > 2
        assert [r["index"] for r in recs if "after_plaintext" in r] == [1]
        assert recs[0]["after_plaintext"] == len(sent(SMTP, side))


def test_non_tls_bytes_are_quoted_by_the_header_a_tls_peer_reads_unless_previewed() -> None:
    # README (non_tls): without --log-preview the diagnosis quotes at most the first 5
    # bytes, what a TLS peer reads as a record header; with it, the event's preview
    # is the first 48 bytes in printable form.
    body = b"POST /login HTTP/1.1\r\n\r\npassword=hunter2&card=4111111111111111"
    _, events, _ = run([("client", body)])
    [ev] = [e for e in events if e["event"] == "non_tls"]
    assert "preview" not in ev
    [finding] = [f for f in events[-1]["diagnosis"] if f["code"] == "non-tls-bytes"]
    assert finding["evidence"][0].startswith("client: non-TLS bytes 'POST '; ")
    _, events, _ = run([("client", body)], conn=Connection("1", "c:1", "s:2",
                                                           log_preview=True))
    [ev] = [e for e in events if e["event"] == "non_tls"]
    shown = "".join(chr(b) if 32 <= b < 127 else "." for b in body[:48])
    assert ev["preview"] == shown + "..."


def _refused(tmp: Path, version: str, client_cert_required: bool
             ) -> tuple[list[tuple[str, bytes]], str]:
    """A handshake that fails, and the client's key log. With
    ``client_cert_required``, a server that requires a client certificate and a
    client without one: the server's fatal certificate_required alert (sealed in TLS
    1.3, RFC 8446 4.4.2, 6.2). Otherwise a client that trusts no CA: its fatal
    unknown_ca alert about the server's certificate (RFC 5246 7.2.2)."""
    certs = make_certs(tmp)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(certs.server_cert, certs.server_key)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname = False
    if client_cert_required:
        sctx.load_verify_locations(certs.ca_cert)
        sctx.verify_mode = ssl.CERT_REQUIRED
        cctx.verify_mode = ssl.CERT_NONE
    v = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
    for ctx in (sctx, cctx):
        ctx.minimum_version = ctx.maximum_version = v
    cctx.keylog_filename = str(tmp / "keys.log")  # type: ignore[assignment]
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = cctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = sctx.wrap_bio(s_in, s_out, server_side=True)
    flights: list[tuple[str, bytes]] = []
    for _ in range(6):
        for obj in (client, server):
            try:
                obj.do_handshake()
            except ssl.SSLError:  # want-read, then the refusal on both sides
                pass
        for src, dst, name in ((c_out, s_in, "client"), (s_out, c_in, "server")):
            data = src.read()
            if data:
                flights.append((name, data))
                dst.write(data)
    return flights, (tmp / "keys.log").read_text()


def test_a_sealed_alert_is_judged_by_its_level(tmp_path: Path) -> None:
    # With keys, an alert inside the encryption is diagnosed as one in the clear: the
    # server's sealed fatal certificate_required names the cause; the sealed warning
    # close_notify that ends a good conversation is no finding at all.
    flights, text = _refused(tmp_path / "refused", "1.3", client_cert_required=True)
    _, events, _ = _run(flights, _keylog(text))
    [alert] = [e for e in records(events, "server")
               if (e.get("decrypted") or {}).get("inner_type") == "alert"]
    assert alert["decrypted"]["alert"]["level"] == "fatal"
    [finding] = [f for f in events[-1]["diagnosis"] if f["code"] == "certificate-required"]
    assert f"server record {alert['index']}: fatal alert certificate_required (116)" in (
        finding["evidence"])
    # A warning is no abort (RFC 5246 7.2): a sealed warning user_canceled (90), here
    # sealed with the client's real keys after its request, is no finding.
    keys = tmp_path / "good.log"
    good = conversation("1.2", keylog=keys)

    def sealed_by_client(alert: bytes) -> tuple[Connection, list[Output]]:
        """The good conversation up to its close_notifys, then ``alert`` sealed with the
        client's real keys: the connection and its outputs."""
        conn = Connection("1", "c", "s", keylog=_keylog(keys.read_text()))
        outs: list[Output] = []
        for side, data in good[:-2]:
            outs += conn.receive(side, data, 1.0)  # type: ignore[arg-type]
        assert conn.decryptor is not None
        [sealed] = Resealer().inject(conn.decryptor.protection("client"),
                                     conn.decryptor.epoch("client"),
                                     [Record(21, 0x0303, alert)])
        return conn, outs + conn.receive("client", sealed.raw, 1.0) + conn.finish(2.0)

    _, outs = sealed_by_client(bytes([1, 90]))
    events = [o.event for o in outs if isinstance(o, Emit)]
    assert records(events, "client")[-1]["decrypted"]["alert"] == {
        "level": "warning", "description": "user_canceled", "code": 90}
    assert events[-1]["diagnosis"] == []
    # Its level is the sealed one (1, warning), also where the diagnosis prints it:
    # decryption_failed_RESERVED (21) is named under TLS 1.2 whatever its level.
    conn, outs = sealed_by_client(bytes([1, 21]))
    [close] = [o.event for o in outs if isinstance(o, Emit) and o.event["event"] == "close"]
    [finding] = [f for f in close["diagnosis"]
                 if f["code"] == "alert-decryption-failed-reserved"]
    assert finding["evidence"] == [f"client record {conn.history.records['client']}: warning "
                                   "alert decryption_failed_RESERVED (21) under TLSv1.2"]


class _RewritingPlan(ProtocolOnlyPlan):
    """A user's own fault plan (engine.FaultPlan, the protocol alone) that returns an
    Outcome with only the bytes for the receiver, leaving every other field default."""

    def __init__(self) -> None:
        self.rewritten: list[int] = []

    def on_record(self, view: RecordView) -> Outcome | None:
        if view.side != "client" or view.index != 1:
            return None
        self.rewritten.append(view.index)
        return Outcome(to_receiver=view.record.raw)


def test_a_users_outcome_with_defaults_delivers_at_once() -> None:
    # Outcome is part of the FaultPlan interface: one that names only to_receiver
    # delivers those bytes now (no delay, no split, no close), the rest relayed as is.
    plan = _RewritingPlan()
    c = Connection("1", "c:1", "s:2", faults=plan)  # type: ignore[arg-type]
    c.start(0.0)
    hello = CONV12[0][1]
    first = c.receive("client", hello, 1.0)
    assert plan.rewritten == [1]
    assert b"".join(o.data for o in first if isinstance(o, Send)) == hello
    assert not [o for o in first if isinstance(o, (Wakeup, Close))]
    got, _, _ = run(CONV12, conn=Connection("2", "c:1", "s:2", faults=_RewritingPlan()))  # type: ignore[arg-type]
    assert got["server"] == sent(CONV12, "client") and got["client"] == sent(CONV12, "server")


def test_a_wakeup_before_the_key_deadline_asks_for_it_again(tmp_path: Path) -> None:
    # The proxy keeps one timer per connection and calls wakeup() whenever it fires
    # (early, or for another reason): a record held for keys must ask again for its
    # deadline each time, or it would wait for the next byte instead of key_wait.
    r = Run(tmp_path)
    r.feed_all(100.0)
    assert r.wakeups == [102.0] and r.conn.holding_keys
    r.take(r.conn.wakeup(101.0))
    assert r.wakeups == [102.0, 102.0] and r.conn.holding_keys
    r.take(r.conn.wakeup(102.0))
    assert not r.conn.holding_keys
    assert r.out_bytes("server") == r.in_bytes("server")  # given up: sent unchanged


def test_after_a_failure_reading_keys_decryption_stays_off(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    # The error boundary of keys_arrived: one internal_error, decryption switched off
    # for the connection; later key log growth is ignored (no second error), and
    # every byte still goes through.
    from tlsinspector.proxy.decrypt import Decryptor

    keys = tmp_path / "keys.log"
    flights = conversation("1.3", keylog=keys)
    log = KeyLog()
    c = Connection("1", "c:1", "s:2", keylog=log)
    outs: list[Output] = list(c.start(0.0))
    for side, data in flights[:2]:
        outs += c.receive(side, data, 1.0)  # type: ignore[arg-type]
    failing_on(monkeypatch, Decryptor, "keys_from", 1)
    log.feed(keys.read_text())
    outs += c.keys_arrived(1.0)
    assert c.decryptor is None
    outs += c.keys_arrived(1.0)
    for side, data in flights[2:]:
        outs += c.receive(side, data, 1.0)  # type: ignore[arg-type]
    outs += c.eof("client", 2.0) + c.eof("server", 2.0) + c.finish(2.0)
    events = [o.event for o in outs if isinstance(o, Emit)]
    errors = [e for e in events if e["event"] == "internal_error"]
    assert len(errors) == 1 and "planted failure in keys_from" in errors[0]["error"]
    got = {"client": b"", "server": b""}
    for o in outs:
        if isinstance(o, Send):
            got[o.to] += o.data
    assert got["server"] == sent(flights, "client") and got["client"] == sent(flights, "server")


def _fragmented(data: bytes, size: int) -> bytes:
    """The handshake records of ``data`` cut into records of at most ``size`` bytes
    (legal in the clear, RFC 5246 6.2.1: messages may span records)."""
    out = []
    for r in RecordFramer().feed(data):
        assert isinstance(r, Record)
        if r.content_type != 22:
            out.append(r.raw)
            continue
        for i in range(0, len(r.payload), size):
            out.append(Record(22, r.version, r.payload[i:i + size]).raw)
    return b"".join(out)


def test_a_message_over_several_records_is_named_by_the_record_it_starts_in(
        tmp_path: Path) -> None:
    # The log lists a message under the record that completes it, with "records"
    # (where it began and ended); the diagnosis names it by the first, as that field
    # does: a TLS 1.2 Certificate cut over two records, refused by the client.
    flights, _ = _refused(tmp_path, "1.2", client_cert_required=False)
    flights = [(s, _fragmented(d, 200) if s == "server" else d) for s, d in flights]
    _, events, _ = run(flights)
    [cert] = [m for e in records(events, "server") for m in e.get("messages", [])
              if m["type"] == "certificate"]
    first, last = cert["records"][0], cert["records"][-1]
    assert first < last
    [finding] = [f for f in events[-1]["diagnosis"] if f["code"] == "certificate-rejected"]
    assert any(x.startswith(f"server record {first}: certificate chain of 1")
               for x in finding["evidence"]), finding["evidence"]


def test_after_bytes_counts_what_the_other_side_relayed_on_the_fast_path() -> None:
    # README match key after_bytes: "at least n bytes have passed on the connection,
    # both ways, counting this record". With a fault for the client only, the
    # server's 100 kB response goes the fast path (no fault can apply to it): its
    # bytes still count. n = every byte up to the client's close_notify.
    big = conversation("1.3", response=b"z" * 100_000)
    last = max(i for i, (s, _) in enumerate(big) if s == "client")
    n = sum(len(d) for _, d in big[:last + 1])
    c = Connection("1", "c:1", "s:2", faults=plan(
        f"  - match: {{from: client, after_bytes: {n}}}\n    action: drop\n"))
    _, events, _ = run(big, conn=c)
    client = records(events, "client")
    assert [e["index"] for e in client if e.get("fault")] == [client[-1]["index"]]
    assert client[-1]["length"] == len(big[last][1]) - 5


def test_a_side_that_sends_nothing_more_stops_waiting_for_keys_after_key_wait(
        tmp_path: Path) -> None:
    # README --key-wait-ms: records wait for their keys at most that long. A key log
    # with the server's secrets only: the client's Finished and request wait, and the
    # client sends nothing more; the server's response after key_wait ends the wait
    # for both (one note naming the client's missing secret), and the connection
    # settles (it may take the lean path).
    keys = tmp_path / "keys.log"
    flights = conversation("1.3", response=b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 2000,
                           keylog=keys)
    server_only = "".join(x + "\n" for x in keys.read_text().splitlines()
                          if x.startswith("SERVER_"))
    conn = Connection("1", "c", "s", keylog=_keylog(server_only), key_wait=2.0)
    events: list[dict[str, Any]] = []
    for i, (side, data) in enumerate(flights[:-2]):
        now = 1.0 if i < 5 else 5.0  # the response comes 4 s after the rest
        events += [o.event for o in conn.receive(side, data, now)  # type: ignore[arg-type]
                   if isinstance(o, Emit)]
    assert [e["from"] for e in records(events, "client")
            if e.get("decrypted", {}).get("status") == "pending"]
    [note] = [e for e in events if e["event"] == "note"]
    assert "CLIENT_HANDSHAKE_TRAFFIC_SECRET" in note["note"] and note["ts"] == 5.0
    assert not conn.needs_keys and conn.settled


@pytest.mark.parametrize("body", [b"", b"x" * 100], ids=["header-only", "some-body"])
def test_a_cut_record_whose_header_announces_too_much_is_a_record_overflow(
        body: bytes) -> None:
    # A peer that sends a header announcing more than any record may hold (2^14 +
    # 2048, RFC 5246 6.2.3) and closes: the receiver refuses it as soon as it read
    # those 5 bytes (record_overflow), whatever part of the body came.
    declared = (1 << 14) + 2048 + 1
    cut = bytes([23, 3, 3]) + declared.to_bytes(2, "big") + body
    conv = conversation("1.3")
    _, events, _ = run([*conv[:2], ("client", cut)])
    [finding] = [f for f in events[-1]["diagnosis"] if f["code"] == "record-overflow"]
    assert finding["evidence"] == [f"client record 2: its header announces {declared} bytes"]


COALESCE = ("  - match: {from: client, index: 1}\n    action: coalesce\n    records: 5\n"
            "    into: write\n    wait_ms: 300\n")


@pytest.mark.parametrize("end", ["close", "wait", "failure-at-close"])
def test_a_partial_record_behind_coalesced_records_is_not_lost(
        monkeypatch: pytest.MonkeyPatch, end: str) -> None:
    # Byte-exact relaying: coalesce gathers the client's records; the client sends
    # the first 3 bytes of its next record; then it closes, or the wait ends and one
    # more byte comes, or the close fails (a planted bug as the framer closes). The
    # flush ends the fault (passthrough from then on): the 3 bytes the framer held go
    # on behind the gathered ones (they were lost: make mutation found it).
    hello = conversation("1.3")[0][1]
    conn = Connection("1", "c:1", "s:2", faults=plan(COALESCE))
    if end == "failure-at-close":
        failing_on(monkeypatch, RecordFramer, "close", 1)
    outs: list[Output] = list(conn.start(0.0))
    outs += conn.receive("client", hello + b"\x16\x03\x03", 1.0)
    assert not [o for o in outs if isinstance(o, Send)]  # gathered, and a partial header
    want = hello + b"\x16\x03\x03"
    if end == "wait":
        outs += conn.wakeup(1.3)
        outs += conn.receive("client", b"\x01", 1.4)
        want += b"\x01"
    outs += conn.eof("client", 1.5)
    events = [o.event for o in outs if isinstance(o, Emit)]
    if end == "failure-at-close":
        one_internal_error(events + [{"event": "close"}], "1")
    else:
        assert [e["unparsed"] for e in events if "unparsed" in e] == [
            f"partial record header at close ({len(want) - len(hello)} of 5 bytes)"]
    assert b"".join(o.data for o in outs if isinstance(o, Send) and o.to == "server") == want


@pytest.mark.parametrize("body", [b"\x02", b"\x01\x01"], ids=["value-2", "two-bytes"])
def test_only_the_change_cipher_spec_message_starts_tls12_protection(body: bytes) -> None:
    # RFC 5246 7.1: the ChangeCipherSpec message is one byte of value 1, and the
    # records after it are protected. A type-20 record with another body is no such
    # message (the peer refuses it): the client's next record is still read in the
    # clear ("encrypted": false), as with no ChangeCipherSpec at all.
    ccs = bytes.fromhex("140303000101")
    bad = bytes([20, 3, 3]) + len(body).to_bytes(2, "big") + body
    flights = [(s, d.replace(ccs, bad) if s == "client" else d) for s, d in CONV12]
    assert flights != CONV12
    _, events, _ = run(flights)
    client = records(events, "client")
    [i] = [n for n, e in enumerate(client) if e["content_type"] == "change_cipher_spec"]
    assert client[i + 1]["content_type"] == "handshake"
    assert client[i + 1]["encrypted"] is False
    _, events, _ = run(CONV12)
    assert records(events, "client")[i + 1]["encrypted"] is True


def test_a_hello_sealed_beside_an_alert_inside_the_encryption_is_judged(
        tmp_path: Path) -> None:
    # A fault inside the encryption that puts a ClientHello (OpenSSL's TLS 1.2 hello:
    # the SCSV, no renegotiation_info) before the client's sealed close_notify: the
    # server receives a renegotiation, judged as sent (renegotiation-scsv, RFC 5746
    # 3.5), although no application data is among the records the fault sealed.
    from tests.test_diagnosis import OPENSSL_TLS12

    keys = tmp_path / "keys.log"
    flights = conversation("1.2", keylog=keys)
    conn = Connection("1", "c", "s", keylog=_keylog(keys.read_text()), faults=plan(
        "  - match: {from: client, encrypted: true, content_type: alert, times: 1}\n"
        "    action: insert-record\n    content_type: handshake\n"
        f"    hex: '{OPENSSL_TLS12[5:].hex()}'\n    position: before\n"))
    outs: list[Output] = []
    for side, data in flights:
        outs += conn.receive(side, data, 1.0)  # type: ignore[arg-type]
    outs += conn.finish(2.0)
    events = [o.event for o in outs if isinstance(o, Emit)]
    [hit] = [e for e in events if "fault" in e]
    assert hit["content_type"] == "alert" and hit["fault"][0]["action"] == "insert-record"
    assert "renegotiation-scsv" in [d["code"] for d in events[-1]["diagnosis"]]


def test_a_fault_after_a_coalesce_still_applies() -> None:
    # Once coalesce flushed, the side is relayed as it comes only if no other fault
    # may apply to it: a drop of the client's application data record (#5) after a
    # coalesce of its first two records still drops it.
    conn = Connection("1", "c:1", "s:2", faults=plan(
        "  - match: {from: client, index: 1}\n    action: coalesce\n    records: 2\n"
        "    into: write\n"
        "  - match: {from: client, index: 5}\n    action: drop\n"))
    got, events, _ = run(CONV12, conn=conn)
    client = records(events, "client")
    assert [(e["index"], e["fault"][0]["action"]) for e in client if e.get("fault")] == [
        (1, "coalesce"), (5, "drop")]
    dropped = [r for r in RecordFramer().feed(sent(CONV12, "client"))
               if isinstance(r, Record)][4]
    assert got["server"] == sent(CONV12, "client").replace(dropped.raw, b"")


def test_under_the_memory_bound_only_a_side_assembling_a_message_lets_it_go() -> None:
    # README --max-held: past the bound the largest holders stop assembling handshake
    # messages whose bytes already went on (a held_limit event, "unparsed", with the
    # bytes freed). The client's ClientHello cut in 50-byte records, two of them sent:
    # 100 bytes being assembled on the client side; the server side holds nothing
    # and is left alone.
    hello = _fragmented(CONV12[0][1], 50)
    conn = Connection("1", "c:1", "s:2")
    conn.start(0.0)
    sent_on = conn.receive("client", hello[:110], 1.0)
    assert b"".join(o.data for o in sent_on if isinstance(o, Send)) == hello[:110]
    events = [o.event for o in conn.shed(1.0, "over --max-held")]
    assert [(e["from"], e["action"], e["freed"]) for e in events] == [
        ("client", "unparsed", 100)]
    rest = conn.receive("client", hello[110:], 1.1)
    assert b"".join(o.data for o in rest if isinstance(o, Send)) == hello[110:]


def _server_records(flights: list[tuple[str, bytes]]) -> list[Record]:
    return [r for r in RecordFramer().feed(sent(flights, "server")) if isinstance(r, Record)]


@pytest.mark.parametrize("partial", [b"", b"\x16\x03\x03"], ids=["whole", "partial-tail"])
def test_a_failure_mid_chunk_loses_and_doubles_no_byte(monkeypatch: pytest.MonkeyPatch,
                                                       partial: bytes) -> None:
    # The error boundary in the middle of a chunk: the server's TLS 1.2 flight
    # (ServerHello, Certificate, ServerKeyExchange, ServerHelloDone) in one read, a
    # fault dropped the ServerHello (and the plan ran out), then describing the
    # Certificate fails. The records before the failure went on once, the rest and a
    # partial record behind them go raw: each byte exactly once.
    failing_on(monkeypatch, messages, "describe", 3)  # ClientHello, ServerHello, this
    first, flight = CONV12[0], CONV12[1]
    assert flight[0] == "server" and len(_server_records([flight])) == 4
    conn = Connection("1", "c:1", "s:2", faults=plan(
        "  - match: {from: server, index: 1}\n    action: drop\n"))
    got, events, _ = run([first, (flight[0], flight[1] + partial)], conn=conn)
    one_internal_error(events, "1")
    hello = _server_records([flight])[0].raw
    assert got["client"] == flight[1][len(hello):] + partial


def test_only_application_data_records_count_as_application_data(tmp_path: Path) -> None:
    # The close event's per-side application records: a heartbeat record (24, RFC
    # 6520) after the handshake is no application data; an application_data one is;
    # without keys (the fast path) and with them (each record opened).
    keys = tmp_path / "keys.log"
    conv = conversation("1.2", keylog=keys)
    for keylog in (None, _keylog(keys.read_text())):
        c = Connection("1", "c:1", "s:2", keylog=keylog)
        c.start(0.0)
        for side, data in conv[:-2]:
            c.receive(side, data, 1.0)  # type: ignore[arg-type]
        before = dict(c.history.app_records)
        c.receive("client", Record(24, 0x0303, bytes(40)).raw, 1.0)
        assert c.history.app_records == before, keylog
        c.receive("client", Record(23, 0x0303, bytes(40)).raw, 1.0)
        assert c.history.app_records == {**before, "client": before["client"] + 1}


def test_a_tls_first_connection_keeps_no_plaintext_session() -> None:
    # Issue 19: a connection whose first bytes are TLS has nothing for the plaintext
    # rules to read; its session's buffers are let go (history.plain is None).
    c = Connection("1", "c:1", "s:2")
    c.start(0.0)
    for side, data in conversation("1.3"):
        c.receive(side, data, 1.0)  # type: ignore[arg-type]
    assert c.history.plain is None
