"""The HTML reports rendered by a real browser (Debian's chromium, headless).

The ladder of a real run of a shipped scenario (record-version-3030 with Go's
crypto/tls and wolfSSL) is read back from the rendered DOM; the page makes no
network request (chromium's net log); screenshots stay in the test's tmp folder.
"""

from __future__ import annotations

import html
import json
import re
import time
from pathlib import Path

import pytest

from tests.browser import Rendered, dump_dom, page_requests, screenshot
from tlsinspector import CONFIGS
from tlsinspector.cli import main
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.reproduce import Verdict, reproduce

GO_ERROR = "tls: received record with version 3030 when expecting version 303"


@pytest.fixture(scope="module")
def run_3030(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> tuple[Path, list[Verdict]]:
    out = tmp_path_factory.mktemp("reproduce-3030")
    verdicts = reproduce(CONFIGS / "record-version-3030.yaml", ["go", "wolfssl"], out_dir=out,
                         certs=certs)
    return out, verdicts


def _rendered(tmp_path: Path, name: str, events: list[dict[str, object]]) -> Rendered:
    """``events`` written as NAME.jsonl, `tlsinspector report` on it, the page's DOM
    once its script has drawn it (data-ready)."""
    log = tmp_path / f"{name}.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for e in events))
    out = tmp_path / f"{name}.html"
    assert main(["report", str(log), "-o", str(out)]) == 0
    r = dump_dom(out.as_uri(), tmp_path)
    assert 'data-ready="1"' in r.dom
    return r


def _text(dom: str) -> str:
    """The page's visible text, roughly: tags out, entities decoded."""
    dom = re.sub(r"<script\b.*?</script>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", dom))


def _elements(dom: str, cls: str) -> list[str]:
    return [html.unescape(re.sub(r"<[^>]+>", "", m)) for m in
            re.findall(rf'<span class="{cls}">(.*?)</span>', dom, flags=re.S)]


def test_reproduce_report_shows_fault_before_after_diagnosis_and_client_error(
        run_3030: tuple[Path, list[Verdict]]) -> None:
    out, verdicts = run_3030
    assert [v.reproduced for v in verdicts] == [True, True]
    report = out / "report.html"
    r = dump_dom(report.as_uri(), out)
    assert 'data-ready="1"' in r.dom, "the script did not run (CSP hash mismatch?)"
    # The faulted record drawn twice: as it arrived (0x0303) and as it left (0x3030).
    assert "version 0x0303" in _elements(r.dom, "before")
    assert "version 0x3030" in _elements(r.dom, "after")
    text = _text(r.dom)
    assert "as it arrived: handshake 0x0303" in text
    assert "as it left: handshake 0x3030" in text
    assert "record-version-3030 / set-record-version" in text
    # The diagnosis beside the lane, with its RFC link and evidence pointing at S2.
    assert re.search(r'<div class="code">record-version-invalid</div>', r.dom)
    assert 'href="https://www.rfc-editor.org/rfc/rfc8446#section-5.1"' in r.dom
    assert re.search(r'<a href="#conn-\d+-server-2">server record 2', r.dom)
    assert re.search(r'<div class="row rec faulted[^"]*" id="conn-\d+-server-2"', r.dom)
    # The verdict: expected and actual outcome, the client's own error text.
    said = re.findall(r'<td class="errtext client-error"><span>(.*?)</span>', r.dom)
    assert any(GO_ERROR in html.unescape(s) for s in said)
    assert "REPRODUCED" in text and "NOT REPRODUCED" not in text
    assert page_requests(r.netlog) == []
    png = screenshot(report.as_uri(), out / "report.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    print(f"screenshot: {png}")


def test_record_link_opens_its_decoded_fields(run_3030: tuple[Path, list[Verdict]]) -> None:
    out, _ = run_3030
    lanes = [json.loads(x) for x in (out / "inspector.jsonl").read_text().splitlines()]
    conn = next(e["conn"] for e in lanes if e["event"] == "connect")
    r = dump_dom((out / "report.html").as_uri() + f"#conn-{conn}-client-1", out)
    panel = r.dom[r.dom.index('<div class="fields">'):]
    panel = html.unescape(panel[:panel.index('<div class="row')])  # up to the next arrow
    hello = next(e for e in lanes if e["event"] == "record" and e["conn"] == conn)["messages"][0]
    for ext in hello["extensions"]:
        assert f">{ext['type']}<" in panel
    for suite in hello["cipher_suites"]:
        assert suite in panel
    assert hello["random"] in panel and hello["ja4"] in panel


def test_matrix_index_links_each_cell_to_its_lane(run_3030: tuple[Path, list[Verdict]],
                                                  tmp_path: Path) -> None:
    from tlsinspector.lab.report_pages import write_matrix_index
    from tlsinspector.proxy.scenario import load_scenario

    out, verdicts = run_3030
    index = write_matrix_index(out.parent / "index.html",
                               [load_scenario(CONFIGS / "record-version-3030.yaml")],
                               verdicts, ["go", "wolfssl", "curl"])
    r = dump_dom(index.as_uri(), tmp_path)
    links = re.findall(r'<td class="(exp-\w+)"[^>]*><a href="([^"]+)">', r.dom)
    assert [c for c, _ in links] == ["exp-error", "exp-ok"]
    for _, href in links:
        target, lane = href.split("#")
        assert (out.parent / target).is_file() and re.fullmatch(r"conn-\d+", lane)
    assert "transcript-safe" in _text(r.dom)
    assert page_requests(r.netlog) == []
    screenshot(index.as_uri(), tmp_path / "matrix.png", 1200, 400)


@pytest.mark.handmade_logs  # reader input written by hand, not the product's log
def test_peer_controlled_values_stay_text(tmp_path: Path) -> None:
    sni = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='x'\">"
    events = [
        {"event": "connect", "ts": 1.0, "conn": "1", "client": "a:1", "server": "b:2",
         "mode": "reverse"},
        {"event": "record", "ts": 1.1, "conn": "1", "from": "client", "index": 1,
         "content_type": "handshake", "version": "0x0301", "length": 9, "encrypted": False,
         "messages": [{"type": "client_hello", "sni": sni, "alpn": ["</script><b>x"],
                       "cipher_suites": [], "ja4": "t13d"}]},
        {"event": "close", "ts": 1.2, "conn": "1", "by": "client", "sni": sni,
         "bytes": {"client": 9, "server": 0},
         "diagnosis": [{"code": "<i>c</i>", "summary": sni, "evidence": [sni],
                        "reference": "RFC 8446 <b>"}]},
    ]
    r = _rendered(tmp_path, "hostile", events)
    assert "<title>tlsinspector report: hostile.jsonl</title>" in r.dom
    assert "<img" not in r.dom and "<i>c" not in r.dom and "<b>" not in r.dom
    assert r.dom.count("<script") == 2          # the data block and the report's own
    assert "SNI " + sni in _text(r.dom)         # shown, as text
    assert page_requests(r.netlog) == []        # src=x would have asked for file:///x


def test_net_log_check_catches_a_page_that_loads_something(tmp_path: Path) -> None:
    page = tmp_path / "planted.html"
    page.write_text('<html><body><img src="http://127.0.0.1:9/x.png"></body></html>')
    r = dump_dom(page.as_uri(), tmp_path)
    assert page_requests(r.netlog) == ["http://127.0.0.1:9/x.png"]


def _big_log(real: Path, n: int, into: Path) -> None:
    """n connections, each a copy of a real one with its own id, SNI and client port."""
    events = [json.loads(x) for x in real.read_text().splitlines()]
    first = events[0]["conn"]
    one = [e for e in events if e.get("conn") == first]
    with into.open("w") as f:
        for i in range(n):
            sni = f"host-{i}.example"
            for e in one:
                e = dict(e, conn=str(i + 1), ts=e["ts"] + i * 0.01)
                if e["event"] == "close":
                    e["sni"] = sni
                    if i % 1000 == 7:
                        e["diagnosis"] = [*e["diagnosis"], {"code": "rare-code", "summary": "s",
                                                            "evidence": [], "reference": ""}]
                f.write(json.dumps(e) + "\n")


def test_ten_thousand_connections_render_in_time(run_3030: tuple[Path, list[Verdict]],
                                                 tmp_path: Path) -> None:
    out, _ = run_3030
    log = tmp_path / "big.jsonl"
    _big_log(out / "inspector.jsonl", 10_000, log)
    report = tmp_path / "big.html"
    start = time.monotonic()
    assert main(["report", str(log), "-o", str(report)]) == 0
    built = time.monotonic() - start
    r = dump_dom(report.as_uri(), tmp_path, timeout=120)
    print(f"10,000 connections: {log.stat().st_size / 1e6:.1f} MB log, "
          f"{report.stat().st_size / 1e6:.1f} MB html, built in {built:.1f} s, "
          f"rendered in {r.seconds:.1f} s")
    assert 'data-ready="1"' in r.dom
    assert "showing 200 of 10000 matching (10000 connections)" in r.dom
    assert r.dom.count('class="lane"') == 200              # collapsed, paged
    f = dump_dom(report.as_uri() + "?code=rare-code", tmp_path, timeout=120)
    assert "showing 10 of 10 matching" in f.dom
    s = dump_dom(report.as_uri() + "?sni=host-4242.example", tmp_path, timeout=120)
    assert "showing 1 of 1 matching" in s.dom and "SNI host-4242.example" in _text(s.dom)
    screenshot(report.as_uri() + "?code=rare-code", tmp_path / "big.png")


DELAY_REJECT = """\
name: delay-then-reject
description: the ServerHello held 600 ms, then the client's second record answered with an alert
expect:
  python: {outcome: error}
faults:
  - match: {from: server, index: 1}
    action: delay
    ms: 600
  - match: {from: client, index: 2}
    action: reply-alert
    level: fatal
    description: handshake_failure
"""


def test_delay_drop_reply_and_close_are_drawn(tmp_path: Path, certs: Certs) -> None:
    scenario = tmp_path / "delay-then-reject.yaml"
    scenario.write_text(DELAY_REJECT)
    [v] = reproduce(scenario, ["python"], out_dir=tmp_path / "run", certs=certs)
    assert v.reproduced, v.differences
    r = dump_dom((tmp_path / "run" / "report.html").as_uri(), tmp_path)
    # The hold is a gap to scale (0.2 px per ms), the departure 600 ms after the arrival.
    assert re.search(r'<div class="gap held" style="height: 120px;"><span class="gaplabel">'
                     r'held 600 ms at the inspector</span>', r.dom)
    text = _text(r.dom)
    assert "600 ms later" in text
    # reply-alert: the record ends at the inspector, the alert goes back to its sender.
    assert "\u2715 dropped" in text
    assert "alert fatal handshake_failure (answer to the sender)" in text
    assert "\u26a1 FIN from inspector" in text         # the fatal alert closes both ways
    assert "alert-handshake-failure" in text
    screenshot((tmp_path / "run" / "report.html").as_uri(), tmp_path / "delay.png", 1300, 1000)


def test_a_capture_gap_and_a_note_are_drawn_with_their_text(tmp_path: Path) -> None:
    """analyze's gap and note events carry no message field: the ladder drew 'gap:'
    and 'note:' with nothing after them."""
    events = [
        {"event": "connect", "ts": 1.0, "conn": "1", "client": "a:1", "server": "b:2",
         "mode": "capture"},
        {"event": "note", "ts": 1.0, "conn": "1", "note": "client and server told by port"},
        {"event": "gap", "ts": 1.1, "conn": "1", "from": "server", "offset": 0,
         "missing": 778, "after_packet": None, "before_packet": 8, "undecoded": 5744,
         "note": "bytes missing from the capture"},
        {"event": "close", "ts": 1.2, "conn": "1", "by": "client",
         "bytes": {"client": 9, "server": 0}, "records": {"client": 1, "server": 0},
         "diagnosis": []},
    ]
    r = _rendered(tmp_path, "gap", events)
    text = _text(r.dom)
    assert ("gap: 778 bytes from the server missing from the capture at offset 0, "
            "not decoded past it") in text
    assert "note: client and server told by port" in text
