"""`tlsinspector run --keylog` between real peers (issue 14): decrypted handshake
messages and alerts on the live proxy, the diagnosis with and without keys, key
logs that appear or grow late, bad key logs; traffic is never affected."""

from __future__ import annotations

import datetime
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.test_decrypt_real import tshark_view
from tests.test_tshark import Capture
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.inspector import InspectorProcess
from tlsinspector.lab.peers import (
    Server,
    free_port,
    run_client,
    start_server,
    stop_process,
)

Events = list[dict[str, Any]]

# The proxy gives up waiting for a side's keys 2 s (--key-wait-ms) after its first
# record that needs them: on a loaded machine keys a client writes (or this test
# copies) can come later than that, and the records would be "undecryptable" instead
# of decrypted (or "pending"). The tests here are about what late keys do, not about
# the bound: a wait that only bounds a hang.
KEY_WAIT = ["--key-wait-ms", "60000"]


def _closes(evs: Events) -> Events:
    return [e for e in evs if e["event"] == "close"]


def _codes(evs: Events, conn: str | None = None) -> list[str]:
    return [d["code"] for e in _closes(evs) if conn is None or e["conn"] == conn
            for d in e["diagnosis"]]


def _decrypted(evs: Events, conn: str | None = None) -> list[dict[str, Any]]:
    """Every decrypted view, inline (record events) and late (decrypted events)."""
    out = []
    for e in evs:
        if (conn is None or e["conn"] == conn) and isinstance(e.get("decrypted"), dict):
            out.append({"from": e["from"], "index": e["index"], **e["decrypted"]})
    return out


def _final(evs: Events, conn: str) -> dict[tuple[str, int], dict[str, Any]]:
    """The last word per record: a late decrypted event replaces the pending view."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for d in _decrypted(evs, conn):
        out[(d["from"], d["index"])] = d
    return out


def _openssl_server(cert: Path, key: Path, args: list[str], tmp: Path) -> Server:
    port = free_port()
    cmd = ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(cert),
           "-key", str(key), "-www", *args]
    return Server("openssl", cmd, port, tmp / f"s_server-{port}.log")


def _curl(port: int, certs: Certs, keys: Path | None,
          *extra: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"} | ({"SSLKEYLOGFILE": str(keys)} if keys else {})
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--cacert", str(certs.ca_cert), "--resolve",
         f"localhost:{port}:127.0.0.1", *extra, f"https://localhost:{port}/"],
        env=env, capture_output=True, text=True, timeout=30)


@pytest.fixture
def require_client_cert(certs: Certs, tmp_path: Path) -> Iterator[Server]:
    with _openssl_server(certs.server_cert, certs.server_key, ["-Verify", "1", "-tls1_3"],
                         tmp_path) as srv:
        yield srv


def test_certificate_required_named_with_keys_likely_alert_without(
        certs: Certs, tmp_path: Path, require_client_cert: Server) -> None:
    """The issue's example: curl without a client certificate, server -Verify 1."""
    keys = tmp_path / "keys.log"  # does not exist when the proxy starts: waited for

    def one(with_keys: bool) -> tuple[Events, str, subprocess.CompletedProcess[str]]:
        name = "keys" if with_keys else "nokeys"
        with InspectorProcess(require_client_cert.addr, tmp_path / f"{name}.jsonl",
                              keylog=[keys] if with_keys else (), extra=KEY_WAIT) as p:
            res = _curl(p.port, certs, keys if with_keys else tmp_path / "other.log")
            evs = p.wait_closes(1)
        return evs, p.output(), res

    with ThreadPoolExecutor(2) as ex:
        (evs, out, res), (evs0, out0, res0) = ex.map(one, (True, False))
    for r in (res, res0):  # the client's own error, unchanged by the proxy
        assert "alert certificate required" in r.stderr, r.stderr
    assert "certificate-required" in _codes(evs)
    [finding] = [d for e in _closes(evs) for d in e["diagnosis"]
                 if d["code"] == "certificate-required"]
    assert "RFC 8446 4.4.2" in finding["reference"]
    assert any("CertificateRequest" in x for x in finding["evidence"])
    assert any("certificate_required (116)" in x for x in finding["evidence"])
    assert "| decrypted: ALERT fatal certificate_required (116)" in out
    assert "does not exist yet; waiting for it" in out
    # Without keys: the alert is only recognised by its size.
    assert _codes(evs0) == ["likely-encrypted-alert"]
    assert "rerun with --keylog to name it" in out0
    assert "decrypted" not in out0


def _bad_cert(directory: Path, certs: Certs, *, expired: bool = False,
              names: tuple[str, ...] = ("localhost",)) -> tuple[Path, Path]:
    """A leaf signed by the test CA: expired, or for other names."""
    # The lab CA's key is not kept: sign with a fresh CA and trust both in the client.
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keys-live test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=400))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    end = now - datetime.timedelta(days=3) if expired else now + datetime.timedelta(days=30)
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=300)).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert, keyf, caf = directory / "leaf.pem", directory / "leaf.key", directory / "ca.pem"
    cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    keyf.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    caf.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return cert, keyf


@pytest.mark.parametrize("case", ["expired", "name-mismatch"])
def test_rejected_certificate_named_with_its_own_fields(
        certs: Certs, tmp_path: Path, case: str) -> None:
    cert, key = _bad_cert(tmp_path, certs, expired=case == "expired",
                          names=("localhost",) if case == "expired" else ("other.example",))
    keys = tmp_path / "keys.log"
    with _openssl_server(cert, key, ["-tls1_3"], tmp_path) as srv, \
            InspectorProcess(srv.addr, tmp_path / "i.jsonl", keylog=[keys],
                             extra=KEY_WAIT) as p:
        env = {"PATH": "/usr/bin:/bin", "SSLKEYLOGFILE": str(keys)}
        res = subprocess.run(
            ["curl", "-sS", "--max-time", "20", "--cacert", str(tmp_path / "ca.pem"),
             "--resolve", f"localhost:{p.port}:127.0.0.1", f"https://localhost:{p.port}/"],
            env=env, capture_output=True, text=True, timeout=30)
        evs = p.wait_closes(1)
    assert res.returncode != 0
    [f] = [d for e in _closes(evs) for d in e["diagnosis"] if d["code"] == "certificate-rejected"]
    text = f["summary"] + "\n".join(f["evidence"])
    if case == "expired":
        assert "certificate_expired" in text and "expired on" in text, f
        assert "3 days before this connection" in text
    else:
        assert "SAN [other.example] does not contain the SNI localhost" in text, f
    assert "client" in f["summary"] and "server's certificate" in f["summary"]


def test_keys_written_after_the_records_still_decrypt(certs: Certs, tmp_path: Path) -> None:
    """The followed file appears only after the handshake (written here from the
    client's own key log): the waiting records decrypt, as decrypted events naming
    them, while the connection stays open; forwarding never waited."""
    late = tmp_path / "late.log"
    private = tmp_path / "client.log"
    with start_server("openssl", certs, tls="1.3", log_dir=tmp_path) as srv, \
            InspectorProcess(srv.addr, tmp_path / "i.jsonl", keylog=[late],
                             extra=KEY_WAIT) as p:
        proc = subprocess.Popen(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{p.port}", "-servername",
             "localhost", "-CAfile", str(certs.ca_cert), "-keylogfile", str(private),
             "-tls1_3"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # the handshake completed through the proxy
                if b"Verify return code: 0" in line:
                    break
            deadline = time.monotonic() + 20
            while not any(d["status"] == "pending" for d in _decrypted(p.events())):
                assert time.monotonic() < deadline, p.events()
                time.sleep(0.02)  # polling the proxy's log for its record events
            late.write_bytes(private.read_bytes())
            while not any(e["event"] == "decrypted" for e in p.events()):
                assert time.monotonic() < deadline, p.output()
                time.sleep(0.02)  # polling for the late events
        finally:
            stop_process(proc)  # type: ignore[arg-type]
        evs = p.wait_closes(1)
    final = _final(evs, "1")
    server = [d for (side, _), d in final.items() if side == "server"]
    kinds = " ".join(str(m.get("type")) for d in server for m in d.get("messages", []))
    for msg in ("encrypted_extensions", "certificate", "certificate_verify", "finished"):
        assert msg in kinds
    assert all(d["status"] != "undecryptable" for d in final.values())
    late_evs = [e for e in evs if e["event"] == "decrypted"]
    assert all(e["decrypted"]["record"] == {"side": e["from"], "index": e["index"]}
               for e in late_evs)
    assert "decrypted (keys arrived late)" in p.output()


PAIRS = [(c, s, t) for c in ("go", "openssl", "curl", "gnutls", "python")
         for s in ("openssl", "go") for t in ("1.2", "1.3")]


def test_lab_clients_against_openssl_and_go_servers(certs: Certs, tmp_path: Path) -> None:
    """Every client that writes keys x OpenSSL and Go servers x TLS 1.2 and 1.3, in
    parallel through one proxy per server: every encrypted handshake message is
    logged decoded, nothing stays pending or undecryptable."""
    results: dict[tuple[str, str, str], tuple[bool, str]] = {}

    def server_run(server: str) -> None:
        keys = {(c, t): tmp_path / f"{server}-{c}-{t}.log" for c, s, t in PAIRS if s == server}
        with start_server(server, certs, log_dir=tmp_path) as srv, \
                InspectorProcess(srv.addr, tmp_path / f"{server}.jsonl",
                                 keylog=list(keys.values()), extra=KEY_WAIT) as p:
            def one(pair: tuple[str, str]) -> tuple[str, str, bool, str]:
                c, t = pair
                r = run_client(c, "127.0.0.1", p.port, certs, tls=t, keylog=keys[pair])
                return c, t, r.ok, r.output[-300:]
            with ThreadPoolExecutor(4) as ex:
                done = list(ex.map(one, keys))
            evs = p.wait_closes(len(keys), timeout=60)
        for c, t, ok, out in done:
            results[(c, server, t)] = (ok, out)
        by_conn: dict[str, dict[str, Any]] = {}
        for e in evs:
            if e["event"] == "record" and "messages" in e:
                for m in e["messages"]:
                    if m["type"] == "client_hello":
                        by_conn[e["conn"]] = m
        for conn, ch in by_conn.items():
            final = _final(evs, conn)
            kinds = {side: [str(m.get("type")) for (s, _), d in sorted(final.items())
                            if s == side for m in d.get("messages", [])]
                     for side in ("client", "server")}
            bad = [d for d in final.values() if d["status"] in ("pending", "undecryptable")]
            assert not bad, (server, conn, ch.get("ja4"), bad)
            assert kinds["client"][-1:] == ["finished"] or "finished" in kinds["client"], kinds
            assert "finished" in kinds["server"], kinds
        assert len(by_conn) == len(keys)

    with ThreadPoolExecutor(2) as ex:
        list(ex.map(server_run, ("openssl", "go")))
    failed = {k: v for k, v in results.items() if not v[0]}
    assert not failed, failed


def test_live_decryption_agrees_with_tshark(certs: Certs, tmp_path: Path) -> None:
    """One live connection per version, captured: the proxy's decoded handshake
    messages and alerts are tshark's (same key log, same connection)."""
    for tls in ("1.3", "1.2"):
        keys = tmp_path / f"keys-{tls}.log"
        with start_server("go", certs, tls=tls, log_dir=tmp_path) as srv, \
                InspectorProcess(srv.addr, tmp_path / f"i{tls}.jsonl", keylog=[keys],
                                 extra=KEY_WAIT) as p:
            cap = Capture(p.port, tmp_path / f"cap{tls}.pcapng")
            try:
                r = run_client("curl", "127.0.0.1", p.port, certs, tls=tls, keylog=keys)
                # The client may exit before the server's close_notify (answering its
                # own) passed the proxy: the close event comes once both directions
                # ended, so everything the proxy logged is on the wire before the
                # capture's end marker.
                evs = p.wait_closes(1)
            finally:
                cap.stop()
        assert r.ok, r.output
        theirs = tshark_view(tmp_path / f"cap{tls}.pcapng", keys, p.port)
        ours: dict[str, list[str]] = {"client": [], "server": []}
        alerts: dict[str, list[str]] = {"client": [], "server": []}
        final = _final(evs, "1")
        for e in evs:
            if e["event"] != "record" or "from" not in e:
                continue
            side = e["from"]
            ours[side] += [m["type"] for m in e.get("messages", [])]
            d = final.get((side, e["index"]))
            if d is not None:
                ours[side] += [str(m["type"]) for m in d.get("messages", [])]
                if "alert" in d:
                    alerts[side].append(d["alert"]["description"])
            elif isinstance(e.get("alert"), dict):
                alerts[side].append(e["alert"]["description"])
        assert ours == theirs.handshakes, (tls, ours, theirs.handshakes)
        assert alerts == theirs.alerts


def test_bad_key_logs_are_reported_and_traffic_is_unaffected(
        certs: Certs, tmp_path: Path) -> None:
    """Truncated lines, unknown labels, keys of another connection: one clear message
    (no secret), the connection goes through untouched, records stay pending."""
    other = tmp_path / "other.log"
    with start_server("go", certs, tls="1.3", log_dir=tmp_path) as srv:
        r0 = run_client("python", "127.0.0.1", srv.port, certs, tls="1.3", keylog=other)
    assert r0.ok
    text = other.read_text()
    secret = text.split()[-1]
    bad = tmp_path / "bad.log"
    # What the file holds before the proxy starts is not read (those keys belong to
    # connections it never saw): this garbage is never reported.
    bad.write_text("old garbage from yesterday\n")
    key_line = next(x for x in text.splitlines() if x and not x.startswith("#"))
    with start_server("go", certs, tls="1.3", log_dir=tmp_path) as srv, \
            InspectorProcess(srv.addr, tmp_path / "i.jsonl", keylog=[bad],
                             extra=KEY_WAIT) as p:
        with bad.open("a") as fh:
            fh.write(text + key_line[:60] + "\n" + f"NOT_A_LABEL {'aa' * 32} {secret}\n")
        deadline = time.monotonic() + 10
        while "bad.log: key log line" not in p.output():
            assert time.monotonic() < deadline, p.output()
            time.sleep(0.02)  # polling the proxy's output for its warning
        r = run_client("curl", "127.0.0.1", p.port, certs, tls="1.3")
        evs = p.wait_closes(1)
        out = p.stop()
    assert r.ok, r.output
    assert out.count("bad.log: key log line") == 1, out
    # The totals come at shutdown, if the proxy got to run its done hook.
    assert "1 malformed lines and 1 lines with unknown labels" in out or (
        "lines with unknown labels" not in out)
    assert secret not in out and secret not in (tmp_path / "i.jsonl").read_text()
    assert "garbage" not in out
    statuses = {d["status"] for d in _decrypted(evs)}
    assert statuses == {"pending"}
    # The connection ended long before its wait for keys (60 s): its close says once
    # that they never arrived, as a wait that ran out does (README, `note`).
    notes = [e for e in evs if e["event"] == "note"]
    assert len(notes) == 1, notes
    assert notes[0]["note"].startswith("keys never arrived for client_random")
    assert "by the connection's close" in notes[0]["note"] and secret not in notes[0]["note"]
    assert evs.index(notes[0]) < evs.index(_closes(evs)[0])


def test_lab_reproduce_passes_the_peers_key_logs(certs: Certs, tmp_path: Path) -> None:
    """`reproduce` makes the built-in peers write key logs into its folder and gives
    them to the inspector: the log shows decrypted handshake messages."""
    from tlsinspector import CONFIGS
    from tlsinspector.lab.reproduce import reproduce

    verdicts = reproduce(CONFIGS / "slow-middlebox.yaml", ["go", "openssl"],
                         out_dir=tmp_path, certs=certs)
    assert (tmp_path / "keys-go.log").exists() and (tmp_path / "keys-openssl.log").exists()
    evs = [e for v in verdicts for e in v.events]
    assert _decrypted(evs), "no decrypted view in the reproduce log"


def test_wolfssl_keys_written_after_its_handshake_decrypt(certs: Certs, tmp_path: Path) -> None:
    """wolfSSL (TLS 1.2) appends its CLIENT_RANDOM only once its handshake is done:
    both Finished records wait, then decrypt with the real (non-zero) master secret.
    Within hotpath.HOLD_MAX their own record events are completed (held meanwhile);
    later, a late decrypted event does it. With --pcap (as reproduce runs) too: such
    an event follows the record it completes in the log (it once bypassed the
    connection's coalescer, which still held that tiny record, and came first)."""
    keys = tmp_path / "wolfssl.log"
    with start_server("openssl", certs, tls="1.2", log_dir=tmp_path) as srv, \
            InspectorProcess(srv.addr, tmp_path / "i.jsonl", keylog=[keys],
                             extra=["--pcap", str(tmp_path / "c.pcapng"), *KEY_WAIT]) as p:
        r = run_client("wolfssl", "127.0.0.1", p.port, certs, tls="1.2", keylog=keys)
        evs = p.wait_closes(1)
        deadline = time.monotonic() + 10
        while any(d["status"] == "pending" for d in _final(evs, "1").values()):
            assert time.monotonic() < deadline, p.output()
            time.sleep(0.02)  # polling the log: late events may follow the close
            evs = p.events()
    assert r.ok, r.output
    master = keys.read_text().split()[-1]
    assert master != "00" * 48
    final = _final(evs, "1")
    assert final and all(d["status"] == "decrypted" for d in final.values()), final
    kinds = {side: [m["type"] for (s, _), d in final.items() if s == side
                    for m in d.get("messages", [])] for side in ("client", "server")}
    assert kinds == {"client": ["finished"], "server": ["finished"]}
    logged: set[tuple[str, int]] = set()
    for e in evs:
        if e["event"] == "record":
            logged.add((e["from"], e["index"]))
        elif e["event"] == "decrypted":
            assert (e["from"], e["index"]) in logged, (e, evs)


@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_a_record_whose_key_comes_with_the_peers_answer_is_logged_decrypted_once(
        certs: Certs, tmp_path: Path, tls: str) -> None:
    """With the server's key log, a TLS 1.2 client's Finished passes before the server
    has read the ClientKeyExchange of the same flight and logged the master secret
    (and a TLS 1.3 NewSessionTicket may pass before the proxy read the server's
    application secret): the relay holds the connection's events until the key log
    has it (hotpath._Hold), so each record event carries its decrypted content and no
    record is logged pending, nor completed by a second event."""
    keys = tmp_path / "server-keys.log"
    with start_server("openssl", certs, tls=tls, log_dir=tmp_path, keylog=keys) as srv, \
            InspectorProcess(srv.addr, tmp_path / "i.jsonl", keylog=[keys],
                             extra=KEY_WAIT) as p:
        results = [run_client("openssl", "127.0.0.1", p.port, certs, tls=tls)
                   for _ in range(3)]
        evs = p.wait_closes(3)
    assert all(r.ok for r in results), [r.output for r in results]
    assert not [e for e in evs if e["event"] == "decrypted"], p.output()
    views = _decrypted(evs)
    assert views and all(d["status"] == "decrypted" for d in views), views
    finished = [d for d in views if d["from"] == "client"
                and any(m.get("type") == "finished" for m in d.get("messages", []))]
    assert len(finished) == 3, views
    assert "pending" not in p.output() and "arrived late" not in p.output()
