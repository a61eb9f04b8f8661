"""The engine with real conversations: transparency, events, encryption tracking."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conversation import conversation
from tlsinspector.proxy.engine import Close, Connection, Emit, Output, Send

CONV13 = conversation("1.3")
CONV12 = conversation("1.2")


Result = tuple[dict[str, bytes], list[dict[str, Any]], list[Output]]


def run(flights: list[tuple[str, bytes]], cuts: list[int] | None = None,
        conn: Connection | None = None) -> Result:
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
    outs += c.eof("client", 2.0)
    outs += c.eof("server", 2.0)
    outs += c.finish(2.0)
    got = {"client": b"", "server": b""}
    for o in outs:
        if isinstance(o, Send):
            got[o.to] += o.data
    events = [o.event for o in outs if isinstance(o, Emit)]
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
    assert non_tls[0]["preview"].startswith("GET / HTTP/1.1")


def test_partial_record_at_close_is_forwarded_and_logged() -> None:
    data = sent(CONV13, "client")[:100]
    got, events, _ = run([("client", data)])
    assert got["server"] == data
    [rec] = records(events, "client")
    assert rec["unparsed"].startswith("partial record at close")



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
