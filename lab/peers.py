"""Real TLS servers and clients: OpenSSL, Go crypto/tls, Python ssl, GnuTLS, curl, wolfSSL.

Servers are context managers started by handle; clients return a
:class:`ClientResult` with the client's own output, so experiments can compare
it with a scenario's expectation. Go programs and the wolfSSL client are built
on first use into a cache keyed by the source's hash. A missing tool raises
:class:`MissingTool` naming the Debian package to install; nothing is skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tlsinspector.lab.certs import Certs

HERE = Path(__file__).resolve().parent
CLIENT_KINDS = ("go", "openssl", "curl", "gnutls", "python", "wolfssl")
#: Clients run only when asked for (not in the default matrix): Debian's headless
#: chromium, the one installed stack whose ClientHello offers X25519MLKEM768 and
#: GREASE (RFC 8701), about 2 KB.
EXTRA_CLIENT_KINDS = ("chromium",)
ALL_CLIENT_KINDS = CLIENT_KINDS + EXTRA_CLIENT_KINDS
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--ignore-certificate-errors")
SERVER_KINDS = ("openssl", "python", "go", "gnutls")
#: Which peers write an NSS key log (``keylog=``) and how much of it. wolfSSL
#: (Debian's build has no key-log callback) writes only TLS 1.2's CLIENT_RANDOM,
#: and only once its handshake is done.
KEYLOG = {"go": "all", "openssl": "all", "curl": "all", "gnutls": "all", "python": "all",
          "wolfssl": "tls1.2 after the handshake"}
PACKAGES = {"openssl": "openssl", "curl": "curl", "gnutls-cli": "gnutls-bin",
            "gnutls-serv": "gnutls-bin", "go": "golang-go", "gcc": "gcc"}


class MissingTool(RuntimeError):
    pass


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise MissingTool(f"{tool} is not installed: apt-get install {PACKAGES.get(tool, tool)}")
    return path


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    d = base / "tlsinspector"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _built(source: Path, build: Sequence[str], env: dict[str, str] | None = None) -> Path:
    digest = hashlib.sha256(source.read_bytes() + " ".join(build).encode()).hexdigest()[:16]
    out = cache_dir() / f"{source.stem}-{source.parent.name}-{digest}"
    if out.exists():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    cmd = [a.replace("{out}", str(tmp)).replace("{src}", str(source)) for a in build]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={**os.environ, **(env or {})})
    if res.returncode != 0:
        raise RuntimeError(f"building {source.name} failed: {res.stderr}")
    os.replace(tmp, out)  # atomic: concurrent builders race safely
    return out


def go_binary(name: str) -> Path:
    need("go")
    c = cache_dir()
    env = {"GO111MODULE": "off", "GOCACHE": str(c / "gocache"), "GOPATH": str(c / "gopath"),
           "CGO_ENABLED": "0"}
    return _built(HERE / "go" / f"{name}.go", ["go", "build", "-o", "{out}", "{src}"], env)


def wolfssl_client() -> Path:
    need("gcc")
    if not Path("/usr/include/wolfssl/ssl.h").exists():
        raise MissingTool("wolfSSL headers missing: apt-get install libwolfssl-dev")
    return _built(HERE / "wolfssl" / "client.c",
                  ["gcc", "-O1", "-o", "{out}", "{src}", "-lwolfssl"])


#: Linux's default ip_local_port_range, where /proc cannot be read.
EPHEMERAL = (32768, 60999)
#: free_port's ports start here (below: the usual ports of services people run).
FREE_PORT_FLOOR = 20000
_port_rng = random.SystemRandom()  # unaffected by tests that seed the random module


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for ports it picks itself (connect(), bind to port 0)."""
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return EPHEMERAL


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing is bound to now, for a server started next.

    Between this check and the server's own bind (a process start: up to seconds on
    a loaded machine) the port is free for anyone. The kernel hands out ports of its
    ephemeral range to every connect() and bind(("...", 0)) on the machine, so a port
    from that range can be taken meanwhile: the server then fails to bind, or worse,
    wait_for_port sees the other listener and the test talks to it (a one-connection
    relay that never answers: a handshake timeout). So the port comes from outside
    that range, where only another explicit choice like this one can collide
    (a random pick among thousands)."""
    lo, hi = ephemeral_range()
    spans = [(a, b) for a, b in ((FREE_PORT_FLOOR, lo - 1), (hi + 1, 65535)) if b - a >= 1000]
    for _ in range(100 if spans else 0):
        a, b = _port_rng.choice(spans)
        port = _port_rng.randint(a, b)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use (or in TIME_WAIT): another
            return port
    with socket.socket() as s:  # no room outside the range: the kernel's choice
        s.bind(("127.0.0.1", 0))
        chosen: int = s.getsockname()[1]
        return chosen


def _listening(port: int) -> bool | None:
    """Whether a socket of this network namespace listens on TCP ``port`` (Linux
    /proc/net/tcp{,6}, state 0A), or None where that cannot be read."""
    tables = [Path(t) for t in ("/proc/net/tcp", "/proc/net/tcp6") if Path(t).exists()]
    if not tables:
        return None
    want = f":{port:04X}"
    for table in tables:
        for line in table.read_text().splitlines()[1:]:
            f = line.split()
            if len(f) > 3 and f[1].endswith(want) and f[3] == "0A":
                return True
    return False


def wait_for_port(host: str, port: int, timeout: float = 60.0,
                  proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something listens on ``host:port``. On this host's loopback it is
    read from the kernel's socket table, without connecting: since issue 17 the
    inspector opens the upstream as soon as a client connects and logs a
    connect-then-close, so a probing connection would be a connection of its own.
    The timeout only bounds a hang (a process that exits is seen at once): a loaded
    machine starting several peers at once is slow, not stuck."""
    deadline = time.monotonic() + timeout
    local = host in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "::", "")
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            listening = _listening(port) if local else None
            if listening is None:
                socket.create_connection((host, port), timeout=1).close()
            elif not listening:
                raise OSError("not listening yet")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)  # polling the port


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a child by its handle: a signal, a bounded wait, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class Server:
    def __init__(self, kind: str, cmd: list[str], port: int, log: Path,
                 keep_stdin: bool = False) -> None:
        self.kind, self.host, self.port, self.log = kind, "127.0.0.1", port, log
        self._out = open(log, "wb")  # noqa: SIM115
        # s_server without -www echoes stdin to its client and exits at EOF: an
        # open pipe nobody writes keeps it serving.
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.PIPE if keep_stdin else subprocess.DEVNULL)
        try:
            wait_for_port(self.host, port, proc=self.proc)
        except Exception as e:
            self.stop()
            raise RuntimeError(f"{kind} server did not start: {e}\n{self.output()}") from e

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)
        if self.proc.stdin:
            self.proc.stdin.close()
        self._out.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


PY_SERVER = r'''
import socket, ssl, sys, threading
port, cert, key, tls, require = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
if len(sys.argv) > 6:
    ctx.keylog_filename = sys.argv[6]
ctx.load_cert_chain(cert, key)
v = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
if tls in v:
    ctx.minimum_version = ctx.maximum_version = v[tls]
if require != "-":
    def check(sock, name, _ctx):
        # No SNI: handshake_failure, as smtp.gmail.com answered in report 003;
        # another name: unrecognized_name (RFC 6066 3).
        if name is None:
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
        if name != require:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        return None
    ctx.sni_callback = check
srv = socket.create_server(("127.0.0.1", int(port)))
def serve(raw):
    raw.settimeout(20)
    try:
        with ctx.wrap_socket(raw, server_side=True) as s:
            s.recv(4096)
            body = b"hello from the python server\n"
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                      % (len(body), body))
            s.unwrap()
    except (OSError, ssl.SSLError) as e:
        print("python server:", e, flush=True)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
'''


def _sslkeylogfile(keylog: Path | None) -> list[str]:
    """The prefix that makes an OpenSSL- or GnuTLS-based program write its key log."""
    return ["env", f"SSLKEYLOGFILE={keylog}"] if keylog else []


def start_server(kind: str, certs: Certs, *, tls: str = "any", port: int | None = None,
                 ecdhe_only: bool = False, require_sni: str | None = None,
                 log_dir: Path | None = None, keylog: Path | None = None,
                 renegotiation: bool = False, h2: bool = False,
                 extra: Sequence[str] = (), alpn: str | None = None,
                 require_client_cert: bool = False, default_cert: bool = False) -> Server:
    """A real TLS server on 127.0.0.1; ``tls`` is "1.2", "1.3" or "any"; with
    ``keylog`` it appends its secrets there (NSS key log format). ``h2`` (go only):
    ALPN h2/http/1.1 and HTTP/2. ``renegotiation``
    (openssl only): an echo server that allows client-initiated renegotiation
    (OpenSSL 3 refuses it unless ``-client_renegotiation``). ``extra``: more
    arguments for that server (e.g. openssl ``-cipher X``, go ``-suites NAME``)."""
    port = port or free_port()
    log = (log_dir or cache_dir()) / f"server-{kind}-{port}.log"
    if kind == "openssl":
        cmd = [need("openssl"), "s_server", "-accept", f"127.0.0.1:{port}",
               *(["-client_renegotiation"] if renegotiation else ["-www"]),
               "-cert", str(certs.server_cert), "-key", str(certs.server_key),
               "-dcert", str(certs.rsa_cert), "-dkey", str(certs.rsa_key)]
        cmd += {"1.2": ["-tls1_2"], "1.3": ["-tls1_3"]}.get(tls, [])
        cmd += ["-keylogfile", str(keylog)] if keylog else []
        cmd += ["-alpn", alpn] if alpn else []
        if require_client_cert:  # -Verify: a client without a certificate is refused
            cmd += ["-Verify", "1", "-CAfile", str(certs.ca_cert)]
        if default_cert and certs.default_cert and certs.default_key:
            # Without SNI "localhost" the default certificate (another name) answers.
            cmd = [a for a in cmd if a not in ("-dcert", "-dkey", str(certs.rsa_cert),
                                               str(certs.rsa_key))]
            i = cmd.index("-cert")
            cmd[i:i + 4] = ["-cert", str(certs.default_cert), "-key", str(certs.default_key),
                            "-servername", "localhost", "-cert2", str(certs.server_cert),
                            "-key2", str(certs.server_key)]
    elif kind == "python":
        cmd = [sys.executable, "-c", PY_SERVER, str(port), str(certs.rsa_cert),
               str(certs.rsa_key), tls, require_sni or "-"] + ([str(keylog)] if keylog else [])
    elif kind == "go":
        lo, hi = {"1.2": ("1.2", "1.2"), "1.3": ("1.3", "1.3")}.get(tls, ("1.2", "1.3"))
        cmd = [str(go_binary("server")), "-listen", f"127.0.0.1:{port}",
               "-cert", str(certs.rsa_cert), "-key", str(certs.rsa_key), "-min", lo, "-max", hi]
        if ecdhe_only:
            cmd.append("-ecdhe-only")
        if h2:
            cmd.append("-h2")  # ALPN h2 and http/1.1; net/http serves HTTP/2
        cmd += ["-keylog", str(keylog)] if keylog else []
    elif kind == "gnutls":
        prio = {"1.2": "NORMAL:-VERS-ALL:+VERS-TLS1.2", "1.3": "NORMAL:-VERS-ALL:+VERS-TLS1.3"}
        cmd = _sslkeylogfile(keylog) + [need("gnutls-serv"), "--http", "--port", str(port),
               "--x509certfile", str(certs.rsa_cert), "--x509keyfile", str(certs.rsa_key),
               "--priority", prio.get(tls, "NORMAL")]
    else:
        raise ValueError(f"unknown server kind {kind!r}; known: {', '.join(SERVER_KINDS)}")
    return Server(kind, cmd + list(extra), port, log, keep_stdin=renegotiation)


@dataclass(frozen=True)
class ClientResult:
    kind: str
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def ok(self) -> bool:
        markers = ("HTTP/1.1 200", "HTTP/1.0 200", "HTTP 200", "hello from")
        return self.returncode == 0 and any(m in self.output for m in markers)


PY_CLIENT = r'''
import os, socket, ssl, sys
import json, time
host, port, ca, tls, sni = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=ca)
if len(sys.argv) > 6 and sys.argv[6] != "-":
    ctx.keylog_filename = sys.argv[6]
opts = json.loads(sys.argv[7]) if len(sys.argv) > 7 else {}
if opts.get("alpn"):
    ctx.set_alpn_protocols(opts["alpn"])
v = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
if tls in v:
    ctx.minimum_version = ctx.maximum_version = v[tls]
if sni == "-":
    ctx.check_hostname = False  # no SNI: the chain is still verified against the CA
alpn = os.environ.get("TLSINSPECTOR_ALPN")
if alpn:
    ctx.set_alpn_protocols(alpn.split(","))
try:
    with socket.create_connection((host, port), timeout=opts.get("timeout", 15)) as raw:
        with ctx.wrap_socket(raw, server_hostname=None if sni == "-" else sni) as s:
            if opts.get("wait_ms"):
                time.sleep(opts["wait_ms"] / 1000)  # an idle kept-alive connection
            if alpn:
                print(f"ALPN: {s.selected_alpn_protocol()}")
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            print(data.split(b"\r\n", 1)[0].decode(),
                  f"alpn={s.selected_alpn_protocol()}")
            session = s.session
    if opts.get("resume"):
        # A second connection resuming the first's session (RFC 8446 2.2, RFC 5077).
        with socket.create_connection((host, port), timeout=opts.get("timeout", 15)) as raw:
            with ctx.wrap_socket(raw, server_hostname=None if sni == "-" else sni,
                                 session=session) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
                print(data.split(b"\r\n", 1)[0].decode(), f"resumed={s.session_reused}")
except Exception as e:
    print(f"{type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(1)
'''

GET = b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n"


@dataclass(frozen=True)
class ClientOptions:
    """What a scenario's ``client:`` section asks of the built-in clients (each takes
    what its tool can express; :data:`CLIENT_OPTION_SUPPORT` says which)."""

    alpn: tuple[str, ...] = ()     # protocols to offer, in order (h2, http/1.1)
    timeout: float | None = None   # seconds for connect, handshake and reads
    wait_ms: int = 0               # idle this long after the handshake, then the request
    resume: bool = False           # a second connection resuming the first's session


#: Which built-in clients honour which ``client:`` option (sni and tls: all).
CLIENT_OPTION_SUPPORT = {
    "alpn": ("go", "openssl", "gnutls", "python", "curl (h2 and http/1.1 only)"),
    "timeout": ("go", "openssl", "curl", "gnutls", "python", "wolfssl"),
    "wait_ms": ("go", "openssl", "gnutls", "python"),
    "resume": ("go", "gnutls", "python"),
}


#: Built-in clients without a timeout option of their own (s_client, gnutls-cli, the
#: lab's wolfSSL client: a fixed 15 s): :func:`client_deadline` ends them instead.
NO_OWN_TIMEOUT = ("openssl", "gnutls", "wolfssl")


def client_deadline(kind: str, options: ClientOptions, run_timeout: float) -> float:
    """How long :func:`run_command` lets a built-in client run. A client that cannot be
    given the scenario's ``timeout`` is ended once that long (plus its idle
    ``wait_ms``) has passed, as its own timeout would have; without this, s_client
    waited for the run's 30 s and gnutls-cli completed a handshake held 5 s, so a
    timeout scenario did not reproduce with them."""
    if kind in NO_OWN_TIMEOUT and options.timeout:
        return min(run_timeout, options.timeout + options.wait_ms / 1000)
    return run_timeout


def client_command(kind: str, host: str, port: int, certs: Certs, tls: str = "any",
                   sni: str | None = "localhost",
                   keylog: Path | None = None,
                   renegotiate: bool = False,
                   options: ClientOptions | None = None,
                   alpn: Sequence[str] = ()) -> tuple[list[str], bytes | None]:
    """The argv (and stdin) of a real client connecting to host:port; with ``keylog``
    the client appends its secrets there (how much: :data:`KEYLOG`). ``renegotiate``
    (openssl only): after the handshake s_client renegotiates (its ``R`` command,
    read from stdin, which stays open; -ign_eof would send the R as data).
    ``options``: ALPN, timeout and an idle wait before the request (the stdin-driven
    clients get the wait from :func:`run_command`'s ``stdin_delay``)."""
    ca = str(certs.ca_cert)
    o = options or ClientOptions()
    if kind == "go":
        lo, hi = {"1.2": ("1.2", "1.2"), "1.3": ("1.3", "1.3")}.get(tls, ("1.2", "1.3"))
        extra = ["-alpn", ",".join(o.alpn)] if o.alpn else []
        extra += ["-timeout", f"{o.timeout}s"] if o.timeout else []
        extra += ["-wait-ms", str(o.wait_ms)] if o.wait_ms else []
        extra += ["-resume"] if o.resume else []
        return [str(go_binary("client")), "-connect", f"{host}:{port}", "-ca", ca,
                "-sni", sni or "", "-min", lo, "-max", hi, *extra] + (
                    ["-keylog", str(keylog)] if keylog else []), None
    if kind == "openssl":
        cmd = [need("openssl"), "s_client", "-connect", f"{host}:{port}", "-CAfile", ca,
               "-verify_return_error", *([] if renegotiate else ["-ign_eof"])]
        cmd += ["-keylogfile", str(keylog)] if keylog else []
        cmd += ["-alpn", ",".join(o.alpn)] if o.alpn else []
        cmd += ["-servername", sni] if sni else ["-noservername"]
        cmd += {"1.2": ["-tls1_2"], "1.3": ["-tls1_3"]}.get(tls, [])
        cmd += ["-alpn", ",".join(alpn)] if alpn else []
        return cmd, b"R\n" if renegotiate else GET
    if kind == "curl":
        url_host = sni or host
        cmd = _sslkeylogfile(keylog) + [
               need("curl"), "-sS", "--max-time", f"{o.timeout or 15:g}", "--cacert", ca,
               "-o", "/dev/null", "-w", "HTTP %{http_code} proto=HTTP/%{http_version}\n"]
        if o.alpn:
            cmd += ["--http2"] if "h2" in o.alpn else ["--http1.1"]
        if sni:
            cmd += ["--resolve", f"{sni}:{port}:{host}"]
        cmd += {"1.2": ["--tlsv1.2", "--tls-max", "1.2"], "1.3": ["--tlsv1.3"]}.get(tls, [])
        if alpn:  # curl offers h2 and http/1.1 itself; -v says what was agreed
            cmd += ["-v", "--http2"]
        return cmd + [f"https://{url_host}:{port}/"], None
    if kind == "gnutls":
        prio = {"1.2": "NORMAL:-VERS-ALL:+VERS-TLS1.2", "1.3": "NORMAL:-VERS-ALL:+VERS-TLS1.3"}
        cmd = _sslkeylogfile(keylog) + [
               need("gnutls-cli"), "--x509cafile", ca, "-p", str(port),
               "--priority", prio.get(tls, "NORMAL"), "--verify-hostname", "localhost"]
        cmd += ["--sni-hostname", sni] if sni else ["--disable-sni"]
        cmd += [f"--alpn={p}" for p in o.alpn]
        cmd += ["--resume"] if o.resume else []
        return cmd + [host], GET
    if kind == "python":
        py = {"alpn": list(o.alpn), "wait_ms": o.wait_ms, "resume": o.resume, **(
            {"timeout": o.timeout} if o.timeout else {})}
        env = ["env", f"TLSINSPECTOR_ALPN={','.join(alpn)}"] if alpn else []
        return env + [sys.executable, "-c", PY_CLIENT, host, str(port), ca, tls, sni or "-",
                      str(keylog) if keylog else "-", json.dumps(py)], None
    if kind == "wolfssl":
        return [str(wolfssl_client()), host, str(port), ca, tls, sni or "-"] + (
            [str(keylog)] if keylog else []), None
    if kind == "chromium":
        # A fresh profile beside the key log (reproduce's run folder). (Its singleton
        # socket lives in TMPDIR, whose path must stay short: 108 bytes at most; a
        # normal exit removes it.) The name maps to the proxy
        # (SNI as asked); the lab CA is not in its store, hence
        # --ignore-certificate-errors (the handshake is what is tested).
        work = (keylog.parent if keylog else cache_dir()) / f"chromium-{port}-{os.getpid()}"
        work.mkdir(parents=True, exist_ok=True)
        name = sni or host
        return ["env", *([f"SSLKEYLOGFILE={keylog}"] if keylog else []), need("chromium"),
            *CHROMIUM_FLAGS, f"--user-data-dir={work / 'profile'}",
            f"--host-resolver-rules=MAP {name} {host}:{port}", "--dump-dom",
            f"https://{name}/"], None
    raise ValueError(f"unknown client kind {kind!r}; known: {', '.join(ALL_CLIENT_KINDS)}")


#: What a stdin-driven client prints on stdout once its handshake is done: an idle
#: wait (``stdin_delay``) starts there, not at the process's start, so a slow start
#: or handshake on a loaded machine does not eat into the scenario's idle period.
HANDSHAKE_DONE = {"openssl": b"SSL handshake has read", "gnutls": b"- Handshake was completed"}


def run_command(kind: str, cmd: Sequence[str], stdin: bytes | None,
                timeout: float = 30.0, stdin_delay: float = 0.0,
                env: Mapping[str, str] | None = None) -> ClientResult:
    """Run a client to completion. stdin stays open until the client exits (gnutls-cli
    and s_client would otherwise stop reading at end of input). ``stdin_delay``: the
    request is written that many seconds after the handshake is done (the client's
    :data:`HANDSHAKE_DONE` line; after the start for a client without one): an idle
    client, the wait is the scenario's, not a synchronisation."""
    # A session of its own: a client that is a wrapper script (Debian's chromium)
    # is ended with all its children on timeout.
    proc = subprocess.Popen(list(cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            env=None if env is None else dict(env))
    assert proc.stdin is not None
    handshake_done = threading.Event()
    if stdin and stdin_delay > 0:
        if kind not in HANDSHAKE_DONE:
            handshake_done.set()

        def later(data: bytes) -> None:
            # Waits for the handshake (or the client's end), then idles.
            while not handshake_done.wait(0.05):
                if proc.poll() is not None:
                    return
            try:
                proc.wait(timeout=stdin_delay)  # exited early: nothing to write
            except subprocess.TimeoutExpired:
                try:
                    assert proc.stdin is not None
                    proc.stdin.write(data)
                    proc.stdin.flush()
                except (BrokenPipeError, ValueError, OSError):
                    pass
        threading.Thread(target=later, args=(stdin,), daemon=True).start()
        stdin_now = b""
    else:
        stdin_now = stdin or b""
    try:
        if stdin_now:
            proc.stdin.write(stdin_now)
            proc.stdin.flush()
    except BrokenPipeError:
        pass
    try:
        out, err = proc.communicate(timeout=timeout) if not stdin else _wait_open(
            proc, timeout, HANDSHAKE_DONE.get(kind), handshake_done)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group we started, by its id
        except ProcessLookupError:
            pass
        out, err = proc.communicate(timeout=10)
        err += f"\n[killed after {timeout}s]".encode()
    return ClientResult(kind, proc.returncode, out.decode(errors="replace"),
                        err.decode(errors="replace"))


def _wait_open(proc: subprocess.Popen[bytes], timeout: float, marker: bytes | None = None,
               seen: threading.Event | None = None) -> tuple[bytes, bytes]:
    """Waits for ``proc`` with its stdin open, draining its output; ``seen`` (an Event)
    is set once a stdout line holds ``marker``."""
    bufs: dict[str, bytes] = {}

    def drain(name: str, stream: IO[bytes]) -> None:
        if name != "out" or marker is None or seen is None:
            bufs[name] = stream.read()
            return
        lines = []
        for line in iter(stream.readline, b""):
            lines.append(line)
            if marker in line:
                seen.set()
                lines.append(stream.read())
                break
        bufs[name] = b"".join(lines)

    threads = [threading.Thread(target=drain, args=(n, s), daemon=True)
               for n, s in (("out", proc.stdout), ("err", proc.stderr))]
    for t in threads:
        t.start()
    proc.wait(timeout=timeout)
    for t in threads:
        t.join(timeout=10)
    if proc.stdin:
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the client exited first: what it was still sent does not matter
    return bufs.get("out", b""), bufs.get("err", b"")


def run_client(kind: str, host: str, port: int, certs: Certs, *, tls: str = "any",
               sni: str | None = "localhost", timeout: float = 30.0,
               keylog: Path | None = None) -> ClientResult:
    cmd, stdin = client_command(kind, host, port, certs, tls, sni, keylog)
    return run_command(kind, cmd, stdin, timeout)
