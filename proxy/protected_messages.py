"""Decoders for the handshake messages only visible decrypted, lossless and total.

TLS 1.3 encrypts everything after the ServerHello (RFC 8446 4.3-4.6); TLS 1.2
encrypts Finished, NewSessionTicket after CCS, and a whole renegotiation. Once
proxy/decrypt.py has the plaintext, :func:`decode` turns one reassembled
:class:`~proxy.handshake.HandshakeMessage` into a :class:`DecodedMessage`:

- ``fields``: a JSON-ready dict (``type``, ``length`` and the message's fields);
- ``summary``: one terminal-safe line, e.g. ``certificate chain=2
  [CN=svc.internal, SAN=svc.internal, RSA 2048, expires 2027-01-03] <- [CN=Test CA]``;
- ``raw``: the message bytes exactly as sent (header included), so nothing is
  lost and a fault can rewrite it;
- ``unparsed``: the reason when the body does not decode (then ``fields`` has
  only type, length and ``unparsed``). No exception escapes :func:`decode`.

Covered: encrypted_extensions (values via proxy/extensions.py), certificate
(TLS 1.3 with context and per-entry extensions, TLS 1.2 plain list; each
certificate through proxy/certificate.py), certificate_request (both
versions), certificate_verify, finished, new_session_ticket (both versions),
key_update, and client/server hellos of a TLS 1.2 renegotiation (through
proxy/messages.py). Anything else is named with its length.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tlsinspector.proxy import extensions as ext
from tlsinspector.proxy import handshake as hs
from tlsinspector.proxy import messages, names
from tlsinspector.proxy.certificate import cert_summary, describe_cert
from tlsinspector.proxy.frozen import fast_init
from tlsinspector.proxy.hello import Extension, parse_extensions
from tlsinspector.proxy.wire import DecodeError, Reader

Json = dict[str, Any]
TLS13 = 0x0304
MAX_CHAIN = 20  # certificates decoded per message; the rest are counted


@fast_init
@dataclass(frozen=True, slots=True)
class DecodedMessage:
    msg_type: int
    fields: Json
    summary: str
    raw: bytes
    unparsed: str | None = None


def _exts(r: Reader, kind: ext.Kind) -> tuple[list[Json], tuple[Extension, ...]]:
    block, trailing = parse_extensions(r)
    if block is None:
        raise DecodeError("missing extensions block")
    if trailing:
        raise DecodeError(f"{len(trailing)} trailing bytes after extensions")
    out: list[Json] = []
    for e in block:
        entry: Json = {"type": names.extension_name(e.type), "length": len(e.data)}
        value = ext.decode(e.type, e.data, kind)
        if value is not None:
            entry["value"] = value
        out.append(entry)
    return out, block


def _ext_names(items: list[Json]) -> str:
    return ",".join(str(e["type"]) for e in items) or "none"


def _encrypted_extensions(r: Reader, version: int) -> tuple[Json, str]:
    items, _ = _exts(r, "encrypted_extensions")
    return {"extensions": items}, f"encrypted_extensions extensions=[{_ext_names(items)}]"


def _certificate(r: Reader, version: int) -> tuple[Json, str]:
    out: Json = {}
    if version >= TLS13:
        out["request_context"] = r.vector(1, "certificate_request_context").hex()
    chain: list[Json] = []
    total = 0
    with r.block(3, "certificate_list") as lst:
        while not lst.eof():
            der = lst.vector(3, "cert_data")
            entry_exts: list[Json] | None = None
            if version >= TLS13:
                with lst.block(2, "extensions") as eb:
                    entry_exts = []
                    while not eb.eof():
                        t = eb.u16("extension_type")
                        entry_exts.append({"type": names.extension_name(t),
                                           "length": len(eb.vector(2, "extension_data"))})
            total += 1
            if len(chain) < MAX_CHAIN:
                d = describe_cert(der)
                if entry_exts:
                    d["extensions"] = entry_exts
                chain.append(d)
    out["chain"] = chain
    out["chain_length"] = total
    if not chain:
        return out, "certificate chain=0 (empty)"
    first = f"[{cert_summary(chain[0])}]"
    rest = "".join(f" <- [{_short(c)}]" for c in chain[1:])
    return out, f"certificate chain={total} {first}{rest}"


def _short(d: Json) -> str:
    if "error" in d:
        return "unparsed"
    return cert_summary(d).split(", ")[0]


# ClientCertificateType (IANA TLS registry; RFC 5246 7.4.4, RFC 8422 5.5): the names
# for the line, the log keeps the numbers.
CERTIFICATE_TYPES = {1: "rsa_sign", 2: "dss_sign", 3: "rsa_fixed_dh", 4: "dss_fixed_dh",
                     5: "rsa_ephemeral_dh_RESERVED", 6: "dss_ephemeral_dh_RESERVED",
                     20: "fortezza_dms_RESERVED", 64: "ecdsa_sign", 65: "rsa_fixed_ecdh",
                     66: "ecdsa_fixed_ecdh", 67: "gost_sign256", 68: "gost_sign512"}


def _certificate_request(r: Reader, version: int) -> tuple[Json, str]:
    if version >= TLS13:
        context = r.vector(1, "certificate_request_context").hex()
        items, block = _exts(r, "encrypted_extensions")
        sig = next((e.get("value") for e in items if e["type"] == "signature_algorithms"), None)
        return ({"request_context": context, "extensions": items, "signature_algorithms": sig},
                f"certificate_request extensions=[{_ext_names(items)}]")
    types = list(r.vector(1, "certificate_types"))
    algs = [names.signature_scheme_name(s) for s in r.u16_list(2, "signature_algorithms")]
    cas = 0
    with r.block(2, "certificate_authorities") as lst:
        while not lst.eof():
            lst.vector(2, "distinguished_name")
            cas += 1
    shown = ", ".join(CERTIFICATE_TYPES.get(t, str(t)) for t in types)
    return ({"certificate_types": types, "signature_algorithms": algs,
             "certificate_authorities": cas},
            f"certificate_request types=[{shown}] algorithms={len(algs)} cas={cas}")


def _certificate_verify(r: Reader, version: int) -> tuple[Json, str]:
    alg = names.signature_scheme_name(r.u16("algorithm"))
    sig = r.vector(2, "signature")
    return ({"algorithm": alg, "signature_length": len(sig)},
            f"certificate_verify {alg} signature={len(sig)}")


def _finished(r: Reader, version: int) -> tuple[Json, str]:
    n = len(r.rest())
    return {"verify_data_length": n}, f"finished verify_data={n}"


def _new_session_ticket(r: Reader, version: int) -> tuple[Json, str]:
    lifetime = r.uint(4, "ticket_lifetime")
    if version < TLS13:  # RFC 5077 3.3
        ticket = r.vector(2, "ticket")
        return ({"lifetime_hint": lifetime, "ticket_length": len(ticket)},
                f"new_session_ticket lifetime_hint={lifetime} ticket={len(ticket)}")
    age_add = r.uint(4, "ticket_age_add")
    nonce = r.vector(1, "ticket_nonce")
    ticket = r.vector(2, "ticket")
    items, _ = _exts(r, "encrypted_extensions")
    return ({"lifetime": lifetime, "age_add": age_add, "nonce_length": len(nonce),
             "ticket_length": len(ticket), "extensions": items},
            f"new_session_ticket lifetime={lifetime} ticket={len(ticket)}"
            f" extensions=[{_ext_names(items)}]")


def _key_update(r: Reader, version: int) -> tuple[Json, str]:
    req = r.u8("request_update")
    name = {0: "update_not_requested", 1: "update_requested"}.get(req, str(req))
    return {"request_update": name}, f"key_update {name}"


DECODERS: dict[int, Callable[[Reader, int], tuple[Json, str]]] = {
    hs.ENCRYPTED_EXTENSIONS: _encrypted_extensions,
    hs.CERTIFICATE: _certificate,
    hs.CERTIFICATE_REQUEST: _certificate_request,
    hs.CERTIFICATE_VERIFY: _certificate_verify,
    hs.FINISHED: _finished,
    hs.NEW_SESSION_TICKET: _new_session_ticket,
    hs.KEY_UPDATE: _key_update,
}


# A server sends the same EncryptedExtensions, Certificate and CertificateRequest on
# every connection: their decoded views are cached by their bytes (decoding them was
# about a third of the decoding per TLS 1.3 handshake with keys; issue 14's
# handshakes/s row). Bounded, since a peer controls these bytes: CACHE_SIZE entries
# of at most CACHE_BODY bytes of body each (4 MiB at worst), least recently used
# out. Messages that differ on every connection (CertificateVerify, Finished,
# NewSessionTicket) are not cached: they would only push the others out. No secret
# is in a cache: these are decrypted handshake messages, logged as they are.
CACHED = frozenset({hs.ENCRYPTED_EXTENSIONS, hs.CERTIFICATE, hs.CERTIFICATE_REQUEST})
CACHE_BODY = 64 << 10
CACHE_SIZE = 64


def decode(msg: hs.HandshakeMessage, version: int) -> DecodedMessage:
    """The decoded view of one decrypted handshake message; never raises.

    ``version`` is the negotiated version (0x0304 or 0x0303): Certificate,
    CertificateRequest and NewSessionTicket differ between them.
    """
    if msg.msg_type in CACHED and len(msg.body) <= CACHE_BODY:
        fields, summary, unparsed = _decode_cached(msg.msg_type, msg.body, version)
        return DecodedMessage(msg.msg_type, _fresh(fields), summary, msg.raw, unparsed)
    return _decode(msg, version)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _decode_cached(msg_type: int, body: bytes, version: int) -> tuple[Json, str, str | None]:
    d = _decode(hs.HandshakeMessage(msg_type, body), version)
    return d.fields, d.summary, d.unparsed


def _fresh(fields: Json) -> Json:
    """New containers for a cached view, to the depth a caller may change (the message's
    dict and the dicts of its lists: chain entries, extensions): callers (the event,
    the history) own what they get, as from an uncached decode."""
    return {k: [dict(x) if type(x) is dict else x for x in v] if type(v) is list else v
            for k, v in fields.items()}


def _decode(msg: hs.HandshakeMessage, version: int) -> DecodedMessage:
    """decode without the cache."""
    name = names.handshake_type_name(msg.msg_type)
    base: Json = {"type": name, "length": len(msg.body)}
    if msg.msg_type in (hs.CLIENT_HELLO, hs.SERVER_HELLO):
        fields, _ = messages.describe(msg)  # a renegotiation's hellos
        why = fields.get("unparsed")
        return DecodedMessage(msg.msg_type, fields, f"{fields['type']} ({len(msg.body)} bytes)"
                              + (f" unparsed: {why}" if why else ""), msg.raw, why)
    decoder = DECODERS.get(msg.msg_type)
    if decoder is None:
        return DecodedMessage(msg.msg_type, base, f"{name} ({len(msg.body)} bytes)", msg.raw)
    r = Reader(msg.body)
    try:
        fields, summary = decoder(r, version)
        if not r.eof():
            raise DecodeError(f"{r.remaining()} trailing bytes")
    except DecodeError as e:
        return DecodedMessage(msg.msg_type, {**base, "unparsed": e.reason},
                              f"{name} unparsed: {e.reason}", msg.raw, e.reason)
    return DecodedMessage(msg.msg_type, {**base, **fields}, summary, msg.raw)
