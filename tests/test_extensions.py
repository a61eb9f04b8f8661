"""Extension readers and their writers: each pair round-trips both ways."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tlsinspector.proxy.extensions import (
    host_name,
    read_server_names,
    read_supported_versions,
    write_server_names,
    write_supported_versions,
)
from tlsinspector.proxy.wire import DecodeError

# OpenSSL 3's ClientHello supported_versions: length 4, TLS 1.3, TLS 1.2.
SV_CLIENT = bytes.fromhex("04" "0304" "0303")
# A ServerHello selecting TLS 1.3.
SV_SERVER = bytes.fromhex("0304")
# server_name for "localhost": list length 12, host_name (0), length 9, the name.
SNI = bytes.fromhex("000c" "00" "0009") + b"localhost"


def test_golden_bodies_read_and_write_back() -> None:
    assert read_supported_versions(SV_CLIENT, "client_hello") == (0x0304, 0x0303)
    assert write_supported_versions((0x0304, 0x0303), "client_hello") == SV_CLIENT
    assert read_supported_versions(SV_SERVER, "server_hello") == (0x0304,)
    assert write_supported_versions((0x0304,), "server_hello") == SV_SERVER
    assert read_server_names(SNI) == ((0, b"localhost"),)
    assert write_server_names([(0, b"localhost")]) == SNI
    assert host_name(SNI) == "localhost"


@pytest.mark.parametrize("body", [b"", b"\x03\x03\x04", b"\x02\x03\x04\x00", b"\x05" + b"\0" * 4])
def test_malformed_supported_versions_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError):
        read_supported_versions(body, "client_hello")


def test_malformed_server_name_has_no_host_name() -> None:
    assert host_name(SNI[:-1]) is None
    assert host_name(write_server_names([(1, b"x")])) is None
    with pytest.raises(ValueError):
        write_supported_versions((0x0304, 0x0303), "server_hello")


@given(st.lists(st.integers(0, 0xFFFF), max_size=127))
def test_supported_versions_round_trip(versions: list[int]) -> None:
    body = write_supported_versions(versions, "client_hello")
    assert read_supported_versions(body, "client_hello") == tuple(versions)
    assert write_supported_versions(read_supported_versions(body, "client_hello"),
                                     "client_hello") == body


@given(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=5))
def test_server_names_round_trip(entries: list[tuple[int, bytes]]) -> None:
    body = write_server_names(entries)
    assert read_server_names(body) == tuple(entries)
    assert write_server_names(read_server_names(body)) == body


@given(st.binary(max_size=64))
def test_readers_never_raise_anything_but_decode_error(data: bytes) -> None:
    for read in (lambda b: read_supported_versions(b, "client_hello"),
                 lambda b: read_supported_versions(b, "server_hello"), read_server_names):
        try:
            value = read(data)
        except DecodeError:
            continue
        assert value is not None
