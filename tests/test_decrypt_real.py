"""Real peers, real key logs: every encrypted handshake message and alert decodes,
and agrees with tshark's decryption of a capture of the same connection.

Each case runs ``openssl s_server`` and a real client (OpenSSL s_client
-keylogfile, Python ssl keylog_filename, curl and gnutls-cli with
SSLKEYLOGFILE) through a recording relay (tests/relay.py) while tshark
captures the client leg. The relay's byte streams go through
proxy/decrypt.py with the client's key log; tshark decrypts the pcap with the
same log (``-o tls.keylog_file:``); both must name the same handshake messages
and alerts per direction, in order.
"""

from __future__ import annotations

import os
import queue
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.relay import Relay, Side
from tests.test_tshark import Capture
from tlsinspector.lab.certs import Certs, make_certs
from tlsinspector.lab.peers import free_port, stop_process, wait_for_port
from tlsinspector.proxy import names
from tlsinspector.proxy.decrypt import Decrypted, Decryptor
from tlsinspector.proxy.handshake import HandshakeReassembler
from tlsinspector.proxy.keylog import KeyLog
from tlsinspector.proxy.records import Record, RecordFramer

GET = b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n"


@dataclass
class Case:
    client: str
    server_args: list[str]
    client_args: list[str] = field(default_factory=list)
    suite: str = ""


CASES = {
    "openssl-tls13-aes128gcm": Case("openssl", ["-tls1_3", "-ciphersuites",
                                                "TLS_AES_128_GCM_SHA256"], [],
                                    "TLS_AES_128_GCM_SHA256"),
    "openssl-tls13-aes256gcm": Case("openssl", ["-tls1_3", "-ciphersuites",
                                                "TLS_AES_256_GCM_SHA384"], [],
                                    "TLS_AES_256_GCM_SHA384"),
    "openssl-tls13-chacha": Case("openssl", ["-tls1_3", "-ciphersuites",
                                             "TLS_CHACHA20_POLY1305_SHA256"], [],
                                 "TLS_CHACHA20_POLY1305_SHA256"),
    "openssl-tls12-gcm": Case("openssl", ["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"],
                              [], "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
    "openssl-tls12-gcm384": Case("openssl", ["-tls1_2", "-cipher",
                                             "ECDHE-RSA-AES256-GCM-SHA384"], [],
                                 "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
    "openssl-tls12-chacha": Case("openssl", ["-tls1_2", "-cipher",
                                             "ECDHE-RSA-CHACHA20-POLY1305"], [],
                                 "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"),
    "openssl-tls12-cbc-sha1-etm": Case("openssl", ["-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA"],
                                       [], "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"),
    "openssl-tls12-cbc-sha1-no-etm": Case("openssl", ["-tls1_2", "-cipher",
                                                      "ECDHE-RSA-AES128-SHA"], ["-no_etm"],
                                          "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"),
    "openssl-tls12-cbc-sha256-no-etm": Case("openssl", ["-tls1_2", "-cipher",
                                                        "ECDHE-RSA-AES128-SHA256"], ["-no_etm"],
                                            "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256"),
    "openssl-tls12-cbc-sha384-etm": Case("openssl", ["-tls1_2", "-cipher",
                                                     "ECDHE-RSA-AES256-SHA384"], [],
                                         "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384"),
    "python-tls13-chacha": Case("python", ["-tls1_3", "-ciphersuites",
                                           "TLS_CHACHA20_POLY1305_SHA256"], [],
                                "TLS_CHACHA20_POLY1305_SHA256"),
    "python-tls12-cbc-etm": Case("python", ["-tls1_2", "-cipher", "ECDHE-RSA-AES256-SHA"],
                                 ["ECDHE-RSA-AES256-SHA"],
                                 "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA"),
    "curl-tls13-gcm": Case("curl", ["-tls1_3"], [], "TLS_AES_256_GCM_SHA384"),
    "curl-tls12-chacha": Case("curl", ["-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305"], [],
                              "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"),
    "gnutls-tls13-gcm": Case("gnutls", ["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"],
                             [], "TLS_AES_128_GCM_SHA256"),
    "gnutls-tls12-cbc-etm": Case("gnutls", ["-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA"], [],
                             "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"),
    "gnutls-tls12-gcm": Case("gnutls", ["-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384"],
                             [], "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def run_client(case: Case, port: int, certs: Certs, keys: Path) -> None:
    ca = str(certs.ca_cert)
    if case.client == "python":
        ctx = ssl.create_default_context(cafile=ca)
        ctx.keylog_filename = str(keys)
        ctx.check_hostname = False
        if case.client_args:  # Python's default list has no CBC suites
            ctx.set_ciphers(case.client_args[0])
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
            try:
                with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                    s.sendall(GET)
                    while s.recv(65536):
                        pass
            except (ssl.SSLError, OSError):
                pass  # the peer's reaction is in the records we decrypt
        return
    env = {**os.environ, "SSLKEYLOGFILE": str(keys)}
    if case.client == "openssl":
        cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
               "localhost", "-CAfile", ca, "-quiet", "-keylogfile", str(keys),
               *case.client_args]
    elif case.client == "curl":
        cmd = ["curl", "-sS", "--max-time", "20", "--cacert", ca, "--http1.1", "--resolve",
               f"localhost:{port}:127.0.0.1", f"https://localhost:{port}/"]
    else:
        cmd = ["gnutls-cli", "--x509cafile", ca, "-p", str(port), "--sni-hostname",
               "localhost", "127.0.0.1"]
    subprocess.run(cmd, input=GET, capture_output=True, timeout=30, env=env)


Conversation = tuple[list[tuple[Side, bytes]], Path, Path, int]


def converse(case: Case, certs: Certs, tmp: Path,
             extra_server: tuple[str, ...] = ()) -> Conversation:
    sport = free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", str(sport), "-cert", str(certs.rsa_cert),
         "-key", str(certs.rsa_key), "-www", *case.server_args, *extra_server],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", sport, 20, server)
        relay = Relay(sport)
        cap = Capture(relay.port, tmp / "cap.pcapng")
        try:
            keys = tmp / "keys.log"
            run_client(case, relay.port, certs, keys)
            chunks = relay.wait()
        finally:
            cap.stop()
    finally:
        stop_process(server)
    return chunks, keys, tmp / "cap.pcapng", relay.port


@dataclass
class Seen:
    handshakes: dict[str, list[str]] = field(default_factory=lambda: {"client": [],
                                                                       "server": []})
    alerts: dict[str, list[str]] = field(default_factory=lambda: {"client": [], "server": []})
    results: list[Decrypted] = field(default_factory=list)


def decrypt(chunks: list[tuple[Side, bytes]], keys: Path) -> tuple[Seen, Decryptor]:
    log = KeyLog()
    log.feed(keys.read_text())
    log.close()
    dec = Decryptor()
    framers = {"client": RecordFramer(), "server": RecordFramer()}
    plain = {"client": HandshakeReassembler(), "server": HandshakeReassembler()}
    index = {"client": 0, "server": 0}
    seen = Seen()
    for side, data in chunks:
        for item in framers[side].feed(data):
            assert isinstance(item, Record), item
            index[side] += 1
            res = dec.record(side, index[side], item.header(), item.payload)
            seen.results += dec.keys_from(log)
            seen.results.append(res)
            if res.status == "plaintext" and item.content_type == 22:
                seen.handshakes[side] += [names.handshake_type_name(m.msg_type)
                                          for m in plain[side].feed(item.payload, 1)]
            if res.status == "plaintext" and item.content_type == 21 and len(item.payload) == 2:
                seen.alerts[side].append(names.alert_description_name(item.payload[1]))
            for m in res.messages:
                seen.handshakes[side].append(str(m.fields["type"]))
            if res.alert is not None:
                seen.alerts[side].append(str(res.alert["description"]))
    return seen, dec


def tshark_view(pcap: Path, keys: Path, port: int) -> Seen:
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-o", f"tls.keylog_file:{keys}", "-d",
         f"tcp.port=={port},tls", "-Y", "tls", "-T", "fields", "-e", "tcp.srcport",
         "-e", "tls.handshake.type", "-e", "tls.alert_message.desc", "-E", "occurrence=a",
         "-E", "aggregator=,"], capture_output=True, text=True, timeout=60, check=True)
    seen = Seen()
    for line in out.stdout.splitlines():
        src, types, alerts = (line.split("\t") + ["", ""])[:3]
        side = "server" if int(src) == port else "client"
        seen.handshakes[side] += [names.handshake_type_name(int(t)) for t in types.split(",")
                                  if t]
        seen.alerts[side] += [names.alert_description_name(int(a)) for a in alerts.split(",")
                              if a]
    return seen


@pytest.mark.parametrize("name", sorted(CASES))
def test_decrypts_like_tshark(certs: Certs, tmp_path: Path, name: str) -> None:
    case = CASES[name]
    chunks, keys, pcap, port = converse(case, certs, tmp_path)
    ours, dec = decrypt(chunks, keys)
    assert dec.suite is not None and dec.suite.name == case.suite
    if "-cbc" in name:  # the case really tests the MAC order it names (RFC 7366)
        assert dec.neg.etm is ("no-etm" not in name)
    bad = [r for r in ours.results if r.status in ("undecryptable", "pending")]
    assert not bad, bad
    decrypted = [r for r in ours.results if r.status == "decrypted"]
    assert decrypted and all(r.inner_type is not None for r in decrypted)
    # The encrypted handshake messages we must see, per version.
    if "tls13" in name:
        for msg in ("encrypted_extensions", "certificate", "certificate_verify", "finished"):
            assert msg in ours.handshakes["server"], ours.handshakes
        assert "finished" in ours.handshakes["client"]
        cert = next(m for r in decrypted for m in r.messages if m.fields["type"] == "certificate")
        assert cert.summary.startswith("certificate chain=1 [CN=localhost, SAN=localhost")
        assert "RSA 2048" in cert.summary
    else:
        assert ours.handshakes["client"][-1] == "finished"
        assert "finished" in ours.handshakes["server"]
    # The application data: type and length only, both ways.
    assert any(r.inner_type == 23 and r.side == "server" and (r.length or 0) > 0
               for r in decrypted)
    theirs = tshark_view(pcap, keys, port)
    assert ours.handshakes == theirs.handshakes
    assert ours.alerts == theirs.alerts


def test_certificate_required_is_named(certs: Certs, tmp_path: Path) -> None:
    case = Case("openssl", ["-tls1_3"])
    chunks, keys, pcap, port = converse(case, certs, tmp_path,
                                        ("-Verify", "1", "-CAfile", str(certs.ca_cert)))
    ours, _ = decrypt(chunks, keys)
    alerts = [r for r in ours.results if r.alert is not None and r.side == "server"]
    assert alerts, ours.results
    assert alerts[0].alert == {"level": "fatal", "description": "certificate_required",
                               "code": 116}
    assert alerts[0].summary() == "ALERT fatal certificate_required (116)"
    assert "certificate_request" in ours.handshakes["server"]
    assert ours.handshakes["client"][-2:] == ["certificate", "finished"]  # an empty chain
    assert ours.alerts == tshark_view(pcap, keys, port).alerts


def test_keys_arriving_late_decrypt_the_queued_records(certs: Certs, tmp_path: Path) -> None:
    case = CASES["openssl-tls13-chacha"]
    chunks, keys, _, _ = converse(case, certs, tmp_path)
    dec = Decryptor()
    framers = {"client": RecordFramer(), "server": RecordFramer()}
    index = {"client": 0, "server": 0}
    first: list[Decrypted] = []
    for side, data in chunks:
        for item in framers[side].feed(data):
            assert isinstance(item, Record)
            index[side] += 1
            first.append(dec.record(side, index[side], item.header(), item.payload))
    pending = [(r.side, r.index) for r in first if r.status == "pending"]
    assert pending and all(r.status in ("plaintext", "pending") for r in first)
    log = KeyLog()
    log.feed(keys.read_text())
    [random] = dec.wanted()
    k = log.get(random)
    assert k is not None
    late = dec.add_keys(k)
    assert sorted((r.side, r.index) for r in late) == sorted(pending)
    assert all(r.late and r.status == "decrypted" for r in late)
    assert any(m.fields["type"] == "certificate" for r in late for m in r.messages)
    assert late[0].to_json()["record"] == {"side": late[0].side, "index": late[0].index}


def interactive_client(port: int, certs: Certs, keys: Path, version: str,
                       steps: list[tuple[bytes, str, int]]) -> None:
    """openssl s_client driven by its command letters: for each step write the
    bytes, then wait until ``count`` lines containing ``marker`` were printed
    (-msg traces every handshake message), then close stdin."""
    proc = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile",
         str(certs.ca_cert), "-msg", "-keylogfile", str(keys), version],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: queue.Queue[bytes] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(b"")

    threading.Thread(target=read, daemon=True).start()
    assert proc.stdin is not None
    try:
        seen: list[bytes] = []
        for data, marker, count in steps:
            proc.stdin.write(data)
            proc.stdin.flush()
            while sum(marker.encode() in x for x in seen) < count:
                line = lines.get(timeout=20)
                assert line, b"".join(seen)[-2000:]
                seen.append(line)
        proc.stdin.close()
        proc.wait(timeout=20)
    finally:
        stop_process(proc)


def converse_interactive(certs: Certs, tmp: Path, server_args: list[str], version: str,
                         steps: list[tuple[bytes, str, int]]
                         ) -> tuple[list[tuple[Side, bytes]], Path, Path, int]:
    sport = free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", str(sport), "-cert", str(certs.rsa_cert),
         "-key", str(certs.rsa_key), "-www", *server_args],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", sport, 20, server)
        relay = Relay(sport)
        cap = Capture(relay.port, tmp / "cap.pcapng")
        try:
            keys = tmp / "keys.log"
            interactive_client(relay.port, certs, keys, version, steps)
            chunks = relay.wait()
        finally:
            cap.stop()
    finally:
        stop_process(server)
    return chunks, keys, tmp / "cap.pcapng", relay.port


def test_tls12_renegotiation_inside_the_channel(certs: Certs, tmp_path: Path) -> None:
    # s_client's "R" renegotiates; the second handshake is entirely encrypted.
    chunks, keys, pcap, port = converse_interactive(
        certs, tmp_path, ["-tls1_2", "-client_renegotiation"], "-tls1_2",
        [(b"", "<<< TLS 1.2, Handshake [length 0010], Finished", 1),
         (b"R\n", "<<< TLS 1.2, Handshake [length 0010], Finished", 2)])
    ours, dec = decrypt(chunks, keys)
    assert not [r for r in ours.results if r.status in ("undecryptable", "pending")]
    assert ours.handshakes["client"].count("client_hello") == 2
    assert ours.handshakes["server"].count("server_hello") == 2
    reneg = [r for r in ours.results if r.epoch == "tls12#2"]
    assert reneg and {r.side for r in reneg} == {"client", "server"}
    hello = next(m for r in ours.results for m in r.messages if m.fields["type"] == "client_hello")
    assert "renegotiation_info" in [e["type"] for e in hello.fields["extensions"]]
    assert len(dec.wanted()) == 1  # the renegotiation's client random
    theirs = tshark_view(pcap, keys, port)
    assert ours.handshakes == theirs.handshakes
    assert ours.alerts == theirs.alerts


def test_tls13_key_update_both_ways(certs: Certs, tmp_path: Path) -> None:
    # s_client's "K" sends KeyUpdate(update_requested); the server answers with its own.
    chunks, keys, pcap, port = converse_interactive(
        certs, tmp_path, ["-tls1_3"], "-tls1_3",
        [(b"", "], NewSessionTicket", 2),
         (b"K\n", ">>> TLS 1.3, Handshake [length 0005], KeyUpdate", 1),
         (GET, "<<< TLS 1.3, Handshake [length 0005], KeyUpdate", 1)])
    ours, _ = decrypt(chunks, keys)
    assert not [r for r in ours.results if r.status in ("undecryptable", "pending")]
    for side in ("client", "server"):
        assert "key_update" in ours.handshakes[side]
        assert any(r.epoch == "application+1" and r.side == side for r in ours.results)
    theirs = tshark_view(pcap, keys, port)
    assert ours.handshakes == theirs.handshakes
