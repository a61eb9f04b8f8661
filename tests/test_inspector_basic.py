"""End to end through the real proxy process: CLI and plain mitmdump, byte-exact relay."""

from __future__ import annotations

import hashlib
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.proxyproc import Proxy, free_port
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.tlsserver import HelloServer


def s_client(addr: str, cafile: Path, tls: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["openssl", "s_client", "-connect", addr, "-servername", "localhost", "-CAfile",
         str(cafile), "-quiet", "-verify_return_error", f"-tls{tls.replace('.', '_')}"],
        input=b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", capture_output=True, timeout=30)


@pytest.mark.parametrize("mitmdump", [False, True], ids=["cli", "mitmdump"])
@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_openssl_through_inspector(demo_server: HelloServer, certs: Certs, tmp_path: Path,
                                   tls: str, mitmdump: bool) -> None:
    with Proxy(f"127.0.0.1:{demo_server.port}", tmp_path / "log.jsonl",
               mitmdump=mitmdump) as proxy:
        res = s_client(proxy.addr, certs.ca_cert, tls)
        assert res.returncode == 0, res.stderr.decode()
        assert b"hello from the demo server" in res.stdout
        events = proxy.wait_closes(1)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "connect" and kinds[-1] == "close"
    recs = [e for e in events if e["event"] == "record"]
    assert {r["from"] for r in recs} == {"client", "server"}
    ch = recs[0]["messages"][0]
    assert recs[0]["from"] == "client" and ch["type"] == "client_hello"
    assert ch["sni"] == "localhost"
    sh = next(m for r in recs if r["from"] == "server" for m in r.get("messages", []))
    assert sh["type"] == "server_hello"
    assert sh["selected_version"] == ("0x0304" if tls == "1.3" else "0x0303")
    close = events[-1]
    assert close["bytes"]["client"] > 0 and close["bytes"]["server"] > 0
    assert all(e["conn"] == events[0]["conn"] for e in events)


class Echo(threading.Thread):
    """A plain TCP echo server: checks raw byte transparency of the relay."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.echo, args=(conn,), daemon=True).start()

    @staticmethod
    def echo(conn: socket.socket) -> None:
        conn.settimeout(30)
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)


def test_unreachable_upstream_is_logged_and_proxy_keeps_serving(tmp_path: Path) -> None:
    dead = free_port()
    with Proxy(f"127.0.0.1:{dead}", tmp_path / "log.jsonl") as proxy:
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
                s.sendall(bytes.fromhex("16030100050100000100"))
                s.settimeout(10)
                assert s.recv(100) == b""  # closed by the proxy
        events = proxy.wait_closes(2)
        assert proxy.proc.poll() is None
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 2 and f"127.0.0.1:{dead} unreachable" in errors[0]["message"]
    # The close event says why, with the address and the OS error's text.
    for close in (e for e in events if e["event"] == "close"):
        [found] = close["diagnosis"]
        assert found["code"] == "upstream-unreachable" and close["by"] == "proxy"
        assert f"127.0.0.1:{dead} ([Errno 111] Connection refused)" in found["summary"]
        assert "nothing listens" in found["summary"]
        assert found["evidence"] == [
            f"proxy: connecting to 127.0.0.1:{dead} failed: [Errno 111] Connection refused"]


def test_half_close_and_partial_record_are_relayed(tmp_path: Path) -> None:
    echo = Echo()
    echo.start()
    payload = bytes.fromhex("1603030040") + bytes(range(30))  # a record cut short
    with Proxy(f"127.0.0.1:{echo.port}", tmp_path / "log.jsonl") as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := s.recv(65536):
                got += chunk
        assert got == payload
        events = proxy.wait_closes(1)
    unparsed = [e for e in events if e.get("unparsed")]
    assert {e["from"] for e in unparsed} == {"client", "server"}
    assert "partial record at close (35 of 69 bytes)" in unparsed[0]["unparsed"]


def test_bulk_random_bytes_relay_exact(tmp_path: Path) -> None:
    echo = Echo()
    echo.start()
    data = hashlib.sha256(b"seed").digest() * 40000  # 1.28 MB, not TLS: relayed as non_tls
    with Proxy(f"127.0.0.1:{echo.port}", tmp_path / "log.jsonl") as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as s:
            t = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)))
            t.start()
            h, n = hashlib.sha256(), 0
            while chunk := s.recv(65536):
                h.update(chunk)
                n += len(chunk)
            t.join(timeout=30)
        assert n == len(data) and h.digest() == hashlib.sha256(data).digest()
        proxy.wait_closes(1)


def test_listen_defaults_to_loopback() -> None:
    from tlsinspector.cli import _parser

    args = _parser().parse_args(["run", "--upstream", "x:1"])
    assert args.listen == ("127.0.0.1", 8443)



@pytest.mark.parametrize("mode", ["regular", "socks5"])
def test_curl_through_explicit_proxy_modes(demo_server: HelloServer, certs: Certs,
                                           tmp_path: Path,
                                           mode: str) -> None:
    import subprocess as sp

    from tests.proxyproc import BIN, ROOT, wait_port

    port = free_port()
    log = tmp_path / "log.jsonl"
    out = open(tmp_path / "out.txt", "wb")  # noqa: SIM115
    proc = sp.Popen([str(BIN / "tlsinspector"), "run", "--mode", mode, "--listen",
                     f"127.0.0.1:{port}", "--log", str(log)], stdout=out, stderr=sp.STDOUT,
                    cwd=ROOT)
    try:
        wait_port(port, proc, lambda: (tmp_path / "out.txt").read_text())
        flag = ["--proxy", f"http://127.0.0.1:{port}"] if mode == "regular" else [
            "--socks5-hostname", f"127.0.0.1:{port}"]
        res = sp.run(["curl", "-sS", "--max-time", "20", "--cacert",
                      str(certs.ca_cert),
                      *flag, f"https://localhost:{demo_server.port}/"],
                     capture_output=True, timeout=30)
        assert res.returncode == 0, res.stderr
        assert b"hello from the demo server" in res.stdout
        deadline = time.monotonic() + 20
        while '"event":"close"' not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)  # polling the log for the close event
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        out.close()
    import json

    events = [json.loads(x) for x in log.read_text().splitlines()]
    connect = next(e for e in events if e["event"] == "connect")
    assert connect["mode"] == mode
    assert connect["server"] == f"localhost:{demo_server.port}"
    ch = next(m for e in events if e["event"] == "record" for m in e.get("messages", []))
    assert ch["type"] == "client_hello" and ch["sni"] == "localhost"
    assert any(e["event"] == "close" for e in events)


def test_close_how_rst_resets_both_tcp_connections(tmp_path: Path) -> None:
    """`close` with `how: rst` is a real abortive close: RST to the client and the server."""
    from tests.test_reliability import CLIENT_HELLO

    upstream = socket.create_server(("127.0.0.1", 0))
    # The accept waits for the proxy, which starts after the thread (slowly on a loaded
    # machine): the timeout only bounds a hang.
    upstream.settimeout(120)
    scen = tmp_path / "rst.yaml"
    scen.write_text("name: rst\nfaults:\n  - match: {from: client, index: 1}\n"
                    "    action: close\n    how: rst\n    toward: both\n")
    server_saw: list[BaseException | bytes] = []

    def serve() -> None:
        conn, _ = upstream.accept()
        conn.settimeout(10)
        try:
            while data := conn.recv(4096):  # the ClientHello, then the reset
                server_saw.append(data)
            server_saw.append(b"EOF")
        except OSError as e:
            server_saw.append(e)
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    with Proxy(f"127.0.0.1:{upstream.getsockname()[1]}", tmp_path / "log.jsonl",
               scenarios=[scen]) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(CLIENT_HELLO)
            with pytest.raises(ConnectionResetError):
                s.recv(4096)
        t.join(timeout=10)
        events = proxy.wait_closes(1)
    upstream.close()
    assert server_saw[0] == CLIENT_HELLO, server_saw
    assert isinstance(server_saw[-1], ConnectionResetError), server_saw
    [close] = [e for e in events if e["event"] == "close"]
    assert close["by"] == "proxy"


def test_a_close_during_a_delay_is_logged_when_it_happens(
        demo_server: HelloServer, tmp_path: Path) -> None:
    """A delay of 8 s on the server's flight; the client gives up after 1 s: the close
    event is logged then (with the timeout diagnosis), not when the delay expires."""
    scenario = tmp_path / "delay.yaml"
    scenario.write_text("name: slow\nfaults:\n  - match: {from: server, index: 1}\n"
                        "    action: delay\n    ms: 8000\n")
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with Proxy(f"127.0.0.1:{demo_server.port}", tmp_path / "log.jsonl",
               [scenario]) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw:
            raw.settimeout(1.0)
            with pytest.raises(TimeoutError):
                ctx.wrap_socket(raw, server_hostname="localhost")
        gave_up = time.time()
        events = proxy.wait_closes(1, timeout=7.0)  # before the 8 s delay would expire
    close = events[-1]
    assert close["event"] == "close" and close["ts"] < gave_up + 7.0
    assert "timeout" in [d["code"] for d in close["diagnosis"]]
    # The server's flight the delay still held when the client left is counted.
    sent = sum(5 + e["length"] for e in events if e["event"] == "record"
               and e["from"] == "server")
    assert close["held"] == {"client": 0, "server": sent} and sent > 0


def test_plain_http_through_regular_mode_is_said_once_not_silently_dropped(
        tmp_path: Path) -> None:
    """`--mode regular` relays a plain HTTP request (no CONNECT) through mitmproxy's HTTP
    layer: nothing of it is TLS, so nothing is logged; the terminal says so once, with
    the first request's method and URL escaped."""
    import http.server
    import subprocess as sp
    import threading

    from tests.proxyproc import BIN, ROOT, wait_port

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    port = free_port()
    out_path = tmp_path / "out.txt"
    out = open(out_path, "wb")  # noqa: SIM115
    proc = sp.Popen([str(BIN / "tlsinspector"), "run", "--mode", "regular", "--listen",
                     f"127.0.0.1:{port}", "--log", str(tmp_path / "log.jsonl")],
                    stdout=out, stderr=sp.STDOUT, cwd=ROOT)
    try:
        wait_port(port, proc, lambda: out_path.read_text())
        for path in ("a%1b[2Jb", "second"):
            res = sp.run(["curl", "-sS", "-g", "-o", "/dev/null", "-w", "%{http_code}",
                          "--max-time", "20", "--proxy", f"http://127.0.0.1:{port}",
                          f"http://127.0.0.1:{web.server_address[1]}/{path}"],
                         capture_output=True, timeout=30)
            assert res.stdout == b"404", res
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        out.close()
        web.shutdown()
    text = out_path.read_text()
    said = [x for x in text.splitlines() if "plain HTTP request" in x]
    assert len(said) == 1, text
    assert said[0].startswith("tlsinspector: WARNING plain HTTP request GET http://127.0.0.1:")
    assert "/a%1b[2Jb relayed without inspection" in said[0] and "\x1b" not in text
