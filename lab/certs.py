"""A throwaway CA and leaf certificates for localhost experiments."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

NAMES = ("localhost", "test.local")
IPS = ("127.0.0.1",)
DEFAULT_NAME = "default.invalid"  # the default certificate's only name


@dataclass(frozen=True)
class Certs:
    ca_cert: Path
    server_cert: Path   # ECDSA P-256 leaf
    server_key: Path
    rsa_cert: Path      # RSA-2048 leaf, for TLS_ECDHE_RSA_* and old clients
    rsa_key: Path
    # A server's default certificate for another name (answers without SNI).
    default_cert: Path | None = None
    default_key: Path | None = None


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_certs(directory: Path, names: tuple[str, ...] = NAMES,
               ips: tuple[str, ...] = IPS) -> Certs:
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tlsinspector test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    san = x509.SubjectAlternativeName(
        [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips])

    def leaf(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
             san: x509.SubjectAlternativeName = san, cn: str = names[0]) -> x509.Certificate:
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                .issuer_name(ca_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(san, critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(ca_key, hashes.SHA256()))

    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    paths = {name: directory / f"{name}.pem" for name in
             ("ca", "server", "server.key", "rsa", "rsa.key", "default", "default.key")}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["server"].write_bytes(leaf(ec_key).public_bytes(serialization.Encoding.PEM))
    paths["server.key"].write_bytes(_pem_key(ec_key))
    paths["rsa"].write_bytes(leaf(rsa_key).public_bytes(serialization.Encoding.PEM))
    paths["rsa.key"].write_bytes(_pem_key(rsa_key))
    default_san = x509.SubjectAlternativeName([x509.DNSName(DEFAULT_NAME)])
    paths["default"].write_bytes(leaf(rsa_key, default_san, DEFAULT_NAME)
                                 .public_bytes(serialization.Encoding.PEM))
    paths["default.key"].write_bytes(_pem_key(rsa_key))
    for p in (paths["server.key"], paths["rsa.key"], paths["default.key"]):
        p.chmod(0o600)
    return Certs(paths["ca"], paths["server"], paths["server.key"], paths["rsa"],
                 paths["rsa.key"], paths["default"], paths["default.key"])
