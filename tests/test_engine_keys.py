"""The engine with a key log (issue 14): real OpenSSL conversations (Python's ssl over
MemoryBIOs, tests/conversation.py), fed in any chunking, events in, events out."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conversation import conversation
from tests.test_diagnosis import OPENSSL_TLS12
from tlsinspector.proxy import render
from tlsinspector.proxy.decrypt import Decryptor
from tlsinspector.proxy.engine import SMALL_RECORD, Connection, Emit, Send
from tlsinspector.proxy.faults import FaultPlanner
from tlsinspector.proxy.keylog import KeyLog
from tlsinspector.proxy.records import Record, RecordFramer
from tlsinspector.proxy.scenario import load_scenario_text

BIG = b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + b"S3CRET-BODY" * 18_000
REQUEST = b"GET /private-path?token=hunter2 HTTP/1.1\r\n\r\n"


def _conv(tmp: Path, version: str, response: bytes = BIG) -> tuple[list[tuple[str, bytes]], str]:
    tmp.mkdir(parents=True, exist_ok=True)
    keys = tmp / f"keys-{version}.log"
    flights = conversation(version, request=REQUEST, response=response, keylog=keys)
    return flights, keys.read_text()


@pytest.fixture(scope="module", params=["1.3", "1.2"])
def conv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> tuple[str, list[tuple[str, bytes]], str]:
    flights, text = _conv(tmp_path_factory.mktemp("conv"), request.param)
    return request.param, flights, text


def _keylog(text: str) -> KeyLog:
    log = KeyLog()
    log.feed(text)
    return log


def _run(flights: list[tuple[str, bytes]], log: KeyLog | None, rng: random.Random | None = None,
         log_app_data: bool = True, faults: FaultPlanner | None = None
         ) -> tuple[Connection, list[dict[str, Any]], dict[str, bytes]]:
    conn = Connection("1", "c", "s", keylog=log, log_app_data=log_app_data, faults=faults)
    events: list[dict[str, Any]] = []
    sent = {"client": b"", "server": b""}
    now = 1.0
    for side, data in flights:
        pos = 0
        while pos < len(data):
            n = len(data) - pos if rng is None else rng.randint(1, 3000)
            outs = conn.receive(side, data[pos:pos + n], now)  # type: ignore[arg-type]
            pos += n
            for o in outs:
                if isinstance(o, Emit):
                    events.append(o.event)
                elif isinstance(o, Send):
                    sent[o.to] += o.data
    for o in conn.finish(now):
        if isinstance(o, Emit):
            events.append(o.event)
    return conn, events, sent


def _reference(flights: list[tuple[str, bytes]], log: KeyLog) -> dict[tuple[str, int], str]:
    """Every non-application record the Decryptor opens, record by record."""
    dec = Decryptor()
    framers = {"client": RecordFramer(), "server": RecordFramer()}
    index = {"client": 0, "server": 0}
    out = {}
    for side, data in flights:
        for item in framers[side].feed(data):
            assert isinstance(item, Record)
            index[side] += 1
            res = dec.record(side, index[side], item.header(), item.payload)  # type: ignore[arg-type]
            dec.keys_from(log)
            if res.status != "plaintext" and res.inner_type != 23:
                out[(side, index[side])] = res.summary()
    return out


def _decrypted(events: list[dict[str, Any]]) -> dict[tuple[str, int], str]:
    out = {}
    for ev in events:
        d = ev.get("decrypted")
        if d is not None and d.get("inner_type") != "application_data":
            out[(ev["from"], ev["index"])] = d["summary"]
    return out


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_every_chunking_decrypts_like_the_decryptor(
        conv: tuple[str, list[tuple[str, bytes]], str], seed: int) -> None:
    version, flights, text = conv
    want = _reference(flights, _keylog(text))
    conn, events, sent = _run(flights, _keylog(text), random.Random(seed))
    assert _decrypted(events) == want
    # Forwarding is byte for byte, whatever the keys.
    for side in ("client", "server"):
        assert sent["server" if side == "client" else "client"] == b"".join(
            d for s, d in flights if s == side)
    # Bulk was counted, not opened, and the sequence numbers stayed right: the
    # close_notify after 200 kB of application data still decrypts.
    assert any("close_notify" in s for (side, _), s in want.items() if side == "server")
    assert not any(d["decrypted"]["status"] == "undecryptable"
                   for d in events if "decrypted" in d)


def test_the_record_path_logs_every_record_as_the_fast_path_does(
        conv: tuple[str, list[tuple[str, bytes]], str]) -> None:
    """A scenario whose fault never fires keeps the connection on the record path
    (held back record by record); the log must not change for it: each record logged
    once, in order, encrypted as without keys, and the same records opened (small
    post-handshake ones too: a TLS 1.3 NewSessionTicket, the close_notify)."""
    version, flights, text = conv
    never = FaultPlanner([load_scenario_text(
        "name: n\nfaults:\n  - match: {index: 99999}\n    action: drop\n")],
        1, random.Random(1))
    _, keyless, _ = _run(flights, None)
    _, fast, _ = _run(flights, _keylog(text))
    _, held, sent = _run(flights, _keylog(text), faults=never)
    for side in ("client", "server"):
        assert sent["server" if side == "client" else "client"] == b"".join(
            d for s, d in flights if s == side)
    want = _reference(flights, _keylog(text))
    assert _decrypted(fast) == want and _decrypted(held) == want
    if version == "1.3":
        assert any("new_session_ticket" in s for s in want.values()), want

    def shown(events: list[dict[str, Any]]) -> list[tuple[str, int, str, bool]]:
        return [(e["from"], e["index"], e["content_type"], e["encrypted"])
                for e in events if e["event"] == "record"]

    assert shown(fast) == shown(keyless) == shown(held)

    def opened(events: list[dict[str, Any]]) -> dict[tuple[str, int], Any]:
        return {(e["from"], e["index"]): e.get("decrypted")
                for e in events if e["event"] == "record"}

    # Each record's decrypted field too: the fast path's small application records
    # opened for their inner type said nothing of it (the record path's did).
    assert opened(fast) == opened(held)
    assert any(d and d.get("inner_type") == "application_data" for d in opened(fast).values())
    for side in ("client", "server"):
        indexes = [i for s, i, _, _ in shown(fast) if s == side]
        assert indexes == list(range(1, len(indexes) + 1))


def test_bulk_records_are_not_opened(conv: tuple[str, list[tuple[str, bytes]], str]) -> None:
    version, flights, text = conv
    _, events, _ = _run(flights, _keylog(text))
    big = [e for e in events if e["event"] == "record" and e.get("length", 0) > SMALL_RECORD
           and e.get("content_type") == "application_data" and e["from"] == "client"
           or (e["event"] == "record" and e["from"] == "server"
               and e.get("length", 0) > 4096)]
    assert big and not any("decrypted" in e for e in big)
    if version == "1.3":  # the certificate record is large, and is a handshake record
        assert any("certificate chain=1" in e.get("decrypted", {}).get("summary", "")
                   for e in events)


def test_no_application_plaintext_or_secret_in_events(
        conv: tuple[str, list[tuple[str, bytes]], str]) -> None:
    version, flights, text = conv
    _, events, _ = _run(flights, _keylog(text))
    dump = json.dumps(events) + "\n".join(render.line(e) for e in events)
    assert "hunter2" not in dump and "S3CRET" not in dump and "private-path" not in dump
    for line in text.split("\n"):
        if line.strip():
            secret = line.split()[2]
            assert secret not in dump and secret.upper() not in dump


def _without_keys_yet(flights: list[tuple[str, bytes]]
                      ) -> tuple[Connection, KeyLog, list[dict[str, Any]]]:
    """Every record through a connection whose key log is still empty."""
    log = KeyLog()
    conn = Connection("1", "c", "s", keylog=log)
    events: list[dict[str, Any]] = []
    for side, data in flights:
        events += [o.event for o in conn.receive(side, data, 1.0)  # type: ignore[arg-type]
                   if isinstance(o, Emit)]
    return conn, log, events


def test_an_alert_decrypted_after_the_peers_close_answers_no_close(
        conv: tuple[str, list[tuple[str, bytes]], str]) -> None:
    """The conversation ends with close_notify both ways; the keys come after the
    client's FIN. Each alert was sent before that FIN, so none of them answers it
    (judged when its record passed, not when its keys came: a refusal decrypted late
    read as 'sent after the client had already closed its side')."""
    version, flights, text = conv
    conn, log, _ = _without_keys_yet(flights)
    conn.eof("client", 1.5)
    log.feed(text)
    conn.keys_arrived(2.0)
    alerts = conn.history.alerts
    assert alerts and not any(a.after_peer_left for a in alerts), alerts


def test_late_keys_complete_the_log(conv: tuple[str, list[tuple[str, bytes]], str]) -> None:
    """Keys that arrive after every record: each waiting record gets a decrypted event
    naming it, with what it held; the diagnosis then sees the decrypted alerts."""
    version, flights, text = conv
    want = _reference(flights, _keylog(text))
    conn, log, events = _without_keys_yet(flights)
    assert conn.needs_keys
    pending = [e for e in events if e.get("decrypted", {}).get("status") == "pending"]
    assert pending
    assert conn.keys_arrived(2.0) == []  # nothing new yet
    log.feed(text)
    late = [o.event for o in conn.keys_arrived(2.0) if isinstance(o, Emit)]
    assert {e["event"] for e in late} == {"decrypted"}
    got = {(e["from"], e["index"]): e["decrypted"]["summary"] for e in late
           if e["decrypted"]["inner_type"] != "application_data"}
    assert got == want
    # Application records that waited are completed too: inner type and length only.
    app = [e["decrypted"] for e in late if e["decrypted"]["inner_type"] == "application_data"]
    assert app and all(set(d) <= {"status", "inner_type", "length", "epoch", "seq", "record",
                                  "summary"} for d in app)
    assert all(e["decrypted"]["record"] == {"side": e["from"], "index": e["index"]}
               for e in late)
    assert "decrypted (keys arrived late)" in render.line(late[0])
    assert not conn.needs_keys


def test_keys_logged_before_the_close_complete_their_records_before_the_close_event(
        conv: tuple[str, list[tuple[str, bytes]], str]) -> None:
    """A connection that ends before the key log timer's next poll: finish() reads the
    keys first, so every waiting record is completed before the close event, which
    stays the connection's last event, and the close counts the same records."""
    version, flights, text = conv
    conn, log, events = _without_keys_yet(flights)
    pending = {(e["from"], e["index"]) for e in events
               if e.get("decrypted", {}).get("status") == "pending"}
    assert pending
    log.feed(text)  # written by the peers; the timer has not polled yet
    end = [o.event for o in conn.finish(2.0) if isinstance(o, Emit)]
    assert [e["event"] for e in end] == ["decrypted"] * len(pending) + ["close"]
    assert {(e["from"], e["index"]) for e in end[:-1]} == pending
    assert conn.keys_arrived(3.0) == []  # nothing after the close


def test_without_app_records_hidden_messages_are_still_logged(
        conv: tuple[str, list[tuple[str, bytes]], str]) -> None:
    """--no-app-records: TLS 1.3 alerts and tickets travel as application_data, and
    are logged once decrypted; real application records are only counted."""
    version, flights, text = conv
    _, events, _ = _run(flights, _keylog(text), log_app_data=False)
    recs = [e for e in events if e["event"] == "record"
            and e.get("content_type") == "application_data"]
    assert all(e["decrypted"]["inner_type"] != "application_data" for e in recs)
    if version == "1.3":
        kinds = " ".join(e["decrypted"]["summary"] for e in recs)
        assert "close_notify" in kinds and "new_session_ticket" in kinds


def test_terminal_line_shows_the_decrypted_summary(
        conv: tuple[str, list[tuple[str, bytes]], str]) -> None:
    version, flights, text = conv
    _, events, _ = _run(flights, _keylog(text))
    lines = [render.line(e) for e in events]
    assert any("| decrypted: ALERT warning close_notify (0)" in x for x in lines), lines
    assert any("| decrypted: handshake finished verify_data=" in x for x in lines)


def test_keys_of_another_connection_leave_records_pending(tmp_path: Path) -> None:
    flights, _ = _conv(tmp_path / "a", "1.3", b"HTTP/1.1 200 OK\r\n\r\nok")
    _, other_text = _conv(tmp_path / "b", "1.3", b"HTTP/1.1 200 OK\r\n\r\nok")
    conn, events, sent = _run(flights, _keylog(other_text))
    statuses = {e["decrypted"]["status"] for e in events if "decrypted" in e}
    assert statuses == {"pending"}
    assert sent["client"] == b"".join(d for s, d in flights if s == "server")
    close = events[-1]
    assert close["event"] == "close"


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), keep=st.sampled_from([1, 64, 512, 1 << 15]))
def test_skim_keeps_the_payloads_feed_sees(conv: tuple[str, list[tuple[str, bytes]], str],
                                           seed: int, keep: int) -> None:
    _, flights, _ = conv
    data = b"".join(d for s, d in flights if s == "server")
    want = [r for r in RecordFramer().feed(data) if isinstance(r, Record)]
    rng = random.Random(seed)
    f = RecordFramer()
    got = []
    pos = 0
    while pos < len(data):
        n = rng.randint(1, 4000)
        got += f.skim(data[pos:pos + n], keep)
        pos += n
    assert [(h.content_type, h.length) for h in got] == [(r.content_type, r.length)
                                                          for r in want]
    for h, r in zip(got, want, strict=True):
        kept = r.content_type != 23 or r.length <= keep
        assert h.payload == (r.payload if kept else None)
        assert h.header() == r.header()


def test_a_live_connections_keys_survive_a_churning_bounded_key_log(
        conv: tuple[str, list[tuple[str, bytes]], str]) -> None:
    """A shared key log bounded to 8 entries, flooded with 20000 other connections'
    keys while this connection is open: its own entry is pinned, so every record
    still decrypts; once it closes, the entry can go and the table stays at 8."""
    version, flights, text = conv
    want = _reference(flights, _keylog(text))
    log = KeyLog(max_entries=8, max_age=30.0)
    # 20 s pass between flights (to age the other entries out): a wait bound longer
    # than the whole run keeps this test about the key log's eviction, not about it.
    conn = Connection("1", "c", "s", keylog=log, key_wait=3600.0)
    events: list[dict[str, Any]] = []
    junk = iter(range(1, 10**9))

    def flood(n: int, now: float) -> None:
        log.feed("".join(f"CLIENT_RANDOM {next(junk).to_bytes(32, 'big').hex()} {'ab' * 48}\n"
                         for _ in range(n)), now)
        log.expire(now)

    lines = [x + "\n" for x in text.splitlines() if x.strip()]
    now = 1.0
    for i, (side, data) in enumerate(flights):
        if i >= 1 and lines:  # the keys trickle in while the connection runs
            log.feed(lines.pop(0), now)
        # Then 2000 others, past max_age for everything but the pinned entry: an
        # unpinned entry would be gone before the connection reads it.
        now += 20.0
        flood(2000, now)
        events += [o.event for o in conn.receive(side, data, now)  # type: ignore[arg-type]
                   if isinstance(o, Emit)]
        assert len(log) <= 8 + 1
    log.feed("".join(lines), now)
    events += [o.event for o in conn.keys_arrived(now) if isinstance(o, Emit)]
    final = {(e["from"], e["index"]): e["decrypted"] for e in events if "decrypted" in e}
    assert all(d["status"] == "decrypted" for d in final.values()), final
    assert {k: d["summary"] for k, d in final.items()
            if d["inner_type"] != "application_data"} == want
    assert log.pinned == 1
    events += [o.event for o in conn.finish(now) if isinstance(o, Emit)]
    assert log.pinned == 0
    flood(100, now + 100.0)
    assert len(log) == 8 and log.evicted >= 2000 * len(flights)


def test_a_full_size_encrypted_handshake_record_is_opened(tmp_path: Path) -> None:
    """A certificate with 900 names fills a TLS 1.3 record to its limit, 2^14 bytes of
    plaintext plus the content type and the tag (RFC 8446 5.2: 16,401 bytes): the
    engine keeps and opens it on its fast path, and the Certificate is decoded."""
    import ssl

    from tests.conversation import _talk
    from tlsinspector.lab.certs import make_certs

    names = ("localhost", *(f"host-{i:04d}.example" for i in range(900)))
    certs = make_certs(tmp_path / "certs", names=names)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(certs.server_cert, certs.server_key)
    cctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    for ctx in (sctx, cctx):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    keys = tmp_path / "keys.log"
    cctx.keylog_filename = str(keys)
    flights, _ = _talk(cctx, sctx, "localhost", REQUEST, b"ok", None)
    sizes = [r.length for s, d in flights if s == "server" for r in RecordFramer().feed(d)
             if isinstance(r, Record)]
    assert 16_401 in sizes
    # One write per record: from the ServerHello on, the server's direction is on the
    # fast path (TLS 1.3 hides the rest), where each record's payload is kept only up
    # to a bound.
    per_record = [(s, r.raw) for s, d in flights for r in RecordFramer().feed(d)
                  if isinstance(r, Record)]
    _, events, _ = _run(per_record, _keylog(keys.read_text()))
    certificates = [m for e in events if e["event"] == "record" and e["from"] == "server"
                    for m in e.get("decrypted", {}).get("messages", [])
                    if m["type"] == "certificate"]
    assert len(certificates) == 1
    [leaf] = certificates[0]["chain"]
    assert leaf["san"][0] == "localhost" and leaf.get("san_total", len(leaf["san"])) >= 901


def test_a_fault_inside_the_encryption_reaches_a_bulk_record(tmp_path: Path) -> None:
    """Bulk records are counted, not opened, unless a fault may change them inside the
    encryption: a drop of the server's 9th record (the first 16 KiB application_data
    record of the 200 kB response, after ServerHello, CCS, its four encrypted handshake
    records and two tickets) applies, and every
    record after it is re-sealed (RFC 8446 5.3: the client counts records), so the
    client still opens all of them."""
    import random as rnd

    from tlsinspector.proxy.faults import FaultPlanner
    from tlsinspector.proxy.scenario import load_scenario_text

    flights, text = _conv(tmp_path, "1.3")
    plan = FaultPlanner([load_scenario_text(
        "name: inside\nfaults:\n  - match: {from: server, index: 9, encrypted: true, "
        "content_type: application_data}\n    action: drop\n")], 1, rnd.Random(1))
    conn = Connection("1", "c", "s", keylog=_keylog(text), faults=plan)
    events: list[dict[str, Any]] = []
    to_client = b""
    for side, data in flights:
        for o in conn.receive(side, data, 1.0):  # type: ignore[arg-type]
            if isinstance(o, Emit):
                events.append(o.event)
            elif isinstance(o, Send) and o.to == "client":
                to_client += o.data
    [dropped] = [e for e in events if e["event"] == "record" and "fault" in e]
    assert dropped["index"] == 9 and dropped["length"] > SMALL_RECORD
    assert dropped["fault"][0]["action"] == "drop"
    sent = RecordFramer().feed(b"".join(d for s, d in flights if s == "server"))
    got = RecordFramer().feed(to_client)
    assert len(got) == len(sent) - 1
    dec = Decryptor()
    log = _keylog(text)
    client_bytes = b"".join(d for s, d in flights if s == "client")
    dec.record("client", 1, client_bytes[:5], client_bytes[5:])  # the ClientHello
    statuses = []
    for i, r in enumerate(got, 1):
        assert isinstance(r, Record)
        res = dec.record("server", i, r.header(), r.payload)
        dec.keys_from(log)
        statuses.append(res.status)
    assert "undecryptable" not in statuses and statuses[-1] == "decrypted"


def test_keys_are_expected_while_the_handshake_is_under_way(tmp_path: Path) -> None:
    """The proxy side reads the key log before each receive while ``expects_keys``
    (addons/inspector.py): true once the ClientHello is in and its keys are not, false
    without a key log at all."""
    flights, text = _conv(tmp_path, "1.3", response=b"ok")
    conn = Connection("1", "c", "s", keylog=KeyLog())
    assert not conn.expects_keys  # nothing seen yet
    conn.receive("client", flights[0][1], 1.0)
    assert conn.expects_keys
    assert not Connection("1", "c", "s").expects_keys


def test_the_history_keeps_no_application_record(tmp_path: Path) -> None:
    """Bounded memory (DESIGN.md 4): what the diagnosis keeps of decrypted records is
    the handshake messages and alerts, not one entry per application record (they are
    only counted), and nothing for a record still waiting for its keys."""
    flights, text = _conv(tmp_path, "1.3", response=b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 300)
    conn, _, _ = _run(flights, _keylog(text))
    kept = conn.history.decrypted
    assert kept and all(d.inner_type != 23 and d.status != "pending" for d in kept), kept
    assert conn.history.inner_app == {"client": 1, "server": 1}
    assert conn.history.undecryptable == {"client": 0, "server": 0}  # the right keys
    waiting = Connection("1", "c", "s", keylog=KeyLog())
    for side, data in flights:
        waiting.receive(side, data, 1.0)  # type: ignore[arg-type]
    assert waiting.history.decrypted == []


def test_a_side_whose_keys_never_arrive_is_counted_once_it_gave_up(tmp_path: Path) -> None:
    """A key log without this connection's keys (another client's log, a client that
    writes none): each side queues up to MAX_PENDING records, then gives up, says
    why once, and from then on its bulk records are counted, not opened again
    (before, every later record was another 'undecryptable' view: 3.4x the CPU per
    GB); every byte is relayed."""
    from tlsinspector.proxy.decrypt import MAX_PENDING

    body = b"x" * ((MAX_PENDING + 64) * 16_000)
    flights, _ = _conv(tmp_path / "a", "1.3", b"HTTP/1.1 200 OK\r\n\r\n" + body)
    _, other_text = _conv(tmp_path / "b", "1.3", b"HTTP/1.1 200 OK\r\n\r\nok")
    _, events, sent = _run(flights, _keylog(other_text))
    assert sent["client"] == b"".join(d for s, d in flights if s == "server")
    server = [e for e in events if e["event"] == "record" and e["from"] == "server"]
    assert len(server) > MAX_PENDING + 60
    gave_up = [e for e in server if e.get("decrypted", {}).get("status") == "undecryptable"]
    assert gave_up and "never arrived" in gave_up[0]["decrypted"]["reason"]
    # After the give-up only small records (a hidden alert's size) still get a view;
    # the bulk ones after it are counted.
    after = [e for e in server if e["index"] > MAX_PENDING + 2]
    assert sum(e["length"] > SMALL_RECORD for e in after) > 50
    assert all(e["length"] <= SMALL_RECORD for e in after if "decrypted" in e)


def test_keys_that_never_arrive_stop_being_waited_for_after_key_wait(tmp_path: Path) -> None:
    """A key log without this connection's keys, a download in 16 KB reads 50 ms
    apart: once the first waiting record is ``key_wait`` old, both sides stop waiting
    together (the client, which sends nothing more, too), one ``note`` says so with
    the client random's first bytes (on the wire, never a secret), the records after
    it are bulk (no view, nothing pending), and the connection may take the lean path
    (settled). With a bound longer than the run, the same connection still waits
    (pending records, off the lean path): the bound is what changes it."""
    body = b"x" * 400_000  # ~25 records: fewer than the queue's bounds
    flights, text = _conv(tmp_path / "a", "1.3", b"HTTP/1.1 200 OK\r\n\r\n" + body)
    _, other_text = _conv(tmp_path / "b", "1.3", b"HTTP/1.1 200 OK\r\n\r\nok")

    def run(key_wait: float) -> tuple[Connection, list[dict[str, Any]], bytes]:
        conn = Connection("1", "c", "s", keylog=_keylog(other_text), key_wait=key_wait)
        events: list[dict[str, Any]] = []
        to_client = b""
        now = 1.0
        for side, data in flights[:-2]:  # up to the response (not the close_notify)
            for pos in range(0, len(data), 16_000):
                now += 0.05
                for o in conn.receive(side, data[pos:pos + 16_000], now):  # type: ignore[arg-type]
                    if isinstance(o, Emit):
                        events.append(o.event)
                    elif isinstance(o, Send) and o.to == "client":
                        to_client += o.data
        return conn, events, to_client

    conn, events, to_client = run(0.5)
    assert to_client == b"".join(d for s, d in flights[:-2] if s == "server")
    notes = [i for i, e in enumerate(events) if e["event"] == "note"]
    assert len(notes) == 1, notes
    note = events[notes[0]]["note"]
    hello = next(m for e in events if e["event"] == "record" for m in e.get("messages", [])
                 if m["type"] == "client_hello")
    assert f"keys never arrived for client_random {hello['random'][:16]}... within" in note
    assert "CLIENT_HANDSHAKE_TRAFFIC_SECRET" in note and "SERVER_HANDSHAKE" in note
    assert render.line(events[notes[0]]) == f"[1] NOTE {note}"
    secrets = [x.split()[2] for x in text.splitlines() + other_text.splitlines() if x.strip()]
    assert not any(s in json.dumps(events) for s in secrets)
    after = [e for e in events[notes[0] + 1:] if e["event"] == "record"]
    assert len(after) > 5
    assert not any(e.get("decrypted", {}).get("status") == "pending" for e in after)
    assert all("decrypted" not in e for e in after if e["length"] > SMALL_RECORD)
    assert not conn.needs_keys and not conn.expects_keys and conn.settled
    # The same run with a bound longer than it: still waiting, off the lean path.
    conn, events, _ = run(3600.0)
    assert not any(e["event"] == "note" for e in events)
    assert conn.needs_keys and not conn.settled
    assert [e for e in events if e.get("decrypted", {}).get("status") == "pending"]


@pytest.mark.parametrize("encrypted", [True, False])
def test_a_sealed_alert_is_not_diagnosed_as_a_plaintext_one(tmp_path: Path,
                                                             encrypted: bool) -> None:
    """An alert a fault puts in place of an encrypted TLS 1.3 record goes out sealed
    when the fault works inside the encryption (RFC 8446 5.2: a protected alert, as
    configs/interception-alert-after-server-hello.yaml sends it): the fault is recorded
    as sealed and injected-plaintext-alert stays silent. The same alert put in the
    clear (no ``encrypted: true``: the outer record is replaced) is that finding."""
    import random as rnd

    from tlsinspector.proxy.decrypt import Decryptor as _Dec
    from tlsinspector.proxy.faults import FaultPlanner
    from tlsinspector.proxy.scenario import load_scenario_text

    flights, text = _conv(tmp_path, "1.3", response=b"HTTP/1.1 200 OK\r\n\r\nok")
    inside = ", encrypted: true" if encrypted else ""
    plan = FaultPlanner([load_scenario_text(
        f"name: s\nfaults:\n  - match: {{from: server, index: 3{inside}}}\n"
        "    action: replace-with-alert\n    description: internal_error\n")], 1,
        rnd.Random(1))
    conn, events, sent = _run(flights, _keylog(text), faults=plan)
    to_client = sent["client"]
    [fault] = conn.history.faults
    assert fault.protected and fault.sealed is encrypted
    [close] = [e for e in events if e["event"] == "close"]
    found = [f["code"] for f in close["diagnosis"]]
    assert ("injected-plaintext-alert" in found) is not encrypted
    # what the client got in place of record 3: a 2-byte alert in the clear, or a
    # record that opens to the alert with the server's handshake keys
    replaced = RecordFramer().feed(to_client)[2]
    assert isinstance(replaced, Record)
    if not encrypted:
        assert (replaced.content_type, replaced.payload) == (21, bytes([2, 80]))
        return
    assert replaced.content_type == 23
    dec, log = _Dec(), _keylog(text)
    ch = b"".join(d for s, d in flights if s == "client")
    dec.record("client", 1, ch[:5], ch[5:])
    for i, r in enumerate(RecordFramer().feed(to_client)[:3], 1):
        assert isinstance(r, Record)
        res = dec.record("server", i, r.header(), r.payload)
        dec.keys_from(log)
    assert res.alert is not None and res.alert["code"] == 80


@pytest.mark.parametrize("position", ["after", "before"])
def test_an_alert_around_the_ccs_is_plaintext_in_the_encrypted_stream_only_after_it(
        tmp_path: Path, position: str) -> None:
    """configs/plaintext-alert-injected.yaml: a 2-byte alert inserted after the
    server's TLS 1.2 ChangeCipherSpec enters the encrypted stream in the clear
    (RFC 5246 7.1) and is that finding; the same alert before the CCS is an ordinary
    plaintext alert, not an injection into encryption."""
    import random as rnd

    from tlsinspector.proxy.faults import FaultPlanner
    from tlsinspector.proxy.scenario import load_scenario_text

    flights, text = _conv(tmp_path, "1.2", response=b"HTTP/1.1 200 OK\r\n\r\nok")
    plan = FaultPlanner([load_scenario_text(
        "name: s\nfaults:\n  - match: {from: server, content_type: change_cipher_spec}\n"
        f"    action: insert-alert\n    description: handshake_failure\n"
        f"    position: {position}\n")], 1, rnd.Random(1))
    conn, events, sent = _run(flights, _keylog(text), faults=plan)
    to_client = sent["client"]
    [close] = [e for e in events if e["event"] == "close"]
    [fault] = conn.history.faults
    assert not fault.sealed and fault.alert_encrypted is (position == "after")
    found = [f["code"] for f in close["diagnosis"]]
    assert ("injected-plaintext-alert" in found) is (position == "after")
    types = [(r.content_type, r.payload) for r in RecordFramer().feed(to_client)
             if isinstance(r, Record) and r.content_type in (20, 21)]
    ccs, alert = (20, b"\x01"), (21, bytes([2, 40]))
    assert types[:2] == ([ccs, alert] if position == "after" else [alert, ccs])


def test_a_hello_retry_round_trip_is_followed_in_the_clear_then_decrypted(
        tmp_path: Path) -> None:
    """A TLS 1.3 server that accepts only secp384r1 answers the client's x25519 key
    share with a HelloRetryRequest; both sides then send the compatibility
    ChangeCipherSpec (RFC 8446 D.4). That CCS is not TLS 1.2's switch to protected
    records: the second ClientHello and the ServerHello are plaintext (RFC 8446
    4.1.4), and the handshake after them decrypts. Before, both were logged as
    encrypted and nothing decrypted."""
    import ssl

    from tests.conversation import _talk
    from tlsinspector.lab.certs import make_certs

    certs = make_certs(tmp_path / "certs")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certs.server_cert, certs.server_key)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    server.set_ecdh_curve("secp384r1")
    client = ssl.create_default_context(cafile=str(certs.ca_cert))
    keys = tmp_path / "keys.log"
    client.keylog_filename = str(keys)
    flights, _ = _talk(client, server, "localhost", REQUEST, b"HTTP/1.1 200 OK\r\n\r\nok",
                       None)
    conn, events, sent = _run(flights, _keylog(keys.read_text()))
    records = {(e["from"], e["index"]): e for e in events if e["event"] == "record"}
    types = {k: [m["type"] for m in e.get("messages", [])] for k, e in records.items()}
    assert types[("server", 1)] == ["hello_retry_request"]
    assert records[("client", 2)]["content_type"] == "change_cipher_spec"
    assert types[("client", 3)] == ["client_hello"] and not records[("client", 3)]["encrypted"]
    assert types[("server", 3)] == ["server_hello"] and not records[("server", 3)]["encrypted"]
    inner = [m["type"] for e in events for m in (e.get("decrypted") or {}).get("messages", [])]
    assert "certificate" in inner and "finished" in inner
    [close] = [e for e in events if e["event"] == "close"]
    assert close["diagnosis"] == []
    assert sent["client"] == b"".join(d for s, d in flights if s == "server")


def test_a_fault_on_the_tls13_server_hello_is_not_on_protected_records(
        tmp_path: Path) -> None:
    """The ServerHello switches both sides to protected records (RFC 8446 2), but it
    is itself in the clear: a fault on it is not on encrypted bytes (fragmenting it
    is not a split of ciphertext, which bad-record-mac would then blame)."""
    import random as rnd

    from tlsinspector.proxy.faults import FaultPlanner
    from tlsinspector.proxy.scenario import load_scenario_text

    flights, text = _conv(tmp_path, "1.3", response=b"HTTP/1.1 200 OK\r\n\r\nok")
    plan = FaultPlanner([load_scenario_text(
        "name: s\nfaults:\n  - match: {from: server, handshake: server_hello}\n"
        "    action: fragment\n    size: 1\n  - match: {from: server, index: 3}\n"
        "    action: split-writes\n    size: 10\n")], 1, rnd.Random(1))
    conn = Connection("1", "c", "s", keylog=_keylog(text), faults=plan)
    for side, data in flights:
        conn.receive(side, data, 1.0)  # type: ignore[arg-type]
    hello, later = conn.history.faults
    assert (hello.action, hello.protected) == ("fragment", False)
    assert (later.action, later.protected) == ("split-writes", True)


def test_at_most_32_records_of_a_side_wait_for_keys(tmp_path: Path) -> None:
    """README ("Decryption"): at most 32 records per direction wait for keys; the next
    one makes the direction undecryptable ("keys never arrived"). The bound is the
    memory promise (32 x 16 KiB per direction), so it is checked at its edge."""
    body = b"x" * (60 * 16_000)
    flights, _ = _conv(tmp_path / "a", "1.3", b"HTTP/1.1 200 OK\r\n\r\n" + body)
    _, other_text = _conv(tmp_path / "b", "1.3", b"HTTP/1.1 200 OK\r\n\r\nok")
    _, events, sent = _run(flights, _keylog(other_text))
    assert sent["client"] == b"".join(d for s, d in flights if s == "server")
    server = [e for e in events if e["event"] == "record" and e["from"] == "server"]
    status = [e.get("decrypted", {}).get("status") for e in server]
    first = status.index("pending")
    assert status[first:first + 32] == ["pending"] * 32
    assert status[first + 32] == "undecryptable"
    assert "never arrived" in server[first + 32]["decrypted"]["reason"]


@pytest.mark.parametrize(("content_type", "position", "found"), [
    ("handshake", "before", True), ("handshake", "after", True),
    ("application_data", "before", False)])
def test_a_renegotiation_hello_inserted_inside_the_encryption_is_judged(
        tmp_path: Path, content_type: str, position: str, found: bool) -> None:
    """A ClientHello a fault seals into the client's stream (RFC 5746: a renegotiation)
    is judged as the server received it, before or after the matched record: here
    OpenSSL's TLS 1.2 hello with the SCSV and no renegotiation_info, which is the
    renegotiation-scsv finding (RFC 5746 3.5). The same bytes as application data are
    no hello. (Before the fix, a hello inserted after the record went unjudged.)"""
    flights, text = _conv(tmp_path, "1.2", b"HTTP/1.1 200 OK\r\n\r\nok")
    scenario = load_scenario_text(
        "name: r\nfaults:\n"
        "  - match: {from: client, encrypted: true, content_type: application_data, "
        "times: 1}\n"
        f"    action: insert-record\n    content_type: {content_type}\n"
        f"    hex: '{OPENSSL_TLS12[5:].hex()}'\n    position: {position}\n")
    conn = Connection("1", "c", "s", keylog=_keylog(text),
                      faults=FaultPlanner([scenario], 1, random.Random(1)))
    events = []
    for side, data in flights:
        events += [o.event for o in conn.receive(side, data, 1.0)  # type: ignore[arg-type]
                   if isinstance(o, Emit)]
    events += [o.event for o in conn.finish(2.0) if isinstance(o, Emit)]
    assert [e["fault"][0]["action"] for e in events if "fault" in e] == ["insert-record"]
    codes = [d["code"] for d in events[-1]["diagnosis"]]
    assert ("renegotiation-scsv" in codes) is found, codes


@pytest.mark.parametrize("held", [False, True], ids=["fast-path", "record-path"])
def test_a_large_renegotiation_hello_after_the_handshake_is_opened(
        tmp_path: Path, held: bool) -> None:
    """Only application_data is bulk: an encrypted handshake record above SMALL_RECORD
    after the handshake (a renegotiating ClientHello of 807 bytes, padded, sealed with
    the client's real keys at its next sequence number) is opened on both paths and
    judged (OpenSSL's hello with the SCSV: renegotiation-scsv, RFC 5746 3.5)."""
    import dataclasses

    from tlsinspector.proxy.handshake import encode_message
    from tlsinspector.proxy.hello import Extension, parse_client_hello
    from tlsinspector.proxy.reseal import Resealer

    flights, text = _conv(tmp_path, "1.2", b"HTTP/1.1 200 OK\r\n\r\nok")
    ch = parse_client_hello(OPENSSL_TLS12[9:])
    padded = dataclasses.replace(ch, extensions=(*(ch.extensions or ()),
                                                 Extension(21, bytes(600))))
    hello = encode_message(1, padded.encode())
    assert len(hello) > SMALL_RECORD
    never = FaultPlanner([load_scenario_text(
        "name: n\nfaults:\n  - match: {from: client, index: 99999}\n    action: drop\n")],
        1, random.Random(1)) if held else None
    conn = Connection("1", "c", "s", keylog=_keylog(text), faults=never)
    events = []
    for side, data in flights:
        events += [o.event for o in conn.receive(side, data, 1.0)  # type: ignore[arg-type]
                   if isinstance(o, Emit)]
    assert conn.decryptor is not None
    [sealed] = Resealer().inject(conn.decryptor.protection("client"),
                                 conn.decryptor.epoch("client"), [Record(22, 0x0303, hello)])
    events += [o.event for o in conn.receive("client", sealed.raw, 1.0) if isinstance(o, Emit)]
    events += [o.event for o in conn.finish(2.0) if isinstance(o, Emit)]
    last = [e for e in events if e["event"] == "record" and e["from"] == "client"][-1]
    assert last["content_type"] == "handshake" and last["length"] > SMALL_RECORD
    assert last["decrypted"]["summary"] == f"handshake client_hello ({len(hello) - 4} bytes)"
    assert "renegotiation-scsv" in [d["code"] for d in events[-1]["diagnosis"]]


def test_a_key_log_without_this_connections_keys_judges_as_without_one(
        tmp_path: Path) -> None:
    """TLS 1.2: the client finishes its handshake and closes with an encrypted alert,
    no request. Without keys that last alert-sized record is a likely encrypted alert;
    with a key log of another connection (nothing opens) the finding is the same, its
    hint says why it is not named."""
    flights, _ = _conv(tmp_path / "a", "1.2", b"HTTP/1.1 200 OK\r\n\r\nok")
    _, other_text = _conv(tmp_path / "b", "1.2", b"ok")
    assert [s for s, _ in flights] == ["client", "server"] * 4
    closed = [*flights[:4], flights[6]]  # hello, flights, then the client's close_notify
    found = {}
    for log in (None, _keylog(other_text)):
        _, events, _ = _run(closed, log)
        [f] = [f for f in events[-1]["diagnosis"] if f["code"] == "likely-encrypted-alert"]
        found[log is None] = f
    assert found[True]["evidence"][0] == found[False]["evidence"][0]
    assert "the key log has no keys for this connection" in json.dumps(found[False])


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_keys_in_the_log_are_used_by_the_next_record_before_the_timer(
        tmp_path: Path, version: str) -> None:
    """README: late keys complete their records with late `decrypted` events. Keys
    already in the shared key log when the next record passes (the key log timer has
    not called keys_arrived yet) are taken there: that record's call completes every
    record that waited, on the fast path too."""
    flights, text = _conv(tmp_path, version, b"HTTP/1.1 200 OK\r\n\r\nok")
    log = KeyLog()  # empty: the keys reach it between two reads
    conn = Connection("1", "c", "s", keylog=log)
    pending = []
    for side, data in flights[:4]:
        pending += [(o.event["from"], o.event["index"])
                    for o in conn.receive(side, data, 1.0)  # type: ignore[arg-type]
                    if isinstance(o, Emit)
                    and o.event.get("decrypted", {}).get("status") == "pending"]
    assert pending
    log.feed(text)
    side, data = flights[4]
    assert side == "client" and conn._dirs["client"].fast
    late = [o.event for o in conn.receive(side, data, 1.0) if isinstance(o, Emit)
            and o.event["event"] == "decrypted"]
    assert {(e["from"], e["index"]) for e in late} >= set(pending)
    assert {e["decrypted"]["status"] for e in late} == {"decrypted"}


@pytest.mark.parametrize("held", [False, True], ids=["fast-path", "record-path"])
@pytest.mark.parametrize(("size", "opened"), [(512, True), (513, False)])  # the README's number
def test_records_up_to_512_bytes_after_the_handshake_are_opened(
        tmp_path: Path, size: int, opened: bool, held: bool) -> None:
    """README ("Decryption"): after the handshake, application_data records over 512
    bytes are counted, not opened; a NewSessionTicket over 512 bytes is not shown. At
    the edge: a TLS 1.3 record of exactly 512 bytes carrying a ticket (sealed with the
    server's real keys at its next sequence number) is opened, one of 513 is not."""
    from tlsinspector.proxy.handshake import encode_message
    from tlsinspector.proxy.reseal import Resealer

    flights, text = _conv(tmp_path, "1.3", b"HTTP/1.1 200 OK\r\n\r\nok")
    never = FaultPlanner([load_scenario_text(  # keeps both sides on the record path
        "name: n\nfaults:\n  - match: {index: 99999}\n    action: drop\n")],
        1, random.Random(1)) if held else None
    conn = Connection("1", "c", "s", keylog=_keylog(text), faults=never)
    for side, data in flights[:-2]:  # up to the response, before the close_notify alerts
        conn.receive(side, data, 1.0)  # type: ignore[arg-type]
    assert conn.decryptor is not None
    # AES-GCM (RFC 8446 5.2): ciphertext = inner plaintext + 1 content type byte + 16 tag.
    ticket = encode_message(4, bytes(size - 17 - 4))
    [sealed] = Resealer().inject(conn.decryptor.protection("server"),
                                 conn.decryptor.epoch("server"), [Record(22, 0x0303, ticket)])
    assert sealed.length == size
    [ev] = [o.event for o in conn.receive("server", sealed.raw, 1.0) if isinstance(o, Emit)]
    assert ev["length"] == size and ev["content_type"] == "application_data"
    if opened:
        assert ev["decrypted"]["inner_type"] == "handshake"
        assert ev["decrypted"]["summary"].startswith("handshake new_session_ticket")
    else:
        assert "decrypted" not in ev


@pytest.mark.parametrize("position", ["after", "before"])
def test_an_alert_inserted_after_a_tls13_finished_is_sealed_with_the_next_keys(
        tmp_path: Path, position: str) -> None:
    """RFC 8446 4.4.4, 7.1: a TLS 1.3 sender's records after its Finished are protected
    with its application traffic keys. An alert a fault puts right after the server's
    Finished was sealed with the handshake keys (every client: bad_record_mac, found by
    a new user's reproduction); before the Finished it belongs to the handshake keys.
    The client's view is checked by a fresh Decryptor: every record the client gets
    opens, the alert is where the fault put it, and the tickets after it still open."""
    flights, text = _conv(tmp_path, "1.3", response=b"HTTP/1.1 200 OK\r\n\r\nok")
    plan = FaultPlanner([load_scenario_text(
        "name: s\nfaults:\n  - match: {from: server, handshake: finished, encrypted: true}\n"
        "    action: insert-alert\n    description: internal_error\n"
        f"    position: {position}\n")], 1, random.Random(1))
    conn, events, sent = _run(flights, _keylog(text), faults=plan)
    assert [f.action for f in conn.history.faults] == ["insert-alert"]
    dec = Decryptor()
    log = _keylog(text)
    seen: list[tuple[str, str, int | None]] = []
    index = {"client": 0, "server": 0}
    for side, data in [("client", flights[0][1]), ("server", sent["client"])]:
        for item in RecordFramer().feed(data):
            assert isinstance(item, Record)
            index[side] += 1
            res = dec.record(side, index[side], item.header(), item.payload)  # type: ignore[arg-type]
            dec.keys_from(log)
            if side == "server" and res.status != "plaintext":
                code = int(res.alert["code"]) if res.alert is not None else None
                seen.append((res.status, res.epoch, code))
    assert all(status == "decrypted" for status, _, _ in seen), seen
    alerts = [(epoch, i) for i, (_, epoch, code) in enumerate(seen) if code == 80]
    assert len(alerts) == 1
    epoch, at = alerts[0]
    assert epoch == ("handshake" if position == "before" else "application"), seen
    assert at < len(seen) - 1 or position == "before"


def test_a_sealed_alert_of_an_unnamed_level_keeps_its_level(tmp_path: Path) -> None:
    """RFC 8446 6: an alert's level byte is the sender's, named or not. A sealed alert
    with level 5 (put there by one engine's fault, seen by a second engine as a peer's
    record) is kept in the history as 5, not 0 (a mutation run found the loss)."""
    flights, text = _conv(tmp_path, "1.3", response=b"HTTP/1.1 200 OK\r\n\r\nok")
    plan = FaultPlanner([load_scenario_text(
        "name: s\nfaults:\n  - match: {from: server, handshake: finished, encrypted: true}\n"
        "    action: insert-alert\n    level: 5\n    description: internal_error\n"
        "    position: after\n")], 1, random.Random(1))
    _, _, sent = _run(flights, _keylog(text), faults=plan)
    seen_by_client = [flights[0], ("server", sent["client"])]
    conn, events, _ = _run(seen_by_client, _keylog(text))
    assert [(a.level, a.description) for a in conn.history.alerts
            if a.description == 80] == [(5, 80)]
    [alert] = [e["decrypted"]["alert"] for e in events if "alert" in e.get("decrypted", {})
               and e["decrypted"]["alert"]["code"] == 80]
    assert alert["level"] == "5"


def test_the_decoded_message_cache_leaves_the_log_unchanged(
        conv: tuple[str, list[tuple[str, bytes]], str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The same conversations' JSONL bytes with the cache cold, warm (the server's
    EncryptedExtensions and Certificate from the cache) and without it."""
    import orjson

    from tlsinspector.proxy import protected_messages as pm

    version, flights, text = conv

    def log_bytes() -> bytes:
        out = b""
        for seed in (None, 7):  # whole flights (the record path), then any chunking
            rng = None if seed is None else random.Random(seed)
            out += b"".join(orjson.dumps(e) + b"\n" for e in _run(flights, _keylog(text), rng)[1])
        return out

    pm._decode_cached.cache_clear()
    cold = log_bytes()
    warm = log_bytes()
    assert pm._decode_cached.cache_info().hits > 0
    monkeypatch.setattr(pm, "CACHED", frozenset())
    uncached = log_bytes()
    assert cold == warm == uncached
    if version == "1.3":  # decrypted, so through the cache
        assert b'"type":"certificate"' in cold and b'"type":"encrypted_extensions"' in cold


@pytest.mark.parametrize("keys", ["present", "late", "another connection's"])
def test_keyed_bulk_runs_give_the_per_record_paths_outputs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: str) -> None:
    """With keys, a bulk side's large records come in runs too (Decryptor.skip_run:
    one sequence-number step per run): against the per-record framer, every chunk's
    outputs, the history, the late events and the close are the same, with keys
    present, arriving mid-download (records queue, then open) and never arriving
    (the side gives up); and the runs were taken."""
    from tests.test_engine import _NoRuns
    from tlsinspector.proxy import decrypt
    from tlsinspector.proxy.decrypt import MAX_PENDING

    taken = [0]
    real = decrypt.Decryptor.skip_run

    def counting(self: Decryptor, side: Any, first: int, version: int, lengths: list[int],
                 now: float | None = None) -> int:
        taken[0] += len(lengths)
        return real(self, side, first, version, lengths, now)

    monkeypatch.setattr(decrypt.Decryptor, "skip_run", counting)
    body = b"x" * ((MAX_PENDING + 40) * 16_000)
    flights, text = _conv(tmp_path / "a", "1.3", b"HTTP/1.1 200 OK\r\n\r\n" + body)
    if keys == "another connection's":
        _, text = _conv(tmp_path / "b", "1.3", b"HTTP/1.1 200 OK\r\n\r\nok")
    logs = [KeyLog(), KeyLog()]
    conns = [Connection("1", "c", "s", keylog=log, key_wait=3600.0) for log in logs]
    conns[1]._dirs["client"].framer = _NoRuns()
    conns[1]._dirs["server"].framer = _NoRuns()
    if keys != "late":
        for log in logs:
            log.feed(text)
    rng = random.Random(7)
    now = 1.0
    # Late keys come while ten records of the download wait for them (within the bounds).
    midway = sum(len(d) for _, d in flights) - len(body) + 10 * 16_000
    fed = 0
    for side, data in flights:
        pos = 0
        while pos < len(data):
            n = rng.choice([1, 5, 700, 16_389, 40_000, 100_000])
            chunk = data[pos:pos + n]
            pos += n
            fed += len(chunk)
            now += 0.001
            outs = [c.receive(side, chunk, now) for c in conns]  # type: ignore[arg-type]
            assert outs[0] == outs[1]
            assert ([json.dumps(o.event) for o in outs[0] if isinstance(o, Emit)]
                    == [json.dumps(o.event) for o in outs[1] if isinstance(o, Emit)])
            if keys == "late" and fed > midway and not len(logs[0]):
                for log in logs:
                    log.feed(text)
                late = [c.keys_arrived(now) for c in conns]
                assert late[0] == late[1] and late[0]
    ends = [c.finish(now) for c in conns]
    assert ends[0] == ends[1]
    h0, h1 = conns[0].history, conns[1].history
    for name in ("inner_app", "app_records", "encrypted", "encrypted_after_peer",
                 "undecryptable"):
        assert getattr(h0, name) == getattr(h1, name), name
    assert h0.app_records["server"] > MAX_PENDING + 30
    assert taken[0] > MAX_PENDING  # most of the download came in runs


def test_a_connection_is_named_by_the_key_log_only_for_its_own_keys(tmp_path: Path) -> None:
    """The proxy hands late keys to the connections KeyLog.owners names for the client
    randoms that changed (addons/inspector.py poll_keys): each connection is named for
    its own keys, never for another's, from its ClientHello until its close."""
    class Owner:
        pass

    convs = [_conv(tmp_path / str(i), "1.3", b"HTTP/1.1 200 OK\r\n\r\nok") for i in range(3)]
    log = KeyLog()
    owners = [Owner() for _ in convs]
    conns = [Connection(str(i), "c", "s", keylog=log, key_owner=o)
             for i, o in enumerate(owners)]
    for conn, (flights, _) in zip(conns, convs, strict=True):
        for side, data in flights[:3]:  # the hellos and the server's encrypted flight
            conn.receive(side, data, 1.0)  # type: ignore[arg-type]
        assert conn.needs_keys
    randoms: set[bytes] = set()
    for i, (conn, (_, text)) in enumerate(zip(conns, convs, strict=True)):
        changed = log.feed(text)
        randoms |= changed
        assert log.owners(changed) == [owners[i]]
        late = [o.event for o in conn.keys_arrived(2.0) if isinstance(o, Emit)]
        assert late and not conn.needs_keys
        assert all(c.needs_keys for c in conns[i + 1:])  # the others still wait
    for conn in conns:
        conn.finish(3.0)
    assert log.owners(randoms) == [] and log.pinned == 0  # closed: unpinned
