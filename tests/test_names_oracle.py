"""Every name table in proxy/names.py against outside oracles.

The oracles are tshark's own value strings (``tshark -G values``, Wireshark's
dissector tables) and Python's ssl enums (OpenSSL's alert numbers). Names are
normalised by one function; every place where our name differs on purpose is
listed in an exception table with the reason. A swapped pair of entries, a
wrong number or a typo fails here.
"""

from __future__ import annotations

import functools
import re
import ssl
import subprocess

import pytest

from tlsinspector.proxy import names


@functools.cache
def tshark_values() -> dict[str, dict[int, str]]:
    """``tshark -G values`` lines ``V<TAB>field<TAB>value<TAB>string`` for the tls fields."""
    out = subprocess.run(["tshark", "-G", "values"], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    tables: dict[str, dict[int, str]] = {}
    for line in out.splitlines():
        if not line.startswith("V\ttls."):
            continue
        _, field, value, text = line.split("\t", 3)
        tables.setdefault(field, {})[int(value, 0)] = text
    return tables


def norm(name: str) -> str:
    """Compare names ignoring case, spaces, '-' and '_' ("Bad Record MAC" == bad_record_mac)."""
    return re.sub(r"[\s_\-()]", "", name).lower()


def compare(ours: dict[int, str], theirs: dict[int, str],
            exceptions: dict[int, str], min_common: int) -> None:
    """Every code both tables know has the same name, save for ``exceptions``
    (code -> the oracle's name, so a change on either side is noticed)."""
    common = sorted(set(ours) & set(theirs))
    assert len(common) >= min_common, f"only {len(common)} codes in common"
    bad = []
    for code in common:
        if code in exceptions:
            assert theirs[code] == exceptions[code], (code, theirs[code])
            continue
        if norm(ours[code]) != norm(theirs[code]):
            bad.append(f"{code:#06x}: ours {ours[code]!r}, oracle {theirs[code]!r}")
    assert not bad, "\n".join(bad)


def strip_reserved(table: dict[int, str]) -> dict[int, str]:
    # The IANA registry marks deprecated codes "_RESERVED"; tshark prints the old name.
    return {k: v.removesuffix("_RESERVED") for k, v in table.items()}


def test_alert_descriptions_match_tshark() -> None:
    compare(strip_reserved(names.ALERT_DESCRIPTIONS),
            tshark_values()["tls.alert_message.desc"],
            {
                # tshark shortens "certificate authority" to "CA" and drops "_application_".
                48: "Unknown CA",
                120: "No application Protocol",
            }, min_common=30)


def test_alert_descriptions_match_openssl_via_python_ssl() -> None:
    theirs = {int(m): m.name for m in ssl.AlertDescription}
    # Python names are OpenSSL's SSL_AD_* macros with an ALERT_DESCRIPTION_ prefix.
    theirs = {k: v.removeprefix("ALERT_DESCRIPTION_") for k, v in theirs.items()}
    compare(strip_reserved(names.ALERT_DESCRIPTIONS), theirs, {
        # OpenSSL spells SSL_AD_USER_CANCELLED the British way; RFC 8446 6.1 says
        # "user_canceled".
        90: "USER_CANCELLED",
    }, min_common=25)


def test_extensions_match_tshark() -> None:
    compare(names.EXTENSIONS, tshark_values()["tls.handshake.extension.type"], {
        # tshark 4.0 names 34 in the singular draft form "delegated_credentials".
        34: "delegated_credentials",
        # tshark keeps the IANA "(deprecated)" remark as text; ours is an identifier.
        53: "connection_id (deprecated)",
    }, min_common=50)


def test_groups_match_tshark() -> None:
    compare(names.GROUPS, tshark_values()["tls.handshake.extensions_supported_group"], {
        # Codes 0x0200-0x0202 were OQS's FrodoKEM draft points in tshark 4.0; IANA has
        # since assigned them to ML-KEM (draft-connolly-tls-mlkem-key-agreement).
        0x0200: "frodo640aes",
        0x0201: "frodo640shake",
        0x0202: "frodo976aes",
    }, min_common=38)


def test_signature_schemes_match_tshark() -> None:
    compare(names.SIGNATURE_SCHEMES, tshark_values()["tls.handshake.sig_hash_alg"], {},
            min_common=17)


def test_content_types_match_tshark() -> None:
    compare(names.CONTENT_TYPES, tshark_values()["tls.record.content_type"], {
        # RFC 9146 names 25 "tls12_cid"; tshark calls the record type "Connection ID".
        25: "Connection ID",
    }, min_common=6)


def test_versions_match_tshark() -> None:
    theirs = tshark_values()["tls.record.version"]
    # tshark writes "TLS 1.2"/"SSL 3.0"; ours follow OpenSSL's "TLSv1.2"/"SSLv3".
    ours = {k: v.replace("v", " ") if "." in v else v.replace("v", " ") + ".0"
            for k, v in names.VERSIONS.items()}
    compare(ours, theirs, {}, min_common=8)


def test_cipher_suites_match_tshark() -> None:
    theirs = tshark_values()["tls.handshake.ciphersuite"]
    compare(names.CIPHER_SUITES, theirs, CIPHER_DIFF, min_common=300)


# Cipher suites where tshark 4.0's string differs from the name ours use.
CIPHER_DIFF: dict[int, str] = {
    # Pre-RFC 7905 ChaCha20 code points (draft-agl-tls-chacha20poly1305, Chrome 2014):
    # tshark gives them the final suites' names; ours add "_OLD" so the two stay apart
    # (names must be unique, see test_names.py).
    0xCC13: "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    0xCC14: "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    0xCC15: "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
}


@pytest.mark.parametrize("code,name", [(46, "certificate_unknown"), (48, "unknown_ca"),
                                       (10, "unexpected_message"), (70, "protocol_version")])
def test_alert_name_lookup_by_number(code: int, name: str) -> None:
    assert names.alert_description_name(code) == name


def test_handshake_types_match_tshark() -> None:
    # tshark's field holds SSLv2's message types first, then TLS's (later lines win in
    # tshark_values, so the TLS names replace SSLv2's for codes both use).
    theirs = tshark_values()["tls.handshake.type"]
    compare(strip_reserved(names.HANDSHAKE_TYPES), theirs, {
        # RFC 6066 8 names 21 "certificate_url"; tshark prefixes "Client".
        21: "Client Certificate URL",
    }, min_common=18)
