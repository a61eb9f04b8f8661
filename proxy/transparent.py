"""Redirect rules for transparent mode (Linux iptables REDIRECT / nftables redirect).

mitmproxy's transparent mode reads each connection's original destination
(SO_ORIGINAL_DST) after the kernel redirected it to the proxy's port. Two
placements:

- gateway: the inspector runs on a router; traffic *forwarded* through it to
  port ``dport`` is redirected (PREROUTING). Needs ip forwarding on.
- local: clients on the same host; their *outgoing* connections are redirected
  (OUTPUT). The proxy's own upstream connections would be redirected too and
  loop, so the rule exempts the proxy's user (``--uid-owner``): run the
  inspector as a dedicated user.

Both need root or CAP_NET_ADMIN. IPv6 needs the same rules with ip6tables (or
the ``inet`` nftables family, used here, which covers both).
"""

from __future__ import annotations

from typing import Literal

Placement = Literal["gateway", "local"]
TABLE = "tlsinspector"

# Every value that goes into a rule passes a strict grammar first, so no value
# can change the structure of the nft script or the iptables argv.
IFNAMSIZ = 16           # linux/if.h: names are at most 15 bytes plus NUL
MAX_UID = 2**32 - 2     # (uid_t)-1 means "no uid" (setresuid(2)), so it is never one
# Printable ASCII minus what the kernel refuses in a name (dev_valid_name():
# '/', ':', whitespace) and what would need quoting in an nft script or acts
# as a wildcard there or in iptables (quotes, backslash, '*', a trailing '+').
_IFNAME_FORBIDDEN = frozenset('/:"\'*`$;{}#')


class RuleValueError(ValueError):
    """A value that may not go into a firewall rule; the message says why."""


def check_interface(name: str) -> str:
    """An interface name per the kernel's rules (net/core/dev.c dev_valid_name)."""
    if not name:
        raise RuleValueError("interface name is empty")
    if len(name.encode()) >= IFNAMSIZ:
        raise RuleValueError(f"interface name {name!r} is longer than {IFNAMSIZ - 1} bytes")
    if name in (".", ".."):
        raise RuleValueError(f"interface name {name!r} is not allowed")
    bad = [c for c in name if not 0x21 <= ord(c) <= 0x7E or c in _IFNAME_FORBIDDEN]
    if bad:
        raise RuleValueError(f"interface name {name!r} contains {bad[0]!r}: allowed are "
                             "printable ASCII without whitespace, quotes, '/', ':', '\\', "
                             "'*', '`', '$', ';', '{', '}', '#'")
    if name.startswith("-") or name.endswith("+"):
        raise RuleValueError(f"interface name {name!r} may not start with '-' or end with "
                             "'+' (an option or an iptables wildcard)")
    return name


def check_port(port: int, what: str = "port") -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise RuleValueError(f"{what} must be 1-65535, got {port!r}")
    return port


def check_uid(uid: int) -> int:
    if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid <= MAX_UID:
        raise RuleValueError(f"uid must be 0-{MAX_UID}, got {uid!r}")
    return uid


def _checked(port: int, dport: int, interface: str | None, exempt_uid: int | None) -> None:
    check_port(port, "--port")
    check_port(dport, "--dport")
    if interface is not None:
        check_interface(interface)
    if exempt_uid is not None:
        check_uid(exempt_uid)


def iptables_rules(port: int, dport: int, placement: Placement = "gateway",
                   interface: str | None = None, exempt_uid: int | None = None,
                   action: Literal["-A", "-D"] = "-A") -> list[list[str]]:
    """argv lists for iptables (and ip6tables) that add (-A) or delete (-D) the redirect."""
    _checked(port, dport, interface, exempt_uid)
    out: list[list[str]] = []
    for binary in ("iptables", "ip6tables"):
        if placement == "gateway":
            rule = [binary, "-t", "nat", action, "PREROUTING"]
            if interface:
                rule += ["-i", interface]
        else:
            rule = [binary, "-t", "nat", action, "OUTPUT"]
            if exempt_uid is not None:
                rule += ["-m", "owner", "!", "--uid-owner", str(exempt_uid)]
        rule += ["-p", "tcp", "--dport", str(dport), "-j", "REDIRECT", "--to-ports", str(port)]
        out.append(rule)
    return out


def nft_script(port: int, dport: int, placement: Placement = "gateway",
               interface: str | None = None, exempt_uid: int | None = None) -> str:
    """An ``nft -f`` script creating table inet tlsinspector with the redirect."""
    _checked(port, dport, interface, exempt_uid)
    hook = "prerouting" if placement == "gateway" else "output"
    cond = f'iifname "{interface}" ' if interface and placement == "gateway" else ""
    if placement == "local" and exempt_uid is not None:
        cond += f"meta skuid != {exempt_uid} "
    return (
        f"table inet {TABLE} {{\n"
        f"  chain {hook} {{\n"  # "redirect" is an nft keyword, not a name

        f"    type nat hook {hook} priority -100; policy accept;\n"
        f"    {cond}tcp dport {dport} redirect to :{port}\n"
        f"  }}\n"
        f"}}\n"
    )


def nft_remove() -> list[str]:
    return ["nft", "delete", "table", "inet", TABLE]
