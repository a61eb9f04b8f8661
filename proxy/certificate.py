"""X.509 certificates as JSON-ready dicts and one-line summaries, via ``cryptography.x509``.

:func:`describe_cert` turns one DER certificate into subject, issuer, SAN list,
validity (ISO dates, UTC), key type and size, and signature algorithm;
:func:`cert_summary` renders the short form used in log lines
(``CN=svc.internal, SAN=svc.internal, RSA 2048, expires 2027-01-03``). A
certificate ``cryptography`` cannot parse becomes ``{"error": reason,
"length": n}``: peer bytes are hostile, and nothing escapes.
"""

from __future__ import annotations

import functools
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

Json = dict[str, Any]

_SIG_NAMES = {v: k.lower() for k, v in vars(SignatureAlgorithmOID).items()
              if isinstance(v, x509.ObjectIdentifier)}
MAX_SAN = 50  # a log line, not an audit: more names are counted, not listed


def _key(cert: x509.Certificate) -> tuple[str, int | None]:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}", key.key_size
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", 456
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", key.key_size
    return type(key).__name__, None


def _sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    out: list[str] = []
    for gn in ext.value:
        if isinstance(gn, x509.DNSName | x509.RFC822Name | x509.UniformResourceIdentifier):
            out.append(gn.value)
        elif isinstance(gn, x509.IPAddress):
            out.append(str(gn.value))
        else:
            out.append(type(gn).__name__)
    return out


def _cn(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None


def describe_cert(der: bytes) -> Json:
    """Subject, issuer, SAN, validity, key and signature algorithm of one certificate.

    A server sends the same certificate on every connection: the decoded fields
    are cached by its bytes (a copy is returned, callers may add to it)."""
    return dict(_describe_cached(der))


@functools.lru_cache(maxsize=256)
def _describe_cached(der: bytes) -> Json:
    try:
        cert = x509.load_der_x509_certificate(der)
        key_type, key_size = _key(cert)
        sans = _sans(cert)
        out: Json = {
            "subject": cert.subject.rfc4514_string(),
            "issuer": cert.issuer.rfc4514_string(),
            "subject_cn": _cn(cert.subject),
            "issuer_cn": _cn(cert.issuer),
            "san": sans[:MAX_SAN],
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "key_type": key_type,
            "key_size": key_size,
            "signature_algorithm": _SIG_NAMES.get(cert.signature_algorithm_oid,
                                                  cert.signature_algorithm_oid.dotted_string),
            "serial": format(cert.serial_number, "x"),
            "self_signed": cert.subject == cert.issuer,
            "length": len(der),
        }
        if len(sans) > MAX_SAN:
            out["san_total"] = len(sans)
        return out
    except Exception as e:  # noqa: BLE001 - third-party parser on hostile bytes
        return {"error": f"{type(e).__name__}: {str(e)[:120]}", "length": len(der)}


def printable(text: str, limit: int = 80, backslash: bool = False) -> str:
    """Peer-controlled text made safe for one terminal line (control chars escaped:
    ``\\x1b``; beyond Latin-1 ``\\u202e``, so that no escape reads as a shorter one
    followed by digits). ``backslash``: a backslash is escaped too (``\\x5c``), for
    raw text whose own backslashes could otherwise forge an escape (a certificate's
    CN or SAN holding the four characters \\x1b must not read as an escape byte);
    not for text whose backslashes are already escapes (RFC 4514 names, names the
    log escaped)."""
    out = "".join(c if c.isprintable() and not (backslash and c == "\\") else _escaped(ord(c))
                  for c in text[:limit])
    return out + ("..." if len(text) > limit else "")


def _escaped(o: int) -> str:
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def cert_summary(d: Json) -> str:
    """``CN=x, SAN=a,b, RSA 2048, expires 2027-01-03`` (or the parse error)."""
    if "error" in d:
        return f"unparsed certificate ({d['length']} bytes)"
    # The CN and the SANs are the certificate's raw text; the subject is RFC 4514's,
    # whose backslashes are its own escapes.
    parts = [f"CN={printable(d['subject_cn'], 77, backslash=True)}" if d["subject_cn"]
             else printable(d["subject"] or "(empty subject)")]
    if d["san"]:
        sans = ",".join(printable(s, 60, backslash=True) for s in d["san"][:4])
        parts.append("SAN=" + sans + (",..." if len(d["san"]) > 4 else ""))
    parts.append(f"{d['key_type']} {d['key_size']}" if d["key_size"] else d["key_type"])
    parts.append(f"expires {d['not_after'][:10]}")
    return ", ".join(parts)
