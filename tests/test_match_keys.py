"""Match keys over hello content, sizes and bytes, and the timer keys (proxy/match_keys.py).

Real ClientHellos and ServerHellos from in-memory Python ssl conversations go
through the engine with a fault plan; a planted mistake in any key's test
(a wrong field read, a comparison off by one) changes which record is closed.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest

from tests.conversation import conversation
from tests.test_faults import client_hello, fault_events, run
from tlsinspector.proxy import match_keys as mk
from tlsinspector.proxy.engine import Close, Connection, Emit, Output, RecordView, Send, Wakeup
from tlsinspector.proxy.faults import FaultPlanner
from tlsinspector.proxy.hello import Extension
from tlsinspector.proxy.records import Record
from tlsinspector.proxy.scenario import (
    MATCH_KEY_SPECS,
    ScenarioError,
    catalog,
    explain,
    load_scenario_text,
)
from tlsinspector.proxy.scenario_explain import describe_match

CONV13 = conversation("1.3")
CONV12 = conversation("1.2")
HELLO = client_hello(CONV13[0][1])
HELLO_LEN = len(CONV13[0][1]) - 5  # one record: the header's length field
CH = "{from: client, handshake: client_hello,"


def closed_by(match: str, conv: list[tuple[str, bytes]] = CONV13) -> list[dict[str, Any]]:
    """The fault events of a close fault with this match over the conversation."""
    outs, _ = run(conv, f"  - match: {match}\n    action: close\n    how: rst\n")
    return fault_events(outs)


@pytest.mark.parametrize(("match", "hits"), [
    (f"{CH} size: {HELLO_LEN}}}", True),
    (f"{CH} size: {HELLO_LEN + 1}}}", False),
    (f"{CH} size: '>{HELLO_LEN - 1}'}}", True),
    (f"{CH} size: '>{HELLO_LEN}'}}", False),
    (f"{CH} size: '>={HELLO_LEN}'}}", True),
    (f"{CH} size: '<{HELLO_LEN}'}}", False),
    (f"{CH} size: '<={HELLO_LEN}'}}", True),
    (f"{CH} size: '{HELLO_LEN - 2}..{HELLO_LEN}'}}", True),
    (f"{{from: client, hello_size: {HELLO_LEN - 4}}}", True),   # minus the 4-byte header
    ("{from: client, hello_size: '>1500'}", False),
    ("{from: client, has_extension: supported_versions}", True),
    ("{from: client, has_extension: [server_name, key_share]}", True),
    ("{from: client, has_extension: [server_name, encrypted_client_hello]}", False),
    ("{from: client, has_extension: 0xfe0d}", False),
    ("{from: client, has_extension: grease}", False),      # OpenSSL sends no GREASE
    ("{from: client, lacks_extension: grease}", True),
    ("{from: client, lacks_extension: [0xfe0d, padding]}", True),
    ("{from: client, lacks_extension: server_name}", False),
    ("{from: client, offers_suite: TLS_AES_128_GCM_SHA256}", True),
    ("{from: client, offers_suite: TLS_RSA_WITH_RC4_128_MD5}", False),
    ("{from: client, offers_group: x25519}", True),
    ("{from: client, offers_group: X25519MLKEM768}", False),
    ("{from: client, offers_version: TLSv1.3}", True),
    ("{from: client, offers_version: [TLSv1.3, TLSv1.2]}", False),  # 1.3 only here
    ("{from: client, alpn: h2}", False),
    ("{from: client, sni: 'local*'}", True),
    ("{from: client, sni: 'example.*'}", False),
    ("{from: server, handshake: server_hello, offers_version: 0x0304}", True),
    ("{from: server, negotiated: TLSv1.3}", True),
    ("{from: server, negotiated: TLSv1.2}", False),
    ("{from: server, negotiated: {suite: TLS_AES_256_GCM_SHA384}}", True),
    ("{from: server, negotiated: {version: TLSv1.3, suite: TLS_CHACHA20_POLY1305_SHA256}}",
     False),
])
def test_each_content_key_on_a_real_tls13_handshake(match: str, hits: bool) -> None:
    assert bool(closed_by(match)) is hits, match


def test_negotiated_is_unknown_before_the_server_hello_and_right_for_tls12() -> None:
    # The client's first record comes before any ServerHello: never matched.
    assert not closed_by("{from: client, index: 1, negotiated: TLSv1.2}", CONV12)
    [ev] = closed_by("{from: client, index: 2, negotiated: TLSv1.2}", CONV12)
    assert ev["from"] == "client" and ev["index"] == 2


def test_server_hello_alpn_and_grease_in_a_built_hello() -> None:
    # A hello with a GREASE extension and ALPN, as Chrome sends (RFC 8701, RFC 7301).
    alpn = bytes.fromhex("000c") + b"\x02h2" + b"\x08http/1.1"
    hello = replace(HELLO, extensions=(Extension(0x1A1A, b""), *(HELLO.extensions or ()),
                                       Extension(16, alpn)))
    view = RecordView("client", 1, Record(22, 0x0301, b"x" * 10), False, (1,), 1, None,
                      hello=hello)
    specs = MATCH_KEY_SPECS
    assert specs["has_extension"].test((mk.GREASE,), view)  # type: ignore[misc]
    assert not specs["lacks_extension"].test((mk.GREASE,), view)  # type: ignore[misc]
    assert specs["alpn"].test(("h2", "http/1.1"), view)  # type: ignore[misc]
    assert not specs["alpn"].test(("h3",), view)  # type: ignore[misc]
    assert mk.alpn_protocols(hello) == ("h2", "http/1.1")


def test_a_hello_key_holds_a_split_hello_and_matches_it_whole() -> None:
    # The ClientHello in 100-byte records: the size of the held hello is its sum.
    hello = CONV13[0][1]
    payload = hello[5:]
    pieces = b"".join(Record(22, 0x0301, payload[i:i + 100]).raw
                      for i in range(0, len(payload), 100))
    outs, _ = run([("client", pieces)],
                  f"  - match: {{from: client, hello_size: {len(payload) - 4}}}\n"
                  "    action: drop\n")
    [ev] = fault_events(outs)
    assert ev["index"] == len(range(0, len(payload), 100))  # the record completing it
    assert not [o for o in outs if isinstance(o, Send) and o.to == "server"]  # nothing leaked


def test_after_bytes_counts_both_ways() -> None:
    total = 0
    for side, data in CONV13:
        total += len(data)
        if side == "server":
            break
    outs, _ = run(CONV13, f"  - match: {{after_bytes: {total}, times: 1}}\n    action: close\n")
    [ev] = fault_events(outs)
    assert ev["from"] == "server"   # the server's flight is the first to reach the total
    outs, _ = run(CONV13, f"  - match: {{after_bytes: {total * 100}}}\n    action: close\n")
    assert not fault_events(outs)


# -- timers -------------------------------------------------------------------------


def timer_conn(faults: str) -> Connection:
    s = load_scenario_text(f"name: t\nfaults:\n{faults}", "t.yaml")
    return Connection("1", "c:1", "s:2", faults=FaultPlanner([s], 1, random.Random(1)))


def wakeups(outs: list[Output]) -> list[float]:
    return [o.at for o in outs if isinstance(o, Wakeup)]


def test_idle_ms_resets_on_every_byte_then_rsts_both_sides() -> None:
    c = timer_conn("  - match: {idle_ms: 2000}\n    action: close\n    how: rst\n")
    assert wakeups(c.start(100.0)) == [102.0]
    c.receive("client", CONV13[0][1], 101.0)
    # The timer fires at 102 but the connection was busy at 101: asked again for 103.
    outs = c.wakeup(102.0)
    assert wakeups(outs) == [103.0] and not [o for o in outs if isinstance(o, Close)]
    outs = c.wakeup(103.0)
    assert sorted((o.to, o.how) for o in outs if isinstance(o, Close)) == [
        ("client", "rst"), ("server", "rst")]
    [ev] = [o.event for o in outs if isinstance(o, Emit) and o.event["event"] == "timer"]
    assert ev["fault"][0]["action"] == "close"
    assert ev["fault"][0]["detail"]["idle_ms"] == 2000
    assert c.history.faults[-1].facts["closed"] == ("rst", "both")
    assert not wakeups(c.wakeup(110.0))  # fired once: nothing more asked


def test_after_ms_sends_an_alert_as_the_server_then_closes() -> None:
    c = timer_conn("  - match: {after_ms: 500, from: server}\n    action: replace-with-alert\n"
                   "    description: internal_error\n")
    assert wakeups(c.start(10.0)) == [10.5]
    c.receive("client", CONV13[0][1], 10.1)   # activity does not move after_ms
    outs = c.wakeup(10.5)
    assert b"".join(o.data for o in outs if isinstance(o, Send) and o.to == "client") == \
        bytes.fromhex("15030300020250")
    assert not [o for o in outs if isinstance(o, Send) and o.to == "server"]
    assert {(o.to, o.how) for o in outs if isinstance(o, Close)} == {("client", "fin"),
                                                                    ("server", "fin")}


def test_a_timer_alert_into_an_encrypted_stream_is_an_injected_plaintext_alert() -> None:
    """insert-alert on a timer after a TLS 1.3 handshake: a plaintext alert where the
    server's records are encrypted. OpenSSL refuses it ('bad record type'); it was
    diagnosed as the server's own internal_error alert. Before the ServerHello the
    same alert is a plaintext one the client may believe: no such finding."""
    from tlsinspector.proxy.diagnosis import diagnose

    fault = ("  - match: {after_ms: 500, from: server}\n    action: insert-alert\n"
             "    description: internal_error\n")
    c = timer_conn(fault)
    c.start(10.0)
    for side, data in CONV13[:3]:
        c.receive(side, data, 10.1)  # type: ignore[arg-type]
    c.wakeup(10.5)
    codes = [f.code for f in diagnose(c.history)]
    assert "injected-plaintext-alert" in codes, codes
    early = timer_conn(fault)
    early.start(10.0)
    early.receive("client", CONV13[0][1], 10.1)
    early.wakeup(10.5)
    assert "injected-plaintext-alert" not in [f.code for f in diagnose(early.history)]


def test_close_delivers_the_matched_record_and_a_drop_before_it_keeps_it() -> None:
    """`check` says close ends the connection after the matched record, which is
    delivered; the README's middlebox that resets large ClientHellos puts a drop on
    the same match first: nothing reaches the server, both sides get the RST."""
    close = ("  - match: {from: client, handshake: client_hello}\n    action: close\n"
             "    how: rst\n")
    for faults, delivered in ((close, CONV13[0][1]),
                              ("  - match: {from: client, handshake: client_hello}\n"
                               "    action: drop\n" + close, b"")):
        c = timer_conn(faults)
        c.start(0.0)
        outs = c.receive("client", CONV13[0][1], 0.1)
        assert b"".join(o.data for o in outs if isinstance(o, Send) and o.to == "server") \
            == delivered
        assert {(o.to, o.how) for o in outs if isinstance(o, Close)} == {
            ("client", "rst"), ("server", "rst")}


def test_a_timer_fault_that_fails_is_logged_and_the_bytes_still_flow(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """DESIGN.md: one error boundary per connection, timers included: a bug in a timer
    fault is an internal_error event, never an exception into the proxy's loop, and
    the connection goes on relaying."""
    c = timer_conn("  - match: {after_ms: 500}\n    action: close\n")
    c.start(0.0)

    def broken(*args: Any) -> None:
        raise RuntimeError("planted failure in a timer")
    monkeypatch.setattr(c.faults, "on_timer", broken)
    outs = c.wakeup(0.5)
    [err] = [o.event for o in outs if isinstance(o, Emit)]
    assert err["event"] == "internal_error" and "planted failure in a timer" in err["error"]
    outs = c.receive("client", CONV13[0][1], 0.6)
    assert b"".join(o.data for o in outs if isinstance(o, Send)) == CONV13[0][1]


def test_no_timer_fault_fires_after_the_connection_closed() -> None:
    # The close event is the connection's last word: a wakeup that comes after it
    # (a timer already armed in the proxy's loop) sends, closes and logs nothing.
    c = timer_conn("  - match: {after_ms: 500}\n    action: close\n")
    assert wakeups(c.start(0.0)) == [0.5]
    c.finish(0.2)
    assert c.wakeup(0.5) == []


def test_an_early_wakeup_fires_nothing() -> None:
    c = timer_conn("  - match: {after_ms: 500}\n    action: close\n")
    c.start(0.0)
    outs = c.wakeup(0.2)   # another timer (a delay, a turn) woke the connection
    assert not [o for o in outs if isinstance(o, Close)]
    assert not wakeups(outs)  # the timer's wakeup is still armed: none asked again


@pytest.mark.parametrize(("text", "field", "fragment"), [
    ("{idle_ms: 100, index: 2}", "faults[1].match.index", "fires on a timer"),
    ("{idle_ms: 100, has_extension: padding}", "faults[1].match.has_extension",
     "fires on a timer"),
    ("{idle_ms: 100, after_ms: 100}", "faults[1].match.after_ms", "one timer key"),
    ("{size: '>>1500'}", "faults[1].match.size", "expected a size"),
    ("{size: '10..5'}", "faults[1].match.size", "empty range"),
    ("{size: '<0'}", "faults[1].match.size", "never matches"),
    ("{has_extension: [server_nam]}", "faults[1].match.has_extension[1]", "server_name"),
    ("{offers_group: X25519MLKEM769}", "faults[1].match.offers_group", "X25519MLKEM768"),
    ("{negotiated: {cipher: x}}", "faults[1].match.negotiated.cipher", "suite"),
    ("{alpn: []}", "faults[1].match.alpn", "empty"),
    ("{idle_ms: 0}", "faults[1].match.idle_ms", "out of range"),
])
def test_bad_values_are_located_with_the_allowed_ones(text: str, field: str,
                                                      fragment: str) -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario_text(f"name: t\nfaults:\n  - match: {text}\n    action: close\n", "t.yaml")
    e = info.value
    assert (e.file, e.line, e.field) == ("t.yaml", 3, field), str(e)
    assert fragment in str(e)


def test_a_timer_fault_needs_an_action_that_works_without_a_record() -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario_text("name: t\nfaults:\n  - match: {idle_ms: 100}\n    action: drop\n")
    assert info.value.field == "faults[1].action"
    assert info.value.allowed == ("close", "insert-alert", "replace-with-alert")


def test_empty_faults_is_a_baseline() -> None:
    s = load_scenario_text("name: baseline\nfaults: []\n")
    assert s.faults == ()
    assert explain(s)[0].startswith("scenario baseline")


def test_check_list_and_explain_read_the_registry() -> None:
    text = "\n".join(catalog())
    for key, spec in MATCH_KEY_SPECS.items():
        assert f"\n  {key:15} [{spec.kind}] {spec.doc}" in text
    s = load_scenario_text("name: t\nfaults:\n  - match: {from: client, size: '>1500', "
                           "has_extension: [grease, 0xfe0d]}\n    action: close\n")
    words = describe_match(s.faults[0].match)
    assert "of size >= 1501" in words
    assert "a GREASE value and encrypted_client_hello (0xfe0d)" in words


# -- coalesce -----------------------------------------------------------------------


def test_coalesce_merges_the_server_flight_into_one_record() -> None:
    from tests.test_faults import received, records_of, sent
    flights = CONV12  # TLS 1.2: the server's flight is plaintext handshake records
    outs, _ = run(flights, "  - match: {from: server, index: 1}\n    action: coalesce\n"
                  "    records: 3\n")
    before = records_of(sent(flights, "server"))
    after = records_of(received(outs, "client"))
    assert len(after) == len(before) - 2
    assert after[0].payload == b"".join(r.payload for r in before[:3])
    assert [r.raw for r in after[1:]] == [r.raw for r in before[3:]]


def test_coalesce_into_one_write_changes_no_byte_and_flushes_at_its_deadline() -> None:
    s = load_scenario_text("name: t\nfaults:\n  - match: {from: client, index: 1}\n"
                           "    action: coalesce\n    records: 5\n    into: write\n"
                           "    wait_ms: 300\n")
    c = Connection("1", "c:1", "s:2", faults=FaultPlanner([s], 1, random.Random(1)))
    hello = CONV13[0][1]
    outs = c.receive("client", hello, 1.0)
    assert not [o for o in outs if isinstance(o, Send)] and 1.3 in wakeups(outs)
    assert c.pending_timers
    # Only one record came: it goes out unchanged at the deadline, even when the timer
    # fires a little early (event loops round timers: up to 1 ms is taken as due).
    assert not [o for o in c.wakeup(1.29) if isinstance(o, Send)]
    outs = c.wakeup(max(wakeups(outs)) - 0.001)
    assert [o.data for o in outs if isinstance(o, Send)] == [hello]


def test_check_warns_that_tls13_encrypts_the_certificate() -> None:
    s = load_scenario_text("name: t\nfaults:\n  - match: {handshake: certificate}\n"
                           "    action: drop\n")
    assert any("TLS 1.3 encrypts certificate" in line for line in explain(s))
    s = load_scenario_text("name: t\nfaults:\n  - match: {handshake: server_hello}\n"
                           "    action: drop\n")
    assert not any("TLS 1.3 encrypts" in line for line in explain(s))


def test_a_timer_that_never_fired_is_reported_as_such() -> None:
    c = timer_conn("  - match: {idle_ms: 5000}\n    action: close\n")
    c.start(0.0)
    c.receive("client", CONV13[0][1], 1.0)
    [close] = [o.event for o in c.finish(2.0) if isinstance(o, Emit)]
    [finding] = [d for d in close["diagnosis"] if d["code"] == "fault-not-applied"]
    assert "its timer (idle_ms 5000) never fired" in str(finding)


def test_a_pending_timer_keeps_the_connection_off_the_hot_path() -> None:
    # Issue 19's hot path asks for no wakeups: a connection with an idle timer left
    # must never be settled, or the timer would never fire.
    c = timer_conn("  - match: {idle_ms: 2000}\n    action: close\n")
    c.start(0.0)
    now = 0.1
    for side, data in CONV13:
        c.receive(side, data, now)  # type: ignore[arg-type]
        now += 0.01
    assert not c.settled


def test_a_timer_fault_that_lost_its_draw_hides_no_later_timer_fault() -> None:
    # README: probability is drawn from the seeded generator (random.Random(1) draws
    # 0.134 first: a probability of 0.1 loses). A timer fault draws once per deadline;
    # one that lost must not stay "due" and keep every later timer fault from firing
    # (make mutation found it: the engine asked for no wakeup after the lost draw, so
    # the after_ms 500 close never came).
    c = timer_conn("  - match: {after_ms: 100, probability: 0.1}\n    action: close\n"
                   "    how: rst\n"
                   "  - match: {after_ms: 500}\n    action: close\n")
    assert wakeups(c.start(100.0)) == [100.1]
    outs = c.wakeup(100.1)
    assert wakeups(outs) == [100.5] and not [o for o in outs if isinstance(o, Close)]
    outs = c.wakeup(100.5)
    assert {(o.to, o.how) for o in outs if isinstance(o, Close)} == {("client", "fin"),
                                                                    ("server", "fin")}
    [ev] = [o.event for o in outs if isinstance(o, Emit) and o.event["event"] == "timer"]
    assert ev["fault"][0]["detail"]["after_ms"] == 500


def test_a_timer_fault_for_one_sni_fires_only_on_its_connections() -> None:
    """README: `sni` is a glob on the ClientHello's server_name, and a connection
    without SNI never matches. With only timer faults no record fault asks for the
    client's records, and the planner never learned the SNI: an idle_ms fault for
    other.example closed every connection (make mutation found it: its SNI test
    could be inverted unnoticed)."""
    from tests.test_hello import WOLFSSL_REPORT_003  # a ClientHello without SNI

    def closed(sni: str, hello: bytes) -> bool:
        c = timer_conn(f"  - match: {{idle_ms: 1000, sni: '{sni}'}}\n    action: close\n")
        c.start(0.0)
        c.receive("client", hello, 0.5)
        return any(isinstance(o, Close) for o in c.wakeup(1.5))

    assert closed("localhost", CONV13[0][1]) and closed("local*", CONV13[0][1])
    assert not closed("other.example", CONV13[0][1])
    assert not closed("*", WOLFSSL_REPORT_003)
    # A timer fault without sni beside it still fires on the connection without SNI.
    c = timer_conn("  - match: {idle_ms: 1000, sni: localhost}\n    action: close\n"
                   "    how: rst\n  - match: {after_ms: 2000}\n    action: close\n")
    c.start(0.0)
    c.receive("client", WOLFSSL_REPORT_003, 0.5)
    assert not [o for o in c.wakeup(1.5) if isinstance(o, Close)]
    assert {(o.to, o.how) for o in c.wakeup(2.0) if isinstance(o, Close)} == {
        ("client", "fin"), ("server", "fin")}


def test_a_timer_fault_for_another_sni_lets_the_connection_settle() -> None:
    # Issue 19's hot path: once the ClientHello named another SNI and the armed
    # wakeup passed, no fault can apply: the client's records need not come to the
    # planner any more and the connection settles.
    c = timer_conn("  - match: {idle_ms: 1000, sni: other.example}\n    action: close\n")
    assert wakeups(c.start(0.0)) == [1.0]
    now = 0.1
    for side, data in CONV13:
        c.receive(side, data, now)  # type: ignore[arg-type]
        now += 0.01
    assert not c.fault_may_apply()
    assert not wakeups(c.wakeup(1.0)) and c.settled


def test_timer_faults_due_together_fire_past_one_that_lost_its_draw() -> None:
    # random.Random(1) draws 0.134 first: the first fault (0.1) loses, the second,
    # due at the same moment, still fires in that wakeup.
    c = timer_conn("  - match: {after_ms: 500, probability: 0.1}\n    action: close\n"
                   "    how: rst\n  - match: {after_ms: 500}\n    action: close\n")
    assert wakeups(c.start(0.0)) == [0.5]
    assert {(o.to, o.how) for o in c.wakeup(0.5) if isinstance(o, Close)} == {
        ("client", "fin"), ("server", "fin")}


def test_an_idle_timer_with_times_2_fires_on_two_silences() -> None:
    # The proxy's own alert counts as activity (engine._timers), so the second
    # silence starts when the first alert went out; after two, nothing more.
    c = timer_conn("  - match: {idle_ms: 1000, times: 2, from: server}\n"
                   "    action: insert-alert\n    level: warning\n"
                   "    description: user_canceled\n")
    warning = bytes.fromhex("1503030002015a")
    assert wakeups(c.start(10.0)) == [11.0]
    outs = c.wakeup(11.0)
    assert b"".join(o.data for o in outs if isinstance(o, Send)) == warning
    assert wakeups(outs) == [12.0]
    outs = c.wakeup(12.0)
    assert b"".join(o.data for o in outs if isinstance(o, Send)) == warning
    assert not wakeups(outs)
    assert not [o for o in c.wakeup(13.0) if isinstance(o, Send)]


def test_an_after_ms_deadline_fires_once_whatever_times_says() -> None:
    # after_ms counts from the connection's start, so its deadline never moves: once
    # it came it is spent, and a later wakeup (another timer fault's) fires it again
    # neither on the wire nor in the plan.
    c = timer_conn("  - match: {after_ms: 500, times: 3, from: server}\n"
                   "    action: insert-alert\n    level: warning\n"
                   "    description: user_canceled\n"
                   "  - match: {after_ms: 900}\n    action: close\n")
    assert wakeups(c.start(10.0)) == [10.5]
    outs = c.wakeup(10.5)
    assert [o.to for o in outs if isinstance(o, Send)] == ["client"]
    assert wakeups(outs) == [10.9]
    outs = c.wakeup(10.9)
    assert not [o for o in outs if isinstance(o, Send)]
    assert {o.to for o in outs if isinstance(o, Close)} == {"client", "server"}
    [ev] = [o.event for o in outs if isinstance(o, Emit) and o.event["event"] == "timer"]
    assert [f["action"] for f in ev["fault"]] == ["close"]
    assert c.faults is not None and c.faults.next_timer(10.0, 10.9) is None


def test_a_timer_fault_that_lost_its_draw_never_fires_and_says_why() -> None:
    # One draw per timer fault: lost, it does not fire on this connection (idle_ms
    # too, whatever passes later), and the close event's fault-not-applied finding
    # says so, not "the connection ended first".
    c = timer_conn("  - match: {idle_ms: 1000, probability: 0.1}\n    action: close\n")
    assert wakeups(c.start(10.0)) == [11.0]
    outs = c.wakeup(11.0)  # lost (0.134)
    assert not wakeups(outs) and not [o for o in outs if isinstance(o, Close)]
    outs = c.receive("client", CONV13[0][1], 12.0) + c.wakeup(13.0)
    assert not [o for o in outs if isinstance(o, Close)]
    assert c.faults is not None and c.faults.next_timer(10.0, 12.0) is None
    [close] = [o.event for o in c.finish(14.0) if isinstance(o, Emit)
               and o.event["event"] == "close"]
    [finding] = [f for f in close["diagnosis"] if f["code"] == "fault-not-applied"]
    assert finding["evidence"][0].endswith(
        ": its timer came, the probability draw (0.1) did not fire it"), finding
