"""Live decryption against tshark for every client x server x cipher the issue lists
(issue 14, "Done means" 1): go, openssl, curl, gnutls and python clients, each
writing its own key log, against OpenSSL and Go servers; TLS 1.2 with AES-GCM,
ChaCha20-Poly1305, AES-CBC with and without encrypt_then_mac, TLS 1.3 with AES-GCM
and ChaCha20-Poly1305. The cipher is forced at the server; all clients of one
server setup run at once through one ``tlsinspector run --keylog``, captured on
the client leg. Per connection, the handshake messages and alerts the proxy
logged (plaintext ones, and the decrypted view of the encrypted ones) must be
exactly tshark's decryption of the same connection with the same keys.

The suite runs two setups (seconds); ``make keys-matrix`` (TLSINSPECTOR_KEYS_MATRIX=1)
runs all of them. Combinations no stack can make, so absent:
- Go has no encrypt_then_mac (RFC 7366): with a CBC suite a Go client or server
  always negotiates MAC-then-encrypt, so "CBC with encrypt_then_mac" has no Go side;
- TLS 1.3 ChaCha20 against the Go server: Go's server picks AES-GCM whenever the
  client offers it, and the Go and Python clients cannot leave AES-GCM out of a
  TLS 1.3 ClientHello (neither configures TLS 1.3 suites), so that setup runs the
  OpenSSL server only.
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.test_tshark import Capture
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.inspector import InspectorProcess
from tlsinspector.lab.peers import run_client, start_server
from tlsinspector.proxy import names

CLIENTS = ("go", "openssl", "curl", "gnutls", "python")
CBC = "ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES128-SHA"  # Go offers only the SHA-1 one,
# Python only the SHA-256 one (its defaults leave SHA-1 out): either is CBC.
GO_CBC = "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256"


@dataclass(frozen=True)
class Setup:
    name: str
    server: str
    tls: str
    extra: tuple[str, ...]
    want: str        # a word the negotiated suite's name must hold
    etm: bool | None  # CBC: whether encrypt_then_mac must be negotiated (go: never)


SETUPS = [
    Setup("openssl-tls12-gcm", "openssl", "1.2", ("-cipher", "ECDHE-RSA-AES128-GCM-SHA256"),
          "GCM", None),
    Setup("openssl-tls12-chacha", "openssl", "1.2", ("-cipher", "ECDHE-RSA-CHACHA20-POLY1305"),
          "CHACHA20", None),
    Setup("openssl-tls12-cbc-etm", "openssl", "1.2", ("-cipher", CBC), "CBC", True),
    Setup("openssl-tls12-cbc-no-etm", "openssl", "1.2", ("-cipher", CBC, "-no_etm"), "CBC",
          False),
    Setup("openssl-tls13-gcm", "openssl", "1.3", ("-ciphersuites", "TLS_AES_128_GCM_SHA256"),
          "GCM", None),
    Setup("openssl-tls13-chacha", "openssl", "1.3",
          ("-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"), "CHACHA20", None),
    Setup("go-tls12-gcm", "go", "1.2", ("-suites", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
          "GCM", None),
    Setup("go-tls12-chacha", "go", "1.2",
          ("-suites", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"), "CHACHA20", None),
    Setup("go-tls12-cbc-no-etm", "go", "1.2", ("-suites", GO_CBC), "CBC", False),
    Setup("go-tls13-gcm", "go", "1.3", (), "GCM", None),
]
FULL = os.environ.get("TLSINSPECTOR_KEYS_MATRIX") == "1"
QUICK = ("openssl-tls12-cbc-no-etm", "go-tls12-chacha")


def tshark_by_client_port(pcap: Path, keys: Path, port: int) -> dict[int, dict[str, Any]]:
    """tshark's decryption, per connection (keyed by the client's port)."""
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-o", f"tls.keylog_file:{keys}", "-d",
         f"tcp.port=={port},tls", "-Y", "tls", "-T", "fields", "-e", "tcp.srcport",
         "-e", "tcp.dstport", "-e", "tls.handshake.type", "-e", "tls.alert_message.desc",
         "-E", "occurrence=a", "-E", "aggregator=,"],
        capture_output=True, text=True, timeout=120, check=True)
    conns: dict[int, dict[str, Any]] = {}
    for line in out.stdout.splitlines():
        src, dst, types, alerts = (line.split("\t") + ["", "", ""])[:4]
        side = "server" if int(src) == port else "client"
        cport = int(dst) if side == "server" else int(src)
        c = conns.setdefault(cport, {"hs": {"client": [], "server": []},
                                     "alerts": {"client": [], "server": []}})
        c["hs"][side] += [names.handshake_type_name(int(t)) for t in types.split(",") if t]
        c["alerts"][side] += [names.alert_description_name(int(a))
                              for a in alerts.split(",") if a]
    return conns


def ours_by_client_port(evs: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """What the proxy logged, per connection: plaintext messages and alerts, and the
    last decrypted view of each encrypted record (a late event replaces "pending")."""
    port_of = {e["conn"]: int(e["client"].rsplit(":", 1)[1]) for e in evs
               if e["event"] == "connect"}
    final: dict[tuple[str, str, int], dict[str, Any]] = {}
    for e in evs:
        if isinstance(e.get("decrypted"), dict):
            final[(e["conn"], e["from"], e["index"])] = e["decrypted"]
    conns: dict[int, dict[str, Any]] = {}
    for e in evs:
        if e["event"] != "record" or "from" not in e or e["conn"] not in port_of:
            continue
        c = conns.setdefault(port_of[e["conn"]], {
            "hs": {"client": [], "server": []}, "alerts": {"client": [], "server": []},
            "suite": None, "etm": None, "offered_etm": None, "pending": 0})
        side = e["from"]
        for m in e.get("messages", []):
            c["hs"][side].append(m["type"])
            if m["type"] == "client_hello":
                c["offered_etm"] = any(x["type"] == "encrypt_then_mac"
                                       for x in m.get("extensions") or [])
            if m["type"] == "server_hello":
                c["suite"] = m.get("cipher_suite")
                c["etm"] = any(x["type"] == "encrypt_then_mac"
                               for x in m.get("extensions") or [])
        d = final.get((e["conn"], side, e["index"]))
        if d is not None:
            c["pending"] += d["status"] != "decrypted"
            c["hs"][side] += [str(m["type"]) for m in d.get("messages", [])]
            if "alert" in d:
                c["alerts"][side].append(d["alert"]["description"])
        elif isinstance(e.get("alert"), dict):
            c["alerts"][side].append(e["alert"]["description"])
    return conns


def run_setup(s: Setup, certs: Certs, tmp: Path) -> list[str]:
    """Every client through one proxy; the differences from tshark, as text."""
    tmp.mkdir()
    keys = {c: tmp / f"keys-{c}.log" for c in CLIENTS}
    problems: list[str] = []
    with start_server(s.server, certs, tls=s.tls, log_dir=tmp, extra=s.extra) as srv, \
            InspectorProcess(srv.addr, tmp / "i.jsonl", keylog=list(keys.values()),
                             # not giving up on keys a loaded client writes > 2 s late
                             extra=["--key-wait-ms", "60000"]) as p:
        cap = Capture(p.port, tmp / "cap.pcapng")
        try:
            with ThreadPoolExecutor(len(CLIENTS)) as ex:
                results = list(ex.map(lambda c: run_client(c, "127.0.0.1", p.port, certs,
                                                            tls=s.tls, keylog=keys[c]),
                                      CLIENTS))
            try:
                evs = p.wait_closes(len(CLIENTS), timeout=60)
            except TimeoutError as e:
                raise AssertionError(f"{s.name}: {e}\n{p.output()[-2000:]}") from e
        finally:
            cap.stop()
    problems += [f"{s.name}: client {r.kind} failed: {r.output[-200:]}"
                 for r in results if not r.ok]
    both = tmp / "all-keys.log"
    both.write_text("".join(k.read_text() for k in keys.values() if k.exists()))
    theirs = tshark_by_client_port(tmp / "cap.pcapng", both, p.port)
    ours = ours_by_client_port(evs)
    if set(ours) != set(theirs) or len(ours) != len(CLIENTS):
        problems.append(f"{s.name}: connections ours {sorted(ours)} tshark {sorted(theirs)}")
    if s.etm and sum(bool(o["etm"]) for o in ours.values()) < len(CLIENTS) - 1:
        problems.append(f"{s.name}: encrypt_then_mac negotiated by too few clients")
    for port, o in ours.items():
        t = theirs.get(port, {})
        where = f"{s.name} client port {port} ({o['suite']})"
        if s.want not in str(o["suite"]):
            problems.append(f"{where}: negotiated {o['suite']}, not {s.want}")
        # With etm wanted, every client that offers it (all but Go) must get it.
        if s.etm is not None and o["etm"] is not (s.etm and o["offered_etm"]):
            problems.append(f"{where}: encrypt_then_mac {o['etm']}, want {s.etm}")
        if o["pending"]:
            problems.append(f"{where}: {o['pending']} records not decrypted")
        if "finished" not in o["hs"]["client"] or "finished" not in o["hs"]["server"]:
            problems.append(f"{where}: no decrypted Finished: {o['hs']}")
        if o["hs"] != t.get("hs") or o["alerts"] != t.get("alerts"):
            problems.append(f"{where}: ours {o['hs']} {o['alerts']}, tshark {t}")
    return problems


def test_live_decryption_agrees_with_tshark_per_client_server_and_cipher(
        certs: Certs, tmp_path: Path) -> None:
    setups = [s for s in SETUPS if FULL or s.name in QUICK]
    with ThreadPoolExecutor(2) as ex:
        found = list(ex.map(lambda s: run_setup(s, certs, tmp_path / s.name), setups))
    problems = [x for f in found for x in f]
    assert not problems, "\n".join(problems)
