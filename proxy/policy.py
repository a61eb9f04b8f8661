"""Interception policies (``--intercept-policy FILE``): what a terminating middlebox does.

A policy file describes one real product behaviour on each leg:

    name: tls12-only-inspector
    description: why, and which product behaves like this
    client:                      # the leg facing the client (the inspector is the server)
      versions: {min: "1.2", max: "1.2"}
      ciphers: ECDHE+AESGCM      # TLS 1.2 suites, OpenSSL syntax (TLS 1.3 suites: OpenSSL's)
      alpn: true                 # answer the client's ALPN offer (false: never select one)
      certificate: resign        # resign | mimic | wrong-name | self-signed | expired
                                 # | no-intermediate | weak-key
      chain: leaf                # leaf | with-ca (the interception CA sent too)
      resumption: true           # session tickets and the session cache
    server:                      # the leg facing the server (the inspector is the client)
      versions: {min: "1.2", max: "1.3"}
      ciphers: ...
      sni: true                  # forward the client's SNI
      alpn: true                 # forward the client's ALPN offer
      verify: true               # verify the server's certificate
      client_cert: FILE          # PEM with certificate and key to present (absent: none)

Every key is optional; the defaults are mitmproxy's own behaviour. Read with the
scenario reader (proxy/scenario_yaml.py: yaml.safe_load's node tree), so a
mistake is one ScenarioError naming the file, line, dotted field and the allowed
values. Sans-io: this module knows YAML and TLS names, nothing of mitmproxy; the
addon (addons/intercept.py) turns a :class:`Policy` into options and hook choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from yaml.nodes import Node

from tlsinspector.proxy.scenario_yaml import NodeReader, ScenarioError, terminal_safe

VERSIONS = ("1.0", "1.1", "1.2", "1.3")
#: The policy's version names as mitmproxy's tls_version_* option values.
MITM_VERSIONS = {"1.0": "TLS1", "1.1": "TLS1_1", "1.2": "TLS1_2", "1.3": "TLS1_3"}
CERTIFICATES = {
    "resign": "mitmproxy's own: a leaf for the client's SNI and the upstream certificate's "
              "names, signed by the interception CA",
    "mimic": "names copied from the upstream certificate only (not the client's SNI), "
             "signed by the interception CA, as inspection appliances that clone the "
             "server certificate do",
    "wrong-name": "a leaf for wrong-name.invalid, signed by the interception CA",
    "self-signed": "a self-signed leaf for the client's SNI (no CA at all)",
    "expired": "a leaf for the client's SNI signed by the interception CA, expired "
               "since yesterday",
    "no-intermediate": "a leaf for the client's SNI signed by an intermediate CA under "
                       "the interception CA, sent without that intermediate (clients "
                       "that trust only the root cannot build the chain)",
    "weak-key": "a leaf for the client's SNI signed by the interception CA with a "
                "1024-bit RSA key (below OpenSSL's default security level)",
}
#: Kinds signed so that a client trusting the interception CA still fails: the
#: diagnosis names these causes instead of an untrusted CA.
CHAIN_FAULT_CERTIFICATES = ("no-intermediate", "weak-key")
TOP = ("name", "description", "models", "client", "server")
CLIENT_KEYS = ("versions", "ciphers", "alpn", "certificate", "chain", "resumption")
CHAINS = ("leaf", "with-ca")
SERVER_KEYS = ("versions", "ciphers", "sni", "alpn", "verify", "client_cert")
MAX_FILE = 1 << 16


@dataclass(frozen=True, slots=True)
class LegPolicy:
    min_version: str | None = None   # one of VERSIONS; None: mitmproxy's default
    max_version: str | None = None
    ciphers: str | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    name: str = "default"
    description: str = "mitmproxy's own interception"
    models: str = ""
    client: LegPolicy = field(default_factory=LegPolicy)
    server: LegPolicy = field(default_factory=LegPolicy)
    client_alpn: bool = True
    certificate: str = "resign"
    chain: str = "leaf"
    resumption: bool = True
    forward_sni: bool = True
    forward_alpn: bool = True
    verify_upstream: bool = True
    client_cert: str | None = None   # PEM file (certificate and key) presented upstream
    source: str = "<default>"

    def facts(self) -> dict[str, object]:
        """The policy as the log and the diagnosis see it (no file contents)."""
        return {"name": self.name, "client_versions": [self.client.min_version,
                                                       self.client.max_version],
                "server_versions": [self.server.min_version, self.server.max_version],
                "client_alpn": self.client_alpn, "certificate": self.certificate,
                "chain": self.chain,
                "resumption": self.resumption, "forward_sni": self.forward_sni,
                "forward_alpn": self.forward_alpn, "verify_upstream": self.verify_upstream,
                "client_cert_forwarded": self.client_cert is not None}


DEFAULT = Policy()


def _version(r: NodeReader, node: Node, f: str) -> str:
    v = r.scalar(node, f)
    text = f"{v:.1f}" if isinstance(v, float) else v if isinstance(v, str) else None
    if text not in VERSIONS:
        raise r.error(node, f, f"unknown TLS version {r.describe(node, v)}", VERSIONS,
                      "write versions as strings: \"1.2\"")
    assert text is not None
    return text


def _leg(r: NodeReader, items: dict[str, tuple[Node, Node]], leg: str) -> LegPolicy:
    lo = hi = ciphers = None
    if "versions" in items:
        vs = r.mapping(items["versions"][1], f"{leg}.versions", "versions")
        r.check_keys(vs, f"{leg}.versions", ("min", "max"), "in versions")
        lo = _version(r, vs["min"][1], f"{leg}.versions.min") if "min" in vs else None
        hi = _version(r, vs["max"][1], f"{leg}.versions.max") if "max" in vs else None
        if lo and hi and VERSIONS.index(lo) > VERSIONS.index(hi):
            raise r.error(items["versions"][1], f"{leg}.versions",
                          f"min {lo} is above max {hi}")
    if "ciphers" in items:
        ciphers = r.string(items["ciphers"][1], f"{leg}.ciphers", "an OpenSSL cipher string")
        if not ciphers or any(c.isspace() or not c.isprintable() for c in ciphers):
            raise r.error(items["ciphers"][1], f"{leg}.ciphers",
                          "expected an OpenSSL cipher string without spaces "
                          "(e.g. ECDHE+AESGCM:!aNULL)")
    return LegPolicy(lo, hi, ciphers)


def build(r: NodeReader, root: Node | None) -> Policy:
    if root is None:
        raise r.error(None, "", "the policy file is empty")
    top = r.mapping(root, "", "a policy")
    r.check_keys(top, "", TOP, "at the top level")
    if "name" not in top:
        raise r.error(root, "name", "a policy needs a name")
    name = r.string(top["name"][1], "name")
    description = r.string(top["description"][1], "description") if "description" in top \
        else ""
    models = r.string(top["models"][1], "models") if "models" in top else ""
    c = r.mapping(top["client"][1], "client", "client") if "client" in top else {}
    s = r.mapping(top["server"][1], "server", "server") if "server" in top else {}
    r.check_keys(c, "client", CLIENT_KEYS, "in client")
    r.check_keys(s, "server", SERVER_KEYS, "in server")

    def flag(items: dict[str, tuple[Node, Node]], key: str, f: str, default: bool) -> bool:
        return r.boolean(items[key][1], f) if key in items else default

    cert = "resign"
    if "certificate" in c:
        cert = r.choice(c["certificate"][1], "client.certificate", tuple(CERTIFICATES),
                        "a certificate kind")
    chain = "leaf"
    if "chain" in c:
        chain = r.choice(c["chain"][1], "client.chain", CHAINS, "a chain kind")
    client_cert = None
    if "client_cert" in s:
        client_cert = r.string(s["client_cert"][1], "server.client_cert",
                               "a PEM file with the certificate and its key")
        base = Path(r.source).parent if r.source and not r.source.startswith("<") else None
        if base is not None and not Path(client_cert).is_absolute():
            client_cert = str(base / client_cert)
        if base is not None and not Path(client_cert).is_file():
            # Said here, with the line: mitmproxy's own check would stop the start
            # with its option's name (client_certs) instead.
            raise r.error(s["client_cert"][1], "server.client_cert",
                          f"no such file: {terminal_safe(client_cert)!r}")
    return Policy(
        name=name, description=description, models=models,
        client=_leg(r, c, "client"), server=_leg(r, s, "server"),
        client_alpn=flag(c, "alpn", "client.alpn", True), certificate=cert, chain=chain,
        resumption=flag(c, "resumption", "client.resumption", True),
        forward_sni=flag(s, "sni", "server.sni", True),
        forward_alpn=flag(s, "alpn", "server.alpn", True),
        verify_upstream=flag(s, "verify", "server.verify", True),
        client_cert=client_cert, source=r.source)


def load_policy_text(text: str, source: str = "<string>") -> Policy:
    from tlsinspector.proxy.scenario import _compose

    r = NodeReader(source)
    return build(r, _compose(text, source))


def load_policy(path: str | Path) -> Policy:
    from tlsinspector.proxy.scenario import _read

    source = str(path)
    text = _read(path)
    if len(text) > MAX_FILE:
        raise ScenarioError(source, None, "", f"a policy file is at most {MAX_FILE} bytes")
    return load_policy_text(text, source)


@dataclass(frozen=True, slots=True)
class InterceptFacts:
    """What a leg's diagnosis may know beyond its own bytes under ``--intercept``:
    which leg it is, the policy in force and the other leg's history (a
    ``proxy.history.History``; typed loosely to keep this module free of it)."""

    leg: str                 # "client" (client <-> inspector) | "server" (inspector <-> server)
    policy: Policy
    other: object            # the other leg's History
