"""Reproduce a scenario between real peers: server, inspector with the scenario, client.

The scenario's ``server:`` key picks the server (any, tls12, tls13,
ecdhe-only-tls12, requires-sni, or HOST:PORT for the user's own); its
``expect:`` section says, per client kind, the outcome (ok | error), a
substring of the client's error text (or ``re:<regex>``) and the diagnosis
codes the close event must carry. The verdict compares what happened with that.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlsinspector.lab.certs import Certs, make_certs
from tlsinspector.lab.inspector import InspectorProcess
from tlsinspector.lab.peers import (
    ClientOptions,
    ClientResult,
    Server,
    client_command,
    client_deadline,
    run_command,
    start_server,
)
from tlsinspector.proxy.scenario_build import CLIENT_NAME_RE

if TYPE_CHECKING:
    from tlsinspector.proxy.scenario import Scenario

SERVERS: dict[str, dict[str, Any]] = {
    "any": {"kind": "openssl", "tls": "any"},
    "tls12": {"kind": "openssl", "tls": "1.2"},
    "tls13": {"kind": "openssl", "tls": "1.3"},
    "ecdhe-only-tls12": {"kind": "go", "tls": "1.2", "ecdhe_only": True},
    "requires-sni": {"kind": "python", "tls": "any", "require_sni": "localhost"},
    # TLS 1.2 echo server allowing client renegotiation; the openssl client renegotiates.
    "openssl-renegotiation": {"kind": "openssl", "tls": "1.2", "renegotiation": True},
    # Go crypto/tls with net/http: ALPN h2 and http/1.1, HTTP/2 served.
    "h2": {"kind": "go", "tls": "any", "h2": True},
    # Interception scenarios (issue 21): a TLS 1.3 server that requires a client
    # certificate, a server whose default certificate (for default.invalid) answers a
    # ClientHello without SNI "localhost".
    "requires-client-cert": {"kind": "openssl", "tls": "1.3", "require_client_cert": True},
    "default-cert": {"kind": "openssl", "tls": "any", "default_cert": True},
}


PLACEHOLDERS = ("{addr}", "{host}", "{port}", "{ca}", "{keylog}", "{name}")


class ClientCommandError(ValueError):
    """A --client-cmd that cannot be run (bad quoting, no such program)."""


def client_argv(cmd: str, subst: Mapping[str, str] | None = None) -> list[str]:
    """``cmd`` split like a shell would (but never run by one), with only the
    documented placeholders {addr} {host} {port} {ca} {keylog} {name} replaced by plain string
    replacement: no str.format, so ``{0}``, ``{addr.__class__}`` and a JSON body
    ``{"a":1}`` stay literal. Raises ClientCommandError with the reason."""
    try:
        argv = shlex.split(cmd)
    except ValueError as e:
        raise ClientCommandError(f"cannot split the command: {e} (quote as in a shell)") from e
    if not argv:
        raise ClientCommandError("the command is empty")
    if shutil.which(argv[0]) is None:
        raise ClientCommandError(f"program {argv[0]!r} not found (not on PATH, or not "
                                 "executable)")
    if subst is None:
        return argv
    out = []
    for arg in argv:
        # One pass over the argument, so a substituted value is never itself
        # scanned for placeholders.
        out.append(re.sub(r"\{(addr|host|port|ca|keylog|name)\}",
                          lambda m: subst.get(m.group(1), m.group(0)), arg))
    return out


NO_EXPECTATION = "the scenario has no expectation for this client"


@dataclass
class Verdict:
    scenario: str
    client: str
    reproduced: bool
    outcome: str                 # ok | error | skipped (the scenario cannot use this client)
    client_output: str
    differences: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    out_dir: Path | None = None

    @property
    def no_expectation(self) -> bool:
        """The scenario has no expect: entry for this client: nothing to differ from."""
        return bool(self.differences) and self.differences[0].startswith(NO_EXPECTATION)

    def diagnosis_codes(self) -> list[str]:
        return [d["code"] for e in self.events if e["event"] == "close"
                for d in e.get("diagnosis", [])]

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "client": self.client,
                "reproduced": self.reproduced, "outcome": self.outcome,
                "client_output": self.client_output[-2000:],
                "differences": self.differences, "diagnosis": self.diagnosis_codes()}


def tally(verdicts: Sequence[Verdict]) -> str:
    """``N of M outcomes as expected``, over the verdicts with an expect: entry, and how
    many had none (the matrix's table and its HTML grid say the same)."""
    judged = [v for v in verdicts if not v.no_expectation]
    text = f"{sum(v.reproduced for v in judged)} of {len(judged)} outcomes as expected"
    if len(judged) < len(verdicts):
        text += f"; {len(verdicts) - len(judged)} with no expect: entry for the client"
    return text


_NAMED_RE = re.compile(f"({CLIENT_NAME_RE.pattern})=(.*)", re.S)


def named_commands(cmds: str | Sequence[str] | None) -> list[tuple[str, str]]:
    """``--client-cmd`` values as (name, command): ``NAME=COMMAND`` names a command
    (its ``expect:`` entry is ``NAME``); an unnamed one is ``custom``, then
    ``custom2``, ``custom3`` ... Names are unique and never a built-in client's."""
    from tlsinspector.lab.peers import CLIENT_KINDS

    if cmds is None:
        return []
    out: list[tuple[str, str]] = []
    unnamed = 0
    for cmd in [cmds] if isinstance(cmds, str) else cmds:
        m = _NAMED_RE.fullmatch(cmd)
        if m and " " not in m.group(1):
            name, cmd = m.group(1), m.group(2)
        else:
            unnamed += 1
            name = "custom" if unnamed == 1 else f"custom{unnamed}"
        if name in CLIENT_KINDS or name in (n for n, _ in out):
            raise ClientCommandError(f"client name {name!r} is already used; give each "
                                     "command its own NAME=COMMAND")
        out.append((name, cmd))
    return out


def client_options(scenario: Scenario) -> tuple[dict[str, Any], ClientOptions]:
    """The scenario's ``client:`` section as client_command's arguments."""
    c = scenario.client or {}
    kw: dict[str, Any] = {}
    if "sni" in c:
        kw["sni"] = c["sni"]
    if "tls" in c:
        kw["tls"] = c["tls"]
    alpn = c.get("alpn", ())
    timeout = c.get("timeout")
    wait = c.get("wait_ms", 0)
    assert isinstance(alpn, tuple) and isinstance(wait, int)
    assert timeout is None or isinstance(timeout, float)
    return kw, ClientOptions(alpn, timeout, wait, bool(c.get("resume", False)))


@contextmanager
def scenario_server(kind: str | None, certs: Certs, log_dir: Path,
                    keylog: Path | None = None, port: int | None = None) -> Iterator[str]:
    """The upstream address for a scenario's ``server:`` value (a built-in server
    appends its secrets to ``keylog``)."""
    kind = kind or "any"
    if kind not in SERVERS:
        yield kind  # HOST:PORT of the user's own server
        return
    spec = dict(SERVERS[kind])
    server: Server = start_server(spec.pop("kind"), certs, log_dir=log_dir, keylog=keylog,
                                  port=port, **spec)
    try:
        yield server.addr
    finally:
        server.stop()


def _applied(event: Mapping[str, Any]) -> bool:
    """An event that carries a fault that applied (a record's, a plaintext line's, a
    timer's: "fault" is a list, one entry per fault; not_applied in its detail: not)."""
    faults = event.get("fault")
    return isinstance(faults, list) and any(
        isinstance(f, dict) and "not_applied" not in (f.get("detail") or {}) for f in faults)


def _effect_expected(expect: Mapping[str, Any]) -> bool:
    return (expect.get("outcome", "error") == "error" or bool(expect.get("error"))
            or bool(expect.get("diagnosis")))


def check(expect: Mapping[str, Any] | None, result: ClientResult,
          events: list[dict[str, Any]]) -> list[str]:
    """Differences between an expectation and what happened (empty: reproduced)."""
    if not expect:
        return [NO_EXPECTATION + "; what happened, as an entry for its expect: section: "
                + suggest_expect(result, events)]
    diffs = []
    outcome = "ok" if result.ok else "error"
    if expect.get("outcome", "error") != outcome:
        why = ""
        if outcome == "error" and result.returncode == 0:
            # Exit 0 alone is not ok (peers.ClientResult.ok): say what was missing.
            why = (" (the client exited 0, but its output holds no HTTP 200 answer, "
                   "which ok needs)")
        diffs.append(f"outcome: expected {expect.get('outcome', 'error')}, got {outcome}{why}")
    want = expect.get("error")
    if want:
        text = result.output
        hit = (re.search(want[3:], text) is not None) if want.startswith("re:") else want in text
        if not hit:
            diffs.append(f"client output: expected {want!r}, got {text.strip()[-300:]!r}")
    codes = [d["code"] for e in events if e["event"] == "close" for d in e.get("diagnosis", [])]
    for code in expect.get("diagnosis", []):
        if code not in codes:
            diffs.append(f"diagnosis: expected {code}, got {codes}")
    return diffs


_ERROR_WORDS = re.compile(r"error|alert|fail|problem|refused|reset|timed out|denied|"
                          r"mismatch|unknown|expired|EOF", re.IGNORECASE)


def client_said(output: str, keep: int = 3) -> str:
    """The client's last ``keep`` non-empty lines, joined with `` | ``; when the last
    line naming an error (curl's "unable to get local issuer certificate", before its
    closing chatter) is not among them, it goes first, then `` | ... | ``."""
    lines = [x for x in output.strip().splitlines() if x.strip()]
    tail = lines[-keep:]
    error = next((x for x in reversed(lines) if _ERROR_WORDS.search(x)), None)
    if error is None or error in tail:
        return " | ".join(tail)
    return " | ".join([error, "...", *tail])


def _error_text(lines: list[str]) -> str:
    """A short substring of the client's output that names its error: the last line
    with an error word, its longest run of printable ASCII, and when that is long
    (OpenSSL's ``...:SSL routines:func:reason:file:line:``) its longest part between
    colons that is words (the reason)."""
    line = next((x for x in reversed(lines) if _ERROR_WORDS.search(x)), lines[-1])
    text = max(re.split(r"[^ -~]", line), key=len).strip()  # printable ASCII only
    if len(text) > 60:
        worded = [p.strip() for p in text.split(":") if " " in p.strip()]
        text = max(worded, key=len) if worded else text[-60:]
    # Python's "... for 'x'. (_ssl.c:1006)": the source location is no part of it;
    # nor the "CODE] " the colon split leaves of its "[SSL: CODE] reason".
    return re.sub(r"^[A-Z0-9_]+\]\s+", "", re.sub(r"\s*\(_?\w+\.c$", "", text))


def suggest_expect(result: ClientResult, events: list[dict[str, Any]]) -> str:
    """``go: {outcome: error, error: '...', diagnosis: [code]}`` from this run: the
    client's last output line (printable characters only, YAML single-quoted) and the
    first finding, for a user who wrote a scenario without ``expect:``."""
    parts = [f"outcome: {'ok' if result.ok else 'error'}"]
    lines = [x.strip() for x in result.output.splitlines() if x.strip()]
    if not result.ok and lines:
        parts.append("error: '" + _error_text(lines).replace("'", "''") + "'")
    codes = [d["code"] for e in events if e["event"] == "close" for d in e.get("diagnosis", [])]
    if codes and re.fullmatch(r"[a-z0-9-]+", codes[0]):
        parts.append(f"diagnosis: [{codes[0]}]")
    return f"{result.kind}: {{{', '.join(parts)}}}"


@dataclass(frozen=True)
class Ports:
    """Pinned ports (None: a free one): the inspector's and the built-in server's."""

    listen: int | None = None
    server: int | None = None


def reproduce(scenario_path: Path, clients: Sequence[str] = (),
              client_cmd: str | Sequence[str] | None = None,
              server: str | None = None, out_dir: Path | None = None,
              certs: Certs | None = None, timeout: float = 30.0,
              keep: bool = False, ports: Ports = Ports()) -> list[Verdict]:
    """Run each client, then each custom command, through one inspector with the scenario.

    Clients run one after another, so ``connection:`` in a match counts across them.
    ``client_cmd``: one command or several, each ``NAME=COMMAND`` or unnamed (see
    :func:`named_commands`); each is judged by its own ``expect:`` entry.
    Without ``out_dir`` the run's files (logs, certificates, client output) go to a
    temporary folder that is removed at the end, unless ``keep``; the verdicts'
    ``out_dir`` is then None.
    """
    from tlsinspector.proxy.scenario import load_scenario

    scenario = load_scenario(scenario_path)
    cmds = named_commands(client_cmd)
    if out_dir is not None:
        return _reproduce(scenario_path, scenario, clients, cmds, server, out_dir,
                          certs, timeout, ports)
    prefix = f"tlsinspector-{scenario.name}-"
    if keep:
        return _reproduce(scenario_path, scenario, clients, cmds, server,
                          Path(tempfile.mkdtemp(prefix=prefix)), certs, timeout, ports)
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        verdicts = _reproduce(scenario_path, scenario, clients, cmds, server,
                              Path(tmp), certs, timeout, ports)
    for v in verdicts:
        v.out_dir = None
    return verdicts


def server_name(scenario: Scenario) -> str:
    """{name}: the host name a client should send as SNI and verify, the scenario's
    ``client: sni:`` or the built-in servers' certificate name ({host} is an address:
    ``-servername {host}`` would send an IP address, which RFC 6066 3 forbids)."""
    sni = client_options(scenario)[0].get("sni")
    return sni if isinstance(sni, str) and sni else "localhost"


def _run_custom(kind: str, command: str, port: int, certs: Certs,
                timeout: float, keylog: Path | None = None,
                name: str = "localhost") -> ClientResult:
    """A custom client command through the proxy on ``port``. No shell: {addr},
    {host}, {port}, {ca}, {keylog} and {name} are substituted into the argv. With
    ``keylog`` the command also gets SSLKEYLOGFILE (curl, GnuTLS, Python's ssl,
    browsers write it; ``openssl s_client -keylogfile {keylog}``), which the inspector
    follows."""
    subst = {"addr": f"127.0.0.1:{port}", "host": "127.0.0.1", "port": str(port),
             "ca": str(certs.ca_cert), "keylog": str(keylog or ""), "name": name}
    env = None if keylog is None else {**os.environ, "SSLKEYLOGFILE": str(keylog)}
    return run_command(kind, client_argv(command, subst), None, timeout, env=env)


def _judge(scenario: Scenario, kind: str, result: ClientResult, proxy: InspectorProcess,
           seen: set[str], out_dir: Path) -> Verdict:
    """One client's verdict: the events of its connections (those not in ``seen``)
    and its output, checked against the scenario's ``expect:`` entry for it."""
    events = [e for e in proxy.wait_close(seen) if e["conn"] not in seen]
    (out_dir / f"{kind}.client.txt").write_text(result.output)
    expect = (scenario.expect or {}).get(kind)
    diffs = check(expect if isinstance(expect, Mapping) else None, result, events)
    if (isinstance(expect, Mapping) and scenario.faults and _effect_expected(expect)
            and any(e["event"] == "connect" for e in events)
            and not any(_applied(e) for e in events)):
        # An expected effect (an error, its text, a finding) of a client that reached
        # the inspector: without a fault that applied on its connections, a match says
        # nothing of the scenario. (A plain ok is a client the faults leave alone; one
        # that never connected fails on its own, as its entry may say.)
        diffs.append("no fault of the scenario applied on this client's connections "
                     "(see fault-not-applied in their diagnosis): the outcome is the "
                     "client's own, not the fault's")
    return Verdict(scenario.name, kind, not diffs, "ok" if result.ok else "error",
                   result.output, diffs, events, out_dir)


def _reproduce_intercept(scenario: Scenario, kinds: Sequence[str], commands: Mapping[str, str],
                         server: str | None, out_dir: Path, certs: Certs,
                         timeout: float, scenario_path: Path | None = None) -> list[Verdict]:
    """An ``intercept:`` scenario: the inspector terminates both legs under the
    scenario's policy, with its own CA in ``out_dir/ca``; the clients trust that CA
    (``trust_ca``) or only the lab CA that signed the server's certificate. Its
    faults (``leg:``, issue 21 part 4) act on the legs' records."""
    from dataclasses import replace

    from tlsinspector.addons.runner import ca_files
    from tlsinspector.cli import policy_path

    spec = scenario.intercept
    assert spec is not None
    ca_pem, ca_dir = ca_files(str(out_dir / "ca"))
    extra = ["--intercept", "--ca", str(ca_dir), "--upstream-ca", str(certs.ca_cert),
             "--pcap", str(out_dir / "both-legs.pcapng")]   # each leg as its own interface
    if spec.policy:
        extra += ["--intercept-policy", str(policy_path(spec.policy))]
    client_certs = replace(certs, ca_cert=ca_pem) if spec.trust_ca else certs
    verdicts = []
    with scenario_server(server or scenario.server, certs, out_dir) as upstream:
        proxy = InspectorProcess(upstream, out_dir / "inspector.jsonl",
                                 [scenario_path] if scenario.faults and scenario_path else [],
                                 extra=extra)
        try:
            for kind in kinds:
                seen = {e["conn"] for e in proxy.events()}
                if kind in commands:
                    result = _run_custom(kind, commands[kind], proxy.port, client_certs,
                                         timeout, name=server_name(scenario))
                else:
                    cmd, stdin = client_command(kind, "127.0.0.1", proxy.port, client_certs,
                                                tls=spec.client_tls, alpn=spec.client_alpn)
                    result = run_command(kind, cmd, stdin, timeout)
                verdicts.append(_judge(scenario, kind, result, proxy, seen, out_dir))
        finally:
            proxy.stop()
    return verdicts


def _reproduce(scenario_path: Path, scenario: Scenario, clients: Sequence[str],
               cmds: list[tuple[str, str]], server: str | None, out_dir: Path,
               certs: Certs | None, timeout: float, ports: Ports = Ports()) -> list[Verdict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    # A reused --out folder starts afresh: appending to the last run's log would mix
    # two runs' connection ids (each run numbers from 1) and hide this run's events.
    for stale in ["inspector.jsonl", "inspector.out", "both-legs.pcapng", "report.html",
                  *(p.name for p in out_dir.glob("keys-*.log")),
                  *(p.name for p in out_dir.glob("*.client.txt"))]:
        (out_dir / stale).unlink(missing_ok=True)
    certs = certs or make_certs(out_dir / "certs")
    commands = dict(cmds)
    kinds = list(clients) + list(commands)
    kw, options = client_options(scenario)
    # A client asked to idle or wait longer than the run's timeout gets more time.
    timeout = max(timeout, (options.timeout or 0) + options.wait_ms / 1000 + 10)
    verdicts = []
    # Every built-in peer writes its secrets to its own file (two writers never share
    # one) and the inspector follows them all, so encrypted handshake messages and
    # alerts are logged decoded (issue 14). A file not written yet is waited for.
    keylogs = {k: out_dir / f"keys-{k}.log" for k in ["server", *kinds]}
    if scenario.intercept is not None:
        return _reproduce_intercept(scenario, kinds, commands, server, out_dir, certs,
                                    timeout, scenario_path)
    kind_of_server = server or scenario.server
    renegotiate = bool(SERVERS.get(kind_of_server or "any", {}).get("renegotiation"))
    with scenario_server(kind_of_server, certs, out_dir,
                         keylogs["server"], ports.server) as upstream:
        proxy = InspectorProcess(upstream, out_dir / "inspector.jsonl", [scenario_path],
                                 keylog=list(keylogs.values()),
                                 # The lab's peers always log their keys; a loaded
                                 # machine may write them after the 2 s default, and a
                                 # fault inside the encryption must not go unapplied.
                                 extra=["--pcap", str(out_dir / "both-legs.pcapng"),
                                        "--key-wait-ms", "10000"],
                                 port=ports.listen)
        try:
            for kind in kinds:
                seen = {e["conn"] for e in proxy.events()}
                if kind in commands:
                    result = _run_custom(kind, commands[kind], proxy.port, certs, timeout,
                                         keylogs[kind], server_name(scenario))
                elif renegotiate and kind != "openssl":
                    # Only s_client can be told to renegotiate (its R command).
                    verdicts.append(Verdict(scenario.name, kind, False, "skipped", "",
                                            ["this scenario's renegotiation needs the openssl "
                                             "client (s_client's R command)"], [], out_dir))
                    continue
                else:
                    cmd, stdin = client_command(kind, "127.0.0.1", proxy.port, certs,
                                                keylog=keylogs[kind], renegotiate=renegotiate,
                                                options=options, **kw)
                    result = run_command(kind, cmd, stdin,
                                         client_deadline(kind, options, timeout),
                                         stdin_delay=options.wait_ms / 1000)
                verdicts.append(_judge(scenario, kind, result, proxy, seen, out_dir))
        finally:
            proxy.stop()
    from tlsinspector.lab.report_pages import write_reproduce_report  # imports Verdict

    # mypy checks lab/ and tlsinspector/lab (a symlink) as two modules: one Verdict.
    write_reproduce_report(out_dir / "report.html", out_dir / "inspector.jsonl", scenario,
                           verdicts)  # type: ignore[arg-type,unused-ignore]
    return verdicts
