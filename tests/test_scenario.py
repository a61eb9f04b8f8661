"""Scenario files: validation errors located to file/line/field, normalized params, explain."""

from __future__ import annotations

import string
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsinspector.proxy import scenario as sc
from tlsinspector.proxy.scenario import (
    ACTIONS,
    Fault,
    Match,
    Scenario,
    ScenarioError,
    explain,
    fault_class,
    keys_refusal,
    load_scenario,
    load_scenario_text,
    load_scenarios,
    needs_keys,
    plain_class,
)

FIXTURES = Path(__file__).parent / "fixtures" / "scenarios"
HEAD = "name: t\nfaults:\n"          # the fault list item is on line 3


def fault(body: str) -> str:
    """A scenario whose one fault is ``body`` (YAML lines, item dash included)."""
    return HEAD + body


# (id, text, line, field, fragments that must appear in str(error))
BROKEN: list[tuple[str, str, int | None, str, tuple[str, ...]]] = [
    ("yaml-syntax", "name: t\nfaults: [\n  {match: {}\n", 4, "", ("YAML syntax error",)),
    ("yaml-tab-indent", "name: t\nfaults:\n\t- match: {}\n", 3, "", ("YAML syntax error",)),
    ("two-documents", "name: a\n---\nname: b\n", 2, "", ("single document",)),
    ("control-char", "name: t\x00\n", 1, "", ("cannot read the text",)),
    ("empty-file", "", None, "", ("empty file",)),
    ("only-comment", "# nothing here\n", None, "", ("empty file",)),
    ("top-is-list", "- name: t\n", 1, "", ("must be a mapping", "a list")),
    ("top-is-scalar", "hello\n", 1, "", ("must be a mapping", "the string 'hello'")),
    ("unknown-top-key", "name: t\nfualts: []\n", 2, "fualts",
     ("unknown key 'fualts'", "allowed: name, description", "did you mean 'faults'")),
    ("missing-name", "faults:\n  - match: {}\n    action: drop\n", 1, "name",
     ("missing key 'name'",)),
    ("missing-faults", "name: t\ndescription: x\n", 1, "faults", ("missing key 'faults'",)),
    ("bad-name", "name: Record Version\nfaults: []\n", 1, "name", ("bad scenario name",)),
    ("name-number", "name: 12\nfaults: []\n", 1, "name", ("got the number 12",)),
    ("duplicate-key", "name: t\nname: u\nfaults: []\n", 2, "name",
     ("duplicate key 'name'", "first on line 1")),
    ("merge-key", "name: t\nfaults:\n  - match: &m {from: client}\n    action: drop\n"
     "  - match: {<<: *m}\n    action: drop\n", 5, "faults[2].match",
     ("merge keys (<<) are not supported",)),
    ("description-number", "name: t\ndescription: 5\nfaults: []\n", 2, "description",
     ("expected a string",)),
    ("faults-mapping", "name: t\nfaults:\n  a: 1\n", 3, "faults", ("must be a list",)),
    ("fault-scalar", fault("  - drop\n"), 3, "faults[1]", ("a fault must be a mapping",)),
    ("unknown-action", fault("  - match: {}\n    action: dorp\n"), 4, "faults[1].action",
     ("unknown action 'dorp'", "allowed: set-record-version", "drop", "did you mean 'drop'")),
    ("missing-action", fault("  - match: {}\n    version: 1\n"), 3, "faults[1].action",
     ("missing key 'action'", "replace-with-alert")),
    # A misspelt 'action' is named on its own line, not as a missing key on the fault's.
    ("misspelt-action", fault("  - match: {}\n    acton: drop\n"), 4, "faults[1].acton",
     ("unknown key 'acton'", "a fault needs 'action'", "did you mean 'action'")),
    ("missing-match", fault("  - action: drop\n"), 3, "faults[1].match",
     ("missing key 'match'", "match: {}")),
    ("second-fault-line", fault("  - match: {}\n    action: drop\n\n  - match: {}\n"
                                "    action: delay\n    ms: -5\n"), 8, "faults[2].ms",
     ("-5 is out of range", "allowed: 0..600000")),
    ("match-from", fault("  - match: {from: middle}\n    action: drop\n"), 3,
     "faults[1].match.from", ("unknown side 'middle'", "allowed: client, server")),
    ("match-from-block", fault("  - match:\n      index: 2\n      from: Server\n"
                               "    action: drop\n"), 5, "faults[1].match.from",
     ("allowed: client, server",)),
    ("match-unknown-key", fault("  - match: {form: server}\n    action: drop\n"), 3,
     "faults[1].match.form", ("unknown key 'form' in match", "did you mean 'from'")),
    ("match-not-mapping", fault("  - match: server\n    action: drop\n"), 3,
     "faults[1].match", ("match must be a mapping", "the string 'server'")),
    ("match-index-zero", fault("  - match: {index: 0}\n    action: drop\n"), 3,
     "faults[1].match.index", ("0 is out of range", "allowed: >= 1")),
    ("match-index-bool", fault("  - match: {index: true}\n    action: drop\n"), 3,
     "faults[1].match.index", ("expected an integer, got the boolean true",)),
    ("match-times-negative", fault("  - match: {times: -1}\n    action: drop\n"), 3,
     "faults[1].match.times", ("out of range",)),
    ("match-connection-float", fault("  - match: {connection: 1.5}\n    action: drop\n"), 3,
     "faults[1].match.connection", ("expected an integer, got the number 1.5",)),
    ("match-probability", fault("  - match: {probability: 1.5}\n    action: drop\n"), 3,
     "faults[1].match.probability", ("expected a probability", "allowed: 0..1")),
    ("match-probability-percent", fault("  - match: {probability: 50%}\n    action: drop\n"),
     3, "faults[1].match.probability", ("the string '50%'",)),
    ("match-sni-empty", fault("  - match: {sni: ''}\n    action: drop\n"), 3,
     "faults[1].match.sni", ("empty",)),
    ("match-content-type-name", fault("  - match: {content_type: aplication_data}\n"
                                      "    action: drop\n"), 3, "faults[1].match.content_type",
     ("application_data",)),
    ("match-handshake-name", fault("  - match: {handshake: clienthello}\n    action: drop\n"),
     3, "faults[1].match.handshake", ("client_hello",)),
    ("match-contradiction", fault("  - match: {content_type: alert, handshake: finished}\n"
                                  "    action: drop\n"), 3, "faults[1].match.handshake",
     ("never matches", "content_type handshake (22)")),
    ("unknown-param", fault("  - match: {}\n    action: set-record-version\n"
                            "    verison: 0x0301\n"), 5, "faults[1].verison",
     ("unknown key 'verison' for action set-record-version", "allowed: match, action, version",
      "did you mean 'version'")),
    ("missing-param", fault("  - match: {}\n    action: set-record-version\n"), 3,
     "faults[1].version", ("action set-record-version needs 'version'",)),
    ("version-octal", fault("  - match: {}\n    action: set-record-version\n"
                            "    version: 0303\n"), 5, "faults[1].version",
     ("octal", "0x303")),
    # Go prints record versions in hex without 0x: report 000's "3030" is 0x3030; the
    # decimal 3030 (0x0bd6) reproduced "version bd6" and check said it was fine.
    ("version-decimal-digits-of-hex", fault("  - match: {}\n    action: set-record-version\n"
                                            "    version: 3030\n"), 5, "faults[1].version",
     ("decimal number 3030 (0x0bd6)", "write 0x3030")),
    ("version-decimal-quoted", fault("  - match: {}\n    action: set-supported-versions\n"
                                     "    versions: [772, '303']\n"), 5,
     "faults[1].versions[2]", ("write 0x303",)),
    ("version-too-big", fault("  - match: {}\n    action: set-record-version\n"
                              "    version: 0x10000\n"), 5, "faults[1].version",
     ("does not fit the 16-bit field", "allowed: 0..0xffff")),
    ("version-name", fault("  - match: {}\n    action: set-hello-version\n"
                           "    version: TLSv1.4\n"), 5, "faults[1].version", ("TLSv1.",)),
    ("version-bool", fault("  - match: {}\n    action: set-record-version\n"
                           "    version: yes\n"), 5, "faults[1].version",
     ("got the boolean yes",)),
    ("keep-sv-string", fault("  - match: {}\n    action: set-hello-version\n"
                             "    version: TLSv1.2\n    keep_supported_versions: 'true'\n"), 6,
     "faults[1].keep_supported_versions", ("expected a boolean", "allowed: true, false")),
    ("suites-not-list", fault("  - match: {}\n    action: add-cipher-suites\n"
                              "    suites: TLS_FALLBACK_SCSV\n"), 5, "faults[1].suites",
     ("must be a list",)),
    ("suites-empty", fault("  - match: {}\n    action: remove-cipher-suites\n"
                           "    suites: []\n"), 5, "faults[1].suites", ("is empty",)),
    ("suites-item", fault("  - match: {}\n    action: add-cipher-suites\n    suites:\n"
                          "      - TLS_FALLBACK_SCSV\n      - TLS_FALBACK_SCSV\n"), 7,
     "faults[1].suites[2]", ("TLS_FALLBACK_SCSV",)),
    ("suites-position", fault("  - match: {}\n    action: add-cipher-suites\n"
                              "    suites: [0x5600]\n    position: middle\n"), 6,
     "faults[1].position", ("unknown value 'middle'", "allowed: start, end")),
    ("suites-from-server", fault("  - match: {from: server}\n    action: add-cipher-suites\n"
                                 "    suites: [0x5600]\n"), 3, "faults[1].match",
     ("a server sends none", "use from: client")),
    ("set-suites-from-server", fault("  - match: {handshake: server_hello}\n"
                                     "    action: set-cipher-suites\n    suites: [0x1301]\n"),
     3, "faults[1].match", ("a server sends none", "use from: client")),
    ("order-only", fault("  - match: {}\n    action: set-extensions-order\n"
                         "    extensions: [server_name]\n    rest: some\n"), 6,
     "faults[1].rest", ("unknown value 'some'", "allowed: keep, drop")),
    ("hello-on-alert", fault("  - match: {content_type: alert}\n"
                             "    action: remove-extensions\n    extensions: [server_name]\n"),
     3, "faults[1].match.content_type", ("rewrites a hello",)),
    ("hello-on-certificate", fault("  - match:\n      from: server\n"
                                   "      handshake: certificate\n"
                                   "    action: add-extension\n    type: 0xfe0d\n"), 5,
     "faults[1].match.handshake", ("allowed: client_hello, server_hello",)),
    ("server-versions", fault("  - match: {from: server}\n    action: set-supported-versions\n"
                              "    versions: [TLSv1.3, TLSv1.2]\n"), 5, "faults[1].versions",
     ("exactly one version",)),
    ("extension-name", fault("  - match: {}\n    action: remove-extensions\n"
                             "    extensions: [server_name, suported_groups]\n"), 5,
     "faults[1].extensions[2]", ("supported_groups",)),
    ("ext-data-not-hex", fault("  - match: {}\n    action: add-extension\n    type: 0xff01\n"
                               "    data: 00zz\n"), 6, "faults[1].data", ("not hex: 'z'",)),
    ("ext-data-odd", fault("  - match: {}\n    action: add-extension\n    type: 0xff01\n"
                           "    data: 'abc'\n"), 6, "faults[1].data",
     ("odd number of hex digits",)),
    ("alert-desc-missing", fault("  - match: {}\n    action: reply-alert\n    level: fatal\n"),
     3, "faults[1].description", ("needs 'description'",)),
    ("alert-desc-unknown", fault("  - match: {}\n    action: replace-with-alert\n"
                                 "    description: bad_record_mack\n"), 5,
     "faults[1].description", ("bad_record_mac",)),
    ("alert-desc-too-big", fault("  - match: {}\n    action: insert-alert\n"
                                 "    description: 300\n"), 5, "faults[1].description",
     ("8-bit", "allowed: 0..0xff")),
    ("alert-position", fault("  - match: {}\n    action: insert-alert\n"
                             "    description: 21\n    position: during\n"), 6,
     "faults[1].position", ("allowed: before, after",)),
    ("raw-both", fault("  - match: {}\n    action: replace-with-raw\n    hex: '00'\n"
                       "    text: x\n"), 6, "faults[1]", ("exactly one of hex or text",)),
    ("raw-neither", fault("  - match: {}\n    action: replace-with-raw\n"), 3, "faults[1]",
     ("exactly one of hex or text", "allowed: hex, text")),
    ("insert-record-both", fault("  - match: {}\n    action: insert-record\n"
                                 "    content_type: 22\n    text: a\n    hex: '00'\n"), 7,
     "faults[1]", ("insert-record needs at most one of hex or text",)),
    ("insert-record-data", fault("  - match: {}\n    action: insert-record\n"
                                 "    content_type: 22\n    data: '00'\n"), 6,
     "faults[1].data", ("unknown key 'data'", "hex, text")),
    ("raw-text-number", fault("  - match: {}\n    action: replace-with-raw\n    text: 400\n"),
     5, "faults[1].text", ("expected text, got the number 400",)),
    ("truncate-fix-string", fault("  - match: {}\n    action: truncate\n    length: 3\n"
                                  "    fix_length: 'no'\n"), 6, "faults[1].fix_length",
     ("expected a boolean",)),
    ("truncate-length-string", fault("  - match: {}\n    action: truncate\n"
                                     "    length: '10'\n"), 5, "faults[1].length",
     ("expected an integer, got the string '10'",)),
    ("fragment-zero", fault("  - match: {}\n    action: fragment\n    size: 0\n"), 5,
     "faults[1].size", ("allowed: 1..65535",)),
    ("split-pause", fault("  - match: {}\n    action: split-writes\n    size: 7\n"
                          "    pause_ms: 1.5\n"), 6, "faults[1].pause_ms",
     ("expected an integer",)),
    ("delay-too-long", fault("  - match: {}\n    action: delay\n    ms: 600001\n"), 5,
     "faults[1].ms", ("600001 is out of range", "allowed: 0..600000")),
    ("delay-sexagesimal", fault("  - match: {}\n    action: delay\n    ms: 1:30\n"), 5,
     "faults[1].ms", ("base-60",)),
    ("corrupt-xor-zero", fault("  - match: {}\n    action: corrupt\n    offset: 0\n"
                               "    xor: 0\n"), 6, "faults[1].xor", ("allowed: 1..255",)),
    ("corrupt-offset-missing", fault("  - match: {}\n    action: corrupt\n"), 3,
     "faults[1].offset", ("needs 'offset'",)),
    ("insert-record-type-missing", fault("  - match: {}\n    action: insert-record\n"
                                         "    hex: '01'\n"), 3, "faults[1].content_type",
     ("action insert-record needs 'content_type'",)),
    ("replace-text-find-missing", fault("  - match: {plaintext: {}}\n"
                                        "    action: replace-text\n    replace: x\n"), 3,
     "faults[1].find", ("action replace-text needs 'find'",)),
    ("close-how", fault("  - match: {}\n    action: close\n    how: abort\n"), 5,
     "faults[1].how", ("unknown value 'abort'", "allowed: fin, rst")),
    ("close-toward", fault("  - match: {}\n    action: close\n    toward: servr\n"), 5,
     "faults[1].toward", ("allowed: client, server, both", "did you mean 'server'")),
    ("drop-with-param", fault("  - match: {}\n    action: drop\n    size: 3\n"), 5,
     "faults[1].size", ("unknown key 'size' for action drop", "allowed: match, action")),
    ("server-unknown", "name: t\nserver: tls14\nfaults: []\n", 2, "server",
     ("unknown server 'tls14'", "HOST:PORT", "did you mean 'tls13' or 'tls12'")),
    ("server-bad-port", "name: t\nserver: example.com:99999\nfaults: []\n", 2, "server",
     ("unknown server",)),
    ("expect-list", "name: t\nexpect: [1]\nfaults: []\n", 2, "expect",
     ("expect must be a mapping",)),
    # A recursive alias ends at the first level that is not the shape asked for.
    ("expect-recursive", "name: t\nexpect: &e {again: *e}\nfaults: []\n", 2,
     "expect.again.again", ("unknown key 'again' in an expectation",
                            "allowed: outcome, error, diagnosis")),
    ("expect-recursive-list", "name: t\nexpect: {go: {diagnosis: &d [*d]}}\nfaults: []\n",
     2, "expect.go.diagnosis[1]", ("expected a finding code", "got a list")),
    ("python-tag-scalar", "name: !!python/name:os.system\nfaults: []\n", 1, "name",
     ("cannot read",)),
    ("python-tag-apply", "name: !!python/object/apply:os.system ['true']\nfaults: []\n", 1,
     "name", ("got a list",)),
    ("bad-int-tag", fault("  - match: {}\n    action: delay\n    ms: !!int abc\n"), 5,
     "faults[1].ms", ("cannot read 'abc' as int",)),
    ("non-string-key", "name: t\n1: x\nfaults: []\n", 2, "", ("keys must be strings",)),
    # An unknown name lists a short table whole, a long one by its grammar.
    ("content-type-typo", fault("  - match: {content_type: appdata}\n    action: drop\n"),
     3, "faults[1].match.content_type",
     ("did you mean 'application_data'?", "allowed: change_cipher_spec, alert, handshake, "
      "application_data")),
    ("suite-typo", fault("  - match: {}\n    action: remove-cipher-suites\n"
                         "    suites: [TLS_AES_128_GCM_SHA265]\n"), 5, "faults[1].suites[1]",
     ("did you mean 'TLS_AES_128_GCM_SHA256'", "allowed: a name from the IANA cipher_suite "
      "table, a number 0..0xffff")),
]


@pytest.mark.parametrize(("text", "line", "field", "fragments"),
                         [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_scenario_is_located(text: str, line: int | None, field: str,
                                    fragments: tuple[str, ...]) -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario_text(text, "configs/x.yaml")
    e = info.value
    assert (e.file, e.line, e.field) == ("configs/x.yaml", line, field), str(e)
    where = "configs/x.yaml" if line is None else f"configs/x.yaml:{line}"
    assert str(e).startswith(f"{where}: {field}: " if field else f"{where}: "), str(e)
    for fragment in fragments:
        assert fragment in str(e), (fragment, str(e))


def test_error_message_format_is_the_documented_one() -> None:
    text = "name: t\nfaults:\n  - match: {}\n    action: dorp\n"
    with pytest.raises(ScenarioError) as info:
        load_scenario_text(text, "configs/x.yaml")
    e = info.value
    assert e.allowed == tuple(ACTIONS)
    assert e.message == "unknown action 'dorp'"
    assert str(e) == ("configs/x.yaml:4: faults[1].action: unknown action 'dorp'; allowed: "
                      + ", ".join(ACTIONS) + " (did you mean 'drop'?)")


def test_iana_errors_name_close_matches() -> None:
    text = fault("  - match: {}\n    action: replace-with-alert\n"
                 "    description: decryption_failed_reserve\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario_text(text)
    assert "decryption_failed_RESERVED" in str(info.value)
    assert info.value.line == 5


# -- valid scenarios: every action's normalized parameters ------------------------

VALID: list[tuple[str, str, dict[str, object]]] = [
    ("set-record-version", "version: 0x3030", {"version": 12336}),
    ("set-record-version", "version: TLSv1.0", {"version": 0x0301}),
    ("set-record-version", "version: '0x0303'", {"version": 0x0303}),
    ("set-record-version", "version: 771", {"version": 0x0303}),
    ("set-hello-version", "version: tlsv1.1",
     {"version": 0x0302, "keep_supported_versions": False}),
    ("set-hello-version", "version: TLSv1.2\n    keep_supported_versions: yes",
     {"version": 0x0303, "keep_supported_versions": True}),
    ("add-cipher-suites", "suites: [TLS_FALLBACK_SCSV, TLS_EMPTY_RENEGOTIATION_INFO_SCSV]",
     {"suites": (0x5600, 0x00FF), "position": "end"}),
    ("add-cipher-suites", "suites: [0xc02f, '0x1301', 49199]\n    position: start",
     {"suites": (0xC02F, 0x1301, 0xC02F), "position": "start"}),
    ("remove-cipher-suites", "suites:\n      - TLS_AES_128_GCM_SHA256",
     {"suites": (0x1301,)}),
    ("remove-extensions", "extensions: [server_name, supported_groups, '0x000d', 43]",
     {"extensions": (0, 10, 13, 43)}),
    ("add-extension", "type: renegotiation_info\n    data: '00'",
     {"type": 0xFF01, "data": b"\x00"}),
    ("add-extension", "type: 0xfe0d\n    data: 'de:ad be EF'",
     {"type": 0xFE0D, "data": bytes.fromhex("deadbeef")}),
    ("add-extension", "type: 65281\n    data: 0010", {"type": 0xFF01, "data": b"\x00\x10"}),
    ("add-extension", "type: padding", {"type": 21, "data": b""}),
    ("set-supported-versions", "versions: [TLSv1.3, TLSv1.2]",
     {"versions": (0x0304, 0x0303)}),
    ("replace-with-alert", "level: fatal\n    description: decryption_failed_RESERVED",
     {"level": 2, "description": 21}),
    ("replace-with-alert", "description: Bad_Record_Mac", {"level": 2, "description": 20}),
    ("insert-alert", "level: warning\n    description: close_notify\n    position: after",
     {"level": 1, "description": 0, "position": "after"}),
    ("insert-alert", "description: 21", {"level": 2, "description": 21, "position": "before"}),
    ("reply-alert", "description: handshake_failure", {"level": 2, "description": 40}),
    ("replace-with-raw", 'text: "HTTP/1.1 400 Bad Request\\r\\n\\r\\n"',
     {"data": b"HTTP/1.1 400 Bad Request\r\n\r\n"}),
    ("replace-with-raw", "hex: 48 54 54 50", {"data": b"HTTP"}),
    ("drop", "", {}),
    ("truncate", "length: 10", {"length": 10, "fix_length": False}),
    ("truncate", "length: 0\n    fix_length: true", {"length": 0, "fix_length": True}),
    ("fragment", "size: 1", {"size": 1}),
    ("split-writes", "size: 7", {"size": 7, "pause_ms": 0}),
    ("split-writes", "size: 7\n    pause_ms: 5", {"size": 7, "pause_ms": 5}),
    ("delay", "ms: 300", {"ms": 300}),
    ("corrupt", "offset: -1", {"offset": -1, "xor": 0xFF}),
    ("corrupt", "offset: 5\n    xor: 0x01", {"offset": 5, "xor": 1}),
    ("close", "", {"how": "fin", "toward": "both"}),
    ("close", "how: rst\n    toward: client", {"how": "rst", "toward": "client"}),
    ("insert-record", "content_type: heartbeat",
     {"content_type": 24, "data": b"", "position": "before"}),
    ("insert-record", "content_type: 99\n    version: TLSv1.0\n    hex: '0102'\n"
     "    position: after",
     {"content_type": 99, "version": 0x0301, "data": b"\x01\x02", "position": "after"}),
    ("insert-record", "content_type: application_data\n    text: hi",
     {"content_type": 23, "data": b"hi", "position": "before"}),
    ("set-cipher-suites", "suites: [TLS_AES_256_GCM_SHA384, 0x1301]",
     {"suites": (0x1302, 0x1301), "only": "all"}),
    ("set-cipher-suites", "suites: [0x1301]\n    only: offered",
     {"suites": (0x1301,), "only": "offered"}),
    ("set-extensions-order", "extensions: [supported_versions, server_name]",
     {"extensions": (43, 0), "rest": "keep"}),
    ("set-extensions-order", "extensions: [server_name]\n    rest: drop",
     {"extensions": (0,), "rest": "drop"}),
    ("coalesce", "", {"records": 2, "into": "record", "wait_ms": 200}),
    ("coalesce", "records: 4\n    into: write\n    wait_ms: 0",
     {"records": 4, "into": "write", "wait_ms": 0}),
    ("replace-text", "find: 250-STARTTLS\n    replace: 250-XXXXXXXA",
     {"find": b"250-STARTTLS", "replace": b"250-XXXXXXXA"}),
    ("drop-line", "", {}),
    ("reply-error", "", {"text": b""}),
    ("reply-error", 'text: "454 no\\r\\n"', {"text": b"454 no\r\n"}),
]


@pytest.mark.parametrize(("action", "body", "params"), VALID,
                         ids=[f"{v[0]}-{i}" for i, v in enumerate(VALID)])
def test_valid_action_params_are_normalized(action: str, body: str,
                                            params: dict[str, object]) -> None:
    match = "{plaintext: {protocol: smtp}}" if ACTIONS[action].plaintext else "{}"
    text = fault(f"  - match: {match}\n    action: {action}\n"
                 + (f"    {body}\n" if body else ""))
    s = load_scenario_text(text)
    (f,) = s.faults
    assert f.action == action
    assert dict(f.params) == params
    assert {k: type(v) for k, v in f.params.items()} == {k: type(v) for k, v in params.items()}


def test_every_action_of_the_catalog_is_covered() -> None:
    assert set(ACTIONS) == {v[0] for v in VALID}
    assert list(ACTIONS) == [
        "set-record-version", "set-hello-version", "add-cipher-suites", "remove-cipher-suites",
        "remove-extensions", "add-extension", "set-supported-versions", "replace-with-alert",
        "insert-alert", "reply-alert", "replace-with-raw", "drop", "truncate", "fragment",
        "split-writes", "delay", "corrupt", "close", "insert-record", "coalesce",
        "set-cipher-suites", "set-extensions-order", "replace-text", "drop-line", "reply-error"]
    for spec in ACTIONS.values():
        assert spec.symptom and spec.doc
        assert spec.fault_class in ("transcript-safe", "transcript-breaking", "needs-keys")
        for p in spec.params.values():
            assert p.doc
            assert not (p.required and p.default is not None)


def test_a_full_scenario() -> None:
    s = load_scenario(FIXTURES / "reserved-alert.yaml")
    assert s.name == "reserved-alert"
    assert s.description == ("The server's ChangeCipherSpec becomes a fatal "
                             "decryption_failed_RESERVED.\n")
    assert s.reproduces is None
    assert s.server == "tls12"
    assert s.source == str(FIXTURES / "reserved-alert.yaml")
    assert s.expect == {"openssl": {"outcome": "error", "error": "decryption failed",
                                    "diagnosis": ("alert-decryption-failed-reserved",)},
                        "python": {"outcome": "error"}}
    first, second = s.faults
    assert (first.number, first.line, first.scenario) == (1, 10, "reserved-alert")
    assert first.match == Match(from_="server", content_type=20)
    assert dict(first.params) == {"level": 2, "description": 21}
    assert (second.number, second.line, second.source) == (2, 14, s.source)
    assert second.match == Match(from_="client", content_type=23, times=1)
    assert dict(second.params) == {"offset": -1, "xor": 1}


def test_match_normalization() -> None:
    text = fault("  - match:\n      from: client\n      index: 3\n      content_type: handshake\n"
                 "      handshake: client_hello\n      connection: 2\n      sni: '*.example.com'\n"
                 "      times: 1\n      probability: 0.25\n    action: drop\n")
    (f,) = load_scenario_text(text).faults
    assert f.match == Match(from_="client", index=3, content_type=22, handshake=1,
                            connection=2, times=1, probability=0.25,
                            content=(("sni", "*.example.com"),))
    assert f.match.sni == "*.example.com"
    assert isinstance(f.match.probability, float)
    (g,) = load_scenario_text(fault("  - match: {probability: 1}\n    action: drop\n")).faults
    assert g.match == Match(probability=1.0)


@pytest.mark.parametrize("server", ["any", "tls12", "tls13", "ecdhe-only-tls12",
                                    "requires-sni", "127.0.0.1:8443", "[::1]:443",
                                    "example.com:443"])
def test_server_values(server: str) -> None:
    s = load_scenario_text(f"name: t\nserver: '{server}'\nfaults:\n"
                           "  - match: {}\n    action: drop\n")
    assert s.server == server


def test_aliases_are_followed_and_yaml_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = ("name: t\nm: &m {from: server, index: 2}\nfaults: []\n")
    with pytest.raises(ScenarioError):          # 'm' is not a top-level key
        load_scenario_text(text)
    text = ("name: t\nfaults:\n  - match: &m {from: server, index: 2}\n    action: drop\n"
            "  - match: *m\n    action: delay\n    ms: 5\n")
    f, g = load_scenario_text(text).faults
    assert f.match == g.match == Match(from_="server", index=2)
    assert (f.action, g.action) == ("drop", "delay")
    evil = (f"name: !!python/object/apply:os.system ['touch {marker}']\nfaults: []\n")
    with pytest.raises(ScenarioError):
        load_scenario_text(evil)
    assert not marker.exists()


def test_faults_and_scenarios_are_frozen_and_hashable() -> None:
    s = load_scenario(FIXTURES / "version-3030.yaml")
    f = s.faults[0]
    with pytest.raises(TypeError):
        f.params["version"] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        f.action = "drop"  # type: ignore[misc]
    assert hash(s) == hash(load_scenario(FIXTURES / "version-3030.yaml"))
    assert len({f, load_scenario(FIXTURES / "version-3030.yaml").faults[0]}) == 1


# -- files ---------------------------------------------------------------------


def test_combining_files_keeps_every_fault_in_order() -> None:
    both = load_scenarios([FIXTURES / "version-3030.yaml", str(FIXTURES / "reserved-alert.yaml")])
    assert [s.name for s in both] == ["version-3030", "reserved-alert"]
    assert [(f.scenario, f.number) for s in both for f in s.faults] == [
        ("version-3030", 1), ("reserved-alert", 1), ("reserved-alert", 2)]
    assert load_scenarios([]) == ()


def test_duplicate_names_across_files_are_an_error() -> None:
    dup = FIXTURES / "duplicate-name.yaml"
    with pytest.raises(ScenarioError) as info:
        load_scenarios([FIXTURES / "version-3030.yaml", dup])
    e = info.value
    assert (e.file, e.line, e.field) == (str(dup), 2, "name")
    assert "already defined in" in str(e) and "version-3030.yaml" in str(e)
    with pytest.raises(ScenarioError):
        load_scenarios([FIXTURES / "version-3030.yaml"] * 2)


def test_an_error_in_the_second_file_names_that_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(fault("  - match: {from: middle}\n    action: drop\n"))
    with pytest.raises(ScenarioError) as info:
        load_scenarios([FIXTURES / "version-3030.yaml", bad])
    assert str(info.value).startswith(f"{bad}:3: faults[1].match.from: ")


def test_missing_file() -> None:
    path = FIXTURES / "no-such-file.yaml"
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    e = info.value
    assert (e.file, e.line) == (str(path), None)
    assert "cannot read the file" in str(e) and "No such file" in str(e)


def test_file_that_is_not_utf8() -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario(FIXTURES / "not-utf8.yaml")
    assert info.value.line == 2 and "not UTF-8" in str(info.value)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    p = tmp_path / "bom.yaml"
    p.write_bytes(b"\xef\xbb\xbf" + fault("  - match: {}\n    action: drop\n").encode())
    assert load_scenario(p).name == "t"


# -- classes and explain ---------------------------------------------------------


def one(match: str, action: str, body: str = "") -> Fault:
    text = fault(f"  - match: {match}\n    action: {action}\n" + (f"    {body}\n" if body else ""))
    return load_scenario_text(text).faults[0]


@pytest.mark.parametrize(("match", "action", "body", "cls"), [
    ("{from: server, index: 2}", "set-record-version", "version: 0x3030", "transcript-safe"),
    ("{content_type: application_data}", "set-record-version", "version: 1",
     "transcript-safe"),
    ("{handshake: client_hello}", "set-hello-version", "version: TLSv1.1",
     "transcript-breaking"),
    ("{}", "remove-extensions", "extensions: [server_name]", "transcript-breaking"),
    ("{content_type: change_cipher_spec}", "replace-with-alert", "description: 21",
     "transcript-safe"),
    ("{content_type: application_data}", "replace-with-alert", "description: 21",
     "needs-keys"),
    ("{content_type: application_data}", "corrupt", "offset: -1", "needs-keys"),
    ("{handshake: finished}", "corrupt", "offset: 0", "needs-keys"),
    ("{handshake: client_hello}", "corrupt", "offset: 0", "transcript-breaking"),
    ("{from: client, index: 1}", "corrupt", "offset: 0", "transcript-breaking"),
    ("{content_type: alert}", "corrupt", "offset: 0", "transcript-safe"),
    ("{handshake: client_hello}", "fragment", "size: 1", "transcript-safe"),
    ("{content_type: application_data}", "fragment", "size: 1", "needs-keys"),
    ("{from: server, index: 2}", "truncate", "length: 10", "transcript-safe"),
    ("{from: server, index: 2}", "truncate", "length: 10\n    fix_length: true",
     "transcript-breaking"),
    ("{content_type: application_data}", "truncate", "length: 10", "needs-keys"),
    ("{handshake: server_hello}", "drop", "", "transcript-breaking"),
    ("{content_type: change_cipher_spec}", "drop", "", "transcript-safe"),
    ("{content_type: application_data}", "drop", "", "needs-keys"),
    ("{}", "delay", "ms: 1", "transcript-safe"),
    ("{content_type: application_data}", "split-writes", "size: 1", "transcript-safe"),
    ("{}", "replace-with-raw", "text: x", "transcript-safe"),
    ("{}", "close", "how: rst", "transcript-safe"),
    ("{}", "insert-record", "content_type: handshake", "transcript-breaking"),
    ("{handshake: client_hello}", "insert-record", "content_type: 99", "transcript-safe"),
    ("{content_type: application_data}", "insert-record", "content_type: alert",
     "needs-keys"),
    # Inside the encryption (issue 14): every action, matched on decrypted content.
    ("{content_type: application_data, encrypted: true}", "set-record-version",
     "version: TLSv1.0", "needs-keys"),
    ("{from: client, handshake: client_hello, encrypted: true}", "add-cipher-suites",
     "suites: [TLS_EMPTY_RENEGOTIATION_INFO_SCSV]", "needs-keys"),
    ("{handshake: new_session_ticket, encrypted: true}", "drop", "", "needs-keys"),
    ("{content_type: application_data, encrypted: false}", "drop", "", "transcript-safe"),
    ("{handshake: new_session_ticket}", "drop", "", "transcript-breaking"),
])
def test_fault_class(match: str, action: str, body: str, cls: str) -> None:
    assert fault_class(one(match, action, body)) == cls


def test_explain_names_class_symptom_and_location() -> None:
    s = load_scenario(FIXTURES / "version-3030.yaml")
    lines = explain(s)
    text = "\n".join(lines)
    assert lines[0].startswith("scenario version-3030 (")
    assert "reproduces: tls: received record with version 3030" in text
    assert "fault #1 (line 5): set-record-version version=0x3030" in text
    assert "matches the 2nd record the server sends, on every connection" in text
    assert "class: transcript-safe" in text
    assert ("predicted symptom: the receiver rejects the record: Go 'tls: received record "
            "with version 3030 when expecting version 303'") in text


def test_explain_predicts_gos_message_for_the_version_the_fault_writes() -> None:
    # Measured with the lab's Go client (reproduce, server: tls12): 0x0301 on the
    # server's second record is "version 301"; before, check predicted "version 3030"
    # whatever the version.
    s = load_scenario_text("name: v\nfaults:\n  - match: {from: server, index: 2}\n"
                           "    action: set-record-version\n    version: TLSv1.0\n")
    text = "\n".join(explain(s))
    assert "Go 'tls: received record with version 301 when expecting version 303'" in text
    assert "version 3030" not in text
    # Measured (reproduce, server: any, Go 1.19): under TLS 1.3 the server's 2nd record
    # (the compatibility CCS) with 0x3030 passes, its 4th (encrypted) is "bad record MAC".
    assert "under TLS 1.3 Go checks no record version" in text
    assert "Go 'local error: tls: bad record MAC'" in text


def test_explain_alerts_needs_keys_and_warnings() -> None:
    s = load_scenario(FIXTURES / "reserved-alert.yaml")
    text = "\n".join(explain(s))
    assert "server: tls12" in text
    assert "fault #1 (line 10): replace-with-alert level=fatal (2), " \
           "description=decryption_failed_RESERVED (21)" in text
    assert "predicted symptom: alert fatal (2) decryption_failed_RESERVED (21): " in text
    assert "fault #2 (line 14): corrupt offset=-1, xor=1" in text
    assert "class: needs-keys" in text and "bad_record_mac" in text
    assert "at most 1 time per connection" in text
    f = one("{handshake: finished}", "drop")
    warn = "\n".join(explain(Scenario("w", "", None, (f,), "<string>", None, None)))
    assert "warning: finished is always encrypted" in warn


def test_explain_renders_lists_and_bytes() -> None:
    f = one("{from: client, handshake: client_hello, sni: '*.test', probability: 0.5}",
            "add-cipher-suites", "suites: [TLS_FALLBACK_SCSV, 0x0a0a]")
    g = one("{}", "add-extension", "type: 0xff01\n    data: '00'")
    lines = explain(Scenario("x", "", None, (f, g), "<string>", None, None))
    text = "\n".join(lines)
    assert "suites=[TLS_FALLBACK_SCSV (0x5600), 0x0a0a], position=end" in text
    assert "carrying a client_hello (1)" in text
    assert "whose ClientHello SNI matches '*.test'" in text
    assert "with probability 0.5" in text
    assert "data=1 bytes 00" in text
    assert "class: transcript-breaking" in text
    assert "note: needs-keys instead" not in text


# -- the loader contract ---------------------------------------------------------


def _outcome(text: str) -> None:
    try:
        result = load_scenario_text(text)
    except ScenarioError as e:
        assert e.file == "<string>"
        # YAML also breaks lines at \r, \x85, \u2028 and \u2029; splitlines() counts
        # those and more, so it bounds the line number from above.
        assert e.line is None or 1 <= e.line <= len(text.splitlines()) + 2
        assert str(e)
    else:
        assert isinstance(result, Scenario) and result.faults


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_gives_a_scenario_or_a_scenario_error(text: str) -> None:
    _outcome(text)


TOKENS = ["name: t\n", "faults:\n", "  - ", "match: ", "{", "}", "[", "]", ", ", ": ", "\n",
          "    ", "action: ", "from: ", "index: ", "&a ", "*a", "!!int ", "!!str ", "<<: ",
          "'", '"', "0x", "0303", "1:30", "-1", "yes", "null", "~", "drop", "corrupt",
          "offset", "content_type", "handshake", "client_hello", "TLSv1.2", "suites",
          "add-cipher-suites", "expect", "server", "#", "---\n", "\t", "? ", "|\n", "%"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(TOKENS) | st.text(string.printable, max_size=3), max_size=40))
def test_yaml_ish_text_gives_a_scenario_or_a_scenario_error(parts: list[str]) -> None:
    _outcome("".join(parts))


SCALARS = (st.none() | st.booleans() | st.integers(-2, 70000) | st.floats(allow_nan=True)
           | st.sampled_from(["client", "server", "fatal", "TLSv1.2", "server_name", "0x0303",
                              "drop", "end", "fin", "both", "00ff", ""])
           | st.text(max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)


@settings(max_examples=500, deadline=None)
@given(action=st.sampled_from(sorted(ACTIONS)),
       match=st.dictionaries(st.sampled_from(list(sc.MATCH_KEYS) + ["x"]), SCALARS,
                             max_size=4),
       params=st.dictionaries(st.sampled_from(["version", "suites", "level", "description",
                                               "data", "hex", "text", "size", "ms", "offset",
                                               "xor", "how", "position", "type", "length"]),
                              VALUES, max_size=4))
def test_structured_faults_give_a_scenario_or_a_scenario_error(
        action: str, match: dict[str, object], params: dict[str, object]) -> None:
    doc = {"name": "t", "faults": [{"match": match, "action": action, **params}]}
    _outcome(yaml.safe_dump(doc))


@pytest.mark.parametrize(("match", "action", "body", "keys", "plain"), [
    ("{content_type: application_data, encrypted: true}", "insert-alert",
     "description: close_notify\n    level: warning", True, "transcript-safe"),
    ("{from: client, handshake: client_hello, encrypted: true}", "remove-extensions",
     "extensions: [renegotiation_info]", True, "transcript-breaking"),
    ("{handshake: finished}", "corrupt", "offset: 0", True, "transcript-breaking"),
    ("{handshake: new_session_ticket, encrypted: true}", "drop", "", True,
     "transcript-safe"),
    # Changing the ciphertext needs no keys: the keyless bad_record_mac reproductions.
    ("{content_type: application_data}", "corrupt", "offset: -1", False, "transcript-safe"),
    ("{handshake: client_hello}", "add-cipher-suites", "suites: [0x00ff]", False,
     "transcript-breaking"),
])
def test_needs_keys_and_the_class_inside(match: str, action: str, body: str, keys: bool,
                                         plain: str) -> None:
    f = one(match, action, body)
    assert needs_keys(f) is keys
    assert plain_class(f) == plain
    refusal = keys_refusal([f])
    assert (refusal is not None) is keys
    if refusal:
        assert "fault #1 of scenario t" in refusal and action in refusal
        assert "--keylog" in refusal


def test_explain_inside_encryption_names_keys_and_the_transcript() -> None:
    f = one("{from: client, handshake: client_hello, encrypted: true}", "add-cipher-suites",
            "suites: [TLS_EMPTY_RENEGOTIATION_INFO_SCSV]")
    g = one("{from: server, content_type: application_data, encrypted: true, times: 1}",
            "insert-alert", "level: warning\n    description: close_notify")
    lines = explain(Scenario("r", "", None, (f, replace(g, number=2)), "<s>", None, None))
    text = "\n".join(lines)
    assert "needs keys: fault #1, #2 (run with --keylog FILE)" in text
    assert "encrypted (matched and changed in its decrypted content)" in text
    assert text.count("needs keys: yes") == 2
    one_, two = text.split("fault #2")
    assert "re-sealing does not repair a changed handshake transcript" in one_
    assert "re-sealing does not repair" not in two      # an alert is no transcript change
    assert "inside the encryption" in two and "alert warning (1) close_notify (0)" in two
    keyless = "\n".join(explain(Scenario("k", "", None, (one(
        "{content_type: application_data}", "corrupt", "offset: -1"),), "<s>", None, None)))
    assert "needs keys" not in keyless.replace("needs-keys", "")
    assert "add `encrypted: true`" in keyless


def test_encrypted_false_never_matches_an_always_encrypted_message() -> None:
    with pytest.raises(ScenarioError, match="finished is only ever sent encrypted"):
        one("{handshake: finished, encrypted: false}", "drop")
    with pytest.raises(ScenarioError, match="encrypted"):
        one("{encrypted: maybe}", "drop")


_TERMINAL = ("\x1b", "\x07", "\x9b", "\u202e", "\x7f")


@pytest.mark.parametrize("text", [
    'name: x\ndescription: "\\e[2J\\e[31mevil"\nfaults: []\n',
    'name: x\nreproduces: "\\e]0;title\\a"\nfaults: []\n',
    'name: x\nreproduces: "ok \\u202eevil"\nfaults: []\n',
    'name: x\nclient: {sni: "a\\x9bb"}\nfaults: []\n',
    'name: x\nfaults:\n  - match: {from: server}\n    action: drop\n    "\\e]0;pwn\\a": 1\n',
    'name: x\nfaults:\n  - match: {"\\e[2Jfrom": server}\n    action: drop\n',
])
def test_terminal_controls_in_a_scenario_are_refused_and_never_echoed(text: str) -> None:
    # Hostile scenario files: check, scenarios and reproduce print these strings, so
    # a control character is an error whose message (file, key, value) is escaped.
    with pytest.raises(ScenarioError) as e:
        load_scenario_text(text, "s\x1b[31m.yaml")
    msg = str(e.value)
    assert not any(c in msg for c in _TERMINAL), msg
    assert msg.startswith("s\\x1b[31m.yaml:")


def test_line_ends_in_text_and_controls_in_payload_text_are_kept() -> None:
    s = load_scenario_text('name: x\ndescription: "a\\n\\tb\\r\\n"\nfaults:\n'
                           '  - match: {from: server}\n    action: replace-with-raw\n'
                           '    text: "\\e[31mHTTP/1.1 400\\r\\n"\n')
    assert s.description == "a\n\tb\r\n"
    assert s.faults[0].params["data"] == b"\x1b[31mHTTP/1.1 400\r\n"
    assert not any(c in line for line in explain(s) for c in _TERMINAL)


def test_explain_says_none_for_a_client_without_sni() -> None:
    s = load_scenario_text("name: x\nserver: requires-sni\nclient: {sni: null}\nfaults: []\n")
    assert "client: sni=none" in explain(s)


def test_explain_a_ciphertext_change_says_once_that_it_needs_no_keys() -> None:
    # Its class is needs-keys (a change to an encrypted record), yet `run` takes it
    # without --keylog: the check says why instead of contradicting itself.
    f = one("{from: server, content_type: application_data, index: 9}", "truncate",
            "length: 4")
    text = "\n".join(explain(Scenario("c", "", None, (f,), "<s>", None, None)))
    assert "class: needs-keys (a change to an encrypted record; this one changes its " \
        "ciphertext as it passes, so `run` needs no --keylog for it)" in text
    assert "needs keys: yes" not in text and "needs no keys" not in text
    assert "add `encrypted: true` to the match (then with --keylog)" in text


@pytest.mark.parametrize(("text", "line"), [
    ("name: t\nfaults:\n  - match: {from: client, size: >1500}\n    action: drop\n", 3),
    ("name: t\nfaults:\n  - match:\n      size: >=1500\n    action: drop\n", 4),
])
def test_an_unquoted_size_comparison_says_to_quote_it(text: str, line: int) -> None:
    # The README's `size: '>1500'` without its quotes gave only YAML's "expected
    # chomping or indentation indicators" / "cannot start any token".
    with pytest.raises(ScenarioError) as info:
        load_scenario_text(text, "x.yaml")
    assert info.value.line == line
    assert str(info.value).endswith(
        "(a size comparison must be quoted: '>1500', '>=1500')"), str(info.value)
    with pytest.raises(ScenarioError) as other:
        load_scenario_text("name: t\nfaults: [\n  {match: {}\n", "x.yaml")
    assert "quoted" not in str(other.value)
