"""Every CLI flag and every mitmdump option has a test that uses it (issue 20, item 4).

USES names, for each flag of each subcommand (read from the CLI's own argparse
parser) and each ``tlsinspector_*`` option (read from the addons' ``add_option`` calls),
the test or test helper that passes it; the first test fails when a flag or option has
no entry or its entry does not use it, so one added without a test fails here. The
tests below it exercise the flags no other test used: ``run --protocol``,
``--log-preview`` and ``--pcap-max-mb``, ``demo --log``, ``reproduce --listen`` and
``--server-port``, ``matrix``, ``report --title/--out``, and the options plain mitmdump
had not been given.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from tests.proxyproc import Proxy
from tests.starttls_peers import smtp_server
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.peers import free_port
from tlsinspector.lab.tlsserver import HelloServer

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
HERE = "tests/test_cli_flags.py"

# Where each flag is used: (file, function or class, the flags it passes), "run --x"
# for a subcommand's flag, "mitmdump tlsinspector_x" for an option under mitmdump.
USES: list[tuple[str, str, tuple[str, ...]]] = [
    ("lab/inspector.py", "InspectorProcess",
     ("run --listen", "run --upstream", "run --scenario", "run --log", "run --keylog",
      "run --seed", "mitmdump tlsinspector_log", "mitmdump tlsinspector_scenarios",
      "mitmdump tlsinspector_keylog")),
    ("tests/test_eager.py", "_check_mode",
     ("run --mode",)),
    ("tests/test_keyhold_live.py", "_run",
     ("run --key-wait-ms",)),
    (HERE, "test_run_protocol_log_preview_and_pcap_max_mb",
     ("run --protocol", "run --log-preview", "run --pcap-max-mb")),
    ("tests/test_cli_promises.py", "test_loop_option_chooses_the_event_loop",
     ("run --loop",)),
    ("tests/test_cli_promises.py",
     "test_quiet_prints_no_records_and_no_app_records_counts_them_at_close",
     ("run --quiet", "run --no-app-records")),
    ("tests/test_liveview.py", "test_live_view_shows_a_connection_made_after_the_page_opened",
     ("run --web",)),
    ("tests/test_limits.py", "test_max_held_bounds_memory_and_says_so",
     ("run --max-held",)),
    ("tests/test_limits.py", "test_idle_timeout_closes_with_a_reason",
     ("run --idle-timeout",)),
    ("tests/test_pcap_run.py", "run_with_pcap",
     ("run --pcap",)),
    ("tests/test_pcap_run.py", "test_headers_only_zeroes_application_data",
     ("run --pcap-headers-only",)),
    ("tests/test_pcap_run.py", "test_keys_embedded_only_when_asked_and_tshark_decrypts",
     ("run --pcap-keys",)),
    ("tests/test_intercept.py",
     "test_both_legs_agree_with_tshark_and_close_says_what_each_negotiated",
     ("run --intercept", "run --ca", "run --upstream-ca")),
    ("tests/test_intercept.py",
     "test_run_refuses_intercept_options_without_intercept_and_bad_policies",
     ("run --intercept-policy",)),
    (HERE, "test_demo_writes_its_log",
     ("demo --log",)),
    ("tests/test_cli_promises.py",
     "test_transparent_rules_print_mode_prints_valid_rules_and_applies_nothing",
     ("transparent-rules --port", "transparent-rules --dport", "transparent-rules --placement",
      "transparent-rules --exempt-uid", "transparent-rules --backend")),
    ("tests/test_transparent.py", "rules",
     ("transparent-rules --interface",)),
    ("tests/test_transparent.py", "test_gateway",
     ("transparent-rules --apply", "transparent-rules --remove")),
    ("tests/test_cli_promises.py", "test_reproduce_against_your_own_server",
     ("reproduce --client", "reproduce --server", "reproduce --out")),
    ("tests/test_reproduce_cmd.py", "test_bad_commands_are_exit_2",
     ("reproduce --client-cmd",)),
    (HERE, "test_reproduce_on_given_ports",
     ("reproduce --listen", "reproduce --server-port")),
    ("tests/test_cli.py", "test_reproduce_removes_its_temporary_folder_unless_kept",
     ("reproduce --keep",)),
    (HERE, "test_matrix_of_one_scenario_and_one_client",
     ("matrix --clients", "matrix --out")),
    ("tests/test_report.py", "test_bad_lines_are_skipped_and_counted",
     ("report -o",)),
    (HERE, "test_report_title_and_long_out_flag",
     ("report --out", "report --title")),
    ("tests/test_cli.py", "test_check_list_prints_every_match_key_and_action",
     ("check --list",)),
    ("tests/test_offline.py", "test_report_003_as_pasted_decodes_and_diagnoses",
     ("analyze --hex", "analyze --log")),
    ("tests/test_analyze_keys.py", "test_bad_keylog_exits_2",
     ("analyze --keylog",)),
    ("tests/test_offline.py", "test_hex_from_stdin_quiet_prints_the_diagnosis",
     ("analyze --quiet",)),
    ("tests/test_offline.py", "test_replay_from_a_jsonl_log_says_to_use_the_runs_pcap",
     ("analyze --conn",)),
    ("tests/test_capture.py", "bulk_capture",
     ("analyze --port",)),
    ("tests/test_capture.py", "test_filters",
     ("analyze --sni",)),
    ("tests/test_capture.py", "test_replay_the_client_hello_of_a_captured_connection",
     ("replay --conn", "replay --quiet")),
    ("tests/test_offline.py", "test_replay_to_a_server_that_accepts_gets_a_server_hello",
     ("replay --hex", "replay --server", "replay --log", "replay --timeout")),
    ("tests/test_intercept.py", "test_ca_command_makes_and_prints_the_interception_ca",
     ("ca --ca",)),
    ("tests/test_cli_promises.py", "test_every_mitmdump_option",
     ("mitmdump tlsinspector_seed", "mitmdump tlsinspector_quiet",
      "mitmdump tlsinspector_app_records")),
    (HERE, "test_the_other_mitmdump_options",
     ("mitmdump tlsinspector_max_held", "mitmdump tlsinspector_idle_timeout",
      "mitmdump tlsinspector_log_preview", "mitmdump tlsinspector_protocol",
      "mitmdump tlsinspector_key_wait_ms", "mitmdump tlsinspector_pcap",
      "mitmdump tlsinspector_pcap_max_mb", "mitmdump tlsinspector_pcap_headers_only",
      "mitmdump tlsinspector_pcap_keys", "mitmdump tlsinspector_web",
      "mitmdump tlsinspector_web_max", "mitmdump tlsinspector_intercept",
      "mitmdump tlsinspector_intercept_policy")),
    (HERE, "test_pcap_own_keys_is_set_by_run_intercept_pcap_keys_only",
     ("mitmdump tlsinspector_pcap_own_keys",)),
    ("tests/test_hotpath.py", "test_detach_is_set_by_run_only_and_off_under_mitmdump",
     ("mitmdump tlsinspector_detach",)),
]


def cli_flags() -> set[tuple[str, str]]:
    from tlsinspector import cli

    parser = cli._parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {(name, flag) for name, p in sub.choices.items() for a in p._actions
            for flag in a.option_strings if flag not in ("-h", "--help")}


def mitmdump_options() -> set[tuple[str, str]]:
    found = set()
    for f in (ROOT / "addons").glob("*.py"):
        found |= {("mitmdump", m) for m in re.findall(r'add_option\(\s*"(tlsinspector_\w+)"',
                                                      f.read_text())}
    return found


def source_of(where: str) -> str:
    path, name = where.split("::")
    text = (ROOT / path).read_text()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return ast.get_source_segment(text, node) or ""
    raise AssertionError(f"{where}: no such function or class")


def test_every_flag_and_option_names_a_test_that_uses_it() -> None:
    wanted = cli_flags() | mitmdump_options()
    assert len(wanted) > 70
    named = {tuple(x.split(" ")) for _, _, flags in USES for x in flags}
    assert wanted - named == set(), "flags without a test"
    assert named - wanted == set(), "entries for flags that no longer exist"
    for path, name, flags in USES:
        src = source_of(f"{path}::{name}")
        for x in flags:
            flag = x.split(" ")[1]
            assert re.search(r"[\"']" + re.escape(flag) + r"[=\"']", src), (x, path, name)


def fetch(addr: str, certs: Certs) -> None:
    res = subprocess.run(
        ["openssl", "s_client", "-connect", addr, "-servername", "localhost", "-CAfile",
         str(certs.ca_cert), "-quiet", "-tls1_3", "-keylogfile", str(certs.ca_cert.parent
                                                                      / "keys.log")],
        input=b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", capture_output=True, timeout=30)
    assert b"hello from the demo server" in res.stdout, res.stderr


def plaintext_to(port: int) -> None:
    """A plain HTTP request to the TLS port (README: non_tls)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /secret?token=hunter2 HTTP/1.1\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        s.settimeout(10)
        while s.recv(4096):
            pass


def events_of(log: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in log.read_text().splitlines() if x]


def test_run_protocol_log_preview_and_pcap_max_mb(certs: Certs, demo_server: HelloServer,
                                                 tmp_path: Path) -> None:
    """`--protocol smtp` in front of a real SMTP server (aiosmtpd) and openssl's
    `-starttls smtp`; `--log-preview` shows a plaintext request's first bytes (off by
    default: test_security); `--pcap-max-mb` stops the capture at its size."""
    with smtp_server(certs) as port, Proxy(
            f"127.0.0.1:{port}", tmp_path / "smtp.jsonl", extra=["--protocol", "smtp"]) as smtp:
        res = subprocess.run(["openssl", "s_client", "-starttls", "smtp", "-connect",
                              f"127.0.0.1:{smtp.port}", "-CAfile", str(certs.ca_cert),
                              "-brief"], input=b"QUIT\r\n", capture_output=True, timeout=30)
        assert res.returncode == 0, res.stderr
        events = smtp.wait_closes(1)
    plain = [e for e in events if e["event"] == "plaintext"]
    assert plain and {e["protocol"] for e in plain} == {"smtp"}
    assert any(e["event"] == "record" and e.get("content_type") == "handshake" for e in events)

    pcap = tmp_path / "run.pcapng"
    with Proxy(f"127.0.0.1:{demo_server.port}", tmp_path / "preview.jsonl",
               extra=["--log-preview", "--pcap", str(pcap), "--pcap-max-mb", "1"]) as proxy:
        plaintext_to(proxy.port)
        events = proxy.wait_closes(1)
    [non_tls] = [e for e in events if e["event"] == "non_tls"]
    assert non_tls["preview"].startswith("GET /secret?token=hunter2")
    assert 0 < pcap.stat().st_size <= 1 << 20


def test_demo_writes_its_log(tmp_path: Path) -> None:
    log = tmp_path / "demo.jsonl"
    res = subprocess.run([sys.executable, "-m", "tlsinspector", "demo", "--log", str(log)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "both handshakes completed through the inspector" in res.stdout
    evs = events_of(log)
    closes = [e for e in evs if e["event"] == "close"]
    assert len(closes) == 2  # a TLS 1.3 and a TLS 1.2 client
    # The demo follows its server's key log: the TLS 1.3 certificate and both
    # connections' Finished messages are decrypted (on the record or late).
    seen = {(e["conn"], m) for e in evs if e.get("decrypted", {}).get("status") == "decrypted"
            for m in ("certificate", "finished") if m in e["decrypted"].get("summary", "")}
    conns = [c["conn"] for c in closes]
    assert {(conns[0], "certificate"), (conns[0], "finished"), (conns[1], "finished")} <= seen
    assert "following the server's key log" in res.stdout


def test_reproduce_on_given_ports(tmp_path: Path) -> None:
    listen, server = free_port(), free_port()
    res = subprocess.run(
        [sys.executable, "-m", "tlsinspector", "reproduce", "record-version-3030", "--client",
         "python", "--listen", str(listen), "--server-port", str(server),
         "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    events = [e for log in sorted((tmp_path / "out").rglob("*.jsonl")) for e in events_of(log)]
    connects = [e for e in events if e["event"] == "connect"]
    assert connects, res.stdout + res.stderr
    assert {e["server"] for e in connects} == {f"127.0.0.1:{server}"}
    assert all(e["client"].startswith("127.0.0.1:") for e in connects)
    # (The inspector's own port is in no log: that the run went through it is the check.)
    assert "REPRODUCED" in res.stdout and res.returncode == 0, res.stdout + res.stderr


def test_pcap_own_keys_is_set_by_run_intercept_pcap_keys_only(tmp_path: Path) -> None:
    """`run --intercept --pcap F --pcap-keys` (no file) sets tlsinspector_pcap_own_keys;
    test_pcap_run's intercept test shows what the option then embeds."""
    from tlsinspector import cli
    from tlsinspector.offline import pcap_options

    def opts(*argv: str) -> dict[str, object]:
        args = cli._parser().parse_args(["run", "--upstream", "127.0.0.1:1", *argv])
        got = pcap_options(args)
        assert got is not None
        return got

    pcap = str(tmp_path / "x.pcapng")
    assert opts("--intercept", "--pcap", pcap, "--pcap-keys")["tlsinspector_pcap_own_keys"] is True
    assert opts("--intercept", "--pcap", pcap)["tlsinspector_pcap_own_keys"] is False
    transparent = opts("--pcap", pcap, "--pcap-keys", str(tmp_path / "k.log"))
    assert transparent["tlsinspector_pcap_own_keys"] is False
    assert transparent["tlsinspector_pcap_keys"] == str(tmp_path / "k.log")


def test_reproduce_on_a_port_in_use_is_a_usage_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for flag in ("--server-port", "--listen"):
            res = subprocess.run(
                [sys.executable, "-m", "tlsinspector", "reproduce", "record-version-3030",
                 "--client", "python", flag, str(port)],
                capture_output=True, text=True, timeout=60)
            assert res.returncode == 2, res.stdout + res.stderr
            assert f"{flag} {port}" in res.stderr and "in use" in res.stderr, res.stderr
            assert "Traceback" not in res.stderr


def test_matrix_of_one_scenario_and_one_client(tmp_path: Path) -> None:
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    (scenarios / "record-version-3030.yaml").write_text(
        (CONFIGS / "record-version-3030.yaml").read_text())
    out = tmp_path / "matrix"
    res = subprocess.run([sys.executable, "-m", "tlsinspector", "matrix", str(scenarios),
                          "--clients", "python", "--out", str(out)],
                         capture_output=True, text=True, timeout=180)
    table = (out / "matrix.md").read_text()
    assert res.returncode == 0, res.stdout + res.stderr
    header = next(x for x in table.splitlines() if x.startswith("|"))
    assert "python" in header and "go" not in header  # only the clients asked for
    assert "record-version-3030" in table


def test_report_title_and_long_out_flag(tmp_path: Path) -> None:
    from tlsinspector.cli import main

    log = tmp_path / "run.jsonl"
    log.write_text(json.dumps({"event": "connect", "ts": 1.0, "conn": "1",
                               "client": "127.0.0.1:1", "server": "127.0.0.1:2",
                               "mode": "reverse"}) + "\n")
    out = tmp_path / "page.html"
    assert main(["report", str(log), "--out", str(out), "--title", "case <42>"]) == 0
    page = out.read_text()
    assert "<title>case &lt;42&gt;</title>" in page


def test_the_other_mitmdump_options(certs: Certs, demo_server: HelloServer,
                                    tmp_path: Path) -> None:
    """Plain mitmdump with the inspector, pcap and live-view addons, and every option
    test_cli_promises does not set. Each is accepted by mitmdump's --set (before this
    test, tlsinspector_idle_timeout was a float option, which --set cannot parse: the
    addon failed to load); those with an effect on one connection are checked (preview,
    key log, pcap and its keys and headers-only, the live view); a bad value is
    mitmdump's own error naming the option."""
    mitmdump = str(Path(sys.executable).parent / "mitmdump")
    pcap, web = tmp_path / "both.pcapng", free_port()
    keys = certs.ca_cert.parent / "keys.log"
    keys.touch()
    sets = {"tlsinspector_log_preview": "true", "tlsinspector_idle_timeout": "30",
            "tlsinspector_max_held": "8388608", "tlsinspector_protocol": "",
            "tlsinspector_key_wait_ms": "0", "tlsinspector_keylog": str(keys),
            "tlsinspector_pcap": str(pcap), "tlsinspector_pcap_max_mb": "5",
            "tlsinspector_pcap_headers_only": "true", "tlsinspector_pcap_keys": str(keys),
            "tlsinspector_web": f"127.0.0.1:{web}", "tlsinspector_web_max": "10",
            "tlsinspector_intercept": "false", "tlsinspector_intercept_policy": ""}
    extra = ["-s", str(ROOT / "addons" / "pcap.py"), "-s", str(ROOT / "addons" / "liveview.py")]
    for k, v in sets.items():
        extra += ["--set", f"{k}={v}"]
    with Proxy(f"127.0.0.1:{demo_server.port}", tmp_path / "log.jsonl", mitmdump=True,
               extra=extra) as proxy:
        try:
            fetch(proxy.addr, certs)
        except AssertionError as e:
            raise AssertionError(proxy.output()) from e
        plaintext_to(proxy.port)
        events = proxy.wait_closes(2)
        with urllib.request.urlopen(f"http://127.0.0.1:{web}/", timeout=10) as r:
            page = r.read().decode()
    assert "tlsinspector" in page                                        # _web
    [non_tls] = [e for e in events if e["event"] == "non_tls"]
    assert non_tls["preview"].startswith("GET /secret")                 # _log_preview
    assert [e for e in events if e["event"] == "decrypted" or "decrypted" in e]  # _keylog
    # _key_wait_ms 0 with an empty key log: the wait for this connection's keys ends at
    # its second waiting record, said once (the proxy's own side of the time bound).
    notes = [e["note"] for e in events if e["event"] == "note"]
    assert len(notes) == 1 and notes[0].startswith("keys never arrived for client_random")
    data = pcap.read_bytes()
    assert data[:4] == bytes.fromhex("0a0d0d0a")                          # _pcap
    assert bytes.fromhex("0a000000") in data                              # _pcap_keys (DSB)
    assert b"hello from the demo server" not in data                      # _headers_only
    res = subprocess.run([mitmdump, "-s", str(ROOT / "addons" / "inspector.py"),
                          "--listen-host", "127.0.0.1", "-p", str(free_port()),
                          "--set", "tlsinspector_idle_timeout=-1"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0, res.stdout
    assert "tlsinspector_idle_timeout must be seconds >= 0" in res.stdout + res.stderr
