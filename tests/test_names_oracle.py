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
    # Drafts: ours "TLSv1.3-draft28" / "TLSv1.3-fb-draft23", theirs "TLS 1.3 (draft 28)"
    # / "TLS 1.3 (Facebook draft 23)".
    def theirs_style(v: str) -> str:
        base, _, draft = v.partition("-")
        base = base.replace("v", " ") if "." in base else base.replace("v", " ") + ".0"
        if draft:
            fb, _, n = draft.rpartition("draft")
            base += f" ({'Facebook ' if fb else ''}draft {n})"
        return base
    ours = {k: theirs_style(v) for k, v in names.VERSIONS.items()}
    compare(ours, theirs, {}, min_common=25)


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


# Codes ours name that Wireshark 4.0's tables (Debian 12's tshark) do not know yet:
# each is in IANA's TLS registries, assigned after those tables were written (the RFC
# or draft is named). Every other code of ours must be one the oracle knows, so an
# entry moved to a wrong number fails here or in the name comparisons above.
NEWER_THAN_TSHARK: dict[str, dict[int, str]] = {
    "tls.alert_message.desc": {
        52: "too_many_cids_requested",  # RFC 9147 (DTLS 1.3)
        117: "general_error",  # RFC 8446bis
    },
    "tls.handshake.extension.type": {
        26: "tls_lts",  # draft-gutmann-tls-lts
        29: "pwd_protect", 30: "pwd_clear", 31: "password_salt",  # RFC 8492
        32: "ticket_pinning",  # draft-ietf-tls-pinning-ticket
        33: "tls_cert_with_extern_psk",  # RFC 8773
        36: "TLMSP", 37: "TLMSP_proxying", 38: "TLMSP_delegate",  # ETSI TS 103 523-2
        39: "supported_ekt_ciphers",  # RFC 8870
        60: "sequence_number_encryption_algorithms",  # RFC 9147 errata / draft
        61: "rrc",  # draft-ietf-tls-dtls-rrc
        0xFE0D: "encrypted_client_hello",  # draft-ietf-tls-esni
    },
    "tls.handshake.extensions_supported_group": {
        31: "brainpoolP256r1tls13", 32: "brainpoolP384r1tls13",
        33: "brainpoolP512r1tls13",  # RFC 8734
        34: "GC256A", 35: "GC256B", 36: "GC256C", 37: "GC256D", 38: "GC512A",
        39: "GC512B", 40: "GC512C",  # RFC 9367 (GOST)
        0x11EB: "SecP256r1MLKEM768", 0x11EC: "X25519MLKEM768",
        0x11ED: "SecP384r1MLKEM1024",  # draft-ietf-tls-ecdhe-mlkem
        0x6399: "X25519Kyber768Draft00",  # draft-tls-westerbaan-xyber768d00
    },
    "tls.handshake.sig_hash_alg": {
        0x0420: "rsa_pkcs1_sha256_legacy", 0x0520: "rsa_pkcs1_sha384_legacy",
        0x0620: "rsa_pkcs1_sha512_legacy",  # draft-ietf-tls-tls13-pkcs1
        0x0704: "eccsi_sha256", 0x0705: "iso_ibs1", 0x0706: "iso_ibs2",
        0x0707: "iso_chinese_ibs",  # draft-wang-tls-raw-public-key-with-ibc
        0x0709: "gostr34102012_256a", 0x070A: "gostr34102012_256b",
        0x070B: "gostr34102012_256c", 0x070C: "gostr34102012_256d",
        0x070D: "gostr34102012_512a", 0x070E: "gostr34102012_512b",
        0x070F: "gostr34102012_512c",  # RFC 9367
        0x081A: "ecdsa_brainpoolP256r1tls13_sha256",
        0x081B: "ecdsa_brainpoolP384r1tls13_sha384",
        0x081C: "ecdsa_brainpoolP512r1tls13_sha512",  # RFC 8734
        0x0904: "mldsa44", 0x0905: "mldsa65", 0x0906: "mldsa87",  # draft-ietf-tls-mldsa
    },
    "tls.record.content_type": {26: "ack"},  # RFC 9147
    "tls.record.version": {0xFEFC: "DTLSv1.3"},  # RFC 9147
    "tls.handshake.type": {
        9: "request_connection_id", 10: "new_connection_id",  # RFC 9147
        17: "client_certificate_request",  # RFC 8870 (TLS-based EKT)
        26: "ekt_key",  # RFC 8870
        254: "message_hash",  # RFC 8446 4.4.1 (never on the wire)
    },
    "tls.handshake.ciphersuite": {},
}


@pytest.mark.parametrize("field,table", [
    ("tls.alert_message.desc", names.ALERT_DESCRIPTIONS),
    ("tls.handshake.extension.type", names.EXTENSIONS),
    ("tls.handshake.extensions_supported_group", names.GROUPS),
    ("tls.handshake.sig_hash_alg", names.SIGNATURE_SCHEMES),
    ("tls.record.content_type", names.CONTENT_TYPES),
    ("tls.record.version", names.VERSIONS),
    ("tls.handshake.type", names.HANDSHAKE_TYPES),
    ("tls.handshake.ciphersuite", names.CIPHER_SUITES),
])
def test_every_code_is_known_to_tshark_or_a_later_iana_assignment(
        field: str, table: dict[int, str]) -> None:
    theirs = tshark_values()[field]
    unknown = {code: name for code, name in table.items() if code not in theirs}
    assert unknown == NEWER_THAN_TSHARK[field]


@pytest.mark.parametrize("table,field,newer", [
    # RFC 5246 7.4.1.4.1 hash and signature bytes; 8 intrinsic (RFC 8422 5.1.3), 7/8
    # ed25519/ed448 (RFC 8422), 64/65 GOST (RFC 9189): IANA entries tshark 4.0 lacks.
    (names.HASH_ALGORITHMS, "tls.handshake.sig_hash_hash", {8: "intrinsic"}),
    (names.SIGNATURE_ALGORITHMS, "tls.handshake.sig_hash_sig", {
        7: "ed25519", 8: "ed448", 64: "gostr34102012_256", 65: "gostr34102012_512"}),
    (names.EC_POINT_FORMATS, "tls.handshake.extensions_ec_point_format", {}),
    (names.COMPRESSION_METHODS, "tls.handshake.comp_method", {}),
    (names.CERTIFICATE_STATUS_TYPES, "tls.handshake.extensions_status_request_type", {}),
    (names.SERVER_NAME_TYPES, "tls.handshake.extensions_server_name_type", {}),
    (names.ALERT_LEVELS, "tls.alert_message.level", {}),
])
def test_small_tables_match_tshark(table: dict[int, str], field: str,
                                   newer: dict[int, str]) -> None:
    theirs = tshark_values()[field]
    compare(table, theirs, {}, min_common=len(table) - len(newer))
    assert {c: n for c, n in table.items() if c not in theirs} == newer


def test_psk_key_exchange_modes_match_tshark() -> None:
    # tshark: "PSK-only key establishment (psk_ke)"; the RFC 8446 4.2.9 name is in brackets.
    theirs = {c: re.sub(r".*\((\w+)\)$", r"\1", v)
              for c, v in tshark_values()["tls.extension.psk_ke_mode"].items()}
    assert names.PSK_KEY_EXCHANGE_MODES == theirs
