"""Decoded views of hello extensions, for the log and for diagnosis.

The codec keeps every extension as raw bytes (:class:`proxy.hello.Extension`);
this module only *reads* them into JSON-ready values. An extension's meaning
depends on the message it sits in (RFC 8446 4.2: supported_versions and
key_share differ between ClientHello, ServerHello and HelloRetryRequest), so
every decoder takes the message kind. A body that does not decode yields
``{"error": reason}`` instead of raising.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

from tlsinspector.proxy import names
from tlsinspector.proxy.wire import DecodeError, Reader, u16_list, uint, vector

Kind = Literal["client_hello", "server_hello", "hello_retry_request", "encrypted_extensions"]
Json = object
T = TypeVar("T")

# The code points the rest of the code also uses live in names.py (one place).
SERVER_NAME = names.EXT_SERVER_NAME
STATUS_REQUEST = 5
SUPPORTED_GROUPS = names.EXT_SUPPORTED_GROUPS
EC_POINT_FORMATS = 11
SIGNATURE_ALGORITHMS = 13
ALPN = 16
PADDING = 21
ENCRYPT_THEN_MAC = 22
EXTENDED_MASTER_SECRET = 23
RECORD_SIZE_LIMIT = 28
SESSION_TICKET = 35
PRE_SHARED_KEY = names.EXT_PRE_SHARED_KEY
EARLY_DATA = 42
SUPPORTED_VERSIONS = names.EXT_SUPPORTED_VERSIONS
COOKIE = 44
PSK_KEY_EXCHANGE_MODES = 45
KEY_SHARE = 51
RENEGOTIATION_INFO = names.EXT_RENEGOTIATION_INFO


def peer_text(name: bytes) -> str:
    """A host name or ALPN protocol as text: a byte outside ASCII is written ``\\xNN``,
    and so is a backslash (``\\x5c``), so that every backslash starts an escape and no
    name can be written to look like another (a literal "\\xe2" is not byte 0xe2)."""
    return name.replace(b"\\", b"\\x5c").decode("ascii", "backslashreplace")


def _server_name(r: Reader, kind: Kind) -> Json:
    if kind != "client_hello" and r.eof():
        return []  # RFC 6066 3: the server's acknowledgement is empty
    out: list[str] = []
    with r.block(2, "server_name_list") as lst:
        while not lst.eof():
            name_type = lst.u8("name_type")
            name = lst.vector(2, "host_name")
            out.append(peer_text(name) if name_type == 0 else name.hex())
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
            out.append(peer_text(lst.vector(1, "protocol_name")))
    return out


def _supported_versions(r: Reader, kind: Kind) -> Json:
    if kind == "client_hello":
        return [names.hex4(v) for v in r.u16_list(1, "versions")]
    return names.hex4(r.u16("selected_version"))


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


# -- typed readers and their writers ---------------------------------------------------
# For the extensions faults rewrite and diagnosis reads: ``read_x(write_x(v)) == v``
# and ``write_x(read_x(b)) == b`` for every body the reader accepts (aioquic's
# pull_x / push_x pairs). A malformed body raises DecodeError, never anything else.


def _whole(data: bytes, read: Callable[[Reader], T]) -> T:
    r = Reader(data)
    value = read(r)
    if not r.eof():
        raise DecodeError(f"{r.remaining()} trailing bytes")
    return value


def read_supported_versions(data: bytes, kind: Kind) -> tuple[int, ...]:
    """RFC 8446 4.2.1: a ClientHello lists versions (u8 length); a ServerHello or
    HelloRetryRequest holds the one selected version."""
    if kind == "client_hello":
        return _whole(data, lambda r: r.u16_list(1, "versions"))
    return (_whole(data, lambda r: r.u16("selected_version")),)


def write_supported_versions(versions: Sequence[int], kind: Kind) -> bytes:
    if kind == "client_hello":
        return u16_list(list(versions), 1)
    if len(versions) != 1:
        raise ValueError("a ServerHello's supported_versions holds exactly one version")
    return uint(versions[0], 2)


def read_server_names(data: bytes) -> tuple[tuple[int, bytes], ...]:
    """RFC 6066 3: the ClientHello's server_name_list as (name_type, name) pairs."""
    def read(r: Reader) -> tuple[tuple[int, bytes], ...]:
        out = []
        with r.block(2, "server_name_list") as lst:
            while not lst.eof():
                out.append((lst.u8("name_type"), lst.vector(2, "host_name")))
        return tuple(out)
    return _whole(data, read)


def write_server_names(entries: Sequence[tuple[int, bytes]]) -> bytes:
    return vector(b"".join(uint(t, 1) + vector(name, 2) for t, name in entries), 2)


def host_name(data: bytes) -> str | None:
    """The first host_name (name_type 0) of a server_name body, None if none or malformed."""
    try:
        entries = read_server_names(data)
    except DecodeError:
        return None
    return next((peer_text(n) for t, n in entries if t == 0), None)
