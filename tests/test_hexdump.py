"""proxy/hexdump.py: hex as people paste it, every common format, with the side said."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_hello import WOLFSSL_REPORT_003
from tlsinspector.proxy.hexdump import HexError, parse

REPORT_003 = Path(__file__).parent / "fixtures" / "report_003.txt"
ALERT_40 = bytes.fromhex("15030300020228")


def _tool(args: list[str], data: bytes) -> str:
    return subprocess.run(args, input=data, capture_output=True, timeout=30,
                          check=True).stdout.decode()


def test_report_003_as_pasted_gives_the_hello_and_the_alert() -> None:
    blocks, skipped = parse(REPORT_003.read_text())
    assert [(b.side, b.data) for b in blocks] == [("client", WOLFSSL_REPORT_003),
                                                  ("server", ALERT_40)]
    assert (blocks[0].first_line, blocks[0].last_line) == (5, 10)
    assert blocks[0].how == "guessed: starts with a ClientHello"
    assert "answering the client" in blocks[1].how
    # "04 03: SHA256 EDCSA" and "(0xc027)" in the prose are not hex blocks.
    assert skipped == []


@pytest.mark.parametrize("tool", [["xxd"], ["xxd", "-c", "8"], ["hexdump", "-C"],
                                  ["od", "-An", "-tx1"]])
def test_dump_tools_output(tool: list[str]) -> None:
    blocks, _ = parse(_tool(tool, WOLFSSL_REPORT_003))
    assert [b.data for b in blocks] == [WOLFSSL_REPORT_003]


def test_hexdump_star_repeats_the_line_before() -> None:
    data = bytes.fromhex("1703030040") + b"A" * 64
    text = _tool(["hexdump", "-C"], data)
    assert "*" in text
    blocks, _ = parse(text)
    assert blocks[0].data == data


def test_ascii_column_that_looks_like_hex_is_not_data() -> None:
    # xxd of bytes whose ASCII rendering is itself hex digits ("abcd...").
    data = bytes.fromhex("1703030005") + b"abcde"
    blocks, _ = parse(_tool(["xxd"], data))
    assert blocks[0].data == data


def test_wireshark_copy_as_hex_dump_two_blocks_marked() -> None:
    text = ("Client:\n"
            "0000   16 03 03 00 4f 01 00 00 4b 03 03 2e 2a ec 85 7f   ....O...K...*...\n"
            + "".join(f"{i * 16:04x}   " + WOLFSSL_REPORT_003[i * 16:(i + 1) * 16].hex(" ")
                      + "   ................\n" for i in range(1, 6))
            + "\nS->C\n0000   15 03 03 00 02 02 28                              .......\n")
    blocks, _ = parse(text)
    assert [(b.side, b.data) for b in blocks] == [("client", WOLFSSL_REPORT_003),
                                                  ("server", ALERT_40)]
    assert blocks[1].how == "marked server at line 9"


def test_an_sslv2_format_hello_is_a_block_of_the_client() -> None:
    # A scanner's SSL 2.0-compatible hello (RFC 5246 E.2), then OpenSSL 3's answer.
    specs = bytes.fromhex("010080 030080 00002f")
    body = b"\x01\x03\x01" + len(specs).to_bytes(2, "big") + b"\x00\x00\x00\x10" + specs
    hello = (0x8000 | len(body) + 16).to_bytes(2, "big") + body + bytes(range(16))
    blocks, skipped = parse(hello.hex(" ") + "\n\n15 03 01 00 02 02 50\n")
    assert [(b.side, b.data) for b in blocks] == [
        ("client", hello), ("server", bytes.fromhex("15030100020250"))]
    assert blocks[0].how == "guessed: an SSLv2-compatible ClientHello is the client's"
    assert skipped == []


def test_prefix_marks_and_c_arrays_and_escapes() -> None:
    text = ("S: 15 03 03 00 02 02 28\n\n"
            "{0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x00}\n\n"
            "\\x15\\x03\\x03\\x00\\x02\\x02\\x28\n")
    blocks, _ = parse(text.replace("{", "").replace("}", ""))
    assert [b.side for b in blocks] == ["server", "client", "server"]
    assert blocks[0].how.startswith("marked")
    assert blocks[1].data == bytes.fromhex("15030300020100")


def test_one_long_run_and_eight_digit_groups() -> None:
    blocks, _ = parse(WOLFSSL_REPORT_003.hex())
    assert blocks[0].data == WOLFSSL_REPORT_003
    grouped = " ".join(WOLFSSL_REPORT_003.hex()[i:i + 8] for i in range(0, 168, 8))
    assert parse(grouped)[0][0].data == WOLFSSL_REPORT_003


def test_bare_handshake_message_gets_a_record_header_and_says_so() -> None:
    blocks, _ = parse(WOLFSSL_REPORT_003[5:].hex(" "))
    assert blocks[0].data == WOLFSSL_REPORT_003
    assert "record header 16 03 03 00 4f added" in blocks[0].notes[0]


def test_whole_frame_copied_has_its_headers_cut() -> None:
    frame = bytes(54) + WOLFSSL_REPORT_003    # Ethernet + IPv4 + TCP, zeroed
    blocks, _ = parse(frame.hex(" "))
    assert blocks[0].data == WOLFSSL_REPORT_003
    assert blocks[0].notes[0].startswith("54 bytes before the first TLS record cut")


def test_server_hello_first_is_guessed_server() -> None:
    sh = bytes.fromhex("160303002a020000260303") + bytes(32) + b"\x00\xc0\x2f\x00"
    blocks, _ = parse(sh.hex(" "))
    assert blocks[0].side == "server" and "ServerHello" in blocks[0].how


def test_non_tls_block_is_skipped_with_a_note() -> None:
    blocks, skipped = parse("de ad be ef 00 11\n\n15 03 03 00 02 02 28\n")
    assert len(blocks) == 1 and skipped and "line 1" in skipped[0]


@pytest.mark.parametrize("text,message", [
    ("", "no hex bytes found"),
    ("hello, this is prose\nwith no bytes at all\n", "no hex bytes found"),
    ("16 03 03 00 4f 01 00 zz 4b\n", "line 1: 'zz' is not a hex byte"),
    ("de ad be ef\n", "no TLS record"),
    ("00000000: 1603 0300 4f01 0000 4b03 032e 2aec 857f  ....O...K...*...\n"
     "00000020: 15dd 095f 22d1 5382 60d7 8067 28aa 6748  ..._\".S.`..g(.gH\n",
     "line 2: offset 0x20 does not follow"),
])
def test_bad_hex_is_a_hex_error_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(HexError, match=message):
        parse(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_any_text_gives_blocks_or_a_hex_error(text: str) -> None:
    try:
        blocks, _ = parse(text)
    except HexError:
        return
    assert all(b.data and b.side in ("client", "server") for b in blocks)


def test_an_arrow_prefix_needs_no_colon() -> None:
    # "S->C 15 03 ..." is how the inspector's own view names a side (the README's
    # "C->S/S->C prefix on the hex line"); without a colon the line was prose and the
    # paste held "no hex bytes". A line of the view itself (no hex after the arrow)
    # stays prose.
    text = ("C->S 15 03 03 00 02 01 00\n"
            "S->C  15 03 03 00 02 02 28\n"
            "[1] S->C #1 alert 0x0303 len=2 | ALERT fatal handshake_failure (40)\n"
            "client->server 15 03 03 00 02 01 00\n")
    blocks, _ = parse(text)
    assert [(b.side, b.data, b.first_line) for b in blocks] == [
        ("client", bytes.fromhex("15030300020100"), 1), ("server", ALERT_40, 2),
        ("client", bytes.fromhex("15030300020100"), 4)]
    assert all(b.how.startswith("marked") for b in blocks)
