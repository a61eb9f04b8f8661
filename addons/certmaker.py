"""Leaf certificates for the interception policies' ``certificate:`` kinds.

Not an addon: used by addons/intercept.py. mitmproxy's own certificate store
makes the default kind (``resign``); these are the kinds a misconfigured or
cheap inspection product presents instead (proxy/policy.py CERTIFICATES).
Keys: the CA's own key, as mitmproxy's leaves use it (no key generation per
connection); ``self-signed`` signs with it too, under its own name. Two kinds need
keys of their own, each made once per process and per CA (:func:`_extra_key`):
``no-intermediate`` signs with an intermediate CA's key, ``weak-key`` presents an
RSA key of :data:`WEAK_KEY_BITS`.
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

#: The ``weak-key`` leaf's RSA modulus: what 2000s-era appliances generated. Below
#: the 2048 bits of OpenSSL's default security level 2 and of the CA/Browser Forum
#: Baseline Requirements 6.1.5; 512 is not possible under TLS 1.3: its RSA
#: signatures are PSS with a salt as long as the hash (RFC 8446 4.2.3), and
#: rsa_pss_rsae_sha256 needs emLen >= 32 + 32 + 2 bytes (RFC 8017 9.1.1).
WEAK_KEY_BITS = 1024
INTERMEDIATE_CN = "tlsinspector interception intermediate CA"
_KEYS: dict[tuple[bytes, str], rsa.RSAPrivateKey] = {}
_INTERMEDIATES: dict[bytes, x509.Certificate] = {}


def _extra_key(ca_cert: x509.Certificate, purpose: str, bits: int) -> rsa.RSAPrivateKey:
    """A key of its own for ``purpose``, made on first use for this CA and kept for
    the process: key generation per connection would cost more than the handshake."""
    k = (ca_cert.fingerprint(hashes.SHA256()), purpose)
    if k not in _KEYS:
        _KEYS[k] = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return _KEYS[k]


def intermediate(ca_cert: x509.Certificate, ca_key: rsa.RSAPrivateKey
                 ) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """An intermediate CA under the interception CA (RFC 5280 4.2.1.9: cA, path
    length 0), as inspection appliances sign with a subordinate of the company root.
    The ``no-intermediate`` kind signs with it and never sends it."""
    key = _extra_key(ca_cert, "intermediate", 2048)
    fp = ca_cert.fingerprint(hashes.SHA256())
    if fp not in _INTERMEDIATES:
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tlsinspector"),
                          x509.NameAttribute(NameOID.COMMON_NAME, INTERMEDIATE_CN)])
        _INTERMEDIATES[fp] = (
            x509.CertificateBuilder().subject_name(name).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=2))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return _INTERMEDIATES[fp], key


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def leaf(kind: str, names: tuple[str, ...], ca_cert: Any, ca_key: rsa.RSAPrivateKey
         ) -> tuple[crypto.X509, crypto.PKey]:
    """A leaf for ``names`` of the given kind, as pyOpenSSL objects for use_certificate.

    mimic and wrong-name: signed by the CA, valid now; self-signed: its own issuer;
    expired: signed by the CA, not valid after yesterday (RFC 5280 4.1.2.5);
    no-intermediate: signed by :func:`intermediate`, which the inspector does not
    send (RFC 8446 4.4.2: the sender's chain should carry it); weak-key: signed by
    the CA, an RSA key of :data:`WEAK_KEY_BITS`."""
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64] or "invalid")])
    if kind == "expired":
        start, end = now - datetime.timedelta(days=60), now - datetime.timedelta(days=1)
    else:
        start, end = now - datetime.timedelta(days=2), now + datetime.timedelta(days=365)
    issuer, signer, key = ca_cert.subject, ca_key, ca_key
    if kind == "self-signed":
        issuer = subject
    elif kind == "no-intermediate":
        inter, signer = intermediate(ca_cert, ca_key)
        issuer = inter.subject
    elif kind == "weak-key":
        key = _extra_key(ca_cert, "weak-key", WEAK_KEY_BITS)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]),
                              critical=False)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    cert = builder.sign(signer, hashes.SHA256())
    return crypto.X509.from_cryptography(cert), crypto.PKey.from_cryptography_key(key)
