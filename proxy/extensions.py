"""Decoded views of hello extensions, for the log and for diagnosis.

The codec keeps every extension as raw bytes (:class:`proxy.hello.Extension`);
this module only *reads* them into JSON-ready values. An extension's meaning
depends on the message it sits in (RFC 8446 4.2: supported_versions and
key_share differ between ClientHello, ServerHello and HelloRetryRequest), so
every decoder takes the message kind. A body that does not decode yields
``{"error": reason}`` instead of raising.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from tlsinspector.proxy import names
from tlsinspector.proxy.wire import DecodeError, Reader

Kind = Literal["client_hello", "server_hello", "hello_retry_request", "encrypted_extensions"]
Json = object

SERVER_NAME = 0
STATUS_REQUEST = 5
SUPPORTED_GROUPS = 10
EC_POINT_FORMATS = 11
SIGNATURE_ALGORITHMS = 13
ALPN = 16
PADDING = 21
ENCRYPT_THEN_MAC = 22
EXTENDED_MASTER_SECRET = 23
RECORD_SIZE_LIMIT = 28
SESSION_TICKET = 35
PRE_SHARED_KEY = 41
EARLY_DATA = 42
SUPPORTED_VERSIONS = 43
COOKIE = 44
PSK_KEY_EXCHANGE_MODES = 45
KEY_SHARE = 51
RENEGOTIATION_INFO = 0xFF01


def hexv(v: int) -> str:
    return f"0x{v:04x}"


def _server_name(r: Reader, kind: Kind) -> Json:
    if kind != "client_hello" and r.eof():
        return []  # RFC 6066 3: the server's acknowledgement is empty
    out: list[str] = []
    with r.block(2, "server_name_list") as lst:
        while not lst.eof():
            name_type = lst.u8("name_type")
            name = lst.vector(2, "host_name")
            out.append(name.decode("ascii", "replace") if name_type == 0 else name.hex())
    return out


def _groups(r: Reader, kind: Kind) -> Json:
    return [names.group_name(g) for g in r.u16_list(2, "named_group_list")]


def _point_formats(r: Reader, kind: Kind) -> Json:
    return [names.name_of(names.EC_POINT_FORMATS, b, 2) for b in r.vector(1, "ec_point_formats")]


def _sig_algs(r: Reader, kind: Kind) -> Json:
    return [names.signature_scheme_name(s) for s in r.u16_list(2, "supported_signature_algorithms")]


def _alpn(r: Reader, kind: Kind) -> Json:
    out: list[str] = []
    with r.block(2, "protocol_name_list") as lst:
        while not lst.eof():
            out.append(lst.vector(1, "protocol_name").decode("ascii", "replace"))
    return out


def _supported_versions(r: Reader, kind: Kind) -> Json:
    if kind == "client_hello":
        return [hexv(v) for v in r.u16_list(1, "versions")]
    return hexv(r.u16("selected_version"))


def _key_share(r: Reader, kind: Kind) -> Json:
    if kind == "hello_retry_request":
        return {"selected_group": names.group_name(r.u16("selected_group"))}
    if kind == "server_hello":
        group = r.u16("group")
        return [{"group": names.group_name(group), "length": len(r.vector(2, "key_exchange"))}]
    shares: list[dict[str, Json]] = []
    with r.block(2, "client_shares") as lst:
        while not lst.eof():
            group = lst.u16("group")
            shares.append({"group": names.group_name(group),
                           "length": len(lst.vector(2, "key_exchange"))})
    return shares


def _psk_modes(r: Reader, kind: Kind) -> Json:
    return [names.name_of(names.PSK_KEY_EXCHANGE_MODES, m, 2) for m in r.vector(1, "ke_modes")]


def _psk(r: Reader, kind: Kind) -> Json:
    if kind != "client_hello":
        return {"selected_identity": r.u16("selected_identity")}
    identities = 0
    with r.block(2, "identities") as ids:
        while not ids.eof():
            ids.vector(2, "identity")
            ids.take(4, "obfuscated_ticket_age")
            identities += 1
    binders = 0
    with r.block(2, "binders") as bs:
        while not bs.eof():
            bs.vector(1, "binder")
            binders += 1
    return {"identities": identities, "binders": binders}


def _reneg_info(r: Reader, kind: Kind) -> Json:
    return r.vector(1, "renegotiated_connection").hex()


def _empty(r: Reader, kind: Kind) -> Json:
    if not r.eof():
        raise DecodeError(f"expected an empty body, got {r.remaining()} bytes")
    return True


def _length_only(r: Reader, kind: Kind) -> Json:
    return {"length": len(r.rest())}


def _status_request(r: Reader, kind: Kind) -> Json:
    if r.eof():
        return {}
    status_type = r.u8("status_type")
    r.rest()
    return {"status_type": names.name_of(names.CERTIFICATE_STATUS_TYPES, status_type, 2)}


def _record_size_limit(r: Reader, kind: Kind) -> Json:
    return r.u16("record_size_limit")


def _cookie(r: Reader, kind: Kind) -> Json:
    return {"length": len(r.vector(2, "cookie"))}


def _early_data(r: Reader, kind: Kind) -> Json:
    if r.eof():
        return True
    return {"max_early_data_size": r.uint(4, "max_early_data_size")}


DECODERS: dict[int, Callable[[Reader, Kind], Json]] = {
    SERVER_NAME: _server_name,
    STATUS_REQUEST: _status_request,
    SUPPORTED_GROUPS: _groups,
    EC_POINT_FORMATS: _point_formats,
    SIGNATURE_ALGORITHMS: _sig_algs,
    ALPN: _alpn,
    PADDING: _length_only,
    ENCRYPT_THEN_MAC: _empty,
    EXTENDED_MASTER_SECRET: _empty,
    RECORD_SIZE_LIMIT: _record_size_limit,
    SESSION_TICKET: _length_only,
    PRE_SHARED_KEY: _psk,
    EARLY_DATA: _early_data,
    SUPPORTED_VERSIONS: _supported_versions,
    COOKIE: _cookie,
    PSK_KEY_EXCHANGE_MODES: _psk_modes,
    KEY_SHARE: _key_share,
    RENEGOTIATION_INFO: _reneg_info,
    50: _sig_algs,  # signature_algorithms_cert (RFC 8446 4.2.3)
}


def decode(ext_type: int, data: bytes, kind: Kind) -> Json:
    """The decoded value of one extension, ``None`` when it is kept raw."""
    decoder = DECODERS.get(ext_type)
    if decoder is None:
        return None
    r = Reader(data)
    try:
        value = decoder(r, kind)
        if not r.eof():
            raise DecodeError(f"{r.remaining()} trailing bytes")
    except DecodeError as e:
        return {"error": e.reason}
    return value
