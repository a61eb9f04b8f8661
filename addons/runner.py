"""Starts mitmproxy with the inspector addon for ``tlsinspector run`` and ``demo``.

Not an addon itself: the glue between the CLI and mitmproxy's master. Run the
addon under plain mitmproxy instead with ``mitmdump -s "$(tlsinspector addon-path)"``.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import IO, Any

from mitmproxy import exceptions, options
from mitmproxy import master as mmaster
from mitmproxy.addons import block, core, errorcheck, next_layer, proxyserver, tlsconfig
from mitmproxy.tools.dump import DumpMaster

from tlsinspector.addons.inspector import Inspector
from tlsinspector.lab.certs import make_certs
from tlsinspector.lab.peers import free_port, wait_for_port
from tlsinspector.lab.tlsserver import HelloServer

MODES = ("reverse", "transparent", "regular", "socks5")


def mode_spec(mode: str, upstream: str | None) -> str:
    if mode == "reverse":
        if not upstream:
            raise ValueError("--mode reverse needs --upstream HOST:PORT")
        return f"reverse:tcp://{upstream}"
    return mode


# `tlsinspector run` loads only the mitmproxy addons a raw TCP relay needs: every hook
# (client_connected, server_connect, next_layer, ... six per connection) is offered
# to every loaded addon, and DumpMaster's 37 addons cost about a quarter of the
# proxy's CPU per handshake (BENCHMARKS.md, issue 19). `mitmdump -s` keeps all
# of mitmproxy's addons and works as before. TLSINSPECTOR_ALL_ADDONS=1 loads
# DumpMaster's full set instead (bench/quick.py's inspector-all-addons row).
ALL_ADDONS_ENV = "TLSINSPECTOR_ALL_ADDONS"


def _lean_master(opts: options.Options) -> mmaster.Master:
    """A master with mitmproxy's core, proxy server, layer choice (regular, SOCKS5 and
    transparent modes), TLS settings, the block_global/block_private guard and the
    start-up error check; the terminal log for warnings."""
    master = mmaster.Master(opts, with_termlog=True)
    master.addons.add(core.Core(), block.Block(), proxyserver.Proxyserver(),
                      next_layer.NextLayer(), tlsconfig.TlsConfig(), errorcheck.ErrorCheck())
    return master


def build_master(listen: tuple[str, int], mode: str, upstream: str | None,
                 scenarios: Sequence[str] = (), log: str | None = None, seed: int = -1,
                 quiet: bool = False, app_records: bool = True, log_preview: bool = False,
                 max_held: int | None = None, idle_timeout: float = 0.0,
                 terminal: IO[str] | None = None, web: str | None = None,
                 pcap: dict[str, Any] | None = None, keylog: Sequence[str] = (),
                 key_wait_ms: int = 2000, intercept: bool = False,
                 intercept_policy: str | None = None, ca: str | None = None,
                 upstream_ca: str | None = None, protocol: str | None = None,
                 detach: bool = True) -> tuple[mmaster.Master, Inspector]:
    """``detach``: hot connections leave mitmproxy's handler (``tlsinspector_detach``);
    only with the lean master, where no addon listens to the disconnect hooks that
    then fire at the hand-over (the inspector's own client_disconnected only forgets
    an id); DumpMaster's full set keeps it off."""
    opts = options.Options()
    master: mmaster.Master
    if os.environ.get(ALL_ADDONS_ENV):
        master = DumpMaster(opts, with_termlog=True, with_dumper=False)
        detach = False
    else:
        master = _lean_master(opts)
    inspector = Inspector(terminal)
    master.addons.add(inspector)
    if pcap:
        from tlsinspector.addons.pcap import PcapRecorder

        master.addons.add(PcapRecorder())
    opts.update(
        mode=[mode_spec(mode, upstream)],
        listen_host=listen[0],
        listen_port=listen[1],
        # The upstream opens when the client connects (issue 17): a server that
        # speaks first (SMTP, IMAP, POP3, FTP, MySQL) sends its greeting before the
        # client says anything, and a client that connects and closes reaches the
        # server as it would directly. The inspector logs an unreachable upstream
        # (server_connect_error) and a connection that carried no byte
        # (client_disconnected) from public hooks: see addons/inspector.py.
        # With --intercept the inspector is the TLS endpoint of both legs and its
        # InterceptLayer opens the server leg itself (after the client's hello, as
        # mitmproxy's interception does), so it keeps the lazy strategy.
        connection_strategy="lazy" if intercept else "eager",
        termlog_verbosity="warn",
        tlsinspector_log=log or "",
        # With the scenarios: faults with leg: need it (addons/inspector.py configure).
        tlsinspector_intercept=intercept,
        tlsinspector_scenarios=list(scenarios),
        tlsinspector_seed=seed,
        tlsinspector_quiet=quiet,
        tlsinspector_app_records=app_records,
        tlsinspector_log_preview=log_preview,
        tlsinspector_idle_timeout=repr(float(idle_timeout)),
        **(pcap or {}),
        tlsinspector_keylog=list(keylog),
        tlsinspector_key_wait_ms=key_wait_ms,
        tlsinspector_protocol=protocol or "",
        tlsinspector_detach=detach,
    )
    if web:  # the live ladder view (addons/liveview.py), tapping the inspector's events
        from tlsinspector.addons.liveview import LiveView, tap_inspector

        master.addons.add(LiveView(lambda feed: tap_inspector(inspector, feed)))
        opts.update(tlsinspector_web=web)
    if max_held is not None:
        opts.update(tlsinspector_max_held=max_held)
    if intercept:
        extra: dict[str, Any] = {}
        if ca:
            extra["confdir"] = ca
        if upstream_ca:
            extra["ssl_verify_upstream_trusted_ca"] = upstream_ca
        opts.update(tlsinspector_intercept=True,
                    tlsinspector_intercept_policy=intercept_policy or "", **extra)
    return master, inspector


def ca_files(folder: str | None) -> tuple[Path, Path]:
    """The interception CA's certificate (PEM) and its folder, made on first use
    the way mitmproxy makes it (its CertStore, in mitmproxy's confdir by default)."""
    from mitmproxy import certs
    from mitmproxy.options import CONF_BASENAME, CONF_DIR, KEY_SIZE

    path = Path(folder or CONF_DIR).expanduser()
    certs.CertStore.from_store(path, CONF_BASENAME, KEY_SIZE)
    return path / f"{CONF_BASENAME}-ca-cert.pem", path


class _Announce:
    """Says "listening" from the running hook, which mitmproxy calls only once its
    servers are bound (a port in use is mitmproxy's error instead, and exit 1).

    It also moves what start-up made (mitmproxy's and cryptography's modules,
    options, the CA: a few hundred thousand objects) out of the garbage
    collector's reach (``gc.freeze``): they live as long as the process, and every
    full collection used to walk them all again, triggered by the objects each
    connection's handshake leaves in the oldest generation. Measured with
    ``--keylog`` (more such objects per handshake: the decryptor, decoded
    messages): full collections took 0.3-0.8 ms of proxy CPU per TLS 1.3
    handshake on average before, none since (BENCHMARKS.md, issue 14)."""

    def __init__(self, text: str, picked: str | None = None) -> None:
        self.text = text
        self.picked = picked  # the "host:0" in text, when the kernel picks the port

    def running(self) -> None:
        gc.freeze()
        text = self.text
        if self.picked is not None:
            from mitmproxy import ctx

            from tlsinspector.addons import mitm_internals

            bound = mitm_internals.bound_addresses(getattr(ctx, "master", None))
            if bound:  # --listen HOST:0: say the port clients must use
                text = text.replace(self.picked, ", ".join(
                    f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in bound), 1)
        print(text, flush=True)


async def serve_until_stopped(master: mmaster.Master) -> None:
    """``master.run()`` that SIGINT (Ctrl-C) and SIGTERM (docker stop, systemd, kill)
    end cleanly, as mitmdump's own handlers do: mitmproxy's shutdown runs the done
    hooks, where the inspector logs a close event for every open connection (by the
    proxy), closes its sockets and waits a bounded time for them, so nothing is
    cancelled half-way (no tracebacks) and the exit code is 0: a stop asked for is
    the normal end of a proxy, not a failure (README "Stopping")."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    try:
        await master.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run_loop(main: Callable[[], Coroutine[Any, Any, None]], loop: str = "uvloop") -> None:
    """Run ``main()`` on uvloop (libuv: cheaper reads and writes per chunk) or asyncio's
    default loop. mitmproxy itself always uses asyncio's, which makes the
    comparison in bench/ fair only when both are measured; BENCHMARKS.md has both."""
    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


def listen_problem(listen: tuple[str, int], option: str = "--listen HOST:PORT") -> str | None:
    """Why the proxy could not listen on ``listen``, in terms of ``option`` (the flag
    that chose the address), or None.

    Binds (and releases) a socket on each address the listener would use, with
    SO_REUSEADDR as asyncio's servers set it, so a port held only by connections
    in TIME_WAIT is not reported. Checked before mitmproxy starts because its own
    message for a port in use advises a ``--mode ...@PORT`` option that
    ``tlsinspector`` does not have. A port taken between this check and
    mitmproxy's bind still fails, with mitmproxy's message."""
    host, port = listen
    shown = f"[{host}]:{port}" if ":" in host else f"{host or '*'}:{port}"
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        return f"cannot listen on {shown}: {e.strerror}; check the host in {option}"
    for family, kind, proto, _, addr in infos:
        try:
            with socket.socket(family, kind, proto) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return (f"cannot listen on {shown}: the port is already in use; stop what "
                        f"listens there, or choose another port with {option}")
            return f"cannot listen on {shown}: {e.strerror}; choose another {option}"
    return None


def run(listen: tuple[str, int], mode: str, upstream: str | None, loop: str = "uvloop",
        **kw: Any) -> int:
    problem = listen_problem(listen)
    if problem:
        print(f"tlsinspector run: {problem}", file=sys.stderr)
        return 2

    refused: list[str] = []

    async def main() -> None:
        try:
            master, _ = build_master(listen, mode, upstream, **kw)
        except exceptions.OptionsError as e:
            # An option mitmproxy's own addons refuse (a client certificate file
            # that is gone, ...): a configuration error, said as one, not a traceback.
            refused.append(str(e))
            return
        host, port = listen
        shown = f"[{host}]:{port}" if ":" in host else f"{host or '*'}:{port}"
        if host in ("0.0.0.0", "::", ""):
            both = ", IPv4 and IPv6" if host == "" else ""
            print(f"tlsinspector: WARNING listening on all interfaces{both} ({shown})",
                  file=sys.stderr)
        master.addons.add(_Announce(f"tlsinspector: listening on {shown}, mode {mode}"
                                    + (f", upstream {upstream}" if upstream else ""),
                                    shown if port == 0 else None))
        await serve_until_stopped(master)

    try:
        run_loop(main, loop)
    except SystemExit as e:
        # mitmproxy's errorcheck ends the start with exit 1 after printing the error
        # (a port taken after listen_problem looked): a configuration error, 2 here.
        if e.code == 1:
            return 2
        raise
    if refused:
        print(f"tlsinspector run: {refused[0]}", file=sys.stderr)
        return 2
    return 0


# -- demo ---------------------------------------------------------------------


DemoServer = HelloServer  # the demo's server: Python's ssl, one page per connection


def demo(log: str | None = None) -> int:
    """Local TLS server, the inspector in front of it, a real client through it."""
    with tempfile.TemporaryDirectory() as tmp:
        certs = make_certs(Path(tmp))
        server = DemoServer(certs.server_cert, certs.server_key)
        # The server writes its TLS secrets (NSS key log format, as SSLKEYLOGFILE) and
        # the inspector follows the file: the encrypted handshake is shown decrypted.
        keys = Path(tmp) / "demo-server-keys.log"
        keys.touch(mode=0o600)
        server.ctx.keylog_filename = str(keys)
        server.start()
        listen = ("127.0.0.1", free_port())
        result: dict[str, Any] = {}

        async def main() -> None:
            master, _ = build_master(listen, "reverse", f"127.0.0.1:{server.port}", log=log,
                                     keylog=[str(keys)])
            loop = asyncio.get_running_loop()

            def client() -> None:
                wait_for_port(*listen)
                for tls in ("1.3", "1.2"):
                    print(f"\n== demo client: TLS {tls} through the inspector ==", flush=True)
                    result[tls] = _demo_client(listen, certs.ca_cert, tls)
                loop.call_soon_threadsafe(master.shutdown)

            print(f"tlsinspector demo: server 127.0.0.1:{server.port}, inspector "
                  f"{listen[0]}:{listen[1]}, following the server's key log (--keylog) "
                  f"to decrypt the handshake", flush=True)
            threading.Thread(target=client, daemon=True).start()
            await serve_until_stopped(master)

        run_loop(main)
        server.close()
    ok = all(r == 0 for r in result.values()) and len(result) == 2
    print("\ndemo: " + ("both handshakes completed through the inspector" if ok
                        else f"client failures: {result}"))
    return 0 if ok else 1


def _demo_client(addr: tuple[str, int], cafile: Path, tls: str) -> int:
    """openssl s_client when installed, Python's ssl otherwise."""
    if shutil.which("openssl"):
        proc = subprocess.run(
            ["openssl", "s_client", "-connect", f"{addr[0]}:{addr[1]}", "-servername",
             "localhost", "-CAfile", str(cafile), "-quiet", "-verify_return_error",
             "-tls1_3" if tls == "1.3" else "-tls1_2"],
            input=b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", capture_output=True,
            timeout=20)
        ok = proc.returncode == 0 and b"200 OK" in proc.stdout
        return 0 if ok else 1
    ctx = ssl.create_default_context(cafile=str(cafile))
    version = ssl.TLSVersion.TLSv1_3 if tls == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.minimum_version = ctx.maximum_version = version
    with socket.create_connection(addr, timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        return 0 if s.recv(4096).startswith(b"HTTP/1.1 200") else 1
