"""The report generator without a browser: summaries, fault views, escaping, CSP."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import pytest

from tlsinspector.cli import main
from tlsinspector.report import (
    connections,
    fault_view,
    read_log,
    record_summary,
    render,
    rfc_links,
)

HELLO = {"event": "record", "ts": 10.0, "conn": "7", "from": "client", "index": 1,
         "content_type": "handshake", "version": "0x0301", "length": 200, "encrypted": False,
         "messages": [{"type": "client_hello", "legacy_version": "0x0303",
                       "supported_versions": ["0x0304", "0x0303"], "sni": "api.example",
                       "alpn": ["h2"], "cipher_suites": ["TLS_AES_128_GCM_SHA256"] * 3,
                       "ja4": "t13d0301h2_abc_def"}]}


def test_hello_summary_names_versions_sni_suites_and_ja4() -> None:
    s = record_summary(HELLO)
    assert s == ("client_hello versions 0x0304,0x0303 SNI api.example ALPN h2 3 suites "
                 "JA4 t13d0301h2_abc_def")


def test_alert_encrypted_and_decrypted_summaries() -> None:
    alert = {"content_type": "alert", "alert": {"level": "fatal",
                                                 "description": "handshake_failure", "code": 40}}
    assert record_summary(alert) == "alert fatal handshake_failure (40)"
    assert record_summary({"encrypted": True}) == "encrypted"
    events = [
        {"event": "record", "ts": 1.0, "conn": "1", "from": "server", "index": 3,
         "content_type": "application_data", "version": "0x0303", "length": 40,
         "encrypted": True},
        {"event": "decrypted", "ts": 1.5, "conn": "1", "from": "server", "index": 3,
         "content_type": "handshake", "messages": [{"type": "encrypted_extensions"}]},
    ]
    [lane] = connections(events)
    [rec] = lane["items"]
    assert rec["decrypted"]["messages"] == [{"type": "encrypted_extensions"}]
    assert rec["sum"] == "encrypted | decrypted: handshake encrypted_extensions"


def test_decrypted_field_and_late_event_forms() -> None:
    rec = {"event": "record", "ts": 1.0, "conn": "1", "from": "client", "index": 4,
           "content_type": "application_data", "version": "0x0303", "length": 60,
           "encrypted": True,
           "decrypted": {"status": "decrypted", "inner_type": "alert",
                         "alert": {"level": "fatal", "description": "bad_record_mac",
                                   "code": 20}}}
    assert record_summary(rec) == "encrypted | decrypted: alert fatal bad_record_mac (20)"
    late = {"event": "decrypted", "ts": 2.0, "conn": "1", "record": {"side": "client",
                                                                    "index": 4},
            "decrypted": {"status": "decrypted", "inner_type": "application_data",
                          "length": 17}}
    [lane] = connections([dict(rec, decrypted=None), late])
    assert lane["items"][0]["sum"] == "encrypted | decrypted: application_data 17 bytes"
    pending = {"status": "undecryptable", "reason": "no keys"}
    assert record_summary({"encrypted": True, "decrypted": pending}) == (
        "encrypted | decryption undecryptable: no keys")


def test_decrypted_event_without_its_record_is_kept() -> None:
    [lane] = connections([{"event": "decrypted", "ts": 1.0, "conn": "1", "from": "client",
                           "index": 9, "content_type": "alert",
                           "alert": {"level": "warning", "description": "close_notify",
                                     "code": 0}}])
    assert lane["items"][0]["sum"] == "decrypted: alert warning close_notify (0)"


@pytest.mark.parametrize("fault, kind, before, after", [
    ({"action": "set-record-version", "detail": {"before": "0x0303", "after": "0x3030"}},
     "change", "version 0x0303", "version 0x3030"),
    ({"action": "drop", "detail": {"dropped": 89}}, "drop", "89 bytes", "dropped"),
    ({"action": "delay", "detail": {"ms": 1500}}, "delay", "at once", "1500 ms later"),
    ({"action": "close", "detail": {"how": "rst", "toward": "both"}}, "close", "open",
     "rst toward both"),
    ({"action": "reply-alert", "detail": {"dropped": 1, "alert": "fatal handshake_failure"}},
     "reply", "handshake", "dropped; sender gets alert fatal handshake_failure"),
    ({"action": "remove-extensions",
      "detail": {"before": ["server_name", "key_share"], "after": {"removed": ["server_name"]}}},
     "change", "[server_name, key_share]", "{removed: [server_name]}"),
])
def test_fault_views(fault: dict[str, object], kind: str, before: str, after: str) -> None:
    v = fault_view({"content_type": "handshake", "version": "0x0303"},
                   {"scenario": "s", **fault})
    assert (v["kind"], v["before"], v["after"]) == (kind, before, after)
    if kind == "delay":
        assert v["ms"] == 1500


def test_rfc_links() -> None:
    assert [x["url"] for x in rfc_links("RFC 8446 4.2.1, D; RFC 5246 E.1")] == [
        "https://www.rfc-editor.org/rfc/rfc8446#section-4.2.1",
        "https://www.rfc-editor.org/rfc/rfc8446#appendix-D",
        "https://www.rfc-editor.org/rfc/rfc5246#appendix-E.1"]
    assert rfc_links("RFC 7457") == [{"text": "RFC 7457",
                                      "url": "https://www.rfc-editor.org/rfc/rfc7457"}]
    # Something that is no section name becomes the RFC's page, not a crafted anchor.
    assert rfc_links('RFC 1 "><b>')[0]["url"] == "https://www.rfc-editor.org/rfc/rfc1"


def test_lane_fields_for_the_filters() -> None:
    close = {"event": "close", "ts": 10.2, "conn": "7", "by": "client",
             "bytes": {"client": 1, "server": 2},
             "diagnosis": [{"code": "x-code", "summary": "s", "reference": "RFC 8446 5.1",
                            "evidence": ["client record 1: ClientHello", "not a record"]}]}
    faulted = dict(HELLO, index=2, fault=[{"scenario": "sc", "action": "drop",
                                            "detail": {"dropped": 5}}])
    [lane] = connections([{"event": "connect", "ts": 9.9, "conn": "7", "client": "a:1",
                           "server": "b:2", "mode": "reverse"}, HELLO, faulted, close])
    assert (lane["sni"], lane["outcome"], lane["codes"]) == ("api.example", "incomplete",
                                                            ["x-code"])
    assert lane["fault_names"] == ["sc: drop"] and lane["id"] == "conn-7"
    assert lane["items"][-1]["diagnosis"][0]["points"] == [["client", 1], None]


def _csp_hashes(page: str) -> set[str]:
    return set(re.findall(r"'sha256-([^']+)'", page))


def test_page_is_self_contained_and_pinned_by_csp() -> None:
    page = render([HELLO])
    assert "default-src 'none'" in page
    blocks = re.findall(r"<(style|script)>(.*?)</\1>", page, flags=re.S)
    assert {b[0] for b in blocks} == {"style", "script"}
    digests = {base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
               for _, body in blocks}
    assert digests == _csp_hashes(page)
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert "@import" not in page and "url(" not in page


def test_log_values_cannot_close_the_data_block() -> None:
    evil = "</script><script>alert(1)</script><!--"
    page = render([dict(HELLO, messages=[{"type": "client_hello", "sni": evil,
                                          "cipher_suites": []}])], title="<b>t</b>")
    assert evil not in page and "<b>t</b>" not in page
    data = page[page.index('id="data">') + 10: page.index("</script>")]
    assert "<" not in data and ">" not in data
    lanes = json.loads(data)["lanes"]
    assert lanes[0]["sni"] == evil


@pytest.mark.handmade_logs  # reader input written by hand, not the product's log
def test_bad_lines_are_skipped_and_counted(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "x.jsonl"
    log.write_bytes((json.dumps(HELLO) + "\n{broken\n[1, 2]\n\n").encode() + b"\xff\xfe\n"
                    + (json.dumps(HELLO) + "\n").encode())
    assert read_log(log).bad_lines == [2, 3, 5]
    out = tmp_path / "x.html"
    assert main(["report", str(log), "-o", str(out)]) == 0
    # The count alone left the user to search the log for them.
    assert "3 unreadable lines skipped (lines 2, 3, 5)" in capsys.readouterr().out
    assert '"bad_lines":[2,3,5]' in out.read_text()
    # Nothing but unreadable lines (a capture, the terminal view): an error, no page.
    junk = tmp_path / "view.txt"
    junk.write_text("[1] connect 127.0.0.1:1 -> 127.0.0.1:2 (reverse)\n\x00\x01\n")
    assert main(["report", str(junk), "-o", str(tmp_path / "junk.html")]) == 2
    assert "no tlsinspector event in any of its 2 lines" in capsys.readouterr().err
    assert not (tmp_path / "junk.html").exists()


def test_missing_log_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "o.html")]) == 2
    assert "cannot read the log" in capsys.readouterr().err
    assert not (tmp_path / "o.html").exists()


def test_matrix_page_escapes_scenario_text(tmp_path: Path) -> None:
    from tlsinspector.lab.report_pages import matrix_html
    from tlsinspector.lab.reproduce import Verdict
    from tlsinspector.proxy.scenario import load_scenario

    f = tmp_path / "evil.yaml"
    f.write_text("name: evil\ndescription: '<script>x</script>'\nexpect:\n  go: {outcome: ok}\n"
                 "faults:\n  - match: {from: server, index: 2}\n    action: drop\n")
    s = load_scenario(f)
    v = Verdict("evil", "go", False, "error", "<img src=x>", ["outcome: expected ok"],
                [{"event": "connect", "conn": "3"}], tmp_path / "evil")
    page = matrix_html([s], [v], ["go", "curl"], tmp_path)
    assert "<script>x" not in page and "<img" not in page
    assert 'class="unexp-error"' in page and 'href="evil/report.html#conn-3"' in page


def test_records_after_a_closing_fault_are_not_delivered() -> None:
    def rec(side: str, index: int, ct: str = "application_data", **kw: object) -> dict[str, object]:
        return {"event": "record", "ts": 1.0, "conn": "1", "from": side, "index": index,
                "content_type": ct, "version": "0x0303", "length": 5, "encrypted": True, **kw}

    raw = {"scenario": "p", "action": "replace-with-raw",
           "detail": {"before": 90, "after": 20, "preview": "HTTP/1.1 400"}}
    [lane] = connections([rec("client", 1), rec("server", 1, "handshake", fault=raw),
                          rec("server", 2), rec("client", 2)])
    items = lane["items"]
    assert [bool(r.get("undelivered")) for r in items] == [False, False, True, True]
    assert items[1]["faults"][0]["closes"] == "both"
    assert lane["outcome"] == "incomplete"      # application data never got through
    close = {"scenario": "c", "action": "close", "detail": {"how": "rst", "toward": "server"}}
    [lane] = connections([rec("client", 1, "handshake", fault=close), rec("server", 1),
                          rec("client", 2)])
    assert [bool(r.get("undelivered")) for r in lane["items"]] == [False, False, True]


def test_a_log_that_says_undelivered_is_believed_with_its_reason() -> None:
    # A close by a timer fault is on no record: only the log's own field tells.
    why = "the stream toward the client was closed by fault t: close (a timer)"
    [lane] = connections([
        {"event": "record", "ts": 1.0, "conn": "1", "from": "server", "index": 1,
         "content_type": "application_data", "version": "0x0303", "length": 5,
         "encrypted": True, "undelivered": why}])
    assert lane["items"][0]["undelivered"] == why


@pytest.mark.handmade_logs  # reader input written by hand, not the product's log
def test_the_report_path_is_refused_when_a_symbolic_link(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """As run's and analyze's --log: a link planted at -o's path (a shared folder) is
    not followed, so the file it names is not overwritten; exit 2 with the reason."""
    log = tmp_path / "x.jsonl"
    log.write_text(json.dumps(HELLO) + "\n")
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "r.html").symlink_to(victim)
    assert main(["report", str(log), "-o", str(tmp_path / "r.html")]) == 2
    assert "is a symbolic link; refusing to follow it" in capsys.readouterr().err
    assert victim.read_text() == "precious"
    # A regular file there is rewritten whole, as before.
    (tmp_path / "r.html").unlink()
    (tmp_path / "r.html").write_text("x" * 100_000)
    assert main(["report", str(log), "-o", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "xxxx" not in page


def test_the_summary_line_counts_in_the_singular_when_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """"1 connections, 1 events", "1 lines": one of each is said in the singular."""
    from tlsinspector import report

    log = tmp_path / "one.log"  # not .jsonl: the suite checks those against the schema
    log.write_text('{"event": "connect", "ts": 1.0, "conn": "1", "client": "c:1", '
                   '"server": "s:2", "mode": "reverse"}\nnot json\n')
    assert report.main(str(log), str(tmp_path / "one.html")) == 0
    out = capsys.readouterr().out
    assert out.endswith(": 1 connection, 1 event, 1 unreadable line skipped (line 2)\n"), out
    bad = tmp_path / "bad.log"
    bad.write_text("not json\n")
    assert report.main(str(bad), str(tmp_path / "bad.html")) == 2
    assert "no tlsinspector event in any of its 1 line;" in capsys.readouterr().err


def test_control_characters_in_a_peers_sni_stay_visible_as_in_the_terminal() -> None:
    """An ESC or a bidi override in the SNI would sit invisible in the page (showing
    'evil[31mred' for what was sent as 'evil<ESC>[31mred'): the lane and the hello's
    summary show it escaped, as the terminal view does."""
    hostile = "evil\x1b[31mred\u202e"
    hello = json.loads(json.dumps(HELLO))
    hello["messages"][0]["sni"] = hostile
    close = {"event": "close", "ts": 10.2, "conn": "7", "by": "client", "sni": hostile,
             "bytes": {"client": 1, "server": 2}, "diagnosis": []}
    assert "SNI evil\\x1b[31mred\\u202e ALPN" in record_summary(hello)
    [lane] = connections([hello, close])
    assert lane["sni"] == "evil\\x1b[31mred\\u202e"
    [lane] = connections([hello])
    assert lane["sni"] == "evil\\x1b[31mred\\u202e"


def test_a_timer_fault_is_drawn_with_what_it_did() -> None:
    """An after_ms close with how: rst has no record: the timer item carries its fault
    view (a close, rst) and a summary, so the lane shows "timer: ..." and its close as
    RST (it showed "timer: " with nothing, and the close as FIN)."""
    from tests.test_match_keys import CONV13, timer_conn
    from tlsinspector.proxy.engine import Emit

    c = timer_conn("  - match: {after_ms: 300}\n    action: close\n    how: rst\n")
    outs = list(c.start(10.0))
    outs += c.receive("client", CONV13[0][1], 10.1)
    outs += c.wakeup(10.3)
    outs += c.finish(10.4, by="proxy")
    events = [o.event for o in outs if isinstance(o, Emit)]
    [lane] = connections(events)
    [timer] = [i for i in lane["items"] if i["event"] == "timer"]
    [view] = timer["faults"]
    assert view["kind"] == "close" and view["after"].startswith("rst")
    assert timer["sum"] == f"t: close ({view['after']})"
    assert lane["fault_names"] == ["t: close"]


def test_plaintext_lines_and_their_faults_are_in_the_lane() -> None:
    """A STARTTLS phase: each line is labelled as the terminal shows it, and a
    plaintext fault (drop-line, reply-error, replace-text) is drawn on its line and
    offered in the fault filter (the report had no faulted row for them)."""
    def line(ts: float, side: str, fault: dict[str, object] | None = None,
             **fields: object) -> dict[str, object]:
        ev: dict[str, object] = {"event": "plaintext", "ts": ts, "conn": "1", "from": side,
                                 "protocol": "smtp", "length": 10, **fields}
        if fault is not None:
            ev["fault"] = [{"class": "transcript-safe", **fault}]
        return ev

    events = [
        {"event": "connect", "ts": 1.0, "conn": "1", "client": "a", "server": "b",
         "mode": "reverse"},
        line(1.1, "server", {"scenario": "d", "action": "drop-line",
                             "detail": {"dropped": 14}}, status="250-", words=["SIZE"]),
        line(1.2, "client", {"scenario": "r", "action": "reply-error",
                             "detail": {"dropped": 10,
                                        "answered_sender": "454 4.7.0 TLS not available\r\n"}},
             verb="STARTTLS", starttls="requested"),
        line(1.3, "server", status="220", words=["Ready", "to", "start", "TLS"],
             starttls="accepted"),
    ]
    [lane] = connections(events)
    items = [i for i in lane["items"] if i["event"] == "plaintext"]
    assert [i["sum"] for i in items] == [
        "smtp 250-SIZE", "smtp STARTTLS [STARTTLS requested]",
        "smtp 220 Ready to start TLS [STARTTLS accepted]"]
    assert [(f["kind"], f["after"]) for i in items for f in i["faults"]] == [
        ("drop", "dropped"), ("reply", "dropped; sender gets 454 4.7.0 TLS not available")]
    assert lane["fault_names"] == ["d: drop-line", "r: reply-error"]
