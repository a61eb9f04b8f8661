"""Keys that come late, on the live proxy between real peers (issue 14 part 3).

A fault inside encryption (a sealed close_notify before the server's first
application record) on ``tlsinspector run``, between Python's ssl client
(OpenSSL; it writes its key log to a private file) and ``openssl s_server
-www``. The proxy follows a *different* file, which the test fills from the
client's only when the proxy's own log says it holds a record for keys. Two
recording relays (client | relay | proxy | relay | server) show what each peer
really received. Both cases run at once (independent peers, one test).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.relay import Relay
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.inspector import InspectorProcess
from tlsinspector.lab.peers import start_server

SCENARIO = """name: late-keys
faults:
  - match: {from: server, encrypted: true, content_type: application_data, times: 1}
    action: insert-alert
    level: warning
    description: close_notify
    position: before
"""


def _client(port: int, certs: Certs, keys: Path, out: dict[str, Any]) -> None:
    """A real TLS 1.3 client: GET, then read to the end (a close_notify ends it)."""
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.keylog_filename = str(keys)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            body = b""
            while chunk := s.recv(65536):
                body += chunk
            out["body"] = body
    except (OSError, ssl.SSLError) as e:
        out["error"] = f"{type(e).__name__}: {e}"


def _run(certs: Certs, tmp: Path, give_keys: bool) -> dict[str, Any]:
    tmp.mkdir()
    scenario = tmp / "late.yaml"
    scenario.write_text(SCENARIO)
    private, followed = tmp / "client-keys.log", tmp / "followed.log"
    wait_ms = 8000 if give_keys else 300
    with start_server("openssl", certs, tls="1.3", log_dir=tmp) as srv:
        near = Relay(srv.port)  # what the server sent
        with InspectorProcess(f"127.0.0.1:{near.port}", tmp / "i.jsonl", [scenario],
                              keylog=[followed],
                              extra=["--key-wait-ms", str(wait_ms)]) as p:
            far = Relay(p.port)  # what the client received
            out: dict[str, Any] = {}
            t = threading.Thread(target=_client, args=(far.port, certs, private, out))
            t.start()
            copied = 0
            deadline = time.monotonic() + 30
            while t.is_alive():
                assert time.monotonic() < deadline, p.output()
                evs = p.events()
                held = {e["index"] for e in evs if e["event"] == "record" and e.get("held")}
                gone = {e["index"] for e in evs if e["event"] == "released"}
                if give_keys and held - gone and private.exists():
                    # The proxy holds a record for keys now: hand over what the client
                    # wrote so far (appended: the follower reads what is new).
                    data = private.read_bytes()
                    with followed.open("ab") as fh:
                        fh.write(data[copied:])
                    copied = len(data)
                t.join(0.02)  # polling the proxy's log for its held/released events
            try:
                evs = p.wait_closes(1)
            except TimeoutError as e:  # say why: the client's error, the proxy's words
                raise AssertionError(f"{e}\nclient: {out}\nproxy: {p.output()[-1500:]}") from e
        server_sent, client_got = near.wait(), far.wait()
    sides = ("client", "server")
    return {"out": out, "events": evs, "proxy": p.output(),
            "sent": {s: b"".join(d for x, d in server_sent if x == s) for s in sides},
            "got": {s: b"".join(d for x, d in client_got if x == s) for s in sides},
            "wait_ms": wait_ms}


def test_late_keys_hold_the_record_then_apply_or_give_up(certs: Certs, tmp_path: Path) -> None:
    with ThreadPoolExecutor(2) as ex:
        applied, gave_up = ex.map(lambda g: _run(certs, tmp_path / str(g), g), (True, False))

    # Keys arrived in time: the fault applied; the client saw the server's clean end
    # (the sealed close_notify) before any response byte, and no MAC failure.
    # The response record is held when it comes before the application keys, or
    # faulted on arrival when the keys (copied while the NewSessionTickets were held)
    # came first: the peers' timing decides, so either is right, exactly once.
    evs = applied["events"]
    released = [e for e in evs if e["event"] == "released"]
    faulted = [e for e in evs if e["event"] in ("record", "released") and "fault" in e]
    assert len(faulted) == 1, faulted
    # Records were held for keys twice (the handshake keys, then the application
    # keys): a held record logged after a release. Every held record was released,
    # in order.
    order = [(e["event"], e["index"]) for e in evs
             if e.get("from") == "server" and (e["event"] == "released" or e.get("held"))]
    held = [i for ev, i in order if ev == "record"]
    assert [i for ev, i in order if ev == "released"] == held, order
    first_release = [ev for ev, _ in order].index("released")
    assert "record" in [ev for ev, _ in order[first_release:]], order
    assert faulted[0]["fault"][0]["action"] == "insert-alert"
    assert "not_applied" not in faulted[0]["fault"][0]["detail"]
    assert applied["out"] == {"body": b""}, applied["out"]
    assert applied["sent"]["server"] != applied["got"]["server"]  # the proxy changed it
    [close] = [e for e in evs if e["event"] == "close"]
    codes = [d["code"] for d in close["diagnosis"]]
    assert "fault-not-applied" not in codes and "bad-record-mac" not in codes, codes

    # No keys: held for --key-wait-ms, then the fault is reported not applied and
    # every byte went on unchanged, the response included.
    evs = gave_up["events"]
    released = [e for e in evs if e["event"] == "released"]
    [first] = [e for e in released if "fault" in e]
    why = first["fault"][0]["detail"]["not_applied"]
    assert why.startswith(f"no keys for server record {first['index']} after"), why
    assert first["waited_ms"] >= gave_up["wait_ms"]
    assert gave_up["out"]["body"].startswith(b"HTTP/1.0 200 ok"), gave_up["out"]
    assert gave_up["got"] == gave_up["sent"]  # both directions, byte for byte
    [close] = [e for e in evs if e["event"] == "close"]
    [finding] = [d for d in close["diagnosis"] if d["code"] == "fault-not-applied"]
    assert "no keys for server record" in finding["summary"]
    assert "released after" in gave_up["proxy"] and "not_applied" in gave_up["proxy"]


def test_report_002_with_only_the_servers_key_log(certs: Certs, tmp_path: Path) -> None:
    """Report 002's client is a legacy device: the key log a user has is the server's.
    OpenSSL as a TLS 1.2 server logs CLIENT_RANDOM only once it read the client's
    Finished, and renegotiation-scsv's faults (handshake: client_hello, encrypted:
    true) held that Finished for its keys: a deadlock until --key-wait-ms, then
    fault-not-applied for the connection, and the renegotiation went through
    unchanged. In TLS 1.2 the first encrypted handshake record after a side's
    ChangeCipherSpec is its Finished (RFC 5246 7.4.9), which such a match never
    names: it is not held."""
    from tlsinspector import CONFIGS
    from tlsinspector.lab.peers import client_command, run_command

    keys = tmp_path / "server-keys.log"
    with start_server("openssl", certs, tls="1.2", renegotiation=True, keylog=keys,
                      log_dir=tmp_path) as srv, \
            InspectorProcess(srv.addr, tmp_path / "log.jsonl",
                             [CONFIGS / "renegotiation-scsv.yaml"], keylog=[keys]) as proxy:
        cmd, stdin = client_command("openssl", "127.0.0.1", proxy.port, certs, "1.2",
                                    renegotiate=True)
        res = run_command("openssl", cmd, stdin, 30)
        [close] = [e for e in proxy.wait_closes(1) if e["event"] == "close"]
    codes = [d["code"] for d in close["diagnosis"]]
    assert "fault-not-applied" not in codes, close["diagnosis"]
    assert "renegotiation-scsv" in codes, codes
    assert "tlsv1 alert protocol version" in res.output, res.output
