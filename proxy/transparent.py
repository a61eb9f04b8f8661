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


def iptables_rules(port: int, dport: int, placement: Placement = "gateway",
                   interface: str | None = None, exempt_uid: int | None = None,
                   action: Literal["-A", "-D"] = "-A") -> list[list[str]]:
    """argv lists for iptables (and ip6tables) that add (-A) or delete (-D) the redirect."""
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
