"""Every action of the catalog, shown on the wire: what the receiving side gets, byte for byte.

The sender's bytes come from real in-memory TLS conversations (Python ssl);
the engine with a fault plan sits between them.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.conversation import conversation
from tlsinspector.proxy.engine import Close, Connection, Emit, Output, RecordView, Send, Wakeup
from tlsinspector.proxy.faults import FaultPlanner
from tlsinspector.proxy.handshake import HandshakeReassembler
from tlsinspector.proxy.hello import ServerHello, parse_client_hello
from tlsinspector.proxy.records import Record, RecordFramer
from tlsinspector.proxy.scenario import ScenarioError, load_scenario_text

CONV13 = conversation("1.3")
CONV12 = conversation("1.2")
RESUMED13 = conversation("1.3", resume=True)  # its ClientHello ends with pre_shared_key


def plan(faults_yaml: str, seed: int = 1, number: int = 1) -> FaultPlanner:
    s = load_scenario_text(f"name: t\nfaults:\n{faults_yaml}", "t.yaml")
    return FaultPlanner([s], number, random.Random(seed))


def run(flights: list[tuple[str, bytes]], faults_yaml: str, now: float = 1.0,
        **kw: Any) -> tuple[list[Output], Connection]:
    c = Connection("1", "c:1", "s:2", faults=plan(faults_yaml, **kw))
    outs: list[Output] = []
    for side, data in flights:
        outs += c.receive(side, data, now)  # type: ignore[arg-type]
    return outs, c


def received(outs: list[Output], side: str) -> bytes:
    return b"".join(o.data for o in outs if isinstance(o, Send) and o.to == side)


def records_of(data: bytes) -> list[Record]:
    return [r for r in RecordFramer().feed(data) if isinstance(r, Record)]


def sent(flights: list[tuple[str, bytes]], side: str) -> bytes:
    return b"".join(d for s, d in flights if s == side)


def fault_events(outs: list[Output]) -> list[dict[str, Any]]:
    return [o.event for o in outs if isinstance(o, Emit) and "fault" in o.event]


def client_hello(data: bytes) -> Any:
    hs = HandshakeReassembler()
    for r in records_of(data):
        for m in hs.feed(r.payload, 1):
            return parse_client_hello(m.body)
    raise AssertionError("no ClientHello")


def test_no_matching_fault_is_byte_exact() -> None:
    outs, _ = run(CONV13, "  - match: {from: server, index: 99}\n    action: drop\n")
    assert received(outs, "client") == sent(CONV13, "server")
    assert received(outs, "server") == sent(CONV13, "client")


def test_set_record_version() -> None:
    outs, _ = run(CONV12, "  - match: {from: server, index: 2}\n"
                          "    action: set-record-version\n    version: 0x3030\n")
    orig, got = records_of(sent(CONV12, "server")), records_of(received(outs, "client"))
    assert got[1].version == 0x3030 and got[1].payload == orig[1].payload
    assert [r.raw for i, r in enumerate(got) if i != 1] == [
        r.raw for i, r in enumerate(orig) if i != 1]
    [ev] = fault_events(outs)
    assert ev["fault"][0]["detail"] == {"before": "0x0303", "after": "0x3030"}
    assert ev["fault"][0]["scenario"] == "t" and ev["fault"][0]["action"] == "set-record-version"


def check_hello_lengths(data: bytes, msg_type: int = 1) -> bytes:
    """Walk the first record of ``data`` by hand (an oracle independent of proxy/):
    the record length, the handshake length and the extensions block length must
    each be exactly what follows them (RFC 8446 4.1.2, 4.2; RFC 5246 6.2.1, 7.4).
    Returns the bytes after the record, which must frame cleanly as records."""
    assert data[0] == 22, data[:5].hex()
    rec_len = int.from_bytes(data[3:5], "big")
    payload = data[5 : 5 + rec_len]
    assert len(payload) == rec_len
    assert payload[0] == msg_type
    hs_len = int.from_bytes(payload[1:4], "big")
    assert hs_len == rec_len - 4, (hs_len, rec_len)
    body = payload[4:]
    pos = 2 + 32                                      # legacy_version, random
    pos += 1 + body[pos]                              # legacy_session_id
    if msg_type == 1:
        pos += 2 + int.from_bytes(body[pos : pos + 2], "big")  # cipher_suites
        pos += 1 + body[pos]                          # legacy_compression_methods
    else:
        pos += 3                                      # cipher_suite, compression_method
    ext_len = int.from_bytes(body[pos : pos + 2], "big")
    assert ext_len == len(body) - pos - 2, (ext_len, len(body) - pos - 2)
    pos += 2
    while pos < len(body):                            # every extension's own length
        n = int.from_bytes(body[pos + 2 : pos + 4], "big")
        pos += 4 + n
    assert pos == len(body)
    rest = data[5 + rec_len :]
    framed = records_of(rest)
    assert b"".join(r.raw for r in framed) == rest
    assert all(r.content_type in (20, 21, 22, 23) for r in framed)
    return rest


def test_shrinking_hello_rewrites_reencode_every_length() -> None:
    # Both rewrites make the ClientHello smaller: a stale record, handshake or
    # extensions length would still frame when the hello grows but not here.
    for action in ("    action: set-hello-version\n    version: TLSv1.1\n",
                   "    action: remove-extensions\n    extensions: [server_name, key_share]\n"):
        outs, _ = run(CONV13, "  - match: {from: client, handshake: client_hello}\n" + action)
        before, after = sent(CONV13, "client"), received(outs, "server")
        assert len(after) < len(before), action
        rest = check_hello_lengths(after)
        check_hello_lengths(before)
        assert rest == before[5 + int.from_bytes(before[3:5], "big"):]


def test_server_hello_rewrite_reencodes_every_length() -> None:
    outs, _ = run(CONV12, "  - match: {from: server, handshake: server_hello}\n"
                          "    action: remove-extensions\n"
                          "    extensions: [renegotiation_info]\n")
    before, after = sent(CONV12, "server"), received(outs, "client")
    assert len(after) < len(before)
    # The TLS 1.2 server's first record holds ServerHello..ServerHelloDone: check the
    # record length and the ServerHello's own lengths.
    rec_len = int.from_bytes(after[3:5], "big")
    assert rec_len == int.from_bytes(before[3:5], "big") - (len(before) - len(after))
    hs_len = int.from_bytes(after[6:9], "big")
    sh = after[9 : 9 + hs_len]
    pos = 2 + 32
    pos += 1 + sh[pos] + 3
    assert int.from_bytes(sh[pos : pos + 2], "big") == len(sh) - pos - 2
    assert b"".join(r.raw for r in records_of(after)) == after


def test_set_hello_version_reencodes_lengths() -> None:
    outs, _ = run(CONV13, "  - match: {from: client, handshake: client_hello}\n"
                          "    action: set-hello-version\n    version: TLSv1.1\n")
    before = client_hello(sent(CONV13, "client"))
    after = client_hello(received(outs, "server"))
    assert after.legacy_version == 0x0302
    assert [e.type for e in after.extensions] == [e.type for e in before.extensions
                                                  if e.type != 43]
    assert after.cipher_suites == before.cipher_suites


def test_add_and_remove_cipher_suites() -> None:
    outs, _ = run(CONV13, "  - match: {from: client, handshake: client_hello}\n"
                          "    action: add-cipher-suites\n"
                          "    suites: [TLS_EMPTY_RENEGOTIATION_INFO_SCSV, 0x5600]\n"
                          "    position: start\n")
    before = client_hello(sent(CONV13, "client"))
    after = client_hello(received(outs, "server"))
    assert after.cipher_suites == (0x00FF, 0x5600) + tuple(
        s for s in before.cipher_suites)
    outs, _ = run(CONV13, "  - match: {from: client, handshake: client_hello}\n"
                          "    action: remove-cipher-suites\n"
                          "    suites: [TLS_AES_128_GCM_SHA256]\n")
    after = client_hello(received(outs, "server"))
    assert 0x1301 in before.cipher_suites and 0x1301 not in after.cipher_suites


def test_remove_and_add_extensions() -> None:
    outs, c = run(CONV13, "  - match: {from: client, handshake: client_hello}\n"
                          "    action: remove-extensions\n"
                          "    extensions: [server_name, supported_groups]\n"
                          "  - match: {from: client, handshake: client_hello}\n"
                          "    action: add-extension\n    type: 0xfe02\n    data: 'ab cd'\n")
    after = client_hello(received(outs, "server"))
    types = [e.type for e in after.extensions]
    assert 0 not in types and 10 not in types
    new = [e for e in after.extensions if e.type == 0xFE02]
    assert new and new[0].data == b"\xab\xcd"
    # What the diagnosis reads (typed facts): each edit's own removals and additions.
    removed, added = (f.facts for f in c.history.faults)
    assert removed == {"extensions_removed": (0, 10), "extensions_added": (),
                       "suites_before": removed["suites_before"],
                       "suites_after": removed["suites_before"]}
    assert added["extensions_removed"] == () and added["extensions_added"] == (0xFE02,)


def test_added_extension_goes_before_pre_shared_key() -> None:
    # RFC 8446 4.2.11: pre_shared_key MUST be the last extension of the ClientHello;
    # a resumed Python ssl connection sends one.
    before = client_hello(sent(RESUMED13, "client"))
    assert [e.type for e in before.extensions][-1] == 41
    outs, _ = run(RESUMED13, "  - match: {from: client, handshake: client_hello}\n"
                             "    action: add-extension\n    type: 0xfe02\n    data: 'ab cd'\n")
    types = [e.type for e in client_hello(received(outs, "server")).extensions]
    assert types[-1] == 41 and types[-2] == 0xFE02


def test_set_cipher_suites_sends_exactly_the_list_in_order() -> None:
    before = client_hello(sent(CONV13, "client"))
    outs, _ = run(CONV13, "  - match: {from: client, handshake: client_hello}\n"
                          "    action: set-cipher-suites\n"
                          "    suites: [TLS_CHACHA20_POLY1305_SHA256, 0x1301, 0xc02b]\n")
    after = client_hello(received(outs, "server"))
    assert after.cipher_suites == (0x1303, 0x1301, 0xC02B)
    assert [e.type for e in after.extensions] == [e.type for e in before.extensions]
    [ev] = fault_events(outs)
    assert ev["fault"][0]["detail"]["after"] == [
        "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]
    assert ev["fault"][0]["class"] == "transcript-breaking"


def test_set_cipher_suites_only_offered_keeps_the_clients_and_refuses_none() -> None:
    before = client_hello(sent(CONV13, "client"))
    outs, _ = run(CONV13, "  - match: {from: client, handshake: client_hello}\n"
                          "    action: set-cipher-suites\n    only: offered\n"
                          "    suites: [0x1302, 0x0a0b, 0x1301]\n")
    after = client_hello(received(outs, "server"))
    assert 0x0A0B not in before.cipher_suites
    assert after.cipher_suites == (0x1302, 0x1301)
    outs, c = run(CONV13, "  - match: {from: client, handshake: client_hello}\n"
                          "    action: set-cipher-suites\n    only: offered\n"
                          "    suites: [0x0a0b]\n")
    assert received(outs, "server").startswith(sent(CONV13, "client")[:50])
    assert client_hello(received(outs, "server")) == before  # unchanged: not applied
    [ev] = fault_events(outs)
    assert "offered none" in ev["fault"][0]["detail"]["not_applied"]


def test_set_extensions_order_moves_the_listed_first_and_keeps_psk_last() -> None:
    before = client_hello(sent(CONV13, "client"))
    types = [e.type for e in before.extensions]
    first = [types[-1], 43, 0x9999] if types[-1] != 41 else [43, 0]
    outs, _ = run(CONV13, "  - match: {from: client, handshake: client_hello}\n"
                          "    action: set-extensions-order\n"
                          f"    extensions: {first}\n")
    after = client_hello(received(outs, "server"))
    present = [t for t in first if t in types]
    got = [e.type for e in after.extensions]
    assert got[:len(present)] == present
    assert got[len(present):] == [t for t in types if t not in present]
    assert sorted(e.raw for e in after.extensions) == sorted(e.raw for e in before.extensions)
    # rest: drop keeps only the listed ones (a keep-extensions).
    outs, _ = run(CONV13, "  - match: {from: client, handshake: client_hello}\n"
                          "    action: set-extensions-order\n    rest: drop\n"
                          "    extensions: [supported_versions, key_share, server_name]\n")
    after = client_hello(received(outs, "server"))
    assert [e.type for e in after.extensions] == [43, 51, 0]


def test_psk_stays_last_unless_listed() -> None:
    from tlsinspector.proxy.actions import _reorder
    from tlsinspector.proxy.hello import Extension

    exts = tuple(Extension(t, b"") for t in (0, 10, 41))
    assert [x.type for x in _reorder(exts, (41, 10), True)] == [41, 10, 0]
    assert [x.type for x in _reorder(exts, (10,), True)] == [10, 0, 41]


def test_set_supported_versions() -> None:
    outs, _ = run(CONV13, "  - match: {from: client, handshake: client_hello}\n"
                          "    action: set-supported-versions\n    versions: [TLSv1.2]\n")
    after = client_hello(received(outs, "server"))
    [sv] = [e for e in after.extensions if e.type == 43]
    assert sv.data == b"\x02\x03\x03"


def test_replace_with_alert_then_close() -> None:
    outs, _ = run(CONV12, "  - match: {from: server, content_type: change_cipher_spec}\n"
                          "    action: replace-with-alert\n"
                          "    description: decryption_failed_RESERVED\n")
    got = records_of(received(outs, "client"))
    assert got[-1].content_type == 21 and got[-1].payload == b"\x02\x15"
    assert not any(r.content_type == 20 for r in got)
    assert {o.to for o in outs if isinstance(o, Close)} == {"client", "server"}


def test_insert_alert_before() -> None:
    outs, _ = run(CONV13, "  - match: {from: server, index: 1}\n"
                          "    action: insert-alert\n    level: warning\n"
                          "    description: close_notify\n")
    got = records_of(received(outs, "client"))
    orig = records_of(sent(CONV13, "server"))
    assert got[0].raw == bytes.fromhex("15030300020100") and got[1:] == orig


def test_insert_alert_after_delivers_the_record_then_the_alert() -> None:
    # The matched record is left as it came, but it is no longer alone: the alert
    # after it must go on too (the untouched-record shortcut is for one record only).
    outs, _ = run(CONV13, "  - match: {from: server, index: 1}\n"
                          "    action: insert-alert\n    description: decode_error\n"
                          "    position: after\n")
    got = records_of(received(outs, "client"))
    orig = records_of(sent(CONV13, "server"))
    assert got[0] == orig[0] and got[1].raw == bytes.fromhex("15030300020232")
    assert got[2:] == orig[1:]


def test_reply_alert_answers_the_sender_and_drops_the_record() -> None:
    outs, _ = run(CONV13, "  - match: {from: client, index: 1}\n"
                          "    action: reply-alert\n    description: handshake_failure\n")
    assert received(outs, "server") == b""
    assert received(outs, "client").startswith(bytes.fromhex("15030100020228"))


def test_replace_with_raw_sends_bytes_and_closes() -> None:
    outs, _ = run(CONV13, "  - match: {from: server, index: 1}\n"
                          "    action: replace-with-raw\n"
                          "    text: \"HTTP/1.1 400 Bad\\r\\n\\r\\n\"\n")
    assert received(outs, "client").startswith(b"HTTP/1.1 400 Bad\r\n\r\n")
    assert any(isinstance(o, Close) and o.to == "client" for o in outs)


def test_drop() -> None:
    outs, _ = run(CONV13, "  - match: {from: server, index: 2}\n    action: drop\n")
    orig = records_of(sent(CONV13, "server"))
    assert records_of(received(outs, "client")) == orig[:1] + orig[2:]


def test_truncate_without_fixing_length() -> None:
    outs, _ = run(CONV12, "  - match: {from: server, index: 2}\n    action: truncate\n"
                          "    length: 10\n")
    orig = records_of(sent(CONV12, "server"))
    data = received(outs, "client")
    first = orig[0].raw
    assert data.startswith(first + orig[1].header() + orig[1].payload[:10])
    [ev] = fault_events(outs)
    assert ev["fault"][0]["detail"]["length_field"] == "unchanged"


def test_truncate_with_fix_length_reencodes_the_record_length() -> None:
    outs, _ = run(CONV12, "  - match: {from: server, index: 2}\n    action: truncate\n"
                          "    length: 10\n    fix_length: true\n")
    orig = records_of(sent(CONV12, "server"))
    data = received(outs, "client")
    assert orig[1].length > 10
    # RFC 5246 6.2.1: the header's length now says 10, and the rest frames as before.
    cut = bytes([orig[1].content_type]) + orig[1].version.to_bytes(2, "big") + b"\x00\x0a"
    assert data.startswith(orig[0].raw + cut + orig[1].payload[:10] + orig[2].raw)
    got = records_of(data)
    assert got[1] == Record(orig[1].content_type, orig[1].version, orig[1].payload[:10])
    assert [r.raw for r in got[2:]] == [r.raw for r in orig[2:]]
    [ev] = fault_events(outs)
    assert ev["fault"][0]["detail"]["length_field"] == "fixed"


def test_fragment_into_one_byte_records_keeps_the_messages() -> None:
    outs, _ = run(CONV13, "  - match: {from: client, handshake: client_hello}\n"
                          "    action: fragment\n    size: 1\n")
    got = records_of(received(outs, "server"))
    orig = records_of(sent(CONV13, "client"))
    n = len(orig[0].payload)
    assert all(len(r.payload) == 1 for r in got[:n])
    assert b"".join(r.payload for r in got[:n]) == orig[0].payload


def test_split_writes_and_delay_use_timers() -> None:
    outs, c = run(CONV13, "  - match: {from: server, index: 1}\n    action: delay\n    ms: 250\n"
                          "  - match: {from: server, index: 1}\n    action: split-writes\n"
                          "    size: 7\n    pause_ms: 10\n", now=1.0)
    assert received(outs, "client") == b""  # everything waits behind the delayed record
    wake = [o for o in outs if isinstance(o, Wakeup)]
    assert wake and abs(wake[0].at - 1.25) < 1e-9
    later = c.wakeup(1.25)
    sends = [o for o in later if isinstance(o, Send)]
    assert len(sends) == 1 and len(sends[0].data) == 7
    rest: list[Output] = []
    t = 1.25
    while c.pending_timers:
        t += 0.01
        rest += c.wakeup(t)
    assert received(later + rest, "client") == sent(CONV13, "server")


def test_corrupt_flips_one_byte() -> None:
    outs, _ = run(CONV13, "  - match: {from: server, content_type: application_data, times: 1}\n"
                          "    action: corrupt\n    offset: -1\n    xor: 1\n")
    orig, got = sent(CONV13, "server"), received(outs, "client")
    diff = [i for i in range(len(orig)) if orig[i] != got[i]]
    assert len(diff) == 1 and orig[diff[0]] ^ got[diff[0]] == 1


def test_close_after_the_record() -> None:
    outs, _ = run(CONV13, "  - match: {from: client, handshake: client_hello}\n"
                          "    action: close\n    how: rst\n    toward: both\n")
    closes = [o for o in outs if isinstance(o, Close)]
    assert {(o.to, o.how) for o in closes} == {("client", "rst"), ("server", "rst")}
    assert received(outs, "server").startswith(records_of(sent(CONV13, "client"))[0].raw)


def test_a_connection_a_fault_closed_is_closed_by_the_proxy() -> None:
    # The close event's "by": the proxy closed it (the fault), even though both peers
    # send their FIN afterwards, as they do once their stream ended.
    outs, c = run(CONV13, "  - match: {from: client, handshake: client_hello}\n"
                          "    action: close\n    how: fin\n    toward: both\n")
    outs = c.eof("server", 2.0) + c.eof("client", 2.0) + c.finish(2.0)
    close = [o.event for o in outs if isinstance(o, Emit)][-1]
    assert close["event"] == "close" and close["by"] == "proxy"


@pytest.mark.parametrize("toward", ["client", "server"])
def test_close_toward_one_side_leaves_the_other_open(toward: str) -> None:
    # DESIGN.md: close "toward (client/server/both)": one named side is closed, the
    # other keeps its stream (a half-open middlebox), so only one Close goes out.
    outs, _ = run(CONV13, "  - match: {from: client, handshake: client_hello}\n"
                          f"    action: close\n    how: fin\n    toward: {toward}\n")
    assert [(o.to, o.how) for o in outs if isinstance(o, Close)] == [(toward, "fin")]


def test_insert_record_ccs_early() -> None:
    outs, _ = run(CONV13, "  - match: {from: server, handshake: server_hello}\n"
                          "    action: insert-record\n    content_type: change_cipher_spec\n"
                          "    hex: '01'\n    position: before\n")
    assert received(outs, "client").startswith(bytes.fromhex("140303000101"))


def test_hello_spanning_records_is_reassembled_before_rewrite() -> None:
    [first, *rest] = records_of(sent(CONV13, "client"))
    half = len(first.payload) // 2
    split = (Record(22, first.version, first.payload[:half]).raw
             + Record(22, first.version, first.payload[half:]).raw)
    flights = [("client", split)] + [(s, d) for s, d in CONV13 if s == "server"]
    outs, _ = run(flights, "  - match: {from: client, handshake: client_hello}\n"
                           "    action: remove-extensions\n    extensions: [server_name]\n")
    got = records_of(received(outs, "server"))
    ch = client_hello(received(outs, "server"))
    assert 0 not in [e.type for e in ch.extensions]
    assert len(got) == 1  # re-encoded as one record


def test_records_held_for_a_hello_fault_count_toward_the_held_bound() -> None:
    """A hello fault holds each record of a ClientHello sent in 1-byte records until the
    hello is whole: each held record costs its object overhead in ``held_bytes`` (the
    proxy's --max-held sums it), so a hello in tiny records cannot hide its cost."""
    from tlsinspector.proxy.engine import Connection

    [first, *_] = records_of(sent(CONV13, "client"))
    tiny = b"".join(Record(22, first.version, first.payload[i:i + 1]).raw for i in range(40))
    c = Connection("1", "c:1", "s:2", faults=plan(
        "  - match: {from: client, handshake: client_hello}\n"
        "    action: remove-extensions\n    extensions: [server_name]\n"))
    c.receive("client", tiny, 1.0)
    assert c.held_bytes() >= 40 * Connection.HELD_RECORD_COST


def test_held_bytes_sum_what_is_assembled_and_what_a_delay_queues() -> None:
    """--max-held sums held_bytes over connections: a handshake message being
    assembled (101 bytes of a ClientHello) and a record a delay fault queued (the
    server's 70-byte first record) both count, each byte once."""
    from tlsinspector.proxy.engine import Connection

    [first, *_] = records_of(sent(CONV12, "client"))
    part = Record(22, first.version, first.payload[:101]).raw
    server_first = records_of(sent(CONV12, "server"))[0].raw
    c = Connection("1", "c:1", "s:2", faults=plan(
        "  - match: {from: server, index: 1}\n    action: delay\n    ms: 100\n"))
    c.receive("client", part, 1.0)
    assert c.held_bytes() == 101
    c.receive("server", server_first, 1.0)
    assert c.backlog("client") == len(server_first) == 70
    assert c.held_bytes() == 101 + 70


def test_a_hello_spanning_records_is_matched_by_the_index_of_its_first_record() -> None:
    """The ClientHello starts in client record 1 and ends in record 2 (RFC 8446 5.1
    lets a handshake message span records): ``index: 1`` names it."""
    [first, *rest] = records_of(sent(CONV13, "client"))
    half = len(first.payload) // 2
    split = (Record(22, first.version, first.payload[:half]).raw
             + Record(22, first.version, first.payload[half:]).raw)
    flights = [("client", split)] + [(s, d) for s, d in CONV13 if s == "server"]
    outs, _ = run(flights, "  - match: {from: client, index: 1}\n"
                           "    action: remove-extensions\n    extensions: [server_name]\n")
    assert 0 not in [e.type for e in client_hello(received(outs, "server")).extensions]


def test_probability_is_repeatable_with_the_seed() -> None:
    y = "  - match: {from: server, probability: 0.5}\n    action: drop\n"
    a, _ = run(CONV13, y, seed=7)
    b, _ = run(CONV13, y, seed=7)
    assert received(a, "client") == received(b, "client")
    dropped = len(records_of(sent(CONV13, "server"))) - len(records_of(received(a, "client")))
    assert 0 < dropped < len(records_of(sent(CONV13, "server")))


def test_times_limits_applications() -> None:
    outs, _ = run(CONV13, "  - match: {from: server, times: 2}\n    action: drop\n")
    orig = records_of(sent(CONV13, "server"))
    assert records_of(received(outs, "client")) == orig[2:]


def test_connection_match_and_unapplied_report() -> None:
    c = Connection("1", "c:1", "s:2", number=1,
                   faults=plan("  - match: {connection: 2}\n    action: drop\n", number=1))
    outs = c.receive("server", sent(CONV13, "server"), 1.0)
    assert received(outs, "client") == sent(CONV13, "server")
    c2 = Connection("2", "c:1", "s:2", number=1,
                    faults=plan("  - match: {from: server, index: 50}\n    action: drop\n"))
    c2.receive("server", sent(CONV13, "server"), 1.0)
    assert c2.faults is not None
    [msg] = c2.faults.unapplied()
    assert "never matched" in msg and "t.yaml" in msg


def test_sni_restricted_fault_leaves_other_connections_byte_exact() -> None:
    y = ("  - match: {from: server, index: 2, sni: '*.example.com'}\n"
         "    action: set-record-version\n    version: 0x3030\n")
    hit = conversation("1.3", sni="api.example.com")
    miss = conversation("1.3", sni="other.test")
    outs_hit, _ = run(hit, y)
    outs_miss, c = run(miss, y)
    assert received(outs_miss, "client") == sent(miss, "server")
    assert received(outs_miss, "server") == sent(miss, "client")
    assert not fault_events(outs_miss)
    assert c._dirs["server"].passthrough  # released once the SNI was known not to match
    assert records_of(received(outs_hit, "client"))[1].version == 0x3030


def test_timing_faults_leave_large_tls13_ciphertexts_byte_exact() -> None:
    """A TLS 1.3 ciphertext may exceed 2^14 bytes (up to 2^14 + 256): a fault that
    only delays or paces a record must never re-frame it (that breaks its MAC)."""
    big = conversation("1.3", response=b"r" * 50_000)
    server = [r for r in records_of(sent(big, "server")) if r.content_type == 23]
    assert max(len(r.payload) for r in server) > 16_384  # the case this is about
    for action in ("delay\n    ms: 5", "split-writes\n    size: 1000\n    pause_ms: 1"):
        outs, c = run(big, "  - match: {from: server, content_type: application_data}\n"
                           f"    action: {action}\n")
        outs += c.wakeup(100.0)  # every delay and pause has passed
        assert received(outs, "client") == sent(big, "server"), action
        assert len(fault_events(outs)) == len(server)


def test_content_type_match_selects_only_that_type() -> None:
    # TLS 1.2 server flight: handshake records, then ChangeCipherSpec (20), then an
    # encrypted Finished (22) and application data (23). Dropping content type 20 drops
    # exactly the CCS records, whatever the neighbours' numbers.
    outs, _ = run(CONV12, "  - match: {from: server, content_type: change_cipher_spec}\n"
                          "    action: drop\n")
    orig = records_of(sent(CONV12, "server"))
    assert any(r.content_type == 20 for r in orig)
    assert records_of(received(outs, "client")) == [r for r in orig if r.content_type != 20]
    outs, _ = run(CONV12, "  - match: {from: server, content_type: alert}\n    action: drop\n")
    assert records_of(received(outs, "client")) == [r for r in orig if r.content_type != 21]


def test_unapplied_report_counts_records_per_side() -> None:
    # Nothing sent yet: both sides at 0 records.
    p = plan("  - match: {index: 50}\n    action: drop\n")
    [msg] = p.unapplied()
    assert msg.endswith("never matched (client sent 0, server 0 records)")
    _, c = run(CONV13, "  - match: {from: server, index: 50}\n    action: drop\n")
    assert c.faults is not None
    [msg] = c.faults.unapplied()
    n = len(records_of(sent(CONV13, "server")))
    assert msg.endswith(f"never matched (server sent {n} records)")


def test_only_faults_inside_encryption_want_records_opened() -> None:
    # A record-level fault never asks the engine to decrypt (no keys needed); a fault
    # on a handshake message only ever sent encrypted does (RFC 8446 2: all after
    # ServerHello). Both are live for the server.
    outer = plan("  - match: {from: server, index: 2}\n    action: drop\n")
    assert outer.may_apply("server", 0) and not outer.wants_inside("server")
    inner = plan("  - match: {from: server, handshake: finished}\n    action: drop\n")
    assert inner.wants_inside("server") and not inner.wants_inside("client")


def test_fault_for_another_sni_stops_holding_once_the_hello_is_seen() -> None:
    # DESIGN 3: bytes are held back only while a configured fault may still need them.
    # Before the ClientHello (RFC 6066 3: the SNI is in it) the fault may apply; after
    # a hello naming another host it cannot, and the planner says so.
    y = "  - match: {index: 3, sni: '*.example.com'}\n    action: drop\n"
    c = Connection("1", "c:1", "s:2", faults=plan(y))
    assert c.faults is not None and c.faults.may_apply("server", 0)
    c.receive("client", conversation("1.3", sni="other.test")[0][1], 1.0)
    assert not c.faults.may_apply("server", 0)
    c2 = Connection("2", "c:1", "s:2", faults=plan(y))
    c2.receive("client", conversation("1.3", sni="api.example.com")[0][1], 1.0)
    assert c2.faults is not None and c2.faults.may_apply("server", 0)


def test_hello_without_sni_never_matches_an_sni_fault() -> None:
    y = "  - match: {index: 3, sni: '*'}\n    action: drop\n"
    c = Connection("1", "c:1", "s:2", faults=plan(y))
    c.receive("client", conversation("1.3", sni=None)[0][1], 1.0)  # type: ignore[arg-type]
    assert c.faults is not None and not c.faults.may_apply("server", 0)


def _finished_view() -> RecordView:
    # A TLS 1.3 server record whose decrypted content (RFC 8446 5.2: inner type 22) is
    # a Finished message (type 20, 32-byte verify_data), as the engine hands it over.
    inner = Record(22, 0x0303, b"\x14\x00\x00\x20" + bytes(32))
    return RecordView("server", 5, Record(23, 0x0303, bytes(53)), True, (), 1, None,
                      inner, (20,))


def test_faults_inside_encryption_say_what_to_seal() -> None:
    view = _finished_view()
    # A timing fault leaves the plaintext alone: nothing to seal again (a TLS 1.2 CBC
    # record sealed again would get a new IV: other bytes for no reason).
    out = plan("  - match: {handshake: finished}\n    action: delay\n    ms: 5\n"
               ).on_record(view)
    assert out is not None and out.inner is None and out.to_receiver is None
    assert out.delay == 0.005
    # Dropped: nothing sealed in its place.
    out = plan("  - match: {handshake: finished}\n    action: drop\n").on_record(view)
    assert out is not None and out.inner == ()
    # Fragmented in two: both pieces sealed, in order.
    out = plan("  - match: {handshake: finished}\n    action: fragment\n    size: 20\n"
               ).on_record(view)
    assert out is not None and out.inner is not None
    assert [r.payload for r in out.inner] == [view.inner.payload[:20],  # type: ignore[union-attr]
                                              view.inner.payload[20:]]  # type: ignore[union-attr]


def test_times_counts_past_the_small_integer_cache() -> None:
    # `times` is a count, compared by value: 300 applications, then none (ints above
    # 256 are distinct objects in CPython, so an identity test would never stop).
    p = plan("  - match: {from: server, times: 300}\n    action: delay\n    ms: 1\n")
    fired = 0
    for i in range(1, 302):
        view = RecordView("server", i, Record(23, 0x0303, b"x"), True, (), 1, None)
        fired += p.on_record(view) is not None
    assert fired == 300


class _Fixed(random.Random):
    """A generator that always draws the same number."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_probability_is_a_strict_draw_below_p() -> None:
    # random() is uniform on [0, 1): firing when the draw is below p fires with
    # probability exactly p, so p = 0 never fires, even on a draw of 0.0.
    s = load_scenario_text("name: t\nfaults:\n  - match: {probability: 0}\n    action: drop\n",
                           "t.yaml")
    view = RecordView("server", 1, Record(23, 0x0303, b"x"), True, (), 1, None)
    assert FaultPlanner([s], 1, _Fixed(0.0)).on_record(view) is None
    s = load_scenario_text("name: t\nfaults:\n  - match: {probability: 0.5}\n    action: drop\n",
                           "t.yaml")
    assert FaultPlanner([s], 1, _Fixed(0.5)).on_record(view) is None
    assert FaultPlanner([s], 1, _Fixed(0.4999)).on_record(view) is not None


def test_a_fault_that_cannot_apply_does_not_stop_the_next() -> None:
    y = ("  - match: {from: server, index: 1}\n    action: corrupt\n    offset: 100000\n"
         "  - match: {from: server, index: 1}\n    action: delay\n    ms: 7\n")
    view = RecordView("server", 1, Record(22, 0x0303, b"\x02\x00\x00\x00"), False, (2,), 1,
                      None)
    p = plan(y)
    out = p.on_record(view)
    assert out is not None and out.delay == 0.007
    assert [f.action for f in out.faults] == ["corrupt", "delay"]
    assert out.faults[0].not_applied and not out.faults[1].not_applied
    [msg] = p.unapplied()
    assert "could not apply: offset 100000 outside a 4-byte payload" in msg


def test_alert_inserted_after_a_record_inside_encryption_is_sealed_too() -> None:
    view = _finished_view()
    out = plan("  - match: {handshake: finished}\n    action: insert-alert\n"
               "    description: decode_error\n    position: after\n").on_record(view)
    assert out is not None and out.inner is not None
    # RFC 8446 6: the alert as a plaintext record (level fatal, decode_error = 50).
    assert out.inner == (view.inner, Record(21, 0x0303, b"\x02\x32"))


def test_a_record_fault_outside_is_skipped_on_a_record_a_fault_inside_matched() -> None:
    # The first matching fault decides (DESIGN.md): inside the encryption here, so a
    # fault on the outer record of the same record does not run beside it.
    out = plan("  - match: {handshake: finished}\n    action: delay\n    ms: 5\n"
               "  - match: {from: server, index: 5}\n    action: set-record-version\n"
               "    version: 0x0301\n").on_record(_finished_view())
    assert out is not None and [f.action for f in out.faults] == ["delay"]
    assert out.to_receiver is None and out.inner is None


def test_a_timing_fault_never_reframes_even_an_over_long_plaintext_record() -> None:
    # A handshake record one byte over 2^14 (a broken peer): a delay passes it on as
    # it came (to_receiver None), not split in two as a hello rewrite would be.
    view = RecordView("client", 1, Record(22, 0x0303, bytes(2**14 + 1)), False, (), 1, None)
    out = plan("  - match: {index: 1}\n    action: delay\n    ms: 5\n").on_record(view)
    assert out is not None and out.to_receiver is None and out.delay == 0.005


def test_truncate_length_is_required_and_may_be_zero() -> None:
    from tlsinspector.proxy.scenario import ScenarioError

    head = "name: t\nfaults:\n  - match: {from: server, index: 1}\n    action: truncate\n"
    with pytest.raises(ScenarioError, match="needs 'length'"):
        load_scenario_text(head, "t.yaml")
    with pytest.raises(ScenarioError, match="-1 is out of range; allowed: 0..65535"):
        load_scenario_text(head + "    length: -1\n", "t.yaml")
    # Keeping 0 bytes is a fault of its own: an empty record (fixed) or a header alone.
    outs, _ = run(CONV13, "  - match: {from: server, index: 1}\n    action: truncate\n"
                          "    length: 0\n    fix_length: true\n")
    first = records_of(sent(CONV13, "server"))[0]
    assert received(outs, "client").startswith(Record(first.content_type, first.version,
                                                      b"").raw)


def test_record_inserted_where_the_record_was_dropped_is_tls12_versioned() -> None:
    # Both faults on one record: nothing left to take the version from, so the new
    # record carries 0x0303 (RFC 8446 5.1: legacy_record_version for all but the
    # first ClientHello).
    y = ("  - match: {from: server, index: 1}\n    action: drop\n"
         "  - match: {from: server, index: 1}\n    action: insert-record\n"
         "    content_type: alert\n    hex: '0228'\n")
    view = RecordView("server", 1, Record(22, 0x0301, b"\x02\x00\x00\x00"), False, (2,), 1,
                      None)
    out = plan(y).on_record(view)
    assert out is not None and out.to_receiver == bytes.fromhex("15030300020228")


def test_hello_rewrite_finds_the_hello_after_another_message_in_the_record() -> None:
    # RFC 5246 6.2.1: one record may carry several handshake messages. Here an empty
    # HelloRequest (type 0, RFC 5246 7.4.1.1) comes before a ServerHello in the record.
    sh = (bytes.fromhex("0303") + bytes(32) + b"\x00" + bytes.fromhex("1301") + b"\x00"
          + bytes.fromhex("0006002b00020304"))
    payload = b"\x00\x00\x00\x00" + b"\x02" + len(sh).to_bytes(3, "big") + sh
    view = RecordView("server", 1, Record(22, 0x0303, payload), False, (0, 2), 1, None)
    out = plan("  - match: {from: server, index: 1}\n    action: set-hello-version\n"
               "    version: 0x0302\n").on_record(view)
    assert out is not None and out.to_receiver is not None
    [rec] = records_of(out.to_receiver)
    assert rec.payload[:4] == b"\x00\x00\x00\x00"  # the HelloRequest, untouched
    assert rec.payload[8:10] == b"\x03\x02"  # the ServerHello's new legacy_version


def test_supported_versions_added_to_a_resumed_hello_goes_before_pre_shared_key() -> None:
    # RFC 8446 4.2.11: pre_shared_key MUST be the last extension. A real resumed
    # ClientHello without supported_versions (removed by the first fault) gets it back
    # in front of pre_shared_key.
    y = ("  - match: {from: client, index: 1}\n    action: remove-extensions\n"
         "    extensions: [supported_versions]\n"
         "  - match: {from: client, index: 1}\n    action: set-supported-versions\n"
         "    versions: [TLSv1.3]\n")
    outs, _ = run(RESUMED13[:1], y)
    types = [e.type for e in client_hello(received(outs, "server")).extensions]
    assert types[-2:] == [43, 41]
    assert types.count(43) == 1


def test_action_declarations_are_frozen_and_required_parameters_enforced() -> None:
    import dataclasses

    from tlsinspector.proxy.actions import ACTIONS
    from tlsinspector.proxy.scenario import ScenarioError

    with pytest.raises(dataclasses.FrozenInstanceError):
        ACTIONS["drop"].doc = "changed"  # type: ignore[misc]
    with pytest.raises(ScenarioError, match="needs 'extensions'"):
        load_scenario_text("name: t\nfaults:\n  - match: {from: client, index: 1}\n"
                           "    action: set-extensions-order\n", "t.yaml")


@pytest.mark.parametrize("action", ["set-record-version\n    version: 0x0301",
                                    "corrupt\n    offset: -1"])
def test_a_rewritten_ciphertext_longer_than_2_14_stays_one_record(action: str) -> None:
    """A TLS 1.3 ciphertext may be 2^14+256 bytes long (RFC 8446 5.2): a fault that
    rewrites it must not re-frame it as two records (its MAC would break), while a
    hello a fault made grow past 2^14 is still split (plaintext, RFC 8446 5.1)."""
    big = Record(23, 0x0303, bytes(range(256)) * 64 + bytes(200))  # 16,584 bytes
    flights = [*CONV13, ("server", big.raw)]
    index = len(records_of(sent(CONV13, "server"))) + 1
    outs, _ = run(flights, f"  - match: {{from: server, index: {index}}}\n    action: {action}\n")
    got = records_of(received(outs, "client"))
    assert len(got) == index and len(got[-1].payload) == 16584
    assert received(outs, "client").endswith(got[-1].raw)


def test_a_hello_grown_past_2_14_goes_out_as_several_records() -> None:
    """The plaintext side of the rule above: a ClientHello a fault made longer
    than 2^14 bytes is fragmented (RFC 8446 5.1), and the message is intact."""
    data = "'" + " ".join(["ab"] * 17000) + "'"
    outs, _ = run(CONV13, "  - match: {from: client, index: 1}\n"
                          f"    action: add-extension\n    type: 0xfe02\n    data: {data}\n")
    got = records_of(received(outs, "server"))
    hello = [r for r in got if r.content_type == 22]
    assert len(hello) >= 2 and all(len(r.payload) <= 2 ** 14 for r in got)
    assert any(e.type == 0xfe02 and len(e.data) == 17000
               for e in client_hello(received(outs, "server")).extensions)
def test_fault_is_always_a_list_one_shape_for_one_or_several() -> None:
    # Issue 15 bug 10: one fault was logged as an object, several as a list.
    from tests.events_schema import problems

    one, _ = run(CONV12, "  - match: {from: server, index: 2}\n"
                         "    action: set-record-version\n    version: 0x3030\n")
    two, _ = run(CONV12, "  - match: {from: server, index: 2}\n"
                         "    action: set-record-version\n    version: 0x3030\n"
                         "  - match: {from: server, index: 2}\n    action: delay\n    ms: 1\n")
    [a], [b] = fault_events(one), fault_events(two)
    assert isinstance(a["fault"], list) and [f["action"] for f in a["fault"]] == [
        "set-record-version"]
    assert [f["action"] for f in b["fault"]] == ["set-record-version", "delay"]
    assert problems([a, b], "faults") == []
    assert problems([{**a, "fault": a["fault"][0]}], "object") != []


def test_fault_not_applied_counts_the_records_the_close_event_counts() -> None:
    # Issue 15 bug 8: "client sent 1 records" where the close event counted 5 (the
    # plan stops seeing records once its faults cannot apply any more).
    outs, c = run(CONV12, "  - match: {from: client, index: 1, content_type: alert}\n"
                          "    action: drop\n")
    outs += c.eof("client", 2.0) + c.eof("server", 2.0) + c.finish(2.0)
    [close] = [o.event for o in outs if isinstance(o, Emit) and o.event["event"] == "close"]
    n = close["records"]["client"]
    assert n == len(records_of(sent(CONV12, "client"))) > 1
    [finding] = [d for d in close["diagnosis"] if d["code"] == "fault-not-applied"]
    assert f"(client sent {n} records)" in finding["summary"], finding


def test_a_hello_edit_that_changes_nothing_is_not_applied() -> None:
    # Issue 15 bug 5: remove-extensions of an extension the hello lacks was logged as
    # an applied, transcript-breaking fault (and then blamed for the outcome).
    outs, c = run(CONV12, "  - match: {from: client, handshake: client_hello}\n"
                          "    action: remove-extensions\n    extensions: [0xfe0d]\n")
    assert received(outs, "server") == sent(CONV12, "client")
    [ev] = fault_events(outs)
    assert "unchanged" in ev["fault"][0]["detail"]["not_applied"]
    assert [f.applied for f in c.history.faults] == [False]


def test_split_writes_with_pause_0_write_one_piece_per_turn_without_nagle() -> None:
    # Issue 15 bug 9 (the wire side is tests/test_tshark.py): the receiving side is
    # marked for TCP_NODELAY, and the pieces are not one burst of writes.
    from tlsinspector.proxy.engine import SPLIT_TURN

    outs, c = run(CONV13, "  - match: {from: server, index: 1}\n    action: split-writes\n"
                          "    size: 1\n    pause_ms: 0\n", now=1.0)
    assert c.split_toward == {"client"}
    assert len([o for o in outs if isinstance(o, Send) and o.to == "client"]) == 1
    t, rest = 1.0, []
    while c.pending_timers:
        t += SPLIT_TURN
        rest += c.wakeup(t)
    pieces = [o.data for o in rest if isinstance(o, Send) and o.to == "client"]
    assert pieces and all(len(p) == 1 for p in pieces[: len(records_of(
        sent(CONV13, "server"))[0].raw) - 1])


def test_which_faults_explain_a_bad_record_mac() -> None:
    """Diagnosis names the fault as the cause of a bad_record_mac (20) when its action
    can provoke one (actions.py's ``explains``): a dropped record (the next one carries
    the wrong implicit sequence number, RFC 5246 6.1, RFC 8446 5.3), corrupted bytes,
    a record truncated with its length fixed (the receiver authenticates a cut record)
    and never one truncated without (it waits for the missing bytes instead)."""
    from tlsinspector.proxy.diagnosis import diagnose
    from tlsinspector.proxy.history import AlertSeen, FaultSeen, History

    cases = [("drop", "transcript-breaking", {}, True),
             # A dropped alert or CCS record (transcript-safe): the transcript holds.
             ("drop", "transcript-safe", {}, False),
             ("corrupt", "transcript-breaking", {"offset": 3, "xor": 1}, True),
             ("truncate", "transcript-breaking", {"length": 10, "fix_length": True}, True),
             ("truncate", "needs-keys", {"length": 10, "fix_length": True}, True),
             ("truncate", "transcript-safe", {"length": 10, "fix_length": False}, False),
             ("truncate", "needs-keys", {"length": 10, "fix_length": False}, False)]
    for action, cls, params, explained in cases:
        h = History(alerts=[AlertSeen("client", 3, 2, 20, 0x0303, 0x0303)], closed_by="client")
        h.faults.append(FaultSeen("f", action, "server", 2, cls, {}, params))
        [f] = [x for x in diagnose(h) if x.code == "bad-record-mac"]
        assert ("here the fault that altered the bytes explains it" in f.summary) is explained, (
            action, cls)


def test_coalesce_into_records_merges_only_runs_of_one_content_type() -> None:
    # RFC 5246 6.2.1: only records of one content type may be merged (a handshake
    # message may span records; a CCS is its own type): handshake, CCS, handshake
    # stay three records, two handshake records in a row become one.
    from tlsinspector.proxy.actions import merge_records

    hs1, ccs, hs2 = (Record(22, 0x0303, b"\x0b\x00\x00\x01"), Record(20, 0x0303, b"\x01"),
                     Record(22, 0x0303, b"\x00"))
    got = records_of(merge_records(hs1.raw + ccs.raw + hs2.raw))
    assert [(r.content_type, r.payload) for r in got] == [
        (22, hs1.payload), (20, b"\x01"), (22, b"\x00")]
    got = records_of(merge_records(ccs.raw + hs1.raw + hs2.raw))
    assert [(r.content_type, r.payload) for r in got] == [(20, b"\x01"),
                                                          (22, hs1.payload + b"\x00")]


def test_a_fault_after_a_drop_on_the_same_record_has_nothing_to_change() -> None:
    # Faults apply in scenario order to what the previous ones left (DESIGN.md "Faults
    # are data"): after a drop, set-record-version finds no record; both are logged,
    # the second with nothing before, and nothing reaches the client.
    outs, _ = run(CONV13, "  - match: {from: server, index: 1}\n    action: drop\n"
                          "  - match: {from: server, index: 1}\n"
                          "    action: set-record-version\n    version: 0x0301\n")
    [ev] = fault_events(outs)
    assert [(f["action"], f["detail"]) for f in ev["fault"]] == [
        ("drop", {"dropped": 127}),
        ("set-record-version", {"before": [], "after": "0x0301"})]
    first = records_of(sent(CONV13, "server"))[0].raw
    assert not received(outs, "client").startswith(first)


def test_a_server_hello_followed_by_the_start_of_a_certificate_is_rewritten() -> None:
    """Stacks that pack their flight (GnuTLS, Go) put the ServerHello and the first
    bytes of a long Certificate in one record, the Certificate going on in the next
    (RFC 5246 6.2.1). The ServerHello is whole there: a hello rewrite applies to it
    and leaves the cut Certificate's bytes exactly as they were. (Before, the cut
    message made the whole record "no complete ServerHello": not applied.)"""
    recs = records_of(sent(CONV12, "server"))
    sh, cert = recs[0], recs[1]
    first = Record(22, sh.version, sh.payload + cert.payload[:10])
    second = Record(22, sh.version, cert.payload[10:])
    flights = [CONV12[0], ("server", first.raw + second.raw + b"".join(r.raw for r in recs[2:]))]
    outs, _ = run(flights, "  - match: {from: server, handshake: server_hello}\n"
                           "    action: set-hello-version\n    version: 0x0301\n")
    [ev] = fault_events(outs)
    assert ev["fault"][0]["detail"] == {"before": "0x0303", "after": "0x0301"}
    got = records_of(received(outs, "client"))
    assert got[0].payload[4:6] == b"\x03\x01"  # ServerHello.legacy_version (RFC 5246 7.4.1.3)
    assert got[0].payload[:4] == sh.payload[:4] and got[0].payload[6:] == first.payload[6:]
    assert [r.raw for r in got[1:]] == [second.raw, *(r.raw for r in recs[2:])]


def test_once_the_matched_record_passed_the_bytes_flow_unheld() -> None:
    """DESIGN.md "Transparency": bytes are held back only while a fault may still need
    them. A fault on server record 2 (times unlimited, but an index matches once):
    once record 2 went by, half of record 3 goes on in the read that brought it, and
    no fault can apply any more."""
    c = Connection("1", "c:1", "s:2", faults=plan(
        "  - match: {from: server, index: 2}\n    action: set-record-version\n"
        "    version: 0x0303\n"))
    recs = records_of(sent(CONV12, "server"))
    c.receive("client", CONV12[0][1], 1.0)
    c.receive("server", recs[0].raw + recs[1].raw, 1.0)
    half = recs[2].raw[: len(recs[2].raw) // 2]
    outs = c.receive("server", half, 1.0)
    assert received(outs, "client") == half
    assert not c.fault_may_apply()
    outs = c.receive("server", recs[2].raw[len(half):] + recs[3].raw, 1.0)
    assert received(outs, "client") == recs[2].raw[len(half):] + recs[3].raw
    assert not c.fault_may_apply()  # still none at record 4: an index never comes back


def test_encrypted_false_never_matches_an_encrypted_record() -> None:
    # match key "encrypted: false": only records in the clear (the hellos, a plaintext
    # alert); application data is always encrypted, so this fault never fires.
    outs, c = run(CONV13, "  - match: {from: server, content_type: application_data, "
                          "encrypted: false}\n    action: drop\n")
    assert received(outs, "client") == sent(CONV13, "server")
    assert not fault_events(outs)
    outs, _ = run(CONV13, "  - match: {from: server, index: 1, encrypted: false}\n"
                          "    action: drop\n")
    assert [f["action"] for e in fault_events(outs) for f in e["fault"]] == ["drop"]


def test_a_connection_or_leg_fault_is_planned_for_that_one_only() -> None:
    """`connection: 2` plans for the second connection alone (not the first, not the
    third); `leg: client` for the client leg's planner alone, a fault without leg for
    both legs."""
    y = "  - match: {connection: 2}\n    action: drop\n"
    assert [len(plan(y, number=n).faults) for n in (1, 2, 3)] == [0, 1, 0]
    s = load_scenario_text("name: t\nintercept: {}\nfaults:\n  - match: {leg: client}\n"
                           "    action: drop\n"
                           "  - match: {from: server}\n    action: drop\n"
                           "  - match: {leg: server}\n    action: drop\n", "t.yaml")
    client = FaultPlanner([s], 1, random.Random(1), leg="client")
    server = FaultPlanner([s], 1, random.Random(1), leg="server")
    assert [f.match.leg for f in client.faults] == ["client", None]
    assert [f.match.leg for f in server.faults] == [None, "server"]


def test_an_unmatched_fault_without_from_reports_both_sides_counts() -> None:
    p = plan("  - match: {index: 50}\n    action: drop\n")
    [msg] = p.unapplied({"client": 3})
    assert "never matched (client sent 3, server 0 records)" in msg, msg
    # With from: the side that sent nothing counts 0 records.
    p = plan("  - match: {from: server, index: 50}\n    action: drop\n")
    [msg] = p.unapplied({"client": 3})
    assert msg.endswith("never matched (server sent 0 records)"), msg


def test_added_cipher_suites_go_at_the_end_by_default() -> None:
    outs, _ = run(CONV13, "  - match: {from: client, handshake: client_hello}\n"
                          "    action: add-cipher-suites\n    suites: [TLS_FALLBACK_SCSV]\n")
    before = client_hello(sent(CONV13, "client"))
    assert client_hello(received(outs, "server")).cipher_suites == (
        before.cipher_suites + (0x5600,))


def test_corrupt_at_offset_zero_flips_the_payloads_first_byte() -> None:
    outs, _ = run(CONV13, "  - match: {from: server, content_type: application_data, times: 1}\n"
                          "    action: corrupt\n    offset: 0\n    xor: 1\n")
    orig, got = sent(CONV13, "server"), received(outs, "client")
    [i] = [i for i in range(len(orig)) if orig[i] != got[i]]
    first_app = next(r for r in records_of(orig) if r.content_type == 23)
    assert orig[i] ^ got[i] == 1 and i == orig.index(first_app.raw) + 5  # after the header


def test_which_faults_explain_an_unexpected_message() -> None:
    """unexpected_message (10): a record that arrives where the state machine does not
    allow it: a fragmented one (a stack that cannot reassemble), an inserted one, the
    next one after a drop; never a delay."""
    from tlsinspector.proxy.diagnosis import diagnose
    from tlsinspector.proxy.history import AlertSeen, FaultSeen, History

    for action, explained in (("fragment", True), ("insert-record", True), ("drop", True),
                              ("delay", False)):
        h = History(alerts=[AlertSeen("client", 3, 2, 10, 0x0303, 0x0303)], closed_by="client")
        h.faults.append(FaultSeen("f", action, "server", 2, "transcript-safe", {}, {}))
        [f] = [x for x in diagnose(h) if x.code == "unexpected-message"]
        assert (f"fault f: {action} on server record 2" in f.evidence) is explained, action


def test_reply_alert_after_a_drop_answers_in_a_tls12_record() -> None:
    # The record is gone (an earlier fault dropped it): the alert back to its sender
    # goes in a TLS 1.2 record (0x0303, RFC 8446 5.1's legacy_record_version).
    view = RecordView("client", 1, Record(22, 0x0301, b"\x01\x00\x00\x00"), False, (1,),
                      1, None)
    out = plan("  - match: {index: 1}\n    action: drop\n"
               "  - match: {index: 1}\n    action: reply-alert\n"
               "    description: handshake_failure\n").on_record(view)
    assert out is not None and out.to_sender == bytes.fromhex("15030300020228")


def test_an_inserted_record_takes_the_version_of_the_first_record_before_it() -> None:
    # Without version: the version of the first record the earlier faults left (the
    # matched one's, or a record an earlier fault put before it), as insert-alert's.
    view = RecordView("client", 1, Record(22, 0x0301, b"\x01\x00\x00\x00"), False, (1,),
                      1, None)
    out = plan("  - match: {index: 1}\n    action: insert-record\n"
               "    content_type: application_data\n    version: 0x0303\n"
               "  - match: {index: 1}\n    action: insert-record\n"
               "    content_type: change_cipher_spec\n    hex: '01'\n"
               "    position: after\n").on_record(view)
    assert out is not None and out.to_receiver is not None
    assert [(r.content_type, r.version) for r in records_of(out.to_receiver)] == [
        (23, 0x0303), (22, 0x0301), (20, 0x0303)]


def test_merged_records_over_2_14_are_split_again_whatever_their_type() -> None:
    # coalesce into: record (merge_records): RFC 8446 5.1, at most 2^14 bytes of
    # plaintext a record, application data as much as handshake.
    from tlsinspector.proxy.actions import merge_records

    data = b"".join(Record(23, 0x0303, bytes([i]) * 10_000).raw for i in (1, 2))
    merged = records_of(merge_records(data))
    assert [len(r.payload) for r in merged] == [16_384, 3_616]
    assert b"".join(r.payload for r in merged) == bytes([1]) * 10_000 + bytes([2]) * 10_000


def _hrr_conversation() -> list[tuple[str, bytes]]:
    """A real TLS 1.3 handshake with a HelloRetryRequest (RFC 8446 4.1.4): the server
    accepts only secp384r1, the client's first key share is for another group, so it
    sends a second ClientHello (client record 3, after its CCS)."""
    return conversation("1.3", server_group="secp384r1")


def test_a_rewrite_of_the_second_client_hello_is_recorded_on_it() -> None:
    # After a HelloRetryRequest the diagnosis judges the second ClientHello as it was
    # delivered (the rewritten one); the first stays as the client sent it.
    flights = _hrr_conversation()
    _, c = run(flights, "  - match: {from: client, handshake: client_hello, index: 3}\n"
                        "    action: add-extension\n    type: 0xfe99\n")
    first, second = c.history.client_hellos
    assert (first.index, second.index) == (1, 3)
    hrr = c.history.server_hellos[0].hello
    assert isinstance(hrr, ServerHello) and hrr.is_hrr
    assert second.hello.extension(0xFE99) is not None
    assert first.hello.extension(0xFE99) is None


# -- type_index: the n-th record of one content type ------------------------------


def test_type_index_selects_the_nth_record_of_its_content_type() -> None:
    # TLS 1.2 (real Python ssl bytes): the server's records are its handshake flight,
    # then change_cipher_spec, Finished (handshake), the response, close_notify; index
    # counts all of them, type_index only those of content_type.
    flights = CONV12
    server = records_of(sent(flights, "server"))
    app = [i for i, r in enumerate(server, 1) if r.content_type == 23]
    assert app and app[0] > 1  # the first application_data record is not record 1
    outs, _ = run(flights, "  - match: {from: server, content_type: application_data, "
                           "type_index: 1}\n    action: drop\n")
    [ev] = fault_events(outs)
    assert ev["index"] == app[0] and ev["content_type"] == "application_data"
    got = records_of(received(outs, "client"))
    assert len(got) == len(server) - 1
    assert [r.raw for r in got] == [r.raw for i, r in enumerate(server, 1) if i != app[0]]
    # index: 1 with the same type never matches (record 1 is a handshake record).
    outs, _ = run(flights, "  - match: {from: server, content_type: application_data, "
                           "index: 1}\n    action: drop\n")
    assert fault_events(outs) == []
    # The second handshake record of the client (its key exchange flight or Finished).
    hs = [i for i, r in enumerate(records_of(sent(flights, "client")), 1)
          if r.content_type == 22]
    outs, _ = run(flights, "  - match: {from: client, content_type: handshake, "
                           "type_index: 2}\n    action: drop\n")
    assert [e["index"] for e in fault_events(outs)] == [hs[1]]


def test_type_index_is_validated_with_its_content_type() -> None:
    with pytest.raises(ScenarioError) as e:
        plan("  - match: {from: server, type_index: 2}\n    action: drop\n")
    assert "faults[1].match.type_index" in str(e.value)
    assert "give content_type beside it" in str(e.value)
    with pytest.raises(ScenarioError) as e:
        plan("  - match: {content_type: alert, encrypted: true, type_index: 1}\n"
             "    action: drop\n")
    assert "faults[1].match.encrypted" in str(e.value) and "use index" in str(e.value)
    with pytest.raises(ScenarioError) as e:
        plan("  - match: {after_ms: 5, type_index: 1, content_type: alert}\n"
             "    action: close\n")
    assert "cannot apply" in str(e.value)


def test_a_type_index_fault_lets_the_side_go_lean_once_its_record_went_by() -> None:
    planner = plan("  - match: {from: server, content_type: application_data, "
                   "type_index: 1}\n    action: drop\n")
    c = Connection("1", "c:1", "s:2", faults=planner)
    for side, data in CONV12:
        c.receive(side, data, 1.0)  # type: ignore[arg-type]
    assert planner.fired == [1]
    assert not planner.may_apply("server", 99)
    # Records are counted per type only for such a fault (idle connections' memory).
    assert planner.counts_types
    assert not plan("  - match: {from: server, index: 2}\n    action: drop\n").counts_types


@pytest.mark.parametrize("conv,faults_yaml,closed", [
    (CONV13, "  - match: {from: server, index: 1}\n    action: replace-with-alert\n"
             "    description: handshake_failure\n", {"client", "server"}),
    (CONV12, "  - match: {from: server, index: 2}\n    action: replace-with-raw\n"
             "    text: 'HTTP/1.1 400 Bad Request'\n", {"client", "server"}),
    (CONV13, "  - match: {from: client, index: 2}\n    action: close\n    toward: client\n",
     {"client"}),
    (CONV12, "  - match: {from: client, index: 2}\n    action: close\n    toward: server\n",
     {"server"}),
])
def test_what_a_side_sends_after_a_closing_fault_is_logged_as_undelivered(
        conv: list[tuple[str, bytes]], faults_yaml: str, closed: set[str]) -> None:
    """The log says which records never reached their receiver: exactly those the
    sender sent after a fault closed the stream toward the receiver. Oracle: the
    bytes each receiver got, record by record."""
    outs, _ = run(conv, faults_yaml)
    recs = [o.event for o in outs if isinstance(o, Emit) and o.event["event"] == "record"]
    assert any("fault" in ev for ev in recs)
    for sender in ("client", "server"):
        receiver = "server" if sender == "client" else "client"
        got = [r.raw for r in records_of(received(outs, receiver))]
        mine = [ev for ev in recs if ev["from"] == sender]
        raws = records_of(sent(conv, sender))
        assert len(raws) == len(mine)
        marked = [ev["index"] for ev in mine if "undelivered" in ev]
        assert bool(marked) == (receiver in closed)
        for ev, rec in zip(mine, raws, strict=True):
            if "fault" in ev:
                assert "undelivered" not in ev  # its fault says what became of it
            elif "undelivered" in ev:
                assert f"toward the {receiver} was closed by fault t: " in ev["undelivered"]
                assert rec.raw not in got or rec.content_type == 20  # (CCS bytes repeat)
            else:
                assert rec.raw in got
        # Everything after the first undelivered record is undelivered too.
        assert marked == list(range(marked[0], len(mine) + 1)) if marked else True


def test_non_tls_bytes_after_a_closing_fault_are_logged_as_undelivered() -> None:
    outs, c = run(CONV13[:2], "  - match: {from: server, index: 1}\n"
                              "    action: replace-with-alert\n"
                              "    description: handshake_failure\n")
    more = c.receive("client", b"GET / HTTP/1.1\r\n\r\n", 2.0)
    ev = next(o.event for o in more if isinstance(o, Emit) and o.event["event"] == "non_tls")
    assert "toward the server was closed by fault t: replace-with-alert on server record 1" \
        in ev["undelivered"]
    assert not [o for o in more if isinstance(o, Send)]
