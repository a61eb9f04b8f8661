"""Cipher suite parameters and the key derivations a non-terminating decryptor needs.

Only what turns *logged* secrets into record keys lives here: the proxy never
runs a key exchange, so there is no (EC)DHE, no transcript hash and no
handshake secret; the key log (proxy/keylog.py) supplies the traffic secrets
(TLS 1.3) or the master secret (TLS 1.2).

- :func:`suite` looks a cipher suite up by IANA code (names from proxy/names.py)
  and returns its :class:`Suite` parameters, or None when record protection for
  it is not supported (NULL, RC4, 3DES, CAMELLIA, ARIA, export suites...).
- TLS 1.3 (RFC 8446 7.1-7.3): :func:`hkdf_expand_label`,
  :func:`traffic_keys` (key and iv of a traffic secret) and
  :func:`next_traffic_secret` (KeyUpdate, 7.2).
- TLS 1.2 (RFC 5246 5 and 6.3): :func:`prf` and :func:`key_block`, which splits
  the key block into a :class:`Tls12Keys` (client/server MAC key, key, IV).

Ciphers come from the ``cryptography`` package; HMAC (and the HKDF-Expand and
PRF built on it) is :class:`HmacKey`, RFC 2104 on the standard library's hashlib:
the key's inner and outer hash states are built once and copied per message.
A key schedule derives about ten short values per connection, each key two or
more of them: ``hmac.digest`` (OpenSSL 3's one-shot HMAC) looks the MAC and the
digest up again on every call, which cost 2.6x the time of the copies here
(6.7 against 2.5 us for a traffic key and iv; 24 against 14 us with the CPU
caches cold, as they are on a proxy sharing its cores with its peers).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives import hashes

from tlsinspector.proxy import names

Cipher = Literal["AES-GCM", "CHACHA20-POLY1305", "AES-CCM", "AES-CBC"]
HashName = Literal["sha1", "sha256", "sha384"]

HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384,
}
HASH_LEN = {"sha1": 20, "sha256": 32, "sha384": 48}
_BLOCK = {"sha1": 64, "sha256": 64, "sha384": 128}
_CONS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha384": hashlib.sha384}
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


class HmacKey:
    """HMAC (RFC 2104) with one key, for many messages: the padded key's inner and
    outer hash states are computed once; each :meth:`digest` copies them. Holds
    key material: never printed."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, hash_name: str, key: bytes) -> None:
        cons, block = _CONS[hash_name], _BLOCK[hash_name]
        if len(key) > block:
            key = cons(key).digest()
        key = key.ljust(block, b"\0")
        self._inner = cons(key.translate(_IPAD))
        self._outer = cons(key.translate(_OPAD))

    def __repr__(self) -> str:
        return "HmacKey(...)"

    def digest(self, data: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


@dataclass(frozen=True, slots=True)
class Suite:
    """Record-protection parameters of one cipher suite.

    ``tls13``: a TLS 1.3 suite (RFC 8446 B.4). ``key_len``: cipher key bytes.
    ``iv_len``: the implicit IV from the key schedule (12 for TLS 1.3 and
    ChaCha20; 4 for TLS 1.2 GCM/CCM, RFC 5288 3 / RFC 6655 3; 16 for CBC, unused
    on the wire since TLS 1.1 sends an explicit IV). ``tag_len``: AEAD tag
    (8 for the CCM_8 suites). ``mac``: the HMAC hash of a CBC suite, None for
    AEAD. ``prf_hash``: the HKDF hash (TLS 1.3) or PRF hash (TLS 1.2, RFC 5246
    5: SHA-256 unless the suite names SHA-384).
    """

    code: int
    name: str
    tls13: bool
    cipher: Cipher
    key_len: int
    iv_len: int
    tag_len: int
    mac: HashName | None
    prf_hash: HashName

    @property
    def aead(self) -> bool:
        return self.cipher != "AES-CBC"

    @property
    def mac_len(self) -> int:
        return HASH_LEN[self.mac] if self.mac else 0

    @property
    def explicit_nonce_len(self) -> int:
        """Bytes of per-record nonce sent before the ciphertext in TLS 1.2."""
        if self.tls13 or self.cipher == "CHACHA20-POLY1305":
            return 0  # RFC 8446 5.3, RFC 7905 2: nonce = iv XOR seq
        return 16 if self.cipher == "AES-CBC" else 8  # RFC 5246 6.2.3.2 / RFC 5288 3


_TLS13: dict[int, tuple[Cipher, int, int, HashName]] = {
    0x1301: ("AES-GCM", 16, 16, "sha256"),
    0x1302: ("AES-GCM", 32, 16, "sha384"),
    0x1303: ("CHACHA20-POLY1305", 32, 16, "sha256"),
    0x1304: ("AES-CCM", 16, 16, "sha256"),
    0x1305: ("AES-CCM", 16, 8, "sha256"),
}

# TLS 1.2 bulk ciphers by the name part after _WITH_: (cipher, key, iv, tag).
_BULK12: dict[str, tuple[Cipher, int, int, int]] = {
    "AES_128_GCM": ("AES-GCM", 16, 4, 16),
    "AES_256_GCM": ("AES-GCM", 32, 4, 16),
    "AES_128_CCM": ("AES-CCM", 16, 4, 16),
    "AES_256_CCM": ("AES-CCM", 32, 4, 16),
    "AES_128_CCM_8": ("AES-CCM", 16, 4, 8),
    "AES_256_CCM_8": ("AES-CCM", 32, 4, 8),
    "CHACHA20_POLY1305": ("CHACHA20-POLY1305", 32, 12, 16),
    "AES_128_CBC": ("AES-CBC", 16, 16, 0),
    "AES_256_CBC": ("AES-CBC", 32, 16, 0),
}
_MAC_SUFFIX: dict[str, HashName] = {"SHA": "sha1", "SHA256": "sha256", "SHA384": "sha384"}


def _tls12(code: int, name: str) -> Suite | None:
    if "_WITH_" not in name or "EXPORT" in name:
        return None
    bulk_and_mac = name.split("_WITH_", 1)[1]
    for bulk, (cipher, key_len, iv_len, tag_len) in _BULK12.items():
        if cipher == "AES-CBC":
            head, _, mac_name = bulk_and_mac.rpartition("_")
            if head != bulk or mac_name not in _MAC_SUFFIX:
                continue
            mac = _MAC_SUFFIX[mac_name]
            prf: HashName = "sha384" if mac == "sha384" else "sha256"
            return Suite(code, name, False, cipher, key_len, iv_len, 0, mac, prf)
        # AEAD: the suffix (if any) is the PRF hash; CCM suites have none.
        if bulk_and_mac == bulk or bulk_and_mac.startswith(bulk + "_SHA"):
            prf = "sha384" if bulk_and_mac.endswith("SHA384") else "sha256"
            if bulk_and_mac not in (bulk, bulk + "_SHA256", bulk + "_SHA384"):
                continue
            return Suite(code, name, False, cipher, key_len, iv_len, tag_len, None, prf)
    return None


@functools.lru_cache(maxsize=512)
def suite(code: int) -> Suite | None:
    """Parameters of the suite with that IANA code, None if unsupported or unknown
    (cached: a frozen Suite per code, looked up on every ServerHello)."""
    name = names.CIPHER_SUITES.get(code)
    if name is None:
        return None
    if code in _TLS13:
        cipher, key_len, tag_len, prf = _TLS13[code]
        return Suite(code, name, True, cipher, key_len, 12, tag_len, None, prf)
    return _tls12(code, name)


def supported_suites() -> list[Suite]:
    """Every suite :func:`suite` supports, in code order (for tests and `check`)."""
    return [s for c in sorted(names.CIPHER_SUITES) if (s := suite(c)) is not None]


# --- TLS 1.3 (RFC 8446 7.1) -------------------------------------------------

def hkdf_expand_label(hash_name: str, secret: bytes, label: bytes, context: bytes,
                      length: int) -> bytes:
    """HKDF-Expand-Label(Secret, Label, Context, Length), RFC 8446 7.1.

    struct { uint16 length; opaque label<7..255> = "tls13 " + Label;
    opaque context<0..255>; } HkdfLabel;
    """
    if not context:
        # The traffic key, iv and KeyUpdate labels: one HMAC over a constant.
        info1 = _label_block(label, length)
        if length <= HASH_LEN[hash_name]:
            return HmacKey(hash_name, secret).digest(info1)[:length]
        return hkdf_expand(hash_name, secret, info1[:-1], length)
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes((len(full),)) + full + bytes((len(context),)) + context
    return hkdf_expand(hash_name, secret, info, length)


@functools.lru_cache(maxsize=64)
def _label_block(label: bytes, length: int) -> bytes:
    """HkdfLabel with an empty context, followed by HKDF-Expand's counter 0x01 (T(1)'s
    input, RFC 5869 2.3): a per-handshake constant, built once per label."""
    full = b"tls13 " + label
    return length.to_bytes(2, "big") + bytes((len(full),)) + full + b"\x00\x01"


def hkdf_expand(hash_name: str, prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand (RFC 5869 2.3): T(i) = HMAC(PRK, T(i-1) | info | i)."""
    if length > 255 * HASH_LEN[hash_name]:
        raise ValueError(f"HKDF-Expand of {length} bytes is longer than 255 blocks")
    mac = HmacKey(hash_name, prk)
    out = b""
    block = b""
    i = 1
    while len(out) < length:
        block = mac.digest(block + info + bytes((i,)))
        out += block
        i += 1
    return out[:length]


def traffic_keys(s: Suite, secret: bytes) -> tuple[bytes, bytes]:
    """(write_key, write_iv) of a TLS 1.3 traffic secret (RFC 8446 7.3).

    HKDF-Expand-Label of "key" and "iv" with an empty context, each one HMAC block
    (no key or iv is longer than the hash): the two HMACs directly, with one key
    and the label blocks of the suite built once (four epochs per handshake derive
    these; the general path's lookups were a third of the derivation)."""
    key_info, iv_info = _traffic_labels(s.key_len, s.iv_len)
    mac = HmacKey(s.prf_hash, secret)
    return mac.digest(key_info)[:s.key_len], mac.digest(iv_info)[:s.iv_len]


@functools.lru_cache(maxsize=16)
def _traffic_labels(key_len: int, iv_len: int) -> tuple[bytes, bytes]:
    return _label_block(b"key", key_len), _label_block(b"iv", iv_len)


def next_traffic_secret(s: Suite, secret: bytes) -> bytes:
    """application_traffic_secret_N+1 after a KeyUpdate (RFC 8446 7.2)."""
    return hkdf_expand_label(s.prf_hash, secret, b"traffic upd", b"", HASH_LEN[s.prf_hash])


# --- TLS 1.2 (RFC 5246 5, 6.3) ----------------------------------------------

def prf(hash_name: str, secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """PRF(secret, label, seed) = P_<hash>(secret, label + seed), RFC 5246 5."""
    seed = label + seed
    mac = HmacKey(hash_name, secret)
    out = bytearray()
    a = seed  # A(0)
    while len(out) < length:
        a = mac.digest(a)  # A(i) = HMAC(secret, A(i-1))
        out += mac.digest(a + seed)
    return bytes(out[:length])


@dataclass(frozen=True, slots=True)
class Tls12Keys:
    """One direction's TLS 1.2 write keys (RFC 5246 6.3). Never printed."""

    mac_key: bytes
    key: bytes
    iv: bytes

    def __repr__(self) -> str:
        return f"Tls12Keys(mac={len(self.mac_key)}, key={len(self.key)}, iv={len(self.iv)})"


def key_block(s: Suite, master_secret: bytes, client_random: bytes,
              server_random: bytes) -> tuple[Tls12Keys, Tls12Keys]:
    """(client_write, server_write) keys from the master secret, RFC 5246 6.3.

    key_block = PRF(master_secret, "key expansion", server_random +
    client_random), cut into client/server MAC keys, keys, then IVs.
    """
    m, k, i = s.mac_len, s.key_len, s.iv_len
    block = prf(s.prf_hash, master_secret, b"key expansion", server_random + client_random,
                2 * (m + k + i))
    parts, pos = [], 0
    for n in (m, m, k, k, i, i):
        parts.append(block[pos : pos + n])
        pos += n
    return Tls12Keys(parts[0], parts[2], parts[4]), Tls12Keys(parts[1], parts[3], parts[5])
