"""Third-party scanners and test suites, directly and through the inspector.

The product promises that scanners and TLS test suites run through the proxy pass
through unchanged. Each tool here runs twice against two identical real servers at
the same time: once directly, once through ``tlsinspector run`` (default options,
every record logged); the results must be equal.

- testssl.sh (Debian package ``testssl.sh``): its JSON findings, by id. The few
  findings that differ between two *direct* runs (timing) are listed in
  :data:`TESTSSL_UNSTABLE` with the reason and left out of the comparison.
- tlsfuzzer: the pass/fail of every named probe of each script. tlsfuzzer is not
  published on PyPI: it runs from a checkout named by ``TLSFUZZER_SRC`` (default
  ``<lab cache>/tlsfuzzer-src``) with tlslite-ng from PyPI in a venv of its own.

``python -m tlsinspector.lab.thirdparty --out DIR`` (``make thirdparty``) runs the
full comparison and prints a Markdown summary; exit status 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from tlsinspector.lab.certs import Certs, make_certs
from tlsinspector.lab.inspector import InspectorProcess
from tlsinspector.lab.peers import MissingTool, Server, cache_dir, free_port

#: testssl findings that are not a property of the server: they differ between two
#: direct runs against the same server, so they are not compared.
TESTSSL_UNSTABLE = {
    "scanTime": "the scan's wall-clock duration",
    "sessionresumption_ticket": (
        "testssl runs `openssl s_client -sess_out F </dev/null`: with TLS 1.3 the "
        "NewSessionTicket comes after the handshake and s_client exits at stdin's EOF "
        "before or after it arrives (a race; two direct runs against the same server "
        "gave 'connect problem' and 'supported')"),
    "sessionresumption_ID": "the same s_client race as sessionresumption_ticket",
}

#: The fast subset `make test` runs (tests/test_thirdparty.py): protocols via sockets
#: (an SSLv2 ClientHello, SSLv3, TLS 1.0-1.3), heartbleed, CCS injection, secure and
#: client-initiated renegotiation, fallback SCSV.
TESTSSL_FAST = ("-p", "-H", "-I", "-R", "-Z")
#: `make thirdparty`: name -> (server kind, testssl arguments). The default run is
#: everything but -E and -g; -g sends GREASE, huge and odd hellos; the heartbeat
#: server (GnuTLS) makes testssl send its heartbleed probe for real; the
#: renegotiating server lets the client-initiated renegotiation through.
TESTSSL_FULL: dict[str, tuple[str, tuple[str, ...]]] = {
    "default run": ("openssl", ()),
    "cipher per protocol (-E)": ("openssl", ("-E",)),
    "implementation bugs, GREASE, big hellos (-g)": ("openssl", ("-g",)),
    "renegotiating server": ("openssl-reneg", ("-p", "-R", "-I", "-H", "-Z")),
    "heartbeat server (GnuTLS)": ("gnutls-heartbeat", ("-p", "-H", "-T", "-I", "-R", "-Z")),
    "STARTTLS smtp": ("smtp", ("-t", "smtp", "-p", "-s", "-U")),
}

#: tlsfuzzer scripts: name -> arguments. ``-n 0``: every probe (the scripts sample
#: at random otherwise, and the two runs would not try the same ones); test-large-hello
#: has 3404 probes, hence a named selection at the size limits.
TLSFUZZER_LARGE_HELLO = (
    "huge hello", "sanity check - fragmented", "ext padding, 65530 bytes",
    "fragmented, padding ext 65530 bytes", "ext #80, 65530 bytes", "two ext, #80 61430 bytes",
    "ciphers odd 18439", "ciphers even 18439", "multiple extensions 16384")
TLSFUZZER_FULL: dict[str, tuple[str, ...]] = {
    "test-conversation.py": ("-n", "0"),
    "test-tls13-conversation.py": ("-n", "0"),
    "test-sslv2-connection.py": ("-n", "0"),
    "test-sslv2hello-protocol.py": ("-n", "0"),
    "test-fuzzed-ciphertext.py": ("-n", "0"),
    "test-invalid-content-type.py": ("-n", "0"),
    "test-record-layer-fragmentation.py": ("-n", "0"),
    "test-large-hello.py": TLSFUZZER_LARGE_HELLO,
    "test-zero-length-data.py": ("-n", "0"),
    "test-tls13-zero-length-data.py": ("-n", "0"),
    "test-SSLv3-padding.py": ("-n", "0"),
    "test-tls13-record-padding.py": ("-n", "0"),
}
TLSLITE = "tlslite-ng==0.9.0b2"  # the version tlsfuzzer's requirements.txt pins
TIMEOUT = 2400.0  # a full testssl run takes 4-5 min alone, far longer on a loaded machine


# --- servers ----------------------------------------------------------------------

def rsa_chain(directory: Path) -> tuple[Path, Path]:
    """A self-signed RSA certificate: tlsfuzzer's TLS 1.3 scripts accept only RSA
    signatures on the chain (signature_algorithms_cert, RFC 8446 4.2.3), and the lab
    CA signs with ECDSA."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "rsa-self.pem", directory / "rsa-self.key.pem"
    if not cert.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-subj", "/CN=localhost", "-days", "2", "-keyout", str(key),
                        "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


def openssl_server(certs: Certs, log_dir: Path, *, reneg: bool = False,
                   rsa: tuple[Path, Path] | None = None) -> Server:
    """openssl s_server with TLS 1.0 to 1.3 and every suite it has (SECLEVEL 0):
    many findings to compare. ``reneg``: an echo server that honours client-initiated
    renegotiation; ``rsa``: serve only that certificate and key."""
    port = free_port()
    cert, key = rsa or (certs.rsa_cert, certs.rsa_key)
    cmd = ["openssl", "s_server", "-accept", f"127.0.0.1:{port}",
           *(["-client_renegotiation"] if reneg else ["-www"]),
           "-cert", str(cert), "-key", str(key),
           *([] if rsa else ["-dcert", str(certs.server_cert), "-dkey", str(certs.server_key)]),
           "-cipher", "ALL:@SECLEVEL=0", "-min_protocol", "TLSv1"]
    return Server("openssl", cmd, port, log_dir / f"server-openssl-{port}.log", keep_stdin=reneg)


def gnutls_heartbeat_server(certs: Certs, log_dir: Path) -> Server:
    port = free_port()
    cmd = [_need("gnutls-serv", "gnutls-bin"), "--http", "--heartbeat", "--port", str(port),
           "--x509certfile", str(certs.rsa_cert), "--x509keyfile", str(certs.rsa_key)]
    return Server("gnutls", cmd, port, log_dir / f"server-gnutls-{port}.log")


@contextmanager
def server(kind: str, certs: Certs, log_dir: Path,
           rsa: tuple[Path, Path] | None = None) -> Iterator[int]:
    """A server of ``kind`` (see :data:`TESTSSL_FULL`; "openssl-rsa": openssl
    serving only the ``rsa`` chain); yields its port."""
    log_dir.mkdir(parents=True, exist_ok=True)
    if kind == "smtp":
        from tests.starttls_peers import smtp_server  # the suite's aiosmtpd server
        with smtp_server(certs) as port:
            yield port
        return
    srv = (gnutls_heartbeat_server(certs, log_dir) if kind == "gnutls-heartbeat"
           else openssl_server(certs, log_dir, reneg=kind == "openssl-reneg",
                               rsa=rsa if kind == "openssl-rsa" else None))
    try:
        yield srv.port
    finally:
        srv.stop()


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise MissingTool(f"{tool} is not installed: apt-get install {package}")
    return path


# --- testssl ----------------------------------------------------------------------

Findings = dict[str, tuple[str, str]]


def testssl(port: int, out: Path, args: Sequence[str], timeout: float = TIMEOUT) -> Findings:
    """testssl's findings (id -> (severity, finding)) for 127.0.0.1:port, minus
    :data:`TESTSSL_UNSTABLE`; the port is written as PORT. Its terminal output is
    kept next to the JSON file."""
    exe = _need("testssl", "testssl.sh")
    json_file = out.with_suffix(".json")
    json_file.unlink(missing_ok=True)
    res = subprocess.run([exe, "--quiet", "--color", "0", "--warnings", "off",
                          "--jsonfile", str(json_file), *args, f"127.0.0.1:{port}"],
                         capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    out.with_suffix(".txt").write_text(res.stdout + res.stderr)
    if not json_file.exists():
        raise RuntimeError(f"testssl wrote no findings (exit {res.returncode}):\n"
                           f"{res.stdout[-2000:]}{res.stderr[-2000:]}")
    return normalise_findings(json.loads(json_file.read_text()), port)


def normalise_findings(items: list[dict[str, Any]], port: int) -> Findings:
    found: Findings = {}
    for item in items:
        if item["id"] in TESTSSL_UNSTABLE:
            continue
        finding = str(item.get("finding", "")).replace(str(port), "PORT")
        found[item["id"]] = (str(item.get("severity", "")), finding)
    return found


# --- tlsfuzzer --------------------------------------------------------------------

def tlsfuzzer_src() -> Path:
    src = Path(os.environ.get("TLSFUZZER_SRC") or cache_dir() / "tlsfuzzer-src")
    if not (src / "tlsfuzzer" / "runner.py").exists():
        raise MissingTool(f"no tlsfuzzer checkout in {src}: tlsfuzzer is not on PyPI; "
                          "put a checkout there or name one with TLSFUZZER_SRC")
    return src


def tlsfuzzer_python() -> Path:
    """The venv (lab cache) with tlslite-ng from PyPI that tlsfuzzer runs in."""
    venv = cache_dir() / "tlsfuzzer-venv"
    python = venv / "bin" / "python"
    if not (venv / ".tlslite-installed").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--pre", TLSLITE],
                       check=True, timeout=600)
        (venv / ".tlslite-installed").touch()
    return python


PROBE = re.compile(r"(.+) \.\.\.")


def parse_tlsfuzzer(text: str) -> dict[str, str]:
    """Each probe's outcome from a tlsfuzzer script's output: "pass" (OK, or an
    expected failure that failed) or "fail"; a probe run twice with different
    outcomes (the sanity probe runs first and last) is "mixed"."""
    result: dict[str, str] = {}
    name: str | None = None
    for line in text.splitlines():
        m = PROBE.fullmatch(line)
        if m:
            name = m.group(1)
            continue
        if name is None:
            continue
        if line.startswith(("OK", "XPASS")):
            outcome = "pass"
        elif line.startswith(("Error while processing", "Expected error message")):
            outcome = "fail"
        else:
            continue
        result[name] = outcome if result.get(name, outcome) == outcome else "mixed"
        name = None
    return result


def tlsfuzzer(port: int, out: Path, script: str, args: Sequence[str],
              timeout: float = TIMEOUT) -> dict[str, str]:
    src = tlsfuzzer_src()
    res = subprocess.run([str(tlsfuzzer_python()), str(src / "scripts" / script),
                          "-h", "127.0.0.1", "-p", str(port), *args],
                         capture_output=True, text=True, timeout=timeout, cwd=src,
                         stdin=subprocess.DEVNULL)
    out.with_suffix(".txt").write_text(res.stdout + res.stderr)
    found = parse_tlsfuzzer(res.stdout)
    if not found:
        raise RuntimeError(f"{script} ran no probe:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    return found


# --- direct versus through the inspector ------------------------------------------

@dataclass(frozen=True)
class Comparison:
    name: str
    direct: dict[str, Any]
    through: dict[str, Any]
    events: list[dict[str, Any]]
    proxy_output: str
    seconds: float

    @property
    def differences(self) -> list[str]:
        keys = sorted(set(self.direct) | set(self.through))
        return [f"{k}: direct {self.direct.get(k)!r}, through {self.through.get(k)!r}"
                for k in keys if self.direct.get(k) != self.through.get(k)]

    @property
    def log_problems(self) -> list[str]:
        """What the inspector's own log and terminal say went wrong on its side."""
        bad = [f"{e['event']}: {e}" for e in self.events
               if e["event"] in ("error", "internal_error", "log_gap")]
        if "Traceback" in self.proxy_output:
            bad.append("a traceback in the inspector's output")
        raw = [c for c in self.proxy_output if not c.isprintable() and c not in "\n"]
        if raw:
            bad.append(f"unescaped characters in the terminal view: {sorted(set(raw))!r}")
        return bad


def compare(name: str, tool: Callable[[int, Path], dict[str, Any]],
            start: Callable[[], Any], out: Path) -> Comparison:
    """Run ``tool(port, out_file)`` against one server directly and, at the same time,
    against a second identical one through ``tlsinspector run``. ``start()`` gives a
    context manager yielding a server's port."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with start() as direct_port, start() as proxied_port, \
            InspectorProcess(f"127.0.0.1:{proxied_port}", out / "inspector.jsonl",
                             start_timeout=90) as proxy, ThreadPoolExecutor(2) as pool:
        direct = pool.submit(tool, direct_port, out / "direct")
        through = pool.submit(tool, proxy.port, out / "through")
        d, t = direct.result(), through.result()
        proxy.wait_close(set(), timeout=30)
        events = proxy.events()
        output = proxy.output()
    return Comparison(name, d, t, events, output, time.monotonic() - t0)


def _summary(results: list[Comparison]) -> str:
    lines = ["| run | compared | connections | records | differences | inspector problems |",
             "|---|---|---|---|---|---|"]
    for c in results:
        n = Counter(e["event"] for e in c.events)
        outcomes = Counter(str(v) if isinstance(v, str) else "finding" for v in
                           c.direct.values())
        shown = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
        lines.append(f"| {c.name} | {len(c.direct)} ({shown}) | {n['connect']} | "
                     f"{n['record']} | {len(c.differences)} | {len(c.log_problems)} |")
    for c in results:
        for d in c.differences + c.log_problems:
            lines.append(f"\n- {c.name}: {d}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tlsinspector.lab.thirdparty",
                                 description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, default=Path("build/thirdparty"))
    ap.add_argument("--only", choices=("testssl", "tlsfuzzer"))
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    certs = make_certs(a.out / "certs")
    rsa = rsa_chain(a.out / "certs")
    results: list[Comparison] = []
    if a.only != "tlsfuzzer":
        for name, (kind, args) in TESTSSL_FULL.items():
            slug = re.sub(r"\W+", "-", name).strip("-")
            results.append(compare(f"testssl {name}", partial(testssl, args=args),
                                   partial(server, kind, certs, a.out / slug), a.out / slug))
            print(_summary(results[-1:]), flush=True)
    if a.only != "testssl":
        for script, args in TLSFUZZER_FULL.items():
            slug = script.removesuffix(".py")
            results.append(compare(f"tlsfuzzer {script}",
                                   partial(tlsfuzzer, script=script, args=args),
                                   partial(server, "openssl-rsa", certs, a.out / slug, rsa),
                                   a.out / slug))
            print(_summary(results[-1:]), flush=True)
    print("\n" + _summary(results))
    return 1 if any(c.differences or c.log_problems for c in results) else 0


if __name__ == "__main__":
    sys.exit(main())
