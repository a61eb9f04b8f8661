"""transparent-rules: every value passes a strict grammar before it reaches a rule
(issue 12, item 2). The injection table is tried in print mode and, inside a
throwaway network namespace, with --apply: nothing may be printed or applied,
the exit is 2 with the reason, and an unrelated nftables table survives."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.proxyproc import BIN
from tlsinspector.proxy import transparent as tr

INJECTIONS = [
    'eth0" accept; flush ruleset; "',   # the reproduced one
    'a";flush ruleset',
    'e" accept #',
    'x"}',
    '"',
    "eth0\nflush ruleset",
    "eth0\rx",
    "eth\x1b[2J",
    "eth0 accept",
    "eth0;reboot",
    "a{b",
    "x/y",
    "eth0:1",
    "..",
    "",
    "a" * 16,
    "eth*",
    "eth+",
    "-j",
    "$(reboot)",
    "`reboot`",
    "ëth0",
]
UNIT_ONLY = ["eth0\x00", "\x00"]  # argv cannot carry a NUL
BAD_NUMBERS = [("--port", "99999"), ("--port", "0"), ("--port", "-1"), ("--dport", "-5"),
               ("--dport", "65536"), ("--dport", "0x1bb"), ("--port", "1e3")]
BAD_UIDS = ["-1", "4294967295", "99999999999", "root", "0;1"]


def cli(*argv: str, ns: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + [str(BIN / "tlsinspector"),
                                                         "transparent-rules", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("backend", ["nft", "iptables"])
@pytest.mark.parametrize("name", INJECTIONS)
def test_interface_injection_is_refused_in_print_mode(name: str, backend: str) -> None:
    res = cli("--port", "8080", "--dport", "443", f"--interface={name}", "--backend", backend)
    assert res.returncode == 2, res.stdout
    assert res.stdout == ""
    assert "argument --interface: interface name" in res.stderr


@pytest.mark.parametrize("name", INJECTIONS + UNIT_ONLY)
def test_rule_builders_refuse_injection(name: str) -> None:
    with pytest.raises(tr.RuleValueError):
        tr.nft_script(8080, 443, interface=name)
    with pytest.raises(tr.RuleValueError):
        tr.iptables_rules(8080, 443, interface=name)


@pytest.mark.parametrize(("flag", "value"), BAD_NUMBERS)
def test_ports_out_of_range_are_refused(flag: str, value: str) -> None:
    argv = {"--port": "8080", "--dport": "443", flag: value}
    res = cli(*[f"{k}={v}" for k, v in argv.items()])
    assert res.returncode == 2 and res.stdout == ""
    assert f"argument {flag}:" in res.stderr


@pytest.mark.parametrize("uid", BAD_UIDS)
def test_uid_out_of_range_is_refused(uid: str) -> None:
    res = cli("--port", "8080", "--dport", "443", "--placement", "local", f"--exempt-uid={uid}")
    assert res.returncode == 2 and res.stdout == ""
    assert "argument --exempt-uid:" in res.stderr


def test_good_values_still_work() -> None:
    for name in ("eth0", "veth-gw-c", "br.10", "wlp3s0", "a" * 15, "x@y_z=1"):
        assert f'iifname "{name}" tcp dport 443' in tr.nft_script(8080, 443, interface=name)
    res = cli("--port", "1", "--dport", "65535", "--placement", "local",
              "--exempt-uid", str(tr.MAX_UID))
    assert res.returncode == 0, res.stderr
    assert f"meta skuid != {tr.MAX_UID} tcp dport 65535 redirect to :1" in res.stdout


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.fail("the --apply half needs root: it creates a network namespace")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing (apt-get install iproute2 nftables)")
    ns = f"tlsi-rules-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def ruleset(ns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"],
                          capture_output=True, text=True, timeout=30, check=True).stdout


def test_apply_refuses_every_injection_and_leaves_other_tables(netns: str) -> None:
    victim = ("table inet victim {\n  chain input {\n"
              "    type filter hook input priority 0;\n  }\n}\n")
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=victim, text=True,
                   check=True, timeout=30)
    before = ruleset(netns)
    assert "table inet victim" in before
    for name in INJECTIONS:
        res = cli("--port", "8080", "--dport", "443", f"--interface={name}", "--apply",
                  ns=netns)
        assert res.returncode == 2, (name, res.stdout, res.stderr)
        assert "applied" not in res.stdout
        assert ruleset(netns) == before, name
    # A valid name applies, and --remove removes exactly what was added.
    res = cli("--port", "8080", "--dport", "443", "--interface", "veth0", "--apply", ns=netns)
    assert res.returncode == 0, res.stderr
    assert 'iifname "veth0" tcp dport 443 redirect to :8080' in ruleset(netns)
    res = cli("--port", "8080", "--dport", "443", "--remove", ns=netns)
    assert res.returncode == 0, res.stderr
    assert ruleset(netns) == before
