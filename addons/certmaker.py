"""Leaf certificates for the interception policies' ``certificate:`` kinds.

Not an addon: used by addons/intercept.py. mitmproxy's own certificate store
makes the default kind (``resign``); these are the kinds a misconfigured or
cheap inspection product presents instead (proxy/policy.py CERTIFICATES).
Keys: the CA's own key, as mitmproxy's leaves use it (no key generation per
connection); ``self-signed`` signs with it too, under its own name.
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from OpenSSL import crypto


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def leaf(kind: str, names: tuple[str, ...], ca_cert: Any, ca_key: rsa.RSAPrivateKey
         ) -> tuple[crypto.X509, crypto.PKey]:
    """A leaf for ``names`` of the given kind, as pyOpenSSL objects for use_certificate.

    mimic and wrong-name: signed by the CA, valid now; self-signed: its own issuer;
    expired: signed by the CA, not valid after yesterday (RFC 5280 4.1.2.5)."""
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64] or "invalid")])
    if kind == "expired":
        start, end = now - datetime.timedelta(days=60), now - datetime.timedelta(days=1)
    else:
        start, end = now - datetime.timedelta(days=2), now + datetime.timedelta(days=365)
    issuer = subject if kind == "self-signed" else ca_cert.subject
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]),
                              critical=False)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    cert = builder.sign(ca_key, hashes.SHA256())
    return crypto.X509.from_cryptography(cert), crypto.PKey.from_cryptography_key(ca_key)
