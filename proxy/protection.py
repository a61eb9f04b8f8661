"""Record protection for one direction: open and seal TLS records, sans-io.

One :class:`RecordProtection` object per direction and key epoch; it knows
nothing of the handshake (model: aioquic's CryptoContext). Build one with
:func:`tls13` (a traffic secret) or :func:`tls12` (one side's key block part):

    p = tls13(suite, secret)
    inner_type, plaintext = p.open(header, payload)   # header: the 5 wire bytes
    payload = p.seal(inner_type, plaintext, version)  # header = type, version, len

``seq`` is the next record's sequence number (RFC 8446 5.3, RFC 5246 6.1); it
advances on every ``open`` (successful or not: the sender's counter moved) and
every ``seal``. A fault engine that inserts or drops a record sets ``seq``
itself (or uses :meth:`RecordProtection.clone` to keep a separate sealing
state), so later records are re-sealed with shifted numbers.

Every failure is a :class:`ProtectionError` whose ``kind`` is one of
"too_short", "bad_tag" (AEAD), "bad_padding" / "bad_mac" (CBC) or
"bad_inner" (a TLS 1.3 inner plaintext of only zeros); its ``alert`` is the
alert a peer sends for it (bad_record_mac, 20; RFC 8446 5.2, RFC 5246 7.2.2).

Variants: TLS 1.3 AEAD (RFC 8446 5.2-5.4: nonce = iv XOR seq, AAD = the record
header, inner plaintext = content || type || zeros); TLS 1.2 AEAD (RFC 5288 3,
RFC 6655 3: 4-byte salt + 8-byte explicit nonce; RFC 7905 2: ChaCha20 nonce =
iv XOR seq; AAD = seq || type || version || length, RFC 5246 6.2.3.3); TLS 1.2
CBC (RFC 5246 6.2.3.2 MAC-then-encrypt with an explicit IV, or RFC 7366
encrypt-then-MAC). Ciphers come from ``cryptography``.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from tlsinspector.proxy import keyschedule as ks

BAD_RECORD_MAC = 20
APPLICATION_DATA = 23
TLS12 = 0x0303


class ProtectionError(Exception):
    """A record that does not open with these keys; ``kind`` says why."""

    def __init__(self, kind: str, reason: str, alert: int = BAD_RECORD_MAC) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason
        self.alert = alert


class _Aead(Protocol):
    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...
    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...


def _aead(s: ks.Suite, key: bytes) -> _Aead:
    if s.cipher == "AES-GCM":
        return AESGCM(key)
    if s.cipher == "CHACHA20-POLY1305":
        return ChaCha20Poly1305(key)
    return AESCCM(key, tag_length=s.tag_len)


def _xor_nonce(iv: bytes, seq: int) -> bytes:
    """RFC 8446 5.3 / RFC 7905 2: the 64-bit seq, left-padded, XORed into the iv."""
    return (int.from_bytes(iv, "big") ^ seq).to_bytes(len(iv), "big")


def _header(content_type: int, version: int, length: int) -> bytes:
    return bytes((content_type,)) + version.to_bytes(2, "big") + length.to_bytes(2, "big")


class RecordProtection:
    """Common state: suite, sequence number; subclasses open and seal."""

    __slots__ = ("suite", "seq")

    def __init__(self, suite: ks.Suite, seq: int = 0) -> None:
        self.suite = suite
        self.seq = seq

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.suite.name}, seq={self.seq})"

    def open(self, header: bytes, payload: bytes) -> tuple[int, bytes]:
        """(inner content type, plaintext) of one record; raises ProtectionError."""
        seq = self.seq
        self.seq += 1
        return self._open(seq, header, payload)

    def seal(self, inner_type: int, plaintext: bytes, version: int = TLS12,
             padding: int = 0) -> bytes:
        """The protected payload for the next sequence number.

        The record goes out with header ``(outer_type(inner_type), version,
        len(payload))``. ``padding``: TLS 1.3 zero padding bytes (RFC 8446 5.4)
        or extra TLS 1.2 CBC padding blocks' bytes (a multiple of 16).
        """
        seq = self.seq
        self.seq += 1
        return self._seal(seq, inner_type, plaintext, version, padding)

    def outer_type(self, inner_type: int) -> int:
        """The content type on the wire for a record of ``inner_type``."""
        return inner_type

    def clone(self) -> RecordProtection:
        raise NotImplementedError

    def _open(self, seq: int, header: bytes, payload: bytes) -> tuple[int, bytes]:
        raise NotImplementedError

    def _seal(self, seq: int, inner_type: int, plaintext: bytes, version: int,
              padding: int) -> bytes:
        raise NotImplementedError


class Tls13Protection(RecordProtection):
    """RFC 8446 5.2: TLSCiphertext with a TLSInnerPlaintext inside."""

    __slots__ = ("_aead", "_iv", "_key")

    def __init__(self, suite: ks.Suite, key: bytes, iv: bytes, seq: int = 0) -> None:
        super().__init__(suite, seq)
        self._key, self._iv = key, iv
        self._aead = _aead(suite, key)

    @classmethod
    def from_secret(cls, suite: ks.Suite, secret: bytes, seq: int = 0) -> Tls13Protection:
        """Keys, iv and cipher derived at once (RFC 8446 7.3). Not on first use: a
        handshake's epochs are installed a few at a time as its secrets come, and
        their derivations back to back share warm CPU caches (on a proxy whose peers
        share its cores each one alone ran cold: 1.6x the time per epoch)."""
        return cls(suite, *ks.traffic_keys(suite, secret), seq)

    def clone(self) -> Tls13Protection:
        return Tls13Protection(self.suite, self._key, self._iv, self.seq)

    def outer_type(self, inner_type: int) -> int:
        return APPLICATION_DATA  # RFC 8446 5.2: opaque_type is always 23

    def _open(self, seq: int, header: bytes, payload: bytes) -> tuple[int, bytes]:
        if len(payload) < self.suite.tag_len + 1:
            raise ProtectionError("too_short", f"{len(payload)} bytes, less than tag + type")
        try:
            inner = self._aead.decrypt(_xor_nonce(self._iv, seq), payload, header)
        except InvalidTag:
            raise ProtectionError("bad_tag", f"AEAD tag does not verify (seq {seq})") from None
        # RFC 8446 5.4: strip zero padding; the last non-zero byte is the type.
        end = len(inner.rstrip(b"\x00"))
        if end == 0:
            raise ProtectionError("bad_inner", "inner plaintext has no content type",
                                  alert=10)  # unexpected_message
        return inner[end - 1], inner[: end - 1]

    def _seal(self, seq: int, inner_type: int, plaintext: bytes, version: int,
              padding: int) -> bytes:
        inner = plaintext + bytes((inner_type,)) + bytes(padding)
        header = _header(APPLICATION_DATA, version, len(inner) + self.suite.tag_len)
        return self._aead.encrypt(_xor_nonce(self._iv, seq), inner, header)


def _aad12(seq: int, content_type: int, version: int, length: int) -> bytes:
    """RFC 5246 6.2.3.3 additional data / 6.2.3.1 MAC input prefix."""
    return seq.to_bytes(8, "big") + _header(content_type, version, length)


class Tls12AeadProtection(RecordProtection):
    """RFC 5246 6.2.3.3 with RFC 5288 / 6655 (explicit nonce) or RFC 7905 (ChaCha20)."""

    __slots__ = ("_aead", "_iv", "_key")

    def __init__(self, suite: ks.Suite, key: bytes, iv: bytes, seq: int = 0) -> None:
        super().__init__(suite, seq)
        self._key, self._iv, self._aead = key, iv, _aead(suite, key)

    def clone(self) -> Tls12AeadProtection:
        return Tls12AeadProtection(self.suite, self._key, self._iv, self.seq)

    def _nonce(self, seq: int, explicit: bytes) -> bytes:
        if self.suite.explicit_nonce_len == 0:
            return _xor_nonce(self._iv, seq)
        return self._iv + explicit

    def _open(self, seq: int, header: bytes, payload: bytes) -> tuple[int, bytes]:
        n = self.suite.explicit_nonce_len
        if len(payload) < n + self.suite.tag_len:
            raise ProtectionError("too_short", f"{len(payload)} bytes, less than nonce + tag")
        explicit, body = payload[:n], payload[n:]
        content_type, version = header[0], int.from_bytes(header[1:3], "big")
        aad = _aad12(seq, content_type, version, len(body) - self.suite.tag_len)
        try:
            return content_type, self._aead.decrypt(self._nonce(seq, explicit), body, aad)
        except InvalidTag:
            raise ProtectionError("bad_tag", f"AEAD tag does not verify (seq {seq})") from None

    def _seal(self, seq: int, inner_type: int, plaintext: bytes, version: int,
              padding: int) -> bytes:
        # The explicit nonce is the sequence number, as OpenSSL and Go send it.
        explicit = seq.to_bytes(8, "big") if self.suite.explicit_nonce_len else b""
        aad = _aad12(seq, inner_type, version, len(plaintext))
        return explicit + self._aead.encrypt(self._nonce(seq, explicit), plaintext, aad)


class Tls12CbcProtection(RecordProtection):
    """RFC 5246 6.2.3.2 (MAC-then-encrypt) or RFC 7366 (encrypt-then-MAC), explicit IV.

    ``iv_source`` makes the explicit IVs of :meth:`seal` (default
    ``os.urandom``); pass a deterministic one in tests.
    """

    __slots__ = ("_hmac", "_key", "_mac_key", "etm", "iv_source")

    def __init__(self, suite: ks.Suite, key: bytes, mac_key: bytes, encrypt_then_mac: bool,
                 seq: int = 0, iv_source: Callable[[int], bytes] | None = None) -> None:
        super().__init__(suite, seq)
        self._key, self._mac_key, self.etm = key, mac_key, encrypt_then_mac
        self._hmac = ks.HmacKey(suite.mac or "sha1", mac_key)  # one per direction
        self.iv_source: Callable[[int], bytes] = iv_source or os.urandom

    def clone(self) -> Tls12CbcProtection:
        return Tls12CbcProtection(self.suite, self._key, self._mac_key, self.etm, self.seq,
                                  self.iv_source)

    def _mac(self, seq: int, content_type: int, version: int, data: bytes) -> bytes:
        return self._hmac.digest(_aad12(seq, content_type, version, len(data)) + data)

    def _cbc(self, iv: bytes) -> Cipher[modes.CBC]:
        return Cipher(algorithms.AES(self._key), modes.CBC(iv))

    def _decrypt_unpad(self, iv: bytes, ct: bytes) -> bytes:
        d = self._cbc(iv).decryptor()
        padded = d.update(ct) + d.finalize()
        pad = padded[-1]
        # RFC 5246 6.2.3.2: padding_length + 1 bytes, each equal to padding_length.
        if pad + 1 > len(padded) or padded[-pad - 1 :] != bytes((pad,)) * (pad + 1):
            raise ProtectionError("bad_padding", "CBC padding does not verify")
        return padded[: -pad - 1]

    def _open(self, seq: int, header: bytes, payload: bytes) -> tuple[int, bytes]:
        content_type, version = header[0], int.from_bytes(header[1:3], "big")
        mac_len = self.suite.mac_len
        min_len = 16 + 16 + (mac_len if self.etm else 0)
        if len(payload) < min_len or (len(payload) - (mac_len if self.etm else 0)) % 16:
            raise ProtectionError("too_short", f"{len(payload)} bytes is not IV + whole blocks"
                                  + (" + MAC" if self.etm else ""))
        if self.etm:
            body, tag = payload[:-mac_len], payload[-mac_len:]
            if not hmac.compare_digest(tag, self._mac(seq, content_type, version, body)):
                raise ProtectionError("bad_mac", f"encrypt_then_mac HMAC mismatch (seq {seq})")
            return content_type, self._decrypt_unpad(body[:16], body[16:])
        inner = self._decrypt_unpad(payload[:16], payload[16:])
        if len(inner) < mac_len:
            raise ProtectionError("too_short", "plaintext shorter than the MAC")
        plaintext, tag = inner[:-mac_len], inner[-mac_len:]
        if not hmac.compare_digest(tag, self._mac(seq, content_type, version, plaintext)):
            raise ProtectionError("bad_mac", f"HMAC mismatch (seq {seq})")
        return content_type, plaintext

    def _encrypt_pad(self, data: bytes, padding: int) -> bytes:
        iv = bytes(self.iv_source(16))
        pad = 15 - len(data) % 16 + (padding // 16) * 16
        if pad > 255:
            pad -= ((pad - 255 + 15) // 16) * 16
        e = self._cbc(iv).encryptor()
        return iv + e.update(data + bytes((pad,)) * (pad + 1)) + e.finalize()

    def _seal(self, seq: int, inner_type: int, plaintext: bytes, version: int,
              padding: int) -> bytes:
        if self.etm:
            body = self._encrypt_pad(plaintext, padding)
            return body + self._mac(seq, inner_type, version, body)
        mac = self._mac(seq, inner_type, version, plaintext)
        return self._encrypt_pad(plaintext + mac, padding)


def sealed_length(suite: ks.Suite, plaintext_len: int, encrypt_then_mac: bool = False) -> int:
    """The record payload length of ``plaintext_len`` bytes sealed without extra padding.

    For the diagnosis without keys: an encrypted alert (2 bytes) is 19 bytes
    under TLS 1.3 (RFC 8446 5.2: + type + tag), 26 under TLS 1.2 AES-GCM
    (explicit nonce + tag), 18 under TLS 1.2 ChaCha20, 48/64 under CBC.
    TLS 1.3 peers may pad (5.4), so a TLS 1.3 length is a minimum.
    """
    if suite.tls13:
        return plaintext_len + 1 + suite.tag_len
    if suite.aead:
        return suite.explicit_nonce_len + plaintext_len + suite.tag_len
    mac = suite.mac_len
    if encrypt_then_mac:
        return 16 + (plaintext_len // 16 + 1) * 16 + mac
    return 16 + ((plaintext_len + mac) // 16 + 1) * 16


def tls13(suite: ks.Suite, secret: bytes, seq: int = 0) -> Tls13Protection:
    """Protection for one direction from a TLS 1.3 traffic secret (RFC 8446 7.3)."""
    return Tls13Protection.from_secret(suite, secret, seq)


def tls12(suite: ks.Suite, keys: ks.Tls12Keys, encrypt_then_mac: bool = False,
          seq: int = 0) -> RecordProtection:
    """Protection for one direction from its part of the TLS 1.2 key block."""
    if suite.aead:
        return Tls12AeadProtection(suite, keys.key, keys.iv, seq)
    return Tls12CbcProtection(suite, keys.key, keys.mac_key, encrypt_then_mac, seq)
