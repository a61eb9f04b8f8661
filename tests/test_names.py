"""IANA tables: checked against OpenSSL's standard names, GREASE, lookups both ways."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tlsinspector.proxy import names


def test_every_suite_openssl_knows_has_the_same_iana_name() -> None:
    out = subprocess.run(["openssl", "ciphers", "-V", "-stdname",
                          "ALL:COMPLEMENTOFALL:@SECLEVEL=0"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    checked = 0
    for line in out.splitlines():
        code_text, _, stdname = line.split()[:3]
        hi, lo = code_text.split(",")
        code = int(hi, 16) << 8 | int(lo, 16)
        assert names.CIPHER_SUITES[code] == stdname
        checked += 1
    assert checked > 100


def test_reserved_alerts_scsvs_and_grease() -> None:
    assert names.alert_description_name(21) == "decryption_failed_RESERVED"
    assert names.alert_description_name(99) == "99"
    assert names.cipher_suite_name(0x00FF) == "TLS_EMPTY_RENEGOTIATION_INFO_SCSV"
    assert names.cipher_suite_name(0x5600) == "TLS_FALLBACK_SCSV"
    assert names.cipher_suite_name(0xFAFA) == "grease_0xfafa"
    assert names.cipher_suite_name(0xFAFB) == "0xfafb"
    assert len(names.GREASE_VALUES) == 16 and names.is_grease(0x0A0A)
    assert names.content_type_name(99) == "99"
    assert names.signature_scheme_name(0x0403) == "ecdsa_secp256r1_sha256"
    assert names.signature_scheme_name(0x0303) == "ecdsa_sha224"
    assert names.signature_scheme_name(0x0909) == "0x0909"


@pytest.mark.parametrize("kind", sorted(names.TABLE_NAMES))
def test_names_are_unique_and_round_trip(kind: str) -> None:
    table = names.TABLE_NAMES[kind]
    assert len(set(table.values())) == len(table)
    for code, name in table.items():
        assert names.code_of(kind, name) == code
        assert names.code_of(kind, name.upper()) == code
        assert names.code_of(kind, code) == code
        assert names.code_of(kind, hex(code)) == code


def test_code_of_errors_suggest_close_matches() -> None:
    with pytest.raises(names.UnknownName) as e:
        names.code_of("extension", "supported_group")
    assert "supported_groups" in str(e.value)
    with pytest.raises(names.UnknownName):
        names.code_of("alert_description", 300)
    assert names.code_of("cipher_suite", "SSL_RSA_WITH_RC4_128_SHA") == 0x0005
    assert names.code_of("version", "TLSv1.1") == 0x0302
    # The match keys' short names work for the extensions too (a user wrote
    # remove-extensions: [alpn] and got "unknown extension").
    assert names.code_of("extension", "ALPN") == 16
    assert names.code_of("extension", "sni") == 0


def test_named_constants_agree_with_their_iana_table() -> None:
    """Each named constant in names.py is the code its table gives that name."""
    tables = {"version": names.VERSIONS, "alert_description": names.ALERT_DESCRIPTIONS,
              "extension": names.EXTENSIONS, "cipher_suite": names.CIPHER_SUITES,
              "content_type": names.CONTENT_TYPES, "alert_level": names.ALERT_LEVELS}
    expected = {
        "SSL3": ("version", "SSLv3"), "TLS1_0": ("version", "TLSv1.0"),
        "TLS1_1": ("version", "TLSv1.1"), "TLS1_2": ("version", "TLSv1.2"),
        "TLS1_3": ("version", "TLSv1.3"),
        "WARNING": ("alert_level", "warning"), "FATAL": ("alert_level", "fatal"),
        "TLS_EMPTY_RENEGOTIATION_INFO_SCSV": ("cipher_suite",
                                              "TLS_EMPTY_RENEGOTIATION_INFO_SCSV"),
        "TLS_FALLBACK_SCSV": ("cipher_suite", "TLS_FALLBACK_SCSV"),
    }
    for const in dir(names):
        value = getattr(names, const)
        if const.startswith("EXT_"):
            expected[const] = ("extension", const[4:].lower())
        elif const.startswith("CT_"):
            expected[const] = ("content_type", const[3:].lower())
        elif isinstance(value, int) and const.isupper() and const not in expected and (
                const.lower() in (n.lower() for n in names.ALERT_DESCRIPTIONS.values())):
            # Found by its name, not its value: a wrong number must fail, not be skipped.
            expected[const] = ("alert_description", const.lower())
    assert len(expected) >= 30
    for const, (kind, name) in expected.items():
        table = tables[kind]
        assert table.get(getattr(names, const), "").lower() == name.lower(), const
    assert {names.hex4(v) for v in (0x0303, 0x3030, 0xFEFD)} == {"0x0303", "0x3030", "0xfefd"}


def test_no_table_entry_is_written_twice() -> None:
    # A dict literal keeps the last of two equal keys: an entry typed with a neighbour's
    # number silently replaces that neighbour (and its own code vanishes). Every code
    # of every table in names.py appears once in the source.
    import ast

    tree = ast.parse(Path(names.__file__).read_text())
    repeated = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            keys = [ast.literal_eval(k) for k in node.keys
                    if isinstance(k, ast.Constant)]
            repeated += [(node.lineno, k) for k in set(keys) if keys.count(k) > 1]
    assert not repeated


@pytest.mark.parametrize(("kind", "top"), [("alert_description", 0xFF), ("content_type", 0xFF),
                                           ("cipher_suite", 0xFFFF), ("version", 0xFFFF)])
def test_numbers_are_accepted_up_to_the_fields_width(kind: str, top: int) -> None:
    # A scenario may name any code by number, up to its wire field (u8 alert and
    # content type codes, RFC 8446 5.1 and 6; u16 suites and versions): the largest
    # fits, one more is refused with the range.
    assert names.code_of(kind, top) == top
    assert names.code_of(kind, hex(top)) == top
    with pytest.raises(names.UnknownName, match=f"out of range 0..{top}"):
        names.code_of(kind, top + 1)
