"""README promises about `tlsinspector run` and the mitmdump options, each checked
through the real proxy process: the terminal view's line format, --quiet,
--no-app-records, --loop, the printed seed, every tlsinspector_* option under
plain mitmdump, transparent-rules' print mode and reproduce --server; and
"application data is never written to the log"."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conversation import conversation
from tests.proxyproc import Proxy
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.tlsserver import HelloServer
from tlsinspector.proxy.records import Record, RecordFramer

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def fetch(addr: str, certs: Certs, tls: str = "1.3") -> bytes:
    res = subprocess.run(
        ["openssl", "s_client", "-connect", addr, "-servername", "localhost", "-CAfile",
         str(certs.ca_cert), "-quiet", f"-tls{tls.replace('.', '_')}"],
        input=b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", capture_output=True, timeout=30)
    assert b"hello from the demo server" in res.stdout, res.stderr
    return res.stdout


def by_side(events: list[dict[str, Any]], kind: str = "record") -> dict[str, list[Any]]:
    return {s: [e for e in events if e["event"] == kind and e.get("from") == s]
            for s in ("client", "server")}


def test_terminal_view_has_the_readme_line_format(demo_server: HelloServer, certs: Certs,
                                                 tmp_path: Path) -> None:
    with Proxy(f"127.0.0.1:{demo_server.port}", tmp_path / "log.jsonl") as proxy:
        fetch(proxy.addr, certs)
        events = proxy.wait_closes(1)
        out = proxy.stop()
    [close] = [e for e in events if e["event"] == "close"]
    [connect] = [e for e in events if e["event"] == "connect"]
    lines = [x for x in out.splitlines() if x.startswith("[1] ")]
    # README: "[1] connect 127.0.0.1:50312 -> api.internal:443 (reverse)"
    assert lines[0] == f"[1] connect {connect['client']} -> {connect['server']} (reverse)"
    recs = [e for e in events if e["event"] == "record"]
    record_lines = [x for x in lines if re.match(r"\[1\] (C->S|S->C) #\d+ ", x)]
    assert len(record_lines) == len(recs)
    for line, ev in zip(record_lines, recs, strict=True):
        arrow = "C->S" if ev["from"] == "client" else "S->C"
        head = f"[1] {arrow} #{ev['index']} {ev['content_type']} {ev['version']} len={ev['length']}"
        assert line.startswith(head), (line, head)
    assert re.search(r"\| client_hello legacy_version=0x0303 versions=\['0x0304'", record_lines[0])
    sh = next(x for x in record_lines if "S->C #1 " in x)
    assert re.search(r"\| server_hello version=0x0304 suite=TLS_\w+ group=\w+", sh), sh
    assert any(x.endswith("(encrypted)") and "application_data" in x for x in record_lines)
    assert lines[-1] == (f"[1] close by {close['by']}: client sent {close['bytes']['client']} "
                         f"bytes, server sent {close['bytes']['server']} bytes")


def test_quiet_prints_no_records_and_no_app_records_counts_them_at_close(
        demo_server: HelloServer, certs: Certs, tmp_path: Path) -> None:
    with Proxy(f"127.0.0.1:{demo_server.port}", tmp_path / "all.jsonl") as proxy:
        fetch(proxy.addr, certs, "1.2")
        full = proxy.wait_closes(1)
    with Proxy(f"127.0.0.1:{demo_server.port}", tmp_path / "quiet.jsonl",
               extra=["--quiet", "--no-app-records"]) as proxy:
        fetch(proxy.addr, certs, "1.2")
        quiet = proxy.wait_closes(1)
        out = proxy.stop()
    assert not [x for x in out.splitlines() if x.startswith("[1]")], out
    [c_full] = [e for e in full if e["event"] == "close"]
    [c_quiet] = [e for e in quiet if e["event"] == "close"]
    logged_full, logged_quiet = by_side(full), by_side(quiet)
    for side in ("client", "server"):
        # By default every record has an event and the close event counts them all.
        assert c_full["records"][side] == len(logged_full[side])
        app = [r for r in logged_quiet[side] if r.get("content_type") == "application_data"]
        assert app == []
        # Without app records, the close event still counts every record on the wire:
        # the same TLS 1.2 exchange with the same peers has the same records.
        assert c_quiet["records"][side] == c_full["records"][side]
        assert c_quiet["records"][side] > len(logged_quiet[side])


def loaded_uvloop(pid: int) -> bool:
    return "uvloop" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_loop_option_chooses_the_event_loop(demo_server: HelloServer, certs: Certs,
                                            tmp_path: Path, loop: str) -> None:
    extra = [] if loop == "uvloop" else ["--loop", "asyncio"]  # uvloop is the default
    with Proxy(f"127.0.0.1:{demo_server.port}", tmp_path / "log.jsonl", extra=extra) as proxy:
        fetch(proxy.addr, certs)
        proxy.wait_closes(1)
        # uvloop's extension module is mapped only when it runs the loop.
        assert loaded_uvloop(proxy.proc.pid) == (loop == "uvloop")


def said_seed(proxy: Proxy, timeout: float = 20.0) -> None:
    """Wait for the seed line: the port opens before mitmproxy's running hook prints it."""
    deadline = time.monotonic() + timeout
    while "repeat with --seed" not in proxy.output():
        assert time.monotonic() < deadline, proxy.output()
        time.sleep(0.02)  # polling the proxy's output file for the line


def test_seed_is_printed_and_a_given_one_is_used(demo_server: HelloServer,
                                                tmp_path: Path) -> None:
    scen = str(CONFIGS / "slow-middlebox.yaml")
    with Proxy(f"127.0.0.1:{demo_server.port}", tmp_path / "a.jsonl", [scen],
               seed=-1) as proxy:
        said_seed(proxy)
        out = proxy.stop()
    m = re.search(r"seed (\d+) \(repeat with --seed (\d+)\)", out)
    assert m and m.group(1) == m.group(2), out
    with Proxy(f"127.0.0.1:{demo_server.port}", tmp_path / "b.jsonl", [scen],
               seed=4242) as proxy:
        said_seed(proxy)
        out = proxy.stop()
    assert "seed 4242 (repeat with --seed 4242)" in out, out


def test_every_mitmdump_option(demo_server: HelloServer, certs: Certs, tmp_path: Path) -> None:
    """tlsinspector_log, _scenarios, _seed, _quiet and _app_records under plain mitmdump."""
    with Proxy(f"127.0.0.1:{demo_server.port}", tmp_path / "log.jsonl",
               [str(CONFIGS / "slow-middlebox.yaml")], mitmdump=True,
               extra=["--set", "tlsinspector_seed=77", "--set", "tlsinspector_quiet=true",
                      "--set", "tlsinspector_app_records=false"]) as proxy:
        fetch(proxy.addr, certs)
        events = proxy.wait_closes(1)
        out = proxy.stop()
    assert "seed 77 (repeat with --seed 77)" in out                  # _seed
    assert not [x for x in out.splitlines() if x.startswith("[1]")]  # _quiet
    recs = [e for e in events if e["event"] == "record"]
    assert not [r for r in recs if r.get("content_type") == "application_data"]  # _app_records
    assert [f["scenario"] for r in recs if "fault" in r                          # _scenarios
            for f in (r["fault"] if isinstance(r["fault"], list) else [r["fault"]])]


def test_application_data_is_never_written_to_the_log() -> None:
    """README: only record headers and lengths. No 8-byte window of any application_data
    payload appears in the events, as hex, base64 or latin-1 text, under every shipped
    scenario either."""
    import random

    from tests.test_events_schema import engine_events
    from tlsinspector.proxy.faults import FaultPlanner
    from tlsinspector.proxy.scenario import load_scenario

    secret = b"SECRET-request-body-7f3a" * 4
    for version in ("1.2", "1.3"):
        flights = conversation(version, request=b"POST / HTTP/1.1\r\n\r\n" + secret,
                               response=b"HTTP/1.1 200 OK\r\n\r\n" + secret)
        payloads = [r.payload for _, data in flights for r in RecordFramer().feed(data)
                    if isinstance(r, Record) and r.content_type == 23]
        assert payloads
        runs = [engine_events(flights)] + [
            engine_events(flights, FaultPlanner([load_scenario(p)], 1, random.Random(1)))
            for p in sorted(CONFIGS.glob("*.yaml"))]
        for events in runs:
            text = json.dumps(events)
            for p in payloads:
                for i in range(0, max(1, len(p) - 8), 8):
                    w = p[i : i + 8]
                    assert w.hex() not in text and w.hex().upper() not in text
                    assert base64.b64encode(w)[:8].decode() not in text
                    assert json.dumps(w.decode("latin-1"))[1:-1] not in text


def test_transparent_rules_print_mode_prints_valid_rules_and_applies_nothing() -> None:
    run = [sys.executable, "-m", "tlsinspector", "transparent-rules", "--port", "8080",
           "--dport", "443"]
    before = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True,
                            timeout=30, check=True).stdout
    nft = subprocess.run(run, capture_output=True, text=True, timeout=30, check=True).stdout
    script = nft[nft.index("table inet tlsinspector"):nft.index("\nEOF")]
    assert "tcp dport 443 redirect to :8080" in script
    assert "hook prerouting priority -100" in script
    # nft itself parses it (-c: check only, nothing is installed).
    subprocess.run(["nft", "-c", "-f", "-"], input=script, text=True, timeout=30, check=True)
    assert "# remove: nft delete table inet tlsinspector" in nft
    ipt = subprocess.run(run + ["--backend", "iptables", "--placement", "local",
                                "--exempt-uid", "0"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert ipt.splitlines() == [
        f"{tool} -t nat -A OUTPUT -m owner '!' --uid-owner 0 -p tcp --dport 443 "
        "-j REDIRECT --to-ports 8080" for tool in ("iptables", "ip6tables")]
    after = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True,
                           timeout=30, check=True).stdout
    assert after == before


def test_reproduce_against_your_own_server(demo_server: HelloServer, certs: Certs,
                                           tmp_path: Path) -> None:
    """`reproduce --server HOST:PORT`: the scenario runs in front of the given server."""
    res = subprocess.run(
        [sys.executable, "-m", "tlsinspector", "reproduce", "record-version-3030",
         "--client", "python", "--server", f"127.0.0.1:{demo_server.port}",
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120)
    logs = sorted((tmp_path / "out").rglob("*.jsonl"))
    assert logs, res.stdout + res.stderr
    events = [json.loads(x) for log in logs for x in log.read_text().splitlines() if x]
    [connect] = [e for e in events if e["event"] == "connect"]
    assert connect["server"] == f"127.0.0.1:{demo_server.port}"
    faulted = [e for e in events if e["event"] == "record" and "fault" in e]
    assert faulted and faulted[0]["fault"][0]["action"] == "set-record-version"
    assert "python" in res.stdout
