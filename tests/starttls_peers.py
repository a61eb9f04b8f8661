"""Real STARTTLS servers for the tests, each in a temp dir on a free port, stopped
by the context manager (no system service, nothing left listening).

- SMTP: aiosmtpd (PyPI) with STARTTLS and AUTH (allowed before TLS too, so a
  client that is stripped of STARTTLS can show what it then sends).
- IMAP and POP3: Dovecot (Debian dovecot-imapd, dovecot-pop3d), own config.
- PostgreSQL: the Debian server (/usr/lib/postgresql/*/bin), initdb into the
  temp dir as the postgres user, ssl=on, password (scram) over TLS only.
- FTP, XMPP, LDAP: a scripted plaintext dialogue (the server's side of each RFC's
  STARTTLS exchange) then Python's ssl as the TLS server: the clients are real.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from tlsinspector.lab.certs import Certs
from tlsinspector.lab.peers import free_port, stop_process, wait_for_port

USER = "tester"
PASSWORD = "s3cret-PW-17"
TIMEOUT = 20.0
# How long a server may take to listen: bounds a hang only (an exit is seen at once);
# Dovecot and PostgreSQL start beside other peers on a loaded 2-core CI machine.
START_TIMEOUT = 60.0


def _server_ctx(certs: Certs) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs.server_cert, certs.server_key)
    return ctx


@contextlib.contextmanager
def smtp_server(certs: Certs) -> Iterator[int]:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    class Handler:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            return "250 OK queued"

    def auth(server: object, session: object, envelope: object, mechanism: str,
             data: object) -> AuthResult:
        return AuthResult(success=getattr(data, "password", b"") == PASSWORD.encode())

    port = free_port()
    ctl = Controller(Handler(), hostname="127.0.0.1", port=port, tls_context=_server_ctx(certs),
                     authenticator=auth, auth_require_tls=False, server_hostname="localhost")
    ctl.start()
    try:
        yield port
    finally:
        ctl.stop()


DOVECOT_CONF = """
base_dir = {tmp}/run
state_dir = {tmp}/state
log_path = {tmp}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes
auth_mechanisms = plain login
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 1
mail_location = maildir:{tmp}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {tmp}/passwd
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={tmp}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"""


@contextlib.contextmanager
def _shared_tmp(prefix: str) -> Iterator[Path]:
    """A temp dir the servers' own users (dovenull, postgres) can reach: pytest's
    are private to root. Removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))  # the suite's TMPDIR is 0700
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def dovecot(certs: Certs) -> Iterator[tuple[int, int]]:
    """Dovecot serving IMAP and POP3 with STARTTLS; (imap port, pop3 port)."""
    binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
    if not os.path.exists(binary):
        raise RuntimeError("dovecot is missing: apt-get install dovecot-imapd dovecot-pop3d "
                           "(packages.debian)")
    with _shared_tmp("tlsi-dovecot-") as tmp:
        with _dovecot(binary, certs, tmp) as ports:
            yield ports


@contextlib.contextmanager
def _dovecot(binary: str, certs: Certs, tmp: Path) -> Iterator[tuple[int, int]]:
    # Explicit modes: the suite may run under any umask (CI's is 077), and
    # Dovecot's own users (dovecot, dovenull) must reach these.
    for sub in ("run", "state", "mail"):
        (tmp / sub).mkdir(exist_ok=True)
        os.chmod(tmp / sub, 0o755)
    shutil.chown(tmp / "mail", "dovecot", "dovecot")  # the mail user (userdb above)
    (tmp / "passwd").write_text(f"{USER}:{PASSWORD}::::::\n")
    shutil.chown(tmp / "passwd", "root", "dovecot")  # the auth process runs as dovecot
    os.chmod(tmp / "passwd", 0o640)
    imap, pop3 = free_port(), free_port()
    conf = tmp / "dovecot.conf"
    conf.write_text(DOVECOT_CONF.format(tmp=tmp, cert=certs.server_cert, key=certs.server_key,
                                        imap=imap, pop3=pop3))
    proc = subprocess.Popen([binary, "-F", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=open(tmp / "stderr", "wb"),  # noqa: SIM115
                            stdin=subprocess.DEVNULL)
    try:
        for port in (imap, pop3):
            try:
                wait_for_port("127.0.0.1", port, START_TIMEOUT, proc)
            except (RuntimeError, TimeoutError) as e:
                log = tmp / "dovecot.log"
                raise RuntimeError(f"dovecot did not start: {e}: "
                                   f"{(tmp / 'stderr').read_text()}"
                                   f"{log.read_text() if log.exists() else ''}") from e
        yield imap, pop3
    finally:
        stop_process(proc)


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        raise RuntimeError("the Debian PostgreSQL server is missing: apt-get install "
                           "postgresql (packages.debian)")
    return Path(found[-1]).parent


def _as_postgres(argv: list[str]) -> None:
    res = subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True,
                         timeout=60, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {res.stdout!r} {res.stderr!r}")


@contextlib.contextmanager
def postgres(certs: Certs) -> Iterator[int]:
    """A PostgreSQL server with ssl=on; USER/PASSWORD log in over TLS only."""
    bindir = _pg_bin()
    with _shared_tmp("tlsi-pg-") as tmp:
        with _postgres(bindir, certs, tmp) as port:
            yield port


@contextlib.contextmanager
def _postgres(bindir: Path, certs: Certs, tmp: Path) -> Iterator[int]:
    shutil.chown(tmp, "postgres")
    data = tmp / "data"
    pwfile = tmp / "pw"
    pwfile.write_text(PASSWORD + "\n")
    shutil.chown(pwfile, "postgres")
    _as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", USER, "--pwfile",
                  str(pwfile), "--auth-host=scram-sha-256", "--auth-local=trust", "-E",
                  "UTF8", "--no-sync"])
    for name, src in (("server.crt", certs.server_cert), ("server.key", certs.server_key)):
        shutil.copy(src, data / name)
        shutil.chown(data / name, "postgres")
        os.chmod(data / name, 0o600)
    port = free_port()
    with open(data / "postgresql.conf", "a") as f:
        f.write(f"\nport = {port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{tmp}'\nssl = on\nfsync = off\n")
    (data / "pg_hba.conf").write_text(
        "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n"
        "hostnossl all all 127.0.0.1/32 reject\n")
    proc = subprocess.Popen(["runuser", "-u", "postgres", "--", str(bindir / "postgres"),
                             "-D", str(data)], stdout=subprocess.DEVNULL,
                            stderr=open(tmp / "stderr", "wb"),  # noqa: SIM115
                            stdin=subprocess.DEVNULL)
    try:
        try:
            wait_for_port("127.0.0.1", port, START_TIMEOUT, proc)
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(f"postgres did not start: {e}: "
                               f"{(tmp / 'stderr').read_text()}") from e
        yield port
    finally:
        # runuser forwards SIGTERM to postgres ("smart" shutdown; nobody is connected).
        stop_process(proc)


# -- scripted plaintext dialogues, then Python's ssl -------------------------------

LDAP_STARTTLS_OK = bytes.fromhex("300c02010178070a010004000400")  # RFC 4511 4.14.2


def _ftp(conn: socket.socket, rfile: object) -> bool:
    conn.sendall(b"220 scripted FTP server ready\r\n")
    while True:
        line = rfile.readline()  # type: ignore[attr-defined]
        if not line:
            return False
        if line.upper().startswith(b"AUTH TLS"):
            conn.sendall(b"234 AUTH TLS successful\r\n")
            return True
        if line.upper().startswith(b"FEAT"):
            conn.sendall(b"211-Features:\r\n AUTH TLS\r\n PBSZ\r\n211 End\r\n")
        else:
            conn.sendall(b"500 unknown\r\n")


def _xmpp(conn: socket.socket, rfile: object) -> bool:
    got = b""
    while b">" not in got.split(b"<stream:stream", 1)[-1]:
        chunk = conn.recv(4096)
        if not chunk:
            return False
        got += chunk
    conn.sendall(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                 b"xmlns:stream='http://etherx.jabber.org/streams' id='t1' from='localhost' "
                 b"version='1.0'><stream:features><starttls "
                 b"xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
                 b"</stream:features>")
    got = b""
    while b"<starttls" not in got or not got.rstrip().endswith(b">"):
        chunk = conn.recv(4096)
        if not chunk:
            return False
        got += chunk
    conn.sendall(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    return True


def _ldap(conn: socket.socket, rfile: object) -> bool:
    head = conn.recv(2)
    if len(head) < 2 or head[0] != 0x30:
        return False
    body = b""
    while len(body) < head[1]:
        chunk = conn.recv(head[1] - len(body))
        if not chunk:
            return False
        body += chunk
    conn.sendall(LDAP_STARTTLS_OK)
    return True


DIALOGUES = {"ftp": _ftp, "xmpp": _xmpp, "ldap": _ldap}


class ScriptedStarttls:
    """Serves one protocol's STARTTLS dialogue, then TLS (Python ssl), then echoes."""

    def __init__(self, protocol: str, certs: Certs) -> None:
        self.dialogue = DIALOGUES[protocol]
        self.ctx = _server_ctx(certs)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.handshakes = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT)
        try:
            rfile = conn.makefile("rb", buffering=0)
            if not self.dialogue(conn, rfile):
                return
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                self.handshakes += 1
                while data := tls.recv(4096):
                    tls.sendall(data)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()
