"""Safe defaults: loopback unless asked, warnings when exposed, no shell, private keys 0600."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

from tests.proxyproc import BIN, ROOT, free_port, wait_port
from tlsinspector.cli import _parser
from tlsinspector.lab.certs import Certs


def test_default_listen_is_loopback() -> None:
    assert _parser().parse_args(["run", "--upstream", "h:1"]).listen == ("127.0.0.1", 8443)


def test_all_interfaces_prints_a_warning(tmp_path: Path) -> None:
    import subprocess

    port = free_port()
    out = tmp_path / "out.txt"
    with open(out, "wb") as f:
        proc = subprocess.Popen([str(BIN / "tlsinspector"), "run", "--listen", f"0.0.0.0:{port}",
                                 "--upstream", "127.0.0.1:1"], stdout=f, stderr=subprocess.STDOUT,
                                cwd=ROOT)
        try:
            wait_port(port, proc, out.read_text)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    assert "WARNING listening on all interfaces (0.0.0.0:" in out.read_text()


def test_private_keys_are_0600(certs: Certs) -> None:
    for key in (certs.server_key, certs.rsa_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_client_cmd_is_never_given_to_a_shell(tmp_path: Path, certs: Certs) -> None:
    from tlsinspector.cli import CONFIGS
    from tlsinspector.lab.reproduce import reproduce

    marker = tmp_path / "pwned"
    [v] = reproduce(CONFIGS / "slow-middlebox.yaml", [],
                    client_cmd=f"{sys.executable} -c 'print(1)' ; touch {marker}",
                    out_dir=tmp_path / "o", certs=certs, timeout=10)
    assert not marker.exists()


def test_scenarios_are_loaded_safely(tmp_path: Path) -> None:
    import pytest

    from tlsinspector.proxy.scenario import ScenarioError, load_scenario

    # If the YAML were executed (yaml.load / unsafe_load) the marker file would appear.
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\nfaults: []\n")
    with pytest.raises(ScenarioError) as e:
        load_scenario(evil)
    assert not marker.exists()
    assert "evil.yaml" in str(e.value)


def test_star_listens_on_ipv4_and_ipv6_at_once(tmp_path: Path, certs: Certs) -> None:
    """``--listen '*:P'``: one inspector for IPv4 and IPv6 clients, with the warning."""
    import socket
    import ssl
    import subprocess

    from tlsinspector.lab.tlsserver import HelloServer

    server = HelloServer(certs.server_cert, certs.server_key)
    server.start()
    port = free_port()
    out, log = tmp_path / "out.txt", tmp_path / "log.jsonl"
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    with open(out, "wb") as f:
        proc = subprocess.Popen([str(BIN / "tlsinspector"), "run", "--listen", f"*:{port}",
                                 "--upstream", f"127.0.0.1:{server.port}", "--log", str(log)],
                                stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_port(port, proc, out.read_text)
            for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                with socket.socket(family) as raw:
                    raw.settimeout(10)
                    raw.connect((host, port))
                    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    assert f"WARNING listening on all interfaces, IPv4 and IPv6 (*:{port})" in out.read_text()
    clients = [json.loads(x)["client"] for x in log.read_text().splitlines()
               if json.loads(x)["event"] == "connect"]
    assert [c.startswith("127.0.0.1:") for c in clients] == [True, False]
    assert clients[1].startswith("[::1]:")


def test_certificate_text_escapes_are_unambiguous() -> None:
    # A certificate CN holding U+202E (right-to-left override) printed "\x202e", which
    # reads as "\x20" (a space) then "2e"; beyond Latin-1 the escape is \u / \U.
    from tlsinspector.proxy.certificate import printable
    assert printable("a\x1b[31m\u202e\r\n\U000e0001z") == "a\\x1b[31m\\u202e\\x0d\\x0a\\U000e0001z"
    assert printable("x" * 90, 80) == "x" * 80 + "..."


def test_a_backslash_in_a_certificates_cn_or_san_cannot_forge_an_escape() -> None:
    """A real certificate whose CN and SAN hold the four characters \\x1b, and one whose
    CN and SAN hold the escape byte itself: the terminal's summary shows them apart
    (the CN and SANs are raw text; the RFC 4514 subject keeps its own escapes)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from tlsinspector.proxy.certificate import cert_summary, describe_cert

    key = ec.generate_private_key(ec.SECP256R1())

    def summary(text: str) -> str:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])
        now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(1).not_valid_before(now)
                .not_valid_after(now + datetime.timedelta(days=9))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(text)]), False)
                .sign(key, hashes.SHA256()))
        return cert_summary(describe_cert(cert.public_bytes(serialization.Encoding.DER)))

    literal, byte = summary("a\\x1bb"), summary("a\x1bb")
    assert literal != byte
    assert byte.startswith("CN=a\\x1bb, SAN=a\\x1bb, ")
    assert literal.startswith("CN=a\\x5cx1bb, SAN=a\\x5cx1bb, ")
    assert "\x1b" not in byte  # the byte itself never reaches the terminal
    assert summary("plain.example").startswith("CN=plain.example, SAN=plain.example, ")


def _hello_with_sni(sni: bytes) -> bytes:
    """A TLS 1.2 ClientHello (ECDHE-ECDSA-AES128-GCM, P-256) naming ``sni``."""
    import struct

    sn = b"\x00" + struct.pack("!H", len(sni)) + sni
    exts = (struct.pack("!HH", 0, len(sn) + 2) + struct.pack("!H", len(sn)) + sn
            + bytes.fromhex("000a00040002 0017 000d00040002 0403".replace(" ", "")))
    body = (b"\x03\x03" + b"\x11" * 32 + b"\x00" + b"\x00\x02\xc0\x2b" + b"\x01\x00"
            + struct.pack("!H", len(exts)) + exts)
    hs = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def test_a_backslash_in_a_peers_sni_cannot_forge_an_escape(certs: Certs, tmp_path: Path) -> None:
    """A non-ASCII byte in an SNI is logged \\xNN; a literal backslash was logged as it
    came, so the SNI 'a\\xe2b' (ASCII text) and 'a' 0xE2 'b' were one string in the log
    and on the terminal. A backslash is \\x5c now: every backslash starts an escape."""
    import socket

    from tests.proxyproc import Proxy
    from tlsinspector.lab.peers import start_server

    with start_server("openssl", certs, tls="1.2", log_dir=tmp_path) as srv, \
            Proxy(srv.addr, tmp_path / "log.jsonl") as proxy:
        for sni in (b"a\\xe2b.example", b"a\xe2b.example"):
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
                s.sendall(_hello_with_sni(sni))
                s.settimeout(10)
                assert s.recv(5)[:1] == b"\x16"  # the server's ServerHello: a real hello
        closes = [e for e in proxy.wait_closes(2) if e["event"] == "close"]
    assert sorted(c["sni"] for c in closes) == ["a\\x5cxe2b.example", "a\\xe2b.example"]


def test_listen_port_0_announces_the_port_the_kernel_picked(certs: Certs,
                                                             tmp_path: Path) -> None:
    """--listen 127.0.0.1:0 is accepted (ports 0..65535); before, the start line said
    "listening on 127.0.0.1:0", so a user could not know where to point the client."""
    import re
    import selectors
    import subprocess

    from tlsinspector.lab.peers import run_client, start_server

    with start_server("openssl", certs, tls="1.2", log_dir=tmp_path) as srv:
        proc = subprocess.Popen([str(BIN / "tlsinspector"), "run", "--listen", "127.0.0.1:0",
                                 "--upstream", srv.addr, "--log", str(tmp_path / "l.jsonl")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=ROOT)
        try:
            assert proc.stdout is not None
            sel = selectors.DefaultSelector()
            sel.register(proc.stdout, selectors.EVENT_READ)
            line = ""
            while "listening on" not in line:
                assert sel.select(timeout=30), "no 'listening on' line within 30 s"
                line = proc.stdout.readline()
                assert line, "the proxy exited before listening"
            m = re.search(r"listening on 127\.0\.0\.1:(\d+),", line)
            assert m and m.group(1) != "0", line
            res = run_client("openssl", "127.0.0.1", int(m.group(1)), certs)
            assert res.ok, res.output
        finally:
            proc.terminate()
            proc.wait(timeout=10)
