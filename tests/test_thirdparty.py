"""Third-party scanners see the same server through the inspector as directly.

sslyze (a real scanner, from PyPI, in a venv of its own: its pinned cryptography
must not meet mitmproxy's) scans a real server for the TLS 1.2 and TLS 1.3 cipher
suites it accepts, once directly and once through `tlsinspector run`; a transparent
inspector must change nothing. Both plain TLS (openssl s_server) and STARTTLS
(`--starttls smtp` against aiosmtpd, issue 17) are scanned.

testssl.sh (Debian package) does the same with the odd traffic it sends (an
SSLv2 ClientHello, SSLv3, a heartbeat request, an early ChangeCipherSpec,
client-initiated renegotiation, fallback SCSV, early closes): its findings must be
equal, and the inspector's own log must show no error, no traceback and no raw
control character. nmap's ssl-enum-ciphers (Debian package) must report the same
directly and through the inspector. The fast subset runs here; `make thirdparty` runs the full
testssl and tlsfuzzer comparison (lab/thirdparty.py, results in TESTING.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests import record_probes
from tests.proxyproc import Proxy
from tests.starttls_peers import smtp_server
from tlsinspector.lab import thirdparty
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.peers import cache_dir, start_server

T = TypeVar("T")

SSLYZE = "sslyze>=6.0,<7"
SCANS = ("tls_1_2_cipher_suites", "tls_1_3_cipher_suites")


@pytest.fixture(scope="module")
def sslyze() -> Path:
    venv = cache_dir() / "sslyze-venv"
    exe = venv / "bin" / "sslyze"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", SSLYZE], check=True,
                       timeout=600)
    return exe


def scan(exe: Path, port: int, *extra: str) -> dict[str, list[str]]:
    """The accepted suites per scan, by name, as sslyze reports them."""
    res = subprocess.run([str(exe), "--json_out=-", "--tlsv1_2", "--tlsv1_3", *extra,
                          f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr
    data: dict[str, Any] = json.loads(res.stdout[res.stdout.index("{"):])
    [server] = data["server_scan_results"]
    assert server["scan_status"] == "COMPLETED", server
    out = {}
    for name in SCANS:
        result = server["scan_result"][name]["result"]
        out[name] = sorted(s["cipher_suite"]["name"] for s in result["accepted_cipher_suites"])
    return out


@pytest.fixture()
def openssl_port(certs: Certs) -> Iterator[int]:
    server = start_server("openssl", certs)
    try:
        yield server.port
    finally:
        server.stop()


def _direct_and_through(exe: Path, port: int, log: Path, *extra: str
                        ) -> tuple[dict[str, list[str]], dict[str, list[str]], list[Any]]:
    direct = scan(exe, port, *extra)
    with Proxy(f"127.0.0.1:{port}", log, start_timeout=90) as proxy:
        through = scan(exe, proxy.port, *extra)
        events = proxy.events()
    return direct, through, events


def test_sslyze_sees_the_same_server_directly_and_through_the_inspector(
        sslyze: Path, certs: Certs, openssl_port: int, tmp_path: Path) -> None:
    with smtp_server(certs) as smtp, ThreadPoolExecutor(2) as pool:
        plain = pool.submit(_direct_and_through, sslyze, openssl_port, tmp_path / "tls.jsonl")
        mail = pool.submit(_direct_and_through, sslyze, smtp, tmp_path / "smtp.jsonl",
                           "--starttls", "smtp")
        for direct, through, events in (plain.result(), mail.result()):
            assert direct["tls_1_3_cipher_suites"], direct  # the scan found something
            assert direct["tls_1_2_cipher_suites"], direct
            assert through == direct
            assert any(e["event"] == "record" for e in events)
        _, _, smtp_events = mail.result()
        assert any(e["event"] == "plaintext" for e in smtp_events)


def test_testssl_finds_the_same_directly_and_through_the_inspector(
        certs: Certs, tmp_path: Path) -> None:
    # GnuTLS with heartbeats on: testssl then sends its heartbleed request for real,
    # and GnuTLS honours the client-initiated renegotiation that -R asks for.
    # (testssl's STARTTLS mode runs in `make thirdparty`; sslyze's runs above.)
    tls = thirdparty.compare(
        "tls", partial(thirdparty.testssl, args=thirdparty.TESTSSL_FAST, timeout=240),
        partial(thirdparty.server, "gnutls-heartbeat", certs, tmp_path), tmp_path)
    print(f"testssl {' '.join(thirdparty.TESTSSL_FAST)}: {tls.seconds:.1f} s")
    assert tls.direct["TLS1_2"] == ("OK", "offered"), tls.direct
    assert tls.direct["TLS1_3"] == ("OK", "offered with final"), tls.direct
    assert tls.differences == [], tls.differences
    assert tls.log_problems == [], tls.log_problems
    assert tls.direct["heartbleed"] == ("OK", "not vulnerable")
    assert tls.direct["secure_client_renego"][1].startswith("VULNERABLE")
    events = tls.events
    assert any(e["event"] == "non_tls" and "SSLv2" in e.get("reason", "") for e in events)
    records = [e for e in events if e["event"] == "record"]
    assert any(r["content_type"] == "heartbeat" and r["from"] == "client" for r in records)
    # The renegotiation (TLS 1.2): besides the Finished, a ClientHello, a key exchange
    # and a second Finished go out encrypted on one connection.
    encrypted = Counter(r["conn"] for r in records if r["from"] == "client"
                        and r["content_type"] == "handshake" and r["encrypted"])
    assert max(encrypted.values(), default=0) >= 3, "no renegotiation went through"


def test_testssl_unstable_findings_are_the_only_ones_left_out() -> None:
    items = [{"id": "TLS1_3", "severity": "OK", "finding": "offered with final"},
             {"id": "scanTime", "severity": "INFO", "finding": "12"},
             {"id": "service", "severity": "INFO", "finding": "smtp on 127.0.0.1:4425"}]
    found = thirdparty.normalise_findings(items, 4425)
    assert found == {"TLS1_3": ("OK", "offered with final"),
                     "service": ("INFO", "smtp on 127.0.0.1:PORT")}
    assert set(thirdparty.TESTSSL_UNSTABLE) == {
        "scanTime", "sessionresumption_ticket", "sessionresumption_ID"}


TLSFUZZER_OUTPUT = """sanity ...
OK

fuzz byte 3 ...
Error encountered while processing node ExpectAlert()
Error while processing
Traceback (most recent call last):
AssertionError: Unexpected message from peer: ApplicationData(len=1)

expected to fail ...
OK-expected failure

sanity ...
Error while processing

Test end
"""


def test_tlsfuzzer_output_gives_each_probe_its_outcome() -> None:
    assert thirdparty.parse_tlsfuzzer(TLSFUZZER_OUTPUT) == {
        "sanity": "mixed", "fuzz byte 3": "fail", "expected to fail": "pass"}


def _probe_all(port: int) -> dict[str, str]:
    return {name: record_probes.probe(port, tls, mutate, early)
            for name, (tls, mutate, early) in record_probes.PROBES.items()}


def _openssl_direct_and_through(certs: Certs, log: Path, run: Callable[[int], T]
                        ) -> tuple[T, T, list[dict[str, Any]], str]:
    """``run(port)`` against one real OpenSSL server directly and, at the same time,
    against another through the inspector: both results, the inspector's events once
    every connection closed, and its terminal output."""
    direct_srv, proxied_srv = start_server("openssl", certs), start_server("openssl", certs)
    try:
        with Proxy(proxied_srv.addr, log) as proxy, ThreadPoolExecutor(2) as pool:
            direct = pool.submit(run, direct_srv.port)
            through = pool.submit(run, proxy.port)
            d, t = direct.result(), through.result()
            return d, t, proxy.wait_close(set()), proxy.output()
    finally:
        direct_srv.stop()
        proxied_srv.stop()


def test_tlsfuzzer_style_record_probes_get_the_same_answers_directly_and_through(
        certs: Certs, tmp_path: Path) -> None:
    # tlsfuzzer itself is not on PyPI (`make thirdparty` runs it from a checkout):
    # the same kinds of odd records, from a real client, against a real OpenSSL.
    d, t, events, output = _openssl_direct_and_through(
        certs, tmp_path / "probes.jsonl", _probe_all)
    assert t == d
    # The probes do what they say (a planted no-op mutation would pass the equality).
    assert d["ClientHello in 1-byte records 1.3"].startswith("reply HTTP/1.0 200")
    assert d["flipped ciphertext byte 1.3"] == "tls error SSLV3_ALERT_BAD_RECORD_MAC"
    assert d["flipped Finished byte 1.2"].startswith("tls error")
    assert d["unknown content type 0x2a first"] == "tls error SSLV3_ALERT_UNEXPECTED_MESSAGE"
    # The inspector framed every record (the 0x2a one too) and failed nowhere.
    assert not [e for e in events if e["event"] in ("non_tls", "error", "internal_error")]
    assert "Traceback" not in output
    recs = [e for e in events if e["event"] == "record" and e["from"] == "client"]
    assert any(r["content_type"] == "42" for r in recs), recs[:3]  # 0x2a, by number
    hellos = [m for r in recs for m in r.get("messages", []) if m["type"] == "client_hello"]
    assert len(hellos) >= len(record_probes.PROBES) - 2  # the cut one and the 1-byte one


def _nmap(port: int) -> list[str]:
    """nmap's ssl-enum-ciphers report (Debian's nmap), without what names the port
    or the run."""
    res = subprocess.run(["nmap", "-Pn", "-n", "-p", str(port), "--script",
                          "ssl-enum-ciphers", "127.0.0.1"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return [x for x in res.stdout.splitlines() if x.startswith("|")]


def test_nmap_ssl_enum_ciphers_is_the_same_and_its_probes_diagnosed_as_such(
        certs: Certs, tmp_path: Path) -> None:
    # nmap scans by IP address (no SNI), a few suites per ClientHello, and drops
    # TLS 1.3 hellos the server answers with a HelloRetryRequest. Its refused chunks
    # of RSA-key-exchange suites read "missing-sni: the server probably requires
    # SNI", to a server that requires none.
    d, t, events, output = _openssl_direct_and_through(certs, tmp_path / "nmap.jsonl", _nmap)
    assert t == d
    assert any("TLS_AKE_WITH_AES_256_GCM_SHA384" in x or "TLS_AES_256_GCM_SHA384" in x
               for x in d), d
    assert not [e for e in events if e["event"] in ("error", "internal_error")]
    assert "Traceback" not in output
    codes = Counter(f["code"] for e in events if e["event"] == "close"
                    for f in e["diagnosis"])
    assert codes["no-shared-cipher"] > 0 and codes["missing-sni"] == 0, codes
