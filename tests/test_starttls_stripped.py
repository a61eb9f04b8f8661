"""configs/starttls-stripped.yaml and configs/starttls-refused.yaml with real clients and
a real SMTP server (aiosmtpd), issue 17.

Stripped (250-STARTTLS -> 250-XXXXXXXA, as ESMTP-inspecting firewalls did): curl
--ssl-reqd refuses with its own error and sends no credentials; Python's smtplib,
a client that does not require TLS, logs in and sends the mail in plaintext, and
the close event's diagnosis says so. Refused (the proxy answers STARTTLS with
454): curl --ssl-reqd fails with its error. The password never reaches the log.
"""

from __future__ import annotations

import smtplib
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.proxyproc import Proxy
from tests.starttls_peers import PASSWORD, USER, smtp_server
from tlsinspector import CONFIGS
from tlsinspector.lab.certs import Certs

TIMEOUT = 30


def _curl(port: int, ca: Path, msg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--ssl-reqd", "--cacert", str(ca), "--user",
         f"{USER}:{PASSWORD}", "--mail-from", "a@localhost", "--mail-rcpt", "b@localhost",
         "-T", str(msg), f"smtp://127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=TIMEOUT)


def _smtplib(port: int) -> tuple[list[str], dict[str, object]]:
    """A client that uses STARTTLS only when offered (the common default)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as s:
        s.ehlo()
        offered = s.has_extn("starttls")
        if offered:
            s.starttls()
            s.ehlo()
        s.login(USER, PASSWORD)
        refused = s.sendmail("a@localhost", ["b@localhost"], "Subject: hi\r\n\r\nbody\r\n")
        return sorted(s.esmtp_features), {"offered": offered, "refused": refused}


def _closes(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["conn"]: e for e in events if e["event"] == "close"}


def stripped(certs: Certs, tmp: Path) -> dict[str, Any]:
    msg = tmp / "mail.txt"
    msg.write_text("Subject: hello\r\n\r\nmail body\r\n")
    with smtp_server(certs) as port, Proxy(f"127.0.0.1:{port}", tmp / "stripped.jsonl",
                                           [CONFIGS / "starttls-stripped.yaml"]) as proxy:
        curl = _curl(proxy.port, certs.ca_cert, msg)
        features, plain = _smtplib(proxy.port)
        events = proxy.wait_closes(2)
        return {"curl": curl, "features": features, "plain": plain, "events": events,
                "log": (tmp / "stripped.jsonl").read_text(), "output": proxy.output()}


def refused(certs: Certs, tmp: Path) -> dict[str, Any]:
    msg = tmp / "mail2.txt"
    msg.write_text("Subject: hello\r\n\r\nmail body\r\n")
    with smtp_server(certs) as port, Proxy(f"127.0.0.1:{port}", tmp / "refused.jsonl",
                                           [CONFIGS / "starttls-refused.yaml"]) as proxy:
        curl = _curl(proxy.port, certs.ca_cert, msg)
        events = proxy.wait_closes(1)
        return {"curl": curl, "events": events, "log": (tmp / "refused.jsonl").read_text()}


def test_stripped_and_refused_starttls_with_real_clients(certs: Certs, tmp_path: Path) -> None:
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(stripped, certs, tmp_path)
        b = pool.submit(refused, certs, tmp_path)
        s, r = a.result(), b.result()

    # curl --ssl-reqd: its own error, no TLS, no AUTH sent.
    assert s["curl"].returncode == 64, s["curl"]
    assert "STARTTLS not supported" in s["curl"].stderr, s["curl"].stderr
    # smtplib: never saw STARTTLS (it saw the masked word), logged in and sent in plaintext.
    assert "xxxxxxxa" in s["features"] and "starttls" not in s["features"]
    assert s["plain"] == {"offered": False, "refused": {}}
    # In connection order (curl's, then smtplib's): the close events come in the
    # order the connections ended, which two peers' timing decides.
    closes = sorted(_closes(s["events"]).values(), key=lambda c: int(c["conn"]))
    codes = [[d["code"] for d in c["diagnosis"]] for c in closes]
    assert codes[0] == ["starttls-capability-altered"], codes
    assert codes[1] == ["starttls-not-used", "starttls-capability-altered"], codes
    loud = closes[1]["diagnosis"][0]["summary"]
    assert loud.startswith("PLAINTEXT SESSION") and "credentials included" in loud
    faulted = [e for e in s["events"] if e["event"] == "plaintext" and "fault" in e]
    assert len(faulted) == 2 and all(e["words"] == ["STARTTLS"] for e in faulted)
    assert "[1] S->C plaintext smtp 250-STARTTLS [STARTTLS offered] | FAULT " \
           "starttls-stripped: replace-text" in s["output"]
    assert not [e for e in s["events"] if e["event"] == "record"]

    # The proxy answers STARTTLS itself: curl's own error; the server never saw it.
    assert r["curl"].returncode == 64, r["curl"]
    assert "STARTTLS denied" in r["curl"].stderr, r["curl"].stderr
    [close] = _closes(r["events"]).values()
    assert [d["code"] for d in close["diagnosis"]] == ["starttls-refused"]
    assert "proxy's own fault" in close["diagnosis"][0]["summary"]

    for run in (s, r):
        assert PASSWORD not in run["log"]
    assert PASSWORD not in s["output"]


def test_openssl_going_on_after_a_refused_starttls_is_not_called_implicit_tls(
        certs: Certs, tmp_path: Path) -> None:
    """openssl s_client -starttls smtp sends its ClientHello although the STARTTLS was
    refused (configs/starttls-refused.yaml says so). Before, tls-plaintext-mismatch
    called that "implicit TLS (e.g. 465, 993, 995) to a STARTTLS port", and
    starttls-refused read "refused by the proxy's own fault answered it"."""
    with smtp_server(certs) as port, Proxy(f"127.0.0.1:{port}", tmp_path / "r.jsonl",
                                           [CONFIGS / "starttls-refused.yaml"]) as proxy:
        res = subprocess.run(["openssl", "s_client", "-starttls", "smtp", "-connect",
                              f"127.0.0.1:{proxy.port}", "-CAfile", str(certs.ca_cert)],
                             input="", capture_output=True, text=True, timeout=TIMEOUT)
        [close] = _closes(proxy.wait_closes(1)).values()
    found = {d["code"]: d["summary"] for d in close["diagnosis"]}
    assert "wrong version number" in res.stderr, res  # the server's plaintext "500"
    assert found["starttls-refused"] == ("TLS was requested (STARTTLS) and refused by the "
                                         "proxy's own fault (reply-error); a client that "
                                         "requires TLS stops here"), found
    mismatch = found["tls-plaintext-mismatch"]
    assert "implicit TLS" not in mismatch and "refused" in mismatch, mismatch
    assert "sent its ClientHello anyway" in mismatch, mismatch
    # The server answered that hello in plaintext (s_client: "wrong version number"):
    # not "no ServerHello ... the client gave up first (a timeout?)".
    assert "no-server-hello" not in found, found
