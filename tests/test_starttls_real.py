"""STARTTLS through the inspector with real clients and servers (issue 17).

One proxy per server, every protocol at once (threads): SMTP (aiosmtpd), IMAP and
POP3 (Dovecot), PostgreSQL (the Debian server), FTP, XMPP and LDAP (scripted
dialogues, Python's ssl). Clients: openssl s_client -starttls for each, curl
--ssl-reqd (SMTP with AUTH and a message, IMAP, POP3), gnutls-cli
--starttls-proto, psql. For every connection: the client succeeds, the log shows
the plaintext phase with STARTTLS accepted, the records start at the byte after
it (``after_plaintext``), nothing is logged as non-TLS, and the password used
appears nowhere in the log or the terminal view.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.proxyproc import Proxy
from tests.starttls_peers import (
    PASSWORD,
    USER,
    ScriptedStarttls,
    dovecot,
    postgres,
    smtp_server,
)
from tlsinspector.lab.certs import Certs

TIMEOUT = 30


def run(cmd: list[str], env: dict[str, str] | None = None,
        stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=TIMEOUT,
                          env={**os.environ, **(env or {})})


def s_client(proto: str, port: int, ca: Path) -> list[str]:
    extra = ["-xmpphost", "localhost"] if proto == "xmpp" else []
    return ["openssl", "s_client", "-starttls", proto, "-connect", f"127.0.0.1:{port}",
            "-CAfile", str(ca), "-verify_return_error", "-brief", *extra]


def gnutls(proto: str, port: int, ca: Path) -> list[str]:
    return ["gnutls-cli", f"--starttls-proto={proto}", f"--x509cafile={ca}", "-p", str(port),
            "--verify-hostname=localhost", "127.0.0.1"]


def curl(url: str, ca: Path, *extra: str) -> list[str]:
    return ["curl", "-sS", "--max-time", "20", "--ssl-reqd", "--cacert", str(ca),
            "--user", f"{USER}:{PASSWORD}", *extra, url]


# A client: its name, its command line for the proxy's port, extra environment.
Client = tuple[str, Callable[[int], list[str]], dict[str, str] | None]


def through(upstream: int, log: Path, clients: list[Client]) -> dict[str, Any]:
    """Run the clients one after another through one proxy; results and its log."""
    # Several proxies start at once here: give a loaded CI machine time to start them.
    with Proxy(f"127.0.0.1:{upstream}", log, start_timeout=90) as proxy:
        results = {name: run(cmd(proxy.port), env) for name, cmd, env in clients}
        events = proxy.wait_closes(len(clients))
        output = proxy.output()
    return {"results": results, "events": events, "output": output, "log": log}


def smtp_case(certs: Certs, tmp: Path) -> dict[str, Any]:
    msg = tmp / "mail.txt"
    msg.write_text("Subject: hello\r\n\r\nmail body\r\n")
    ca = certs.ca_cert
    with smtp_server(certs) as port:
        return through(port, tmp / "smtp.jsonl", [
            ("openssl", lambda p: s_client("smtp", p, ca), None),
            ("curl", lambda p: curl(f"smtp://127.0.0.1:{p}", ca, "--mail-from",
                                    "a@localhost", "--mail-rcpt", "b@localhost", "-T",
                                    str(msg)), None),
            ("gnutls", lambda p: gnutls("smtp", p, ca), None)])


def imap_pop3_case(certs: Certs, tmp: Path) -> list[dict[str, Any]]:
    ca = certs.ca_cert
    with dovecot(certs) as (imap, pop3):
        return [
            through(imap, tmp / "imap.jsonl", [
                ("openssl", lambda p: s_client("imap", p, ca), None),
                ("curl", lambda p: curl(f"imap://127.0.0.1:{p}/", ca), None),
                ("gnutls", lambda p: gnutls("imap", p, ca), None)]),
            through(pop3, tmp / "pop3.jsonl", [
                ("openssl", lambda p: s_client("pop3", p, ca), None),
                ("curl", lambda p: curl(f"pop3://127.0.0.1:{p}/", ca), None)]),
        ]


def postgres_case(certs: Certs, tmp: Path) -> dict[str, Any]:
    ca = certs.ca_cert
    with postgres(certs) as port:
        return through(port, tmp / "postgres.jsonl", [
            ("openssl", lambda p: s_client("postgres", p, ca), None),
            ("psql", lambda p: ["psql", "-X", "-t", "-c", "select 17",
                                f"host=127.0.0.1 port={p} user={USER} dbname=postgres "
                                f"sslmode=verify-ca sslrootcert={ca} connect_timeout=20"],
             {"PGPASSWORD": PASSWORD})])


def scripted_case(proto: str, certs: Certs, tmp: Path) -> dict[str, Any]:
    server = ScriptedStarttls(proto, certs)
    try:
        return through(server.port, tmp / f"{proto}.jsonl",
                       [("openssl", lambda p: s_client(proto, p, certs.ca_cert), None)])
    finally:
        server.close()


def test_every_starttls_protocol_through_the_inspector(certs: Certs, tmp_path: Path) -> None:
    cases: dict[str, Callable[[], Any]] = {
        "smtp": lambda: smtp_case(certs, tmp_path),
        "imap+pop3": lambda: imap_pop3_case(certs, tmp_path),
        "postgres": lambda: postgres_case(certs, tmp_path),
        **{p: (lambda p=p: scripted_case(p, certs, tmp_path))  # type: ignore[misc]
           for p in ("ftp", "xmpp", "ldap")},
    }
    with ThreadPoolExecutor(len(cases)) as pool:
        futures = {name: pool.submit(fn) for name, fn in cases.items()}
        done = {name: f.result() for name, f in futures.items()}
    runs = {"smtp": done["smtp"], "imap": done["imap+pop3"][0], "pop3": done["imap+pop3"][1],
            "postgres": done["postgres"], "ftp": done["ftp"], "xmpp": done["xmpp"],
            "ldap": done["ldap"]}
    for proto, r in runs.items():
        check_run(proto, r)


def check_run(proto: str, r: dict[str, Any]) -> None:
    for name, res in r["results"].items():
        assert res.returncode == 0, (proto, name, res.stdout[-2000:], res.stderr[-2000:])
    if "psql" in r["results"]:
        assert r["results"]["psql"].stdout.strip() == b"17"
    events = r["events"]
    conns = [e["conn"] for e in events if e["event"] == "connect"]
    assert len(conns) == len(r["results"]), (proto, conns)
    for conn in conns:
        mine = [e for e in events if e["conn"] == conn]
        plain = [e for e in mine if e["event"] == "plaintext"]
        assert plain and {e["protocol"] for e in plain} == {proto}, (proto, mine)
        starttls = [e.get("starttls") for e in plain]
        if proto == "smtp":
            # The first line of the EHLO reply is the server's domain (RFC 5321
            # 4.1.1.1), never shown as a capability.
            at = next(i for i, e in enumerate(plain) if e.get("verb") == "EHLO")
            reply = next(e for e in plain[at:] if e["from"] == "server")
            assert reply["status"].startswith("250") and "words" not in reply, plain
        assert "requested" in starttls and "accepted" in starttls, (proto, plain)
        records = [e for e in mine if e["event"] == "record"]
        first = next(e for e in records if e["from"] == "client")
        assert first["index"] == 1 and first["messages"][0]["type"] == "client_hello"
        sent = sum(e["length"] for e in plain if e["from"] == "client")
        assert first["after_plaintext"] == sent, (proto, first, sent)
        assert any(e["from"] == "server" and e.get("after_plaintext") for e in records)
        assert not [e for e in mine if e["event"] in ("non_tls", "internal_error")]
    # The password used never reaches the log or the terminal view.
    assert PASSWORD not in r["log"].read_text() and PASSWORD not in r["output"]
