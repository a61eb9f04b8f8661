"""Faults inside encryption on the live proxy, with real peers (issue 14 parts 4, 7).

`tlsinspector run --keylog` between real clients that write their key log and a
real `openssl s_server`: the proxy decrypts a record, changes it, re-seals it,
and re-seals every later record of that direction with shifted sequence
numbers. The peers must never see bad_record_mac.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tlsinspector.lab.certs import Certs
from tlsinspector.lab.inspector import InspectorProcess
from tlsinspector.lab.peers import (
    ClientResult,
    Server,
    client_command,
    free_port,
    need,
    run_command,
)

KEY_WRITING_CLIENTS = ("go", "openssl", "curl", "gnutls", "python")
SIZE = 400_000  # bytes of the download: about 25 records of 16 KiB
# A fault whose record waits for keys is given up (not applied) 2 s (--key-wait-ms)
# after the record came: on a loaded machine the client's keys can reach the proxy
# later. These tests are about applying the fault; the wait only bounds a hang.
KEY_WAIT = ("--key-wait-ms", "60000")


def _scenario(tmp: Path, body: str) -> Path:
    p = tmp / "inside.yaml"
    p.write_text("name: inside\nfaults:\n" + body)
    return p


def _www(certs: Certs, root: Path, tls: str) -> Server:
    """openssl s_server -WWW serving files from ``root`` (a long transfer)."""
    port = free_port()
    cmd = [need("openssl"), "s_server", "-accept", f"127.0.0.1:{port}", "-WWW",
           "-cert", str(certs.rsa_cert), "-key", str(certs.rsa_key),
           "-tls1_3" if tls == "1.3" else "-tls1_2"]
    # -WWW serves paths relative to its working directory (Server has no cwd).
    with contextlib.chdir(root):
        return Server("openssl", cmd, port, root / "server.log")


def _events_with_faults(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == "record" and "fault" in e]


def _no_mac_failure(text: str) -> None:
    low = text.lower()
    assert "bad record mac" not in low and "bad_record_mac" not in low, text[-500:]
    assert "decryption failed" not in low and "decryption has failed" not in low, text[-500:]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("tls", ["1.2", "1.3"])
@pytest.mark.parametrize("fault", ["insert", "drop"])
def test_reseal_after_insert_or_drop_keeps_a_long_download_decrypting(
        certs: Certs, tmp_path: Path, tls: str, fault: str) -> None:
    body = random.Random(7).randbytes(SIZE)  # not periodic: a hole shows where it is
    (tmp_path / "big.bin").write_bytes(body)
    keys = tmp_path / "keys.log"
    if fault == "insert":
        # An empty application_data record is legal and ignored (RFC 8446 5.4 padding
        # aside, RFC 5246 6.2.1): the download completes, byte for byte.
        text = ("  - match: {from: server, content_type: application_data, encrypted: true, "
                "index: 10}\n    action: insert-record\n    content_type: application_data\n"
                "    position: after\n")
    else:
        text = ("  - match: {from: server, content_type: application_data, encrypted: true, "
                "index: 10}\n    action: drop\n")
    scenario = _scenario(tmp_path, text)
    out = tmp_path / "got.bin"
    with _www(certs, tmp_path, tls) as server, InspectorProcess(
            server.addr, tmp_path / "log.jsonl", [scenario],
            extra=["--keylog", str(keys), *KEY_WAIT]) as proxy:
        res = subprocess.run(
            ["env", f"SSLKEYLOGFILE={keys}", need("curl"), "-sS", "--max-time", "30",
             "--cacert", str(certs.ca_cert), "--resolve", f"localhost:{proxy.port}:127.0.0.1",
             "-o", str(out), "-w", "%{size_download}",
             f"https://localhost:{proxy.port}/big.bin"],
            capture_output=True, text=True, timeout=60)
        events = proxy.wait_closes(1)
    _no_mac_failure(res.stdout + res.stderr)
    faults = _events_with_faults(events)
    assert len(faults) == 1, faults
    got = out.read_bytes()  # curl wrote the body only
    assert res.returncode == 0, res.stderr
    if fault == "insert":
        assert got == body  # every later record re-sealed with seq + 1 and accepted
    else:
        # One record's plaintext (16 KiB of the body) is missing; every later record,
        # re-sealed with seq - 1, arrived and decrypted.
        assert len(got) == len(body) - 16384
        k = next(i for i, (a, b) in enumerate(zip(got, body, strict=False)) if a != b)
        assert got == body[:k] + body[k + 16384:]
    # The server's closing close_notify was re-sealed too: the client saw a clean end.
    closes = [e for e in events if e["event"] == "close"]
    assert closes and not any(d["code"] == "bad-record-mac"
                              for d in closes[-1].get("diagnosis", []))


@pytest.mark.timeout(150)
def _close_notify_mid_download(client: str, certs: Certs, tmp_path: Path
                               ) -> tuple[ClientResult, list[dict[str, Any]]]:
    """``client`` downloads from a TLS 1.2 openssl s_server through the inspector,
    which seals a close_notify after the server's first application record."""
    keys = tmp_path / "keys.log"
    scenario = _scenario(tmp_path, (
        "  - match: {from: server, content_type: application_data, encrypted: true, "
        "times: 1}\n    action: insert-alert\n    level: warning\n"
        "    description: close_notify\n    position: after\n"))
    port = free_port()
    cmd = [need("openssl"), "s_server", "-accept", f"127.0.0.1:{port}", "-www", "-tls1_2",
           "-cert", str(certs.rsa_cert), "-key", str(certs.rsa_key)]
    with Server("openssl", cmd, port, tmp_path / "server.log") as server, InspectorProcess(
            server.addr, tmp_path / "log.jsonl", [scenario],
            extra=["--keylog", str(keys), *KEY_WAIT]) as proxy:
        argv, stdin = client_command(client, "127.0.0.1", proxy.port, certs, keylog=keys)
        result = run_command(client, argv, stdin, timeout=30)
        return result, proxy.wait_closes(1)


@pytest.mark.parametrize("client", KEY_WRITING_CLIENTS)
def test_encrypted_close_notify_in_the_middle_of_a_download(certs: Certs, tmp_path: Path,
                                                            client: str) -> None:
    """Each client's own reaction to a close_notify sealed with the right keys: a clean
    end of the stream (never bad_record_mac, as a plaintext alert would give)."""
    result, events = _close_notify_mid_download(client, certs, tmp_path)
    _no_mac_failure(result.output)
    faults = _events_with_faults(events)
    assert len(faults) == 1 and faults[0]["fault"][0]["action"] == "insert-alert", faults
    assert faults[0]["decrypted"]["status"] == "decrypted"
    # Measured: every key-writing client takes it as the server's clean end of the
    # stream after the response it already had (go 'HTTP 200 ok', s_client 'closed',
    # curl 'HTTP 200', gnutls-cli 'Peer has closed the GnuTLS connection', Python
    # 'HTTP/1.0 200 ok'), exit status 0.
    assert result.returncode == 0, result.output[-500:]
    marker = {"go": "200", "openssl": "closed", "curl": "HTTP 200",
              "gnutls": "Peer has closed the GnuTLS connection", "python": "200"}[client]
    assert marker in result.output, result.output[-500:]


@pytest.mark.timeout(60)
def test_close_notify_for_wolfssl_whose_key_comes_after_its_handshake(
        certs: Certs, tmp_path: Path) -> None:
    """wolfSSL writes its CLIENT_RANDOM line only once its handshake is done (after
    the server's Finished). The fault is for an application record, and TLS 1.2
    shows the real content type: the Finished is never held (that would keep the
    key from ever being written); the server's response is held until the key
    comes, then a close_notify sealed after it ends the stream cleanly."""
    result, events = _close_notify_mid_download("wolfssl", certs, tmp_path)
    _no_mac_failure(result.output)
    held = [e for e in events if e["event"] == "record" and e.get("held")]
    assert all(e["content_type"] == "application_data" for e in held), held
    # Applied: on the record (its key was read before it came) or once released.
    [faulted] = [e for e in events if e["event"] in ("record", "released") and "fault" in e]
    assert faulted["fault"][0]["action"] == "insert-alert", faulted
    assert "not_applied" not in faulted["fault"][0]["detail"], faulted
    assert result.returncode == 0 and "200 ok" in result.output, result.output[-300:]
