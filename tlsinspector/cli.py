"""The ``tlsinspector`` command line (DESIGN.md "CLI").

Exit codes: 0 ok, 1 the checked thing failed (e.g. a demo client), 2 usage or
configuration error with a message naming the file, line and field.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from tlsinspector import ADDON, CONFIGS
from tlsinspector.proxy.scenario_yaml import terminal_safe

EPILOG = """\
examples:
  tlsinspector demo
      local TLS server + inspector + real client; shows the live record log
  tlsinspector run --listen 127.0.0.1:8443 --upstream api.internal:443 --log hs.jsonl
      inspect every record between clients of 127.0.0.1:8443 and api.internal:443
  tlsinspector run --listen 127.0.0.1:8443 --upstream 127.0.0.1:4433 \\
      --scenario configs/record-version-3030.yaml
      the same, injecting a fault (see `tlsinspector scenarios`)
  tlsinspector analyze --hex report-003.txt
      decode and diagnose a pasted hex dump (client/server blocks marked or guessed)
  tlsinspector analyze customer.pcapng --sni 'api.*' --log out.jsonl
      every TLS connection in a capture through the same engine and diagnosis
  tlsinspector analyze customer.pcapng --keylog keys.log
      the same, decrypting handshake messages and alerts (a pcapng's own secrets
      are used with no option)
  tlsinspector replay --hex report-003.txt --server 127.0.0.1:4433
      send the captured ClientHello byte for byte, diagnose the answer
  tlsinspector run --upstream 127.0.0.1:4433 --pcap both-legs.pcapng
      also write both legs as pcapng for Wireshark, faults as packet comments
  tlsinspector run --upstream svc:443 --intercept \\
      --intercept-policy configs/policies/tls12-only-inspector.yaml
      be a terminating inspection proxy; `tlsinspector ca` shows the CA to trust
"""


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{what} must be HOST:PORT, got {text!r}")
    if not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{what} must be HOST:PORT with a port 0..65535, "
                                         f"got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def parse_size(text: str) -> int:
    """Bytes: a number, optionally with K, M or G (binary: 64M is 64 MiB)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    num, unit = text.rstrip("KMGkmgiB"), text[len(text.rstrip("KMGkmgiB")):].upper()
    unit = unit.removesuffix("B").removesuffix("I")
    if not num.isdigit() or unit not in units:
        raise argparse.ArgumentTypeError(f"expected bytes such as 67108864 or 64M, got {text!r}")
    return int(num) * units[unit]


def parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return port


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT; ``*:PORT`` listens on every interface, IPv4 and IPv6 at once."""
    if text.startswith("*:"):
        return "", parse_hostport("0.0.0.0" + text[1:], "--listen")[1]
    return parse_hostport(text, "--listen")


def _rule_value(check: Callable[[Any], Any], convert: Callable[[str], Any] = int
                ) -> Callable[[str], Any]:
    """An argparse type for a value that goes into a firewall rule: strict grammar
    (proxy/transparent.py), so a bad value is exit 2 with the reason."""
    def parse(text: str) -> Any:
        from tlsinspector.proxy.transparent import RuleValueError

        try:
            return check(convert(text))
        except (ValueError, RuleValueError) as e:
            reason = str(e) if isinstance(e, RuleValueError) else f"not a number: {text!r}"
            raise argparse.ArgumentTypeError(reason) from e
    return parse


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: the usage block (a screen of options, above the
    error) buried the line that says what is wrong, unlike the CLI's other errors.
    Subcommands' parsers are of this class too (add_subparsers takes the parent's)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="tlsinspector",
        description="Transparent TLS inspector and fault injector: logs every TLS record "
                    "between an unmodified client and server, and injects record- and "
                    "handshake-level faults.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run the inspector proxy",
                       description="Run the inspector. Clients connect to --listen; "
                                   "every record both ways is printed and, with --log, "
                                   "written as JSON Lines.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--listen", default="127.0.0.1:8443", metavar="HOST:PORT",
                   type=parse_listen,
                   help="address to accept clients on (default 127.0.0.1:8443; "
                        "never all interfaces unless you say so; *:PORT for every "
                        "interface, IPv4 and IPv6)")
    r.add_argument("--upstream", metavar="HOST:PORT",
                   help="the real TLS server (required in reverse mode)")
    r.add_argument("--mode", choices=("reverse", "regular", "socks5", "transparent"),
                   default="reverse",
                   help="reverse (default): clients connect to --listen, bytes go to "
                        "--upstream; regular: an HTTP proxy (CONNECT tunnels are inspected); "
                        "socks5: a SOCKS5 proxy; transparent: redirected connections "
                        "(see `tlsinspector transparent-rules`)")
    r.add_argument("--scenario", action="append", default=[], metavar="FILE",
                   help="fault scenario file (YAML); repeat to combine")
    r.add_argument("--log", metavar="FILE.jsonl", help="also write the JSON Lines log here")
    r.add_argument("--keylog", action="append", default=[], metavar="FILE",
                   help="NSS key log (SSLKEYLOGFILE) to decrypt handshake messages and "
                        "alerts with; followed as peers append, waited for if it does not "
                        "exist yet; repeat for several")
    r.add_argument("--key-wait-ms", type=int, default=2000, metavar="MS",
                   help="how long keys may take to arrive (default 2000): a fault that "
                        "needs keys holds its record that long, then is reported as not "
                        "applied and the record goes on unchanged; decryption stops "
                        "waiting for a connection's keys after it (one note), and its "
                        "records are relayed without decryption. Forwarding waits for "
                        "nothing else")
    from tlsinspector.proxy.plaintext import PROTOCOLS

    r.add_argument("--protocol", choices=tuple(PROTOCOLS), metavar="NAME",
                   help="the plaintext protocol before TLS (STARTTLS), one of "
                        f"{', '.join(PROTOCOLS)}; default: told from the bytes")
    r.add_argument("--seed", type=int, default=-1,
                   help="seed for probabilistic faults (default: random, printed)")
    r.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                   help="event loop (default uvloop; asyncio is mitmproxy's own)")
    r.add_argument("--quiet", action="store_true", help="no record-by-record terminal view")
    r.add_argument("--no-app-records", action="store_true",
                   help="do not log each application_data record (counted at close)")
    r.add_argument("--web", metavar="HOST:PORT", nargs="?", const="127.0.0.1:8081",
                   type=lambda t: "{}:{}".format(*parse_hostport(t, "--web")),
                   help="serve the live ladder view (the report, appending connections "
                        "as they happen) on HOST:PORT (default 127.0.0.1:8081)")
    r.add_argument("--max-held", type=parse_size, metavar="BYTES",
                   help="bound on bytes held across all connections: partial records, "
                        "handshake messages being assembled, bytes held for faults "
                        "(default 64M; K/M/G suffixes; 0: no bound). Beyond it the largest "
                        "holders stop assembling messages (forwarded unparsed) and reading "
                        "pauses; a held_limit event says so")
    r.add_argument("--idle-timeout", type=parse_seconds, default=0.0, metavar="SECONDS",
                   help="close a connection after this many seconds without a byte either "
                        "way (default 0: never); its close event says so")
    r.add_argument("--log-preview", action="store_true",
                   help="log a 48-byte printable preview of non-TLS bytes (application data, "
                        "e.g. a plaintext request with its credentials; default: length "
                        "and reason only)")

    from tlsinspector import offline

    offline.add_run_arguments(r)
    add_intercept_arguments(r)

    d = sub.add_parser("demo", help="local server + inspector + real client, live log")
    d.add_argument("--log", metavar="FILE.jsonl",
                   help="also write the demo connections' JSON Lines log here")

    from tlsinspector.proxy import transparent as tr

    t = sub.add_parser("transparent-rules",
                       help="print (or apply/remove) the redirect rules for transparent mode")
    t.add_argument("--port", type=_rule_value(tr.check_port), required=True,
                   help="the inspector's listen port (1-65535)")
    t.add_argument("--dport", type=_rule_value(tr.check_port), required=True,
                   help="destination port to intercept (1-65535)")
    t.add_argument("--placement", choices=("gateway", "local"), default="gateway",
                   help="gateway: forwarded traffic (PREROUTING); local: this host's own "
                        "outgoing traffic (OUTPUT, exempting --exempt-uid to avoid loops)")
    t.add_argument("--interface", type=_rule_value(tr.check_interface, str),
                   help="gateway: only traffic arriving on this interface (a kernel "
                        "interface name: 1-15 printable characters, no '/', ':', quotes, "
                        "whitespace or wildcards)")
    t.add_argument("--exempt-uid", type=_rule_value(tr.check_uid),
                   help=f"local: the uid the inspector runs as (0-{tr.MAX_UID})")
    t.add_argument("--backend", choices=("nft", "iptables"), default="nft",
                   help="nft (default): one nftables table (inet: IPv4 and IPv6); iptables: "
                        "iptables and ip6tables rules")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--apply", action="store_true", help="install the rules (root)")
    g.add_argument("--remove", action="store_true", help="remove the rules (root)")

    rp = sub.add_parser("reproduce", help="run a scenario between real peers and judge it")
    rp.add_argument("file", help="scenario file, or the name of a shipped scenario")
    rp.add_argument("--client", action="append",
                    help="go, openssl, curl, gnutls, python, wolfssl, chromium "
                         "(comma-separated or repeated for several); combines with "
                         "--client-cmd; without either, the built-in clients the "
                         "scenario's expect: names")
    rp.add_argument("--client-cmd", action="append", metavar="[NAME=]CMD",
                    help="any client command; {addr}, {host}, {port}, {ca}, {keylog}, {name} "
                         "(the server name to send as SNI: the scenario's client.sni, else "
                         "localhost; {ca}: the lab CA that signed the built-in servers' "
                         "certificates, not your --server's) are substituted (no shell; "
                         "SSLKEYLOGFILE={keylog} is set "
                         "too); repeatable; "
                         "NAME= names it for its own expect: entry "
                         "(default custom, custom2, ...)")
    rp.add_argument("--server", help="HOST:PORT of your own server instead of a built-in one")
    rp.add_argument("--listen", type=_port, metavar="PORT",
                    help="the inspector's port on 127.0.0.1 (default: a free one)")
    rp.add_argument("--server-port", type=_port, metavar="PORT",
                    help="the built-in server's port on 127.0.0.1 (default: a free one)")
    rp.add_argument("--out", metavar="DIR",
                    help="keep the run's files here: the inspector's JSONL log, each "
                         "client's output, the certificates (default: a temporary "
                         "folder, removed at the end)")
    rp.add_argument("--keep", action="store_true",
                    help="without --out: keep the temporary folder and print its path")

    mx = sub.add_parser("matrix", help="every scenario x every client, as a table")
    mx.add_argument("dir", nargs="?", default=str(CONFIGS),
                    help="folder of scenario files (default: the shipped scenarios)")
    mx.add_argument("--clients", default="go,openssl,curl,gnutls,python,wolfssl",
                    help="comma-separated clients (default: all six)")
    mx.add_argument("--out", default="matrix",
                    help="output folder for matrix.md and each run's logs (default: matrix)")

    rep = sub.add_parser("report", help="a self-contained HTML ladder diagram of a JSONL log")
    rep.add_argument("log", metavar="LOG.jsonl", help="a log written by run, analyze or reproduce")
    rep.add_argument("-o", "--out", default="report.html", metavar="report.html",
                     help="the HTML file to write (default report.html); it loads nothing "
                          "from the network and can be attached to a ticket")
    rep.add_argument("--title", help="page title (default: the log's file name)")

    sub.add_parser("scenarios", help="list the shipped scenarios (configs/, installed with "
                                     "the package); each works by name in check and reproduce")
    c = sub.add_parser("check", help="validate a scenario file and explain its faults; "
                                     "--list: every match key and action")
    c.add_argument("file", nargs="*",
                   help="scenario file, or the name of a shipped scenario")
    c.add_argument("--list", action="store_true",
                   help="list every match key and every action with its parameters, class "
                        "and predicted symptom")
    from tlsinspector import offline

    offline.add_arguments(sub)
    ca = sub.add_parser("ca", help="print the interception CA certificate (--intercept) and "
                                   "how to trust it; made on first use")
    ca.add_argument("--ca", metavar="DIR", help="the CA folder (default: mitmproxy's, "
                                                 "~/.mitmproxy)")
    sub.add_parser("addon-path",
                   help="print the addon's file, for `mitmdump -s \"$(tlsinspector addon-path)\"`")
    return p


def add_intercept_arguments(r: argparse.ArgumentParser) -> None:
    """run's --intercept options (issue 21)."""
    r.add_argument("--intercept", action="store_true",
                   help="terminate TLS on both legs as an intercepting middlebox does "
                        "(mitmproxy's TLS layers), and log each leg record by record "
                        "(\"leg\": client|server); clients must trust the CA that "
                        "`tlsinspector ca` prints")
    r.add_argument("--intercept-policy", metavar="FILE",
                   help="interception policy (YAML; see configs/policies/): versions, "
                        "suites, ALPN, SNI, certificate and client certificates per leg")
    r.add_argument("--ca", metavar="DIR",
                   help="with --intercept: the CA folder (mitmproxy-ca.pem; made if "
                        "missing; default mitmproxy's ~/.mitmproxy)")
    r.add_argument("--upstream-ca", metavar="FILE",
                   help="with --intercept: verify the server leg against this CA bundle "
                        "instead of the system's")


def _intercept_problem(args: argparse.Namespace) -> str | None:
    """run's --intercept options, checked before the proxy starts."""
    if not args.intercept:
        if args.intercept_policy or args.ca or args.upstream_ca:
            return "--intercept-policy, --ca and --upstream-ca need --intercept"
        return None
    if args.intercept_policy:
        from tlsinspector.proxy.policy import load_policy
        from tlsinspector.proxy.scenario import ScenarioError

        args.intercept_policy = str(policy_path(args.intercept_policy))
        try:
            load_policy(args.intercept_policy)
        except ScenarioError as e:
            return str(e)
    if args.upstream_ca and not Path(args.upstream_ca).is_file():
        return f"--upstream-ca {terminal_safe(args.upstream_ca)}: no such file"
    if args.ca and Path(args.ca).exists() and not Path(args.ca).is_dir():
        # mitmproxy's CA store would stop the start with a FileExistsError traceback.
        return (f"--ca {terminal_safe(args.ca)}: not a folder (the folder the interception "
                "CA is kept in, made on first use; `tlsinspector ca --ca DIR` prints its "
                "certificate)")
    return None


def policy_path(name: str) -> Path:
    """A policy file, or the name of a shipped one (configs/policies/NAME.yaml)."""
    p = Path(name)
    if p.exists() or p.suffix:
        return p
    shipped = CONFIGS / "policies" / f"{name}.yaml"
    return shipped if shipped.exists() else p


def _ca(args: argparse.Namespace) -> int:
    from tlsinspector.addons.runner import ca_files

    try:
        pem, folder = ca_files(args.ca)
    except OSError as e:
        print(f"tlsinspector ca: {e}", file=sys.stderr)
        return 2
    print(pem)
    print(f"""
The interception CA of `tlsinspector run --intercept`{f' --ca {folder}' if args.ca else ''}.
Clients that should accept the inspector's certificates must trust it:
  curl --cacert {pem} ...           openssl s_client -CAfile {pem} ...
  SSL_CERT_FILE={pem} (Go, Python)  NODE_EXTRA_CA_CERTS={pem} (Node, npm)
  system-wide (Debian): cp {pem} /usr/local/share/ca-certificates/tlsinspector.crt
                        && update-ca-certificates
Its private key is {folder / 'mitmproxy-ca.pem'}: whoever has it can impersonate
any server to those clients. Remove the trust when you are done.""")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except BrokenPipeError:
        # `tlsinspector scenarios | head`: the reader left; that is not an error.
        sys.stderr.close()
        return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        if args.mode == "reverse" and not args.upstream:
            print("tlsinspector run: --upstream HOST:PORT is required in reverse mode",
                  file=sys.stderr)
            return 2
        if args.upstream:
            try:
                parse_hostport(args.upstream, "--upstream")
            except argparse.ArgumentTypeError as e:
                print(f"tlsinspector run: {e}", file=sys.stderr)
                return 2
        if args.log:
            import os

            from tlsinspector.addons.logfile import LogFileError, open_log

            try:  # the addon opens it again; this makes a bad path exit 2 up front
                os.close(open_log(args.log))
            except LogFileError as e:
                print(f"tlsinspector run: {e}", file=sys.stderr)
                return 2
        from tlsinspector import offline

        if (err := offline.check_run_pcap(args)) is not None:
            print(f"tlsinspector run: {err}", file=sys.stderr)
            return 2
        from tlsinspector.addons.keylogs import check_path

        if args.key_wait_ms < 0:
            print("tlsinspector run: --key-wait-ms must be >= 0", file=sys.stderr)
            return 2
        for path in args.keylog:
            why = check_path(path)
            if why is not None:
                print(f"tlsinspector run: {why}", file=sys.stderr)
                return 2
        from tlsinspector.proxy.scenario import ScenarioError

        try:
            args.scenario = [str(scenario_path(f)) for f in args.scenario]
        except ScenarioError as e:
            print(f"tlsinspector run: {e}", file=sys.stderr)
            return 2
        if args.scenario:
            from tlsinspector.proxy.scenario import (
                keys_refusal,
                leg_refusal,
                load_scenarios,
            )

            try:
                loaded = load_scenarios(args.scenario)
            except ScenarioError as e:
                print(f"tlsinspector run: {e}", file=sys.stderr)
                return 2
            refusal = keys_refusal(f for s in loaded for f in s.faults)
            if args.intercept:
                refusal = None  # the inspector's own keys of each leg (addons/intercept.py)
            why = leg_refusal((f for s in loaded for f in s.faults), args.intercept)
            if why is not None:
                print(f"tlsinspector run: {why}", file=sys.stderr)
                return 2
            if refusal and not args.keylog:
                print(f"tlsinspector run: {refusal}", file=sys.stderr)
                return 2
        if (err := _intercept_problem(args)) is not None:
            print(f"tlsinspector run: {err}", file=sys.stderr)
            return 2
        from tlsinspector.addons import runner

        return runner.run(args.listen, args.mode, args.upstream, scenarios=args.scenario,
                          intercept=args.intercept, intercept_policy=args.intercept_policy,
                          ca=args.ca, upstream_ca=args.upstream_ca,
                          log=args.log, seed=args.seed, quiet=args.quiet, keylog=args.keylog,
                          key_wait_ms=args.key_wait_ms,
                          app_records=not args.no_app_records, log_preview=args.log_preview,
                          max_held=args.max_held, idle_timeout=args.idle_timeout,
                          loop=args.loop, web=args.web, pcap=offline.pcap_options(args),
                          protocol=args.protocol)
    if args.command == "demo":
        from tlsinspector.addons import runner

        return runner.demo(args.log)
    if args.command == "reproduce":
        return _reproduce(args)
    if args.command == "matrix":
        return _matrix(args)
    if args.command == "report":
        from tlsinspector.report import main as report_main

        return report_main(args.log, args.out, args.title)
    if args.command == "scenarios":
        return _scenarios()
    if args.command == "transparent-rules":
        return _transparent_rules(args)
    if args.command == "check":
        return _check(args.file, args.list)
    if args.command in ("analyze", "replay"):
        from tlsinspector import offline

        return offline.run(args)
    if args.command == "ca":
        return _ca(args)
    if args.command == "addon-path":
        print(ADDON)
        return 0
    return 2  # pragma: no cover - argparse enforces the choices


def _transparent_rules(args: argparse.Namespace) -> int:
    import shlex
    import subprocess

    from tlsinspector.proxy import transparent as tr

    if args.placement == "local" and args.exempt_uid is None:
        print("tlsinspector transparent-rules: --placement local needs --exempt-uid "
              "(the inspector's own connections must not be redirected back to it)",
              file=sys.stderr)
        return 2
    kw = {"placement": args.placement, "interface": args.interface,
          "exempt_uid": args.exempt_uid}
    cmds: list[list[str]]
    script = None
    try:
        if args.backend == "nft":
            script = tr.nft_script(args.port, args.dport, **kw)
            cmds = [tr.nft_remove()] if args.remove else [["nft", "-f", "-"]]
        else:
            cmds = tr.iptables_rules(args.port, args.dport,
                                     action="-D" if args.remove else "-A", **kw)
    except tr.RuleValueError as e:  # the parser checks too; this guards other callers
        print(f"tlsinspector transparent-rules: {e}", file=sys.stderr)
        return 2
    if not (args.apply or args.remove):
        if script is not None:
            print(f"# nft -f - <<'EOF'\n{script}EOF\n# remove: {shlex.join(tr.nft_remove())}")
        else:
            for c in cmds:
                print(shlex.join(c))
        return 0
    for c in cmds:
        if "-A" in c:
            probe = [("-C" if a == "-A" else a) for a in c]  # already there: adding is a no-op
            if subprocess.run(probe, capture_output=True, timeout=30).returncode == 0:
                print(f"present: {shlex.join(c)}")
                continue
        res = subprocess.run(c, input=script if c[-1] == "-" else None, text=True,
                             capture_output=True, timeout=30)
        if res.returncode != 0:
            print(f"tlsinspector: {shlex.join(c)} failed: {res.stderr.strip()}", file=sys.stderr)
            return 1
        print(f"applied: {shlex.join(c)}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from tlsinspector.lab.peers import ALL_CLIENT_KINDS as CLIENT_KINDS
    from tlsinspector.lab.reproduce import (
        ClientCommandError,
        Ports,
        client_argv,
        client_said,
        named_commands,
        reproduce,
    )
    from tlsinspector.proxy.render import escape, line
    from tlsinspector.proxy.scenario import ScenarioError

    # --client go,curl and --client go --client curl alike; each kind once, in order.
    clients = list(dict.fromkeys(c.strip() for a in args.client or () for c in a.split(",")
                                 if c.strip()))
    bad = [c for c in clients if c not in CLIENT_KINDS]
    if bad:
        print(unknown_client("reproduce", bad[0]), file=sys.stderr)
        return 2
    if not clients and not args.client_cmd:
        # Without --client: the built-in clients the scenario's expect: names, which is
        # what `reproduce record-version-3030` (a shipped name alone) means.
        from tlsinspector.proxy.scenario import load_scenario
        try:
            expect = load_scenario(scenario_path(args.file)).expect or {}
        except ScenarioError as e:
            print(str(e), file=sys.stderr)
            return 2
        clients = [k for k in expect if k in CLIENT_KINDS]
        if not clients:
            print("tlsinspector reproduce: give --client KIND and/or --client-cmd CMD (the "
                  "scenario's expect: section names no built-in client to default to)"
                  + "".join(f"; {n}" for n in _expect_name_notes(expect)),
                  file=sys.stderr)
            return 2
        print(f"tlsinspector reproduce: no --client: the clients of the scenario's expect: "
              f"section, {', '.join(clients)}", file=sys.stderr)
    try:
        # Checked before any server or proxy starts.
        for _, cmd in named_commands(args.client_cmd):
            client_argv(cmd)
    except ClientCommandError as e:
        print(f"tlsinspector reproduce: --client-cmd: {e}", file=sys.stderr)
        return 2
    if (why := _out_problem(args.out)) is not None:
        print(f"tlsinspector reproduce: {why}", file=sys.stderr)
        return 2
    from tlsinspector.addons.runner import listen_problem

    for flag, port in (("--listen", args.listen), ("--server-port", args.server_port)):
        busy = port is not None and listen_problem(
            ("127.0.0.1", port), f"{flag} PORT, or leave it out (a free one is picked)")
        if busy:
            print(f"tlsinspector reproduce: {flag} {port}: {busy}", file=sys.stderr)
            return 2
    try:
        # Absolute: the inspector child and the report must not depend on a directory.
        verdicts = reproduce(scenario_path(args.file).absolute(), clients, args.client_cmd,
                             args.server, Path(args.out) if args.out else None,
                             keep=args.keep, ports=Ports(args.listen, args.server_port))
    except ScenarioError as e:
        print(str(e), file=sys.stderr)
        return 2
    status = 0
    for v in verdicts:
        print(f"== {v.scenario} with {v.client}: client {v.outcome}")
        for ev in v.events:
            print("   " + line(ev).replace("\n", "\n   "))
        print("   client said: " + escape(client_said(v.client_output)))
        if v.reproduced:
            print("   REPRODUCED: the outcome matches the scenario's expectation")
        elif v.outcome == "skipped":
            # The scenario cannot use this client (renegotiation: s_client only): not
            # a failure to reproduce, unless no client could run at all (below).
            print("   SKIPPED: " + "; ".join(v.differences))
        else:
            status = 1
            print("   NOT REPRODUCED:")
            for d in v.differences:
                print(f"     - {d}")
    if verdicts and all(v.outcome == "skipped" for v in verdicts):
        print("tlsinspector reproduce: every client was skipped: nothing was reproduced",
              file=sys.stderr)
        status = 1
    if verdicts and verdicts[0].out_dir:
        print(f"logs: {verdicts[0].out_dir}")
    elif verdicts:
        print("logs: not kept (--out DIR or --keep keeps them)")
    return status


def _matrix(args: argparse.Namespace) -> int:
    from tlsinspector.lab.matrix import run_matrix
    from tlsinspector.lab.peers import ALL_CLIENT_KINDS as CLIENT_KINDS

    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    bad = [c for c in clients if c not in CLIENT_KINDS]
    if bad or not clients:
        print(unknown_client("matrix", bad[0] if bad else args.clients), file=sys.stderr)
        return 2
    scenarios = sorted(Path(args.dir).glob("*.yaml"))
    if not scenarios:
        print(f"tlsinspector matrix: no *.yaml in {terminal_safe(args.dir)}", file=sys.stderr)
        return 2
    if (why := _out_problem(args.out)) is not None:
        print(f"tlsinspector matrix: {why}", file=sys.stderr)
        return 2
    from tlsinspector.proxy.scenario import ScenarioError, load_scenario

    def starttls(path: Path) -> bool:
        """Faults on a STARTTLS plaintext phase need a mail server, not the lab's."""
        try:
            return any(f.match.plaintext for f in load_scenario(path).faults)
        except ScenarioError:
            return False  # reported by the run itself

    for path in [p for p in scenarios if starttls(p)]:
        print(f"tlsinspector matrix: {path.name} works on a STARTTLS plaintext phase "
              "(needs a mail server): left out; run it with `tlsinspector run`",
              file=sys.stderr)
    scenarios = [p for p in scenarios if not starttls(p)]
    results = run_matrix(scenarios, clients, Path(args.out))
    print((Path(args.out) / "matrix.md").read_text())
    return 0 if all(v.reproduced for v in results) else 1


def _out_problem(out: str | None) -> str | None:
    """Why --out DIR cannot hold the run's files (made here if missing), or None: exit 2
    before anything starts, not a traceback once the servers ran."""
    if not out:
        return None
    if Path(out).exists() and not Path(out).is_dir():
        return f"--out {terminal_safe(out)}: exists and is not a folder"
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"--out {terminal_safe(out)}: cannot make that folder: {e.strerror}"
    return None


def unknown_client(command: str, name: str) -> str:
    """The error for a --client/--clients name that is not a built-in client, with a
    did-you-mean as the scenario loader's unknown names have ('Go', 'opensl')."""
    from tlsinspector.lab.peers import ALL_CLIENT_KINDS
    from tlsinspector.proxy.scenario_yaml import did_you_mean

    folded = [k for k in ALL_CLIENT_KINDS if k == name.strip().lower()]
    hint = (f"did you mean {folded[0]!r}?" if folded
            else did_you_mean(name.strip().lower(), ALL_CLIENT_KINDS))
    return (f"tlsinspector {command}: unknown client {name!r}"
            f"{f' ({hint})' if hint else ''}; allowed: {', '.join(ALL_CLIENT_KINDS)}")


def scenario_path(arg: str) -> Path:
    """A scenario argument: a file path, or the name of a shipped scenario. A name that
    is neither (no such file, no suffix, no folder) raises ScenarioError with the
    shipped names closest to it: a typo of one is the likely cause."""
    p = Path(arg)
    if not p.exists() and p.parent.name == "configs" and (CONFIGS / p.name).is_file():
        # The README's `configs/NAME.yaml`, typed outside a checkout: the shipped file.
        return CONFIGS / p.name
    if p.exists() or p.suffix or "/" in arg:
        return p
    shipped = CONFIGS / f"{arg}.yaml"
    if shipped.is_file():
        return shipped
    from tlsinspector.proxy.scenario import ScenarioError
    from tlsinspector.proxy.scenario_yaml import did_you_mean

    near = did_you_mean(arg, sorted(x.stem for x in CONFIGS.glob("*.yaml")))
    raise ScenarioError(arg, None, "", "no such file, and no shipped scenario of that name",
                        hint=(f"{near} " if near else "")
                        + "`tlsinspector scenarios` lists the shipped ones")


def _scenarios() -> int:
    from tlsinspector.proxy.scenario import ScenarioError, load_scenario

    paths = sorted(CONFIGS.glob("*.yaml"))
    if not paths:
        print(f"tlsinspector scenarios: no shipped scenarios found in {CONFIGS}; "
              "the installation is incomplete", file=sys.stderr)
        return 2
    status = 0
    rows = []
    for path in paths:
        try:
            s = load_scenario(path)
        except ScenarioError as e:
            rows.append((f"{path.name}: INVALID: {e}", ""))
            status = 2
            continue
        rows.append((s.name, s.reproduces or s.description.splitlines()[0]))
    # One column for every name: the intercept scenarios' names are longer than 32.
    width = max((len(name) for name, text in rows if text), default=0)
    for name, text in rows:
        print(f"{name:{width}} {text}" if text else name)
    return status


def _check(files: Sequence[str], listing: bool = False) -> int:
    from tlsinspector.proxy.scenario import ScenarioError, catalog, explain, load_scenario
    from tlsinspector.proxy.scenario_yaml import terminal_safe

    if listing:
        print("\n".join(catalog()))
    elif not files:
        print("tlsinspector check: give a scenario file (or --list)", file=sys.stderr)
        return 2
    status = 0
    for f in files:
        try:
            s = load_scenario(scenario_path(f))
        except ScenarioError as e:
            print(str(e), file=sys.stderr)
            status = 2
            continue
        print(f"{terminal_safe(f)}: ok, scenario {s.name!r}")
        for line in explain(s):
            print(f"  {line}")
        for note in _expect_name_notes(s.expect or {}):
            print(f"  note: {note}")
    return status


def _expect_name_notes(expect: Mapping[str, object]) -> list[str]:
    """An expect: entry that names no built-in client is valid (a --client-cmd NAME),
    but a typo ('kurl') then silently never applies: say so, with a did-you-mean."""
    from tlsinspector.lab.peers import ALL_CLIENT_KINDS
    from tlsinspector.proxy.scenario_yaml import did_you_mean

    notes = []
    for name in expect:
        if name in ALL_CLIENT_KINDS:
            continue
        hint = did_you_mean(name, ALL_CLIENT_KINDS)
        notes.append(f"expect: {name!r} is no built-in client ({', '.join(ALL_CLIENT_KINDS)})"
                     f": it applies only to a --client-cmd named {name}"
                     + (f" ({hint})" if hint else ""))
    return notes


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
