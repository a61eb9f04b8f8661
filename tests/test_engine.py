"""The engine with real conversations: transparency, events, encryption tracking."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conversation import conversation
from tests.events_schema import problems
from tlsinspector.lab.certs import make_certs
from tlsinspector.proxy import names, render
from tlsinspector.proxy.engine import Close, Connection, Emit, Output, Send
from tlsinspector.proxy.records import Record, RecordFramer

CONV13 = conversation("1.3")
CONV12 = conversation("1.2")


Result = tuple[dict[str, bytes], list[dict[str, Any]], list[Output]]


def run(flights: list[tuple[str, bytes]], cuts: list[int] | None = None,
        conn: Connection | None = None,
        ends: tuple[str, str] = ("client", "server")) -> Result:
    c = conn or Connection("1", "127.0.0.1:1", "127.0.0.1:2")
    outs: list[Output] = list(c.start(0.0))
    for side, data in flights:
        if cuts:
            pos = 0
            for n in cuts:
                if pos >= len(data):
                    break
                outs += c.receive(side, data[pos : pos + n], 1.0)  # type: ignore[arg-type]
                pos += n
            if pos < len(data):
                outs += c.receive(side, data[pos:], 1.0)  # type: ignore[arg-type]
        else:
            outs += c.receive(side, data, 1.0)  # type: ignore[arg-type]
    for side in ends:  # whose stream ends first
        outs += c.eof(side, 2.0)  # type: ignore[arg-type]
    outs += c.finish(2.0)
    got = {"client": b"", "server": b""}
    for o in outs:
        if isinstance(o, Send):
            got[o.to] += o.data
    events = [o.event for o in outs if isinstance(o, Emit)]
    assert problems(events, "engine") == []  # docs/events.schema.json, every event
    return got, events, outs


def sent(flights: list[tuple[str, bytes]], side: str) -> bytes:
    return b"".join(d for s, d in flights if s == side)


def strip_ts(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k != "ts"} for e in events]


def records(events: list[dict[str, Any]], side: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == "record" and e["from"] == side]


def test_passthrough_is_byte_exact_both_ways() -> None:
    got, events, outs = run(CONV13)
    assert got["server"] == sent(CONV13, "client")
    assert got["client"] == sent(CONV13, "server")
    assert [o for o in outs if isinstance(o, Close)] == [Close("server"), Close("client")]


def test_tls13_events_decode_hellos_and_mark_encryption() -> None:
    _, events, _ = run(CONV13)
    assert events[0]["event"] == "connect"
    c = records(events, "client")
    s = records(events, "server")
    ch = c[0]["messages"][0]
    assert ch["type"] == "client_hello" and ch["sni"] == "localhost"
    assert "0x0304" in ch["supported_versions"]
    assert ch["ja4"].startswith("t13d")
    sh = s[0]["messages"][0]
    assert sh["type"] == "server_hello" and sh["selected_version"] == "0x0304"
    assert not s[0]["encrypted"] and not c[0]["encrypted"]
    assert all(r["encrypted"] for r in s[1:] if r["content_type"] != "change_cipher_spec")
    assert all(r["encrypted"] for r in c[1:] if r["content_type"] != "change_cipher_spec")
    assert [r["index"] for r in c] == list(range(1, len(c) + 1))
    close = events[-1]
    assert close["event"] == "close" and close["by"] == "client"
    assert close["bytes"] == {"client": len(sent(CONV13, "client")),
                              "server": len(sent(CONV13, "server"))}


def test_close_event_counts_records_per_side_with_and_without_app_records() -> None:
    # README: the close event's "records" holds how many records each side sent,
    # application data included even when --no-app-records leaves them out of the log.
    big = conversation("1.3", response=b"z" * 100_000)
    want = {s: len([r for r in RecordFramer().feed(sent(big, s)) if isinstance(r, Record)])
            for s in ("client", "server")}
    for log_app in (True, False):
        _, events, _ = run(big, conn=Connection("1", "c:1", "s:2", log_app_data=log_app))
        close = events[-1]
        assert close["event"] == "close"
        assert close["records"] == want, log_app
        logged = {s: len(records(events, s)) for s in ("client", "server")}
        app = {s: sum(r["content_type"] == "application_data" for r in records(events, s))
               for s in ("client", "server")}
        if log_app:
            assert logged == want
        else:
            assert app == {"client": 0, "server": 0}
            assert logged["server"] < want["server"] - 100_000 // 16_384


def test_tls12_encryption_starts_after_ccs() -> None:
    _, events, _ = run(CONV12)
    s = records(events, "server")
    types = [r["content_type"] for r in s]
    ccs = types.index("change_cipher_spec")
    assert not any(r["encrypted"] for r in s[:ccs + 1])
    assert all(r["encrypted"] for r in s[ccs + 1:])
    names = [m["type"] for r in s[:ccs] for m in r.get("messages", [])]
    assert names[:2] == ["server_hello", "certificate"]
    assert "server_hello_done" in names


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=40), st.sampled_from(["1.2", "1.3"]),
       st.booleans())
def test_any_segmentation_same_bytes_same_events(cuts: list[int], version: str,
                                                 app: bool) -> None:
    flights = CONV13 if version == "1.3" else CONV12

    def conn() -> Connection:
        return Connection("1", "127.0.0.1:1", "127.0.0.1:2", log_app_data=app)

    got_whole, ev_whole, _ = run(flights, conn=conn())
    got, ev, _ = run(flights, cuts, conn=conn())
    assert got == got_whole
    assert got["server"] == sent(flights, "client")
    assert strip_ts(ev) == strip_ts(ev_whole)


def test_plain_http_on_tls_port_is_logged_and_relayed() -> None:
    flights = [("client", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
               ("server", b"HTTP/1.1 400 Bad Request\r\n\r\n")]
    got, events, _ = run(flights)
    assert got["server"] == flights[0][1] and got["client"] == flights[1][1]
    non_tls = [e for e in events if e["event"] == "non_tls"]
    assert [e["from"] for e in non_tls] == ["client", "server"]
    assert non_tls[0]["reason"] == "plain HTTP where a TLS record was expected"
    # Application data stays out of the log by default: length and reason only.
    assert "preview" not in non_tls[0] and non_tls[0]["length"] == len(flights[0][1])
    [close] = [e for e in events if e["event"] == "close"]
    assert "Host: x" not in str(close) and "400 Bad" not in str(close)
    assert any(d["code"] == "non-tls-bytes" for d in close["diagnosis"]), close


def test_non_tls_preview_is_opt_in() -> None:
    secret = b"POST /login HTTP/1.1\r\n\r\npassword=hunter2&card=4111111111111111"
    got, events, _ = run([("client", secret)])
    assert got["server"] == secret
    assert "hunter2" not in str(events) and "4111" not in str(events)
    _, events, _ = run([("client", secret)],
                       conn=Connection("1", "127.0.0.1:1", "127.0.0.1:2", log_preview=True))
    [ev] = [e for e in events if e["event"] == "non_tls"]
    assert ev["preview"].startswith("POST /login HTTP/1.1....password=hunter2")


def test_partial_record_at_close_is_forwarded_and_logged() -> None:
    data = sent(CONV13, "client")[:100]
    got, events, _ = run([("client", data)])
    assert got["server"] == data
    [rec] = records(events, "client")
    assert rec["unparsed"].startswith("partial record at close")


def test_partial_record_after_whole_ones_is_named_by_its_own_index() -> None:
    """The server's flight cut 10 bytes short of its end (RFC 5246 6.2.1: a record the
    receiver never completes): the record event and the close's partial-record finding
    name the same record, the one after the last whole record (the server's stream
    ends first: a record cut by the client's own close is no partial-record)."""
    data = sent(CONV13, "server")
    whole = len([r for r in RecordFramer().feed(data[:-10]) if isinstance(r, Record)])
    _, events, _ = run([("client", sent(CONV13, "client")[:10]), ("server", data[:-10])],
                       ends=("server", "client"))
    partial = [r for r in records(events, "server") if "unparsed" in r]
    assert [r["index"] for r in partial] == [whole + 1]
    [close] = [e for e in events if e["event"] == "close"]
    [f] = [x for x in close["diagnosis"] if x["code"] == "partial-record"]
    assert any(line.startswith(f"server record {whole + 1}: partial record at close")
               for line in f["evidence"]), f["evidence"]



@pytest.mark.parametrize(("tail", "same"), [(bytes.fromhex("1703"), False),
                                            (bytes.fromhex("1703030040") + bytes(10), True)])
def test_a_partial_record_on_the_fast_path_is_named_by_its_own_index(tail: bytes,
                                                                     same: bool) -> None:
    """After the handshake (the lean path): a stream cut inside a record header names
    the record after the last whole one, not the last one again (two records #909);
    cut inside a payload, the record whose header was logged keeps its index."""
    more = (bytes.fromhex("1703030020") + bytes(32)) * 3 + tail
    _, events, _ = run([*CONV13, ("server", more)], ends=("server", "client"))
    server = records(events, "server")
    [partial] = [r for r in server if "unparsed" in r]
    whole = [r["index"] for r in server if "unparsed" not in r]
    assert partial["index"] == (max(whole) if same else max(whole) + 1)


def test_an_oversized_record_after_the_handshake_is_record_overflow() -> None:
    """A server's 65535-byte record after the handshake (curl: "packet length too
    long"): the lean path logged it as any bulk record and the close said nothing,
    while the same record before the handshake is record-overflow (RFC 8446 5.1)."""
    big = bytes.fromhex("170303ffff") + bytes(0xFFFF)
    _, events, _ = run([*CONV13, ("server", big)], ends=("server", "client"))
    [rec] = [r for r in records(events, "server") if r.get("length") == 0xFFFF]
    assert rec.get("oversized") is True
    [close] = [e for e in events if e["event"] == "close"]
    [f] = [x for x in close["diagnosis"] if x["code"] == "record-overflow"]
    assert f"server record {rec['index']}: record of 65535 bytes" in f["evidence"]


def test_fast_path_after_handshake_parses_and_logs_nothing_per_record(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression guard (not a timed test): application data after the handshake
    never reaches the record parser, the message decoder or the log."""
    big = conversation("1.3", response=b"x" * 300_000)
    c = Connection("1", "c:1", "s:2", log_app_data=False)
    calls = {"feed": 0, "describe": 0}
    import tlsinspector.proxy.engine as eng

    real_describe = eng.messages.describe

    def counting_describe(msg: Any) -> Any:
        calls["describe"] += 1
        return real_describe(msg)

    monkeypatch.setattr(eng.messages, "describe", counting_describe)
    outs: list[Output] = []
    server = c._dirs["server"]
    for side, data in big:
        if side == "server" and server.fast:
            before = server.framer.buffered
            step = c.receive(side, data, 1.0)  # type: ignore[arg-type]
            assert server.framer.buffered <= 4 and before <= 4  # a partial header at most
            # No copies: the very bytes object read is the one sent on.
            assert [o.data for o in step if isinstance(o, Send)] == [data]
            assert all(o.data is data for o in step if isinstance(o, Send))
            outs += step
        else:
            outs += c.receive(side, data, 1.0)  # type: ignore[arg-type]
    assert server.fast and c._dirs["client"].fast
    assert calls["describe"] == 2  # the two hellos, nothing after
    got = b"".join(o.data for o in outs if isinstance(o, Send) and o.to == "client")
    assert got == sent(big, "server")
    app_events = [o for o in outs if isinstance(o, Emit)
                  and o.event.get("content_type") == "application_data"]
    assert app_events == []
    assert c.history.app_records["server"] >= 300_000 // 16_384


def test_fast_path_logs_each_application_record_without_parsing_it() -> None:
    """With application records logged (the default), the fast path emits one
    header-only event per record and still copies nothing."""
    big = conversation("1.3", response=b"y" * 200_000)
    c = Connection("1", "c:1", "s:2")
    outs: list[Output] = []
    for side, data in big:
        outs += c.receive(side, data, 1.0)  # type: ignore[arg-type]
    assert c._dirs["server"].fast
    app = [o.event for o in outs if isinstance(o, Emit)
           and o.event.get("content_type") == "application_data" and o.event["from"] == "server"]
    assert len(app) == c.history.app_records["server"] >= 200_000 // 16_384
    assert all(set(e) == {"event", "ts", "conn", "from", "index", "content_type", "version",
                          "length", "encrypted"} for e in app)
    assert [e["index"] for e in app] == sorted(e["index"] for e in app)


class _NoRuns(RecordFramer):
    """The framer as it was before runs: every bulk record a Header of its own, so
    the engine takes its general per-record path (the reference)."""

    __slots__ = ()

    def skim(self, data: bytes, keep: int = 0, bulk: int = 0) -> list[Any]:
        return super().skim(data, keep)


def _bulk_stream() -> bytes:
    """Server records after the handshake: runs of bulk application data broken by
    every kind of record that ends one (an alert-sized record, a ChangeCipherSpec,
    an encrypted handshake record, other versions, one outside the TLS family)."""
    def rec(ctype: int, n: int, version: int = 0x0303) -> bytes:
        return Record(ctype, version, bytes([n % 251]) * n).raw
    return b"".join([
        rec(23, 65), rec(23, 200), rec(23, 90), rec(23, 19), rec(23, 64), rec(23, 120),
        rec(23, 70), rec(20, 1), rec(23, 100), rec(22, 80), rec(23, 66),
        rec(23, 150, 0x0301), rec(23, 150, 0x0301), rec(23, 99, 0x0305), rec(23, 99, 0x0305),
        rec(23, 300), rec(23, 0), rec(23, 101), rec(23, 102)])


@pytest.mark.parametrize("log_app_data", [True, False])
def test_bulk_runs_give_the_events_of_the_per_record_path_at_every_split(
        monkeypatch: pytest.MonkeyPatch, log_app_data: bool) -> None:
    """Issue 19's fused path (RecordFramer.skim's runs, Connection._skim_run) against
    the per-record path it replaced: the stream cut in two at every offset, then
    byte by byte and whole, gives the same outputs chunk by chunk (events, bytes),
    the same history and the same close event; and the runs were taken."""
    import tlsinspector.proxy.engine as eng

    in_runs = [0]
    real_run = eng.Connection._skim_run

    def counting(self: Connection, d: Any, run: Any, ts: float, out: list[Output]) -> None:
        in_runs[0] += len(run.lengths)
        real_run(self, d, run, ts, out)

    monkeypatch.setattr(eng.Connection, "_skim_run", counting)
    fused = Connection("1", "127.0.0.1:1", "127.0.0.1:2", log_app_data=log_app_data)
    plain = Connection("1", "127.0.0.1:1", "127.0.0.1:2", log_app_data=log_app_data)
    packed = Connection("1", "127.0.0.1:1", "127.0.0.1:2", log_app_data=log_app_data)
    for side in ("client", "server"):
        plain._dirs[side].framer = _NoRuns()  # type: ignore[index]
    for c in (fused, plain, packed):
        c.start(0.0)
        for side, data in CONV13[:-2]:  # the handshake, a request and its response
            c.receive(side, data, 1.0)  # type: ignore[arg-type]
        assert c.settled
    packed.pack_records()  # as the hot relay asks: a run's events as one EmitRecords
    stream = _bulk_stream()
    segmentations = [[stream[:k], stream[k:]] for k in range(len(stream) + 1)]
    segmentations += [[stream[i:i + 1] for i in range(len(stream))], [stream]]
    for n, chunks in enumerate(segmentations):
        for chunk in chunks:
            now = 2.0 + n
            want = plain.receive("server", chunk, now)
            fused_out = fused.receive("server", chunk, now)
            assert fused_out == want
            got = packed.receive("server", chunk, now)
            assert [o for o in got if not isinstance(o, Emit | eng.EmitRecords)] == [
                o for o in want if not isinstance(o, Emit)]
            # The log's bytes (== on dicts ignores the order of their keys).
            log = [orjson.dumps(o.event) for o in want if isinstance(o, Emit)]
            assert [orjson.dumps(o.event) for o in fused_out if isinstance(o, Emit)] == log
            assert [orjson.dumps(e) for e in eng.events(got)] == log
    assert in_runs[0] > len(segmentations) * 8 * 2  # most bulk records came in runs
    hf, hp = fused.history, plain.history
    assert (hf.encrypted, hf.encrypted_after_peer, hf.app_records, hf.anomalies,
            hf.last_encrypted) == (hp.encrypted, hp.encrypted_after_peer, hp.app_records,
                                   hp.anomalies, hp.last_encrypted)
    assert [a.kind for a in hf.anomalies].count("record_version") > 2
    assert fused._dirs["server"].framed == plain._dirs["server"].framed
    for c in (fused, plain, packed):
        c.eof("server", 9.0)
        c.eof("client", 9.0)
    close = plain.finish(9.0)
    assert fused.finish(9.0) == close == packed.finish(9.0)


# -- the error boundary: an internal failure costs no byte -----------------------------

import dataclasses  # noqa: E402
import random  # noqa: E402

from tlsinspector.proxy import actions, messages  # noqa: E402
from tlsinspector.proxy.engine import Phase  # noqa: E402
from tlsinspector.proxy.faults import FaultPlanner  # noqa: E402
from tlsinspector.proxy.scenario import load_scenario_text  # noqa: E402


class Boom(RuntimeError):
    pass


def failing_on(monkeypatch: pytest.MonkeyPatch, target: Any, name: str, nth: int) -> None:
    """Make ``target.name`` raise on its ``nth`` call (1-based), as a bug would."""
    real = getattr(target, name)
    calls = {"n": 0}

    def wrapper(*args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == nth:
            raise Boom(f"planted failure in {name}")
        return real(*args, **kw)
    monkeypatch.setattr(target, name, wrapper)


def planned(faults_yaml: str) -> Connection:
    s = load_scenario_text(f"name: t\nfaults:\n{faults_yaml}", "t.yaml")
    return Connection("7", "127.0.0.1:1", "127.0.0.1:2",
                      faults=FaultPlanner([s], 1, random.Random(1)))


def one_internal_error(events: list[dict[str, Any]], conn: str) -> dict[str, Any]:
    errors = [e for e in events if e["event"] == "internal_error"]
    assert len(errors) == 1, errors
    e = errors[0]
    assert e["conn"] == conn and e["action"] == "passthrough"
    assert "Boom: planted failure" in e["error"]
    assert e["traceback"] and all(":" in f for f in e["traceback"])
    assert events[-1]["event"] == "close"
    return e


@pytest.mark.parametrize("cuts", [None, [1], [3, 700, 5]], ids=["whole", "bytewise", "mixed"])
@pytest.mark.parametrize("conv", [CONV13, CONV12], ids=["tls13", "tls12"])
def test_a_failing_decoder_switches_to_passthrough_byte_exact(
        monkeypatch: pytest.MonkeyPatch, conv: list[tuple[str, bytes]],
        cuts: list[int] | None) -> None:
    # The ServerHello's description raises (the 2nd message described).
    failing_on(monkeypatch, messages, "describe", 2)
    got, events, _ = run(conv, cuts)
    assert got["server"] == sent(conv, "client")
    assert got["client"] == sent(conv, "server")
    e = one_internal_error(events, "1")
    assert e["side"] == "server"
    assert any("engine.py" in f and "_on_message" in f for f in e["traceback"])
    # The ClientHello was logged before the failure, nothing is parsed after it.
    records = [x for x in events if x["event"] == "record"]
    assert records[0]["messages"][0]["type"] == "client_hello"
    assert events.index(e) > events.index(records[-1])


@pytest.mark.parametrize("cuts", [None, [1], [3, 700, 5]], ids=["whole", "bytewise", "mixed"])
def test_a_failure_while_faults_hold_records_releases_them_in_order(
        monkeypatch: pytest.MonkeyPatch, cuts: list[int] | None) -> None:
    # A fault that never fires keeps both directions record by record (bytes held
    # to a record boundary); the failure comes in the middle of the server's flight.
    c = planned("  - match: {index: 99}\n    action: drop\n")
    failing_on(monkeypatch, messages, "describe", 2)
    got, events, _ = run(CONV13, cuts, conn=c)
    assert got["server"] == sent(CONV13, "client")
    assert got["client"] == sent(CONV13, "server")
    one_internal_error(events, "7")
    assert c._dirs["client"].phase is Phase.CLOSED and c._dirs["server"].phase is Phase.CLOSED


def split_hello(flights: list[tuple[str, bytes]], at: int) -> list[tuple[str, bytes]]:
    """The client's first record (its ClientHello) as two handshake records."""
    (side, first), *rest = flights
    header, payload = first[:5], first[5:]
    two = (header[:3] + at.to_bytes(2, "big") + payload[:at]
           + header[:3] + (len(payload) - at).to_bytes(2, "big") + payload[at:])
    return [(side, two), *rest]


def test_a_failing_action_releases_the_held_hello_unchanged(
        monkeypatch: pytest.MonkeyPatch) -> None:
    flights = split_hello(CONV13, 40)
    spec = actions.ACTIONS["remove-extensions"]

    def broken(e: actions.Effect, p: actions.Params) -> None:
        raise Boom("planted failure in an action")
    monkeypatch.setitem(actions._REGISTRY, "remove-extensions",
                        dataclasses.replace(spec, run=broken))
    c = planned("  - match: {from: client}\n    action: remove-extensions\n"
                "    extensions: [server_name]\n")
    outs: list[Output] = []
    # Feed the two hello records separately: the first is held for the whole hello.
    first = flights[0][1]
    outs += c.receive("client", first[:45], 1.0)
    assert not [o for o in outs if isinstance(o, Send)]  # held
    outs += c.receive("client", first[45:], 1.0)
    for side, data in flights[1:]:
        outs += c.receive(side, data, 1.0)  # type: ignore[arg-type]
    outs += c.eof("client", 2.0) + c.eof("server", 2.0) + c.finish(2.0)
    got = {"client": b"", "server": b""}
    for o in outs:
        if isinstance(o, Send):
            got[o.to] += o.data
    assert got["server"] == sent(flights, "client")
    assert got["client"] == sent(flights, "server")
    events = [o.event for o in outs if isinstance(o, Emit)]
    e = [x for x in events if x["event"] == "internal_error"]
    assert len(e) == 1 and "planted failure in an action" in e[0]["error"]
    assert events[-1]["event"] == "close"


def test_a_failing_diagnosis_still_closes_the_log(monkeypatch: pytest.MonkeyPatch) -> None:
    from tlsinspector.proxy import diagnosis

    def broken(h: Any) -> list[Any]:
        raise Boom("planted failure in diagnose")
    monkeypatch.setattr(diagnosis, "diagnose", broken)
    got, events, _ = run(CONV13)
    assert got["server"] == sent(CONV13, "client")
    assert [e["event"] for e in events[-2:]] == ["internal_error", "close"]
    assert events[-1]["diagnosis"] == []


def test_record_versions_outside_ssl3_to_tls13_are_anomalies() -> None:
    # RFC 8446 5.1 / RFC 5246 6.2.1 / RFC 6101: record versions in use run from 0x0300
    # (SSL 3.0) to 0x0304; the engine notes any other (Go: "received record with
    # version ..."), and the bytes still go through unchanged.
    c = Connection("1", "127.0.0.1:1", "127.0.0.1:2")
    c.start(0.0)
    stream = b"".join(Record(21, v, b"\x01\x00").raw
                      for v in (0x0300, 0x0301, 0x0304, 0x02FF, 0x0305, 0x3030))
    outs = c.receive("server", stream, 1.0)
    assert b"".join(o.data for o in outs if isinstance(o, Send)) == stream
    assert [(a.index, a.value) for a in c.history.anomalies if a.kind == "record_version"] == [
        (4, 0x02FF), (5, 0x0305), (6, 0x3030)]


def test_hello_request_before_a_handshake_is_not_a_renegotiation() -> None:
    # RFC 5246 7.4.1.1: a HelloRequest asks for a new handshake; before the first one
    # completes it means nothing to renegotiate (and a client ignores it).
    hello_request = Record(22, 0x0303, b"\x00\x00\x00\x00").raw
    _, events, _ = run([("server", hello_request)])
    [rec] = records(events, "server")
    assert rec["messages"][0]["type"] == "hello_request"
    assert "renegotiation" not in rec["messages"][0]


def test_a_heartbeat_after_the_handshake_is_not_a_renegotiation() -> None:
    """Only an encrypted handshake record after both Finished is a renegotiation (RFC
    5246 7.4.1.1); a heartbeat record (content type 24, RFC 6520) there is not."""
    heartbeat = bytes.fromhex("1803030020") + bytes(32)
    renegotiation = bytes.fromhex("1603030020") + bytes(32)
    # With no fault the record goes by the fast path; a fault that never applies keeps
    # the connection on the full path: both must say the same.
    never = "  - match: {from: client, index: 99}\n    action: drop\n"
    for fault in (None, never):
        for extra, note in ((heartbeat, False), (renegotiation, True)):
            flights = [*CONV12[:4], ("client", extra), *CONV12[4:]]
            conn = planned(fault) if fault else Connection("1", "127.0.0.1:1", "127.0.0.1:2")
            _, events, _ = run(flights, conn=conn)
            [ev] = [e for e in records(events, "client") if e["length"] == 32
                    and e.get("content_type") in ("heartbeat", "handshake")]
            assert ("after the handshake" in ev.get("note", "")) is note, (fault, ev)
            if note and fault:  # the full path names it (TLS 1.2: RFC 5746)
                assert "a renegotiation (ClientHello or HelloRequest" in ev["note"]
            assert any(a.kind == "encrypted_renegotiation"
                       for a in conn.history.anomalies) is note


def test_a_handshake_record_after_a_tls13_handshake_is_no_renegotiation() -> None:
    """TLS 1.3 has no renegotiation (RFC 8446 4.6: post-handshake messages instead):
    a handshake-type record there, on the full path, is a post-handshake message, not
    the TLS 1.2 renegotiation finding."""
    # Without keys a TLS 1.3 side counts as finished at its first handshake-type
    # record under protection; the client's second one comes after both Finished.
    record = bytes.fromhex("1603030020") + bytes(32)
    flights = [*CONV13[:3], ("server", record), ("client", record), ("client", record),
               *CONV13[3:]]
    conn = planned("  - match: {index: 99}\n    action: drop\n")
    _, events, _ = run(flights, conn=conn)
    *_, ev = [e for e in records(events, "client") if e["content_type"] == "handshake"
              and e["length"] == 32]
    assert ev["note"] == "post-handshake message"
    assert not any(a.kind == "encrypted_renegotiation" for a in conn.history.anomalies)
    assert "renegotiation" not in [d["code"] for d in events[-1]["diagnosis"]]


def test_record_versions_after_the_handshake_are_judged_as_before() -> None:
    """On the fast path after the handshake too: 0x0300 (SSL 3.0) to 0x0304 are TLS
    family versions, 0x02ff and 0x0305 are anomalies (RFC 8446 5.1, RFC 5246 E.1); a TLS
    version other than the connection's own (0x0303 here) is a mismatch (RFC 5246 6.2.1)."""
    def anomalies(version: int) -> list[str]:
        request = bytearray(CONV12[4][1])
        assert request[0] == 23
        request[1:3] = version.to_bytes(2, "big")
        conn = Connection("1", "127.0.0.1:1", "127.0.0.1:2")
        run([*CONV12[:4], ("client", bytes(request)), *CONV12[5:]], conn=conn)
        return [a.kind for a in conn.history.anomalies if a.side == "client"]

    assert anomalies(0x0303) == []
    assert anomalies(0x0300) == anomalies(0x0304) == ["record_version_mismatch"]
    assert anomalies(0x02FF) == ["record_version"] and anomalies(0x0305) == ["record_version"]


def test_a_client_ccs_before_the_server_hello_is_not_an_early_ccs() -> None:
    """RFC 8446 D.4: a client in middlebox compatibility mode may send its dummy
    ChangeCipherSpec right after its ClientHello; only a server's CCS before its
    ServerHello is early (the CCS-injection pattern, CVE-2014-0224)."""
    hello = CONV13[0][1]
    conn = Connection("1", "127.0.0.1:1", "127.0.0.1:2")
    run([("client", hello + bytes.fromhex("140303000101"))], conn=conn)
    assert [a.kind for a in conn.history.anomalies] == []
    conn = Connection("1", "127.0.0.1:1", "127.0.0.1:2")
    run([("client", hello), ("server", bytes.fromhex("140303000101"))], conn=conn)
    assert [a.kind for a in conn.history.anomalies] == ["early_ccs"]


@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("cut", [None, 1, 7])
def test_unknown_content_type_record_is_logged_and_the_hello_after_it_decoded(
        version: str, cut: int | None) -> None:
    # tests/record_probes.py "unknown content type 0x2a first": the engine logged the
    # whole client stream as non_tls and decoded nothing after it.
    conv = CONV13 if version == "1.3" else CONV12
    odd = bytes.fromhex("2a 0303 0001 00")
    flights = [(conv[0][0], odd + conv[0][1]), *conv[1:]]
    got, events, _ = run(flights, [cut] * 5000 if cut else None)
    assert got["server"] == sent(flights, "client")
    assert got["client"] == sent(flights, "server")
    assert not [e for e in events if e["event"] in ("non_tls", "internal_error", "error")]
    first, hello = records(events, "client")[:2]
    assert (first["content_type"], first["length"], first["index"]) == (
        names.content_type_name(0x2A), 1, 1)
    assert hello["messages"][0]["type"] == "client_hello"
    assert records(events, "server")[0]["messages"][0]["type"] == "server_hello"


@pytest.mark.parametrize("payload", [b"", b"\x02", b"\x02\x28\x00"])
def test_an_alert_record_not_of_two_bytes_is_encrypted_as_tshark_reads_it(
        payload: bytes) -> None:
    # A plaintext alert is exactly level + description (RFC 5246 7.2, RFC 8446 6);
    # any other length is a protected one. tshark agrees: `15 0303 0001 02` dissects
    # as "Encrypted Alert" (checked with text2pcap + tshark -O tls).
    hello = RecordFramer().feed(CONV12[0][1])[0]
    alert = Record(21, 0x0303, payload).raw
    _, events, _ = run([("client", hello.raw), ("server", alert)])
    [rec] = records(events, "server")
    assert rec["content_type"] == "alert" and rec["length"] == len(payload)
    assert rec["encrypted"] is True and rec["alert"] == "encrypted"
    plain = Record(21, 0x0303, b"\x02\x28").raw
    _, events, _ = run([("client", hello.raw), ("server", plain)])
    [rec] = records(events, "server")
    assert rec["encrypted"] is False and rec["alert"]["description"] == "handshake_failure"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 45])
def test_a_hello_announcing_sixteen_megabytes_is_noted_whatever_its_records(
        size: int) -> None:
    # In one record it was noted; in 1-byte records its 4-byte header completes in the
    # fourth, and it was never noted (no hello-too-long for a fuzzer's fragmented probe).
    from tests.test_diagnosis_real import LONG_HELLO_BODY

    records = b"".join(Record(22, 0x0301, LONG_HELLO_BODY[i:i + size]).raw
                       for i in range(0, len(LONG_HELLO_BODY), size))
    conn = Connection("1", "127.0.0.1:1", "127.0.0.1:2")
    run([("client", records)], conn=conn)
    assert [(a.kind, a.index, a.value) for a in conn.history.anomalies
            if a.kind == "hello_length"] == [("hello_length", 1, 0xFFFFFF)]


def test_what_the_fault_plan_returns_is_frozen_and_slotted() -> None:
    # STYLE.md 4: a fault returns new objects and never mutates what was logged; the
    # engine's verdict types are frozen (and slotted: one per record, no __dict__).
    import dataclasses

    from tlsinspector.proxy.engine import Outcome, PlainOutcome, RecordView, TimerOutcome

    for cls in (RecordView, Outcome, TimerOutcome, PlainOutcome):
        params = cls.__dataclass_params__  # type: ignore[attr-defined]
        assert params.frozen, cls
        assert "__slots__" in vars(cls) and "__dict__" not in vars(cls), cls
    with pytest.raises(dataclasses.FrozenInstanceError):
        TimerOutcome().close = None  # type: ignore[misc]


def test_settled_only_once_nothing_waits_for_a_timer() -> None:
    """Issue 19: the proxy relays a settled connection on its lean path, which runs no
    timers; so a connection is settled only when no delayed bytes wait (they would
    never leave), and becomes settled once they have gone and no fault is left."""
    plain = Connection("1", "c:1", "s:2")
    plain.start(0.0)
    for side, data in CONV13[:-2]:
        plain.receive(side, data, 1.0)  # type: ignore[arg-type]
    assert plain.settled
    c = planned("  - match: {from: server, index: 5, times: 1}\n    action: delay\n"
                "    ms: 100\n")
    c.start(0.0)
    for side, data in CONV13[:-2]:
        c.receive(side, data, 1.0)  # type: ignore[arg-type]
        assert not c.settled
    assert c.pending_timers
    c.wakeup(1.1)
    assert not c.pending_timers and c.settled


def _refused_client_certificate(tmp_path: Path) -> list[tuple[str, bytes]]:
    """A real TLS 1.2 exchange (Python's ssl over memory BIOs): a server that requires a
    client certificate, sending its leaf and CA, a CertificateRequest; a client without
    one, whose empty Certificate the server refuses with an alert."""
    certs = make_certs(tmp_path)
    chain = tmp_path / "chain.pem"
    chain.write_bytes(certs.server_cert.read_bytes() + certs.ca_cert.read_bytes())
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(chain, certs.server_key)
    sctx.verify_mode = ssl.CERT_REQUIRED
    sctx.load_verify_locations(certs.ca_cert)
    cctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    for ctx in (sctx, cctx):
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    bios = {name: (ssl.MemoryBIO(), ssl.MemoryBIO()) for name in ("client", "server")}
    ends = {"client": cctx.wrap_bio(*bios["client"], server_hostname="localhost"),
            "server": sctx.wrap_bio(*bios["server"], server_side=True)}
    flights: list[tuple[str, bytes]] = []
    for _ in range(20):
        for name, end in ends.items():
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                pass  # the refusal: its alert is in the BIO
            data = bios[name][1].read()
            if data:
                flights.append((name, data))
                bios["server" if name == "client" else "client"][0].write(data)
    return flights


def _certificate_ders(data: bytes) -> list[bytes]:
    """The certificates of the Certificate message in a plaintext TLS 1.2 flight, read
    here byte by byte (RFC 5246 7.4.2), independently of the codec under test."""
    hs = b"".join(r.payload for r in RecordFramer().feed(data)
                  if isinstance(r, Record) and r.content_type == 22)
    pos = 0
    while pos < len(hs):
        kind, n = hs[pos], int.from_bytes(hs[pos + 1 : pos + 4], "big")
        body = hs[pos + 4 : pos + 4 + n]
        pos += 4 + n
        if kind == 11:
            out, at = [], 3
            while at < len(body):
                m = int.from_bytes(body[at : at + 3], "big")
                out.append(body[at + 3 : at + 3 + m])
                at += 3 + m
            return out
    return []


def test_tls12_messages_in_the_clear_are_logged_decoded(tmp_path: Path) -> None:
    flights = _refused_client_certificate(tmp_path)
    _, events, _ = run(flights)
    msgs = {(r["from"], m["type"]): m for r in events if r["event"] == "record"
            for m in r.get("messages", [])}
    cert = msgs[("server", "certificate")]
    ders = _certificate_ders(next(d for s, d in flights if s == "server"))
    assert len(ders) == 2 and cert["chain_length"] == 2
    for logged, der in zip(cert["chain"], ders, strict=True):
        x = x509.load_der_x509_certificate(der)
        assert logged["subject"] == x.subject.rfc4514_string()
        assert logged["not_after"] == x.not_valid_after_utc.isoformat()
        assert logged["serial"] == format(x.serial_number, "x")
    assert cert["summary"].startswith("certificate chain=2 [CN=localhost")
    request = msgs[("server", "certificate_request")]
    # OpenSSL offers RSA and ECDSA client keys, and names no CA unless told (RFC 5246 7.4.4)
    assert {1, 64} <= set(request["certificate_types"]) and request["certificate_authorities"] == 0
    assert "ecdsa_secp256r1_sha256" in request["signature_algorithms"]
    assert msgs[("client", "certificate")]["chain_length"] == 0  # the client had none
    lines = [render.line(e) for e in events if e["event"] == "record"]
    assert any("| certificate chain=2 [CN=localhost" in x for x in lines)
    assert any("certificate_request types=" in x for x in lines)
    assert any("certificate chain=0 (empty)" in x for x in lines)
    # A completed TLS 1.2 handshake's ticket (RFC 5077 3.3), before the server's CCS.
    _, events, _ = run(CONV12)
    nst = next(m for r in events if r["event"] == "record" and r["from"] == "server"
               for m in r.get("messages", []) if m["type"] == "new_session_ticket")
    assert nst["lifetime_hint"] > 0 and nst["ticket_length"] > 0
    assert nst["summary"] == (f"new_session_ticket lifetime_hint={nst['lifetime_hint']} "
                              f"ticket={nst['ticket_length']}")
