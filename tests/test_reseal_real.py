"""Records sealed here are accepted by a real peer (OpenSSL through Python's ssl).

A real client and server talk through MemoryBIOs; the client writes its key
log. Every record passes through proxy/decrypt.py. On the client's application
records we play fault engine: change one record's plaintext and re-seal it,
insert a new record, or drop one, re-sealing every later record of that
direction with shifted sequence numbers. The real server must read exactly the
changed stream, without bad_record_mac.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from tlsinspector.lab.certs import Certs, make_certs
from tlsinspector.proxy.decrypt import Decryptor, Side
from tlsinspector.proxy.keylog import KeyLog
from tlsinspector.proxy.records import Record, RecordFramer
from tlsinspector.proxy.reseal import Resealer

OP_NO_ENCRYPT_THEN_MAC = 0x80000  # OpenSSL's SSL_OP_NO_ENCRYPT_THEN_MAC (no ssl constant)
# (version, OpenSSL cipher string, encrypt_then_mac, ECDSA certificate)
CASES = {
    "tls13": ("1.3", "", True, False),
    "tls12-gcm": ("1.2", "ECDHE-RSA-AES128-GCM-SHA256", True, False),
    "tls12-chacha": ("1.2", "ECDHE-RSA-CHACHA20-POLY1305", True, False),
    "tls12-ccm": ("1.2", "ECDHE-ECDSA-AES128-CCM", True, True),
    "tls12-ccm8": ("1.2", "ECDHE-ECDSA-AES128-CCM8", True, True),
    "tls12-cbc-etm": ("1.2", "ECDHE-RSA-AES128-SHA256", True, False),
    "tls12-cbc-mte": ("1.2", "ECDHE-RSA-AES256-SHA", False, False),
}

Edit = Callable[[int, bytes], list[bytes]]  # (record number, plaintext) -> plaintexts to send


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


class Pair:
    def __init__(self, certs: Certs, keys: Path, case: tuple[str, str, bool, bool]) -> None:
        version, cipher, etm, ecdsa = case
        v = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if ecdsa:
            sctx.load_cert_chain(certs.server_cert, certs.server_key)
        else:
            sctx.load_cert_chain(certs.rsa_cert, certs.rsa_key)
        cctx = ssl.create_default_context(cafile=str(certs.ca_cert))
        cctx.keylog_filename = str(keys)
        for ctx in (sctx, cctx):
            ctx.minimum_version = ctx.maximum_version = v
            if cipher:
                ctx.set_ciphers(cipher)
            if not etm:
                ctx.options |= OP_NO_ENCRYPT_THEN_MAC
        self.bios = {n: ssl.MemoryBIO() for n in ("c_in", "c_out", "s_in", "s_out")}
        self.client = cctx.wrap_bio(self.bios["c_in"], self.bios["c_out"],
                                    server_hostname="localhost")
        self.server = sctx.wrap_bio(self.bios["s_in"], self.bios["s_out"], server_side=True)
        self.keys = keys
        self.dec = Decryptor()
        self.log = KeyLog()
        self.framers: dict[Side, RecordFramer] = {"client": RecordFramer(),
                                                  "server": RecordFramer()}
        self.index: dict[Side, int] = {"client": 0, "server": 0}
        self.app_records = 0
        self.shift = 0  # records inserted minus dropped in the client direction

    def _keys(self) -> None:
        self.log.feed(self.keys.read_text() if self.keys.exists() else "")
        for r in self.dec.wanted():
            k = self.log.get(r)
            if k is not None:
                assert all(x.status == "decrypted" for x in self.dec.add_keys(k))
        self.log = KeyLog()  # re-read whole file next time (small)

    def carry(self, side: Side, data: bytes, edit: Edit | None) -> bytes:
        out = bytearray()
        for item in self.framers[side].feed(data):
            assert isinstance(item, Record)
            self.index[side] += 1
            self._keys()
            res = self.dec.record(side, self.index[side], item.header(), item.payload)
            # TLS 1.3: the client logs its handshake secrets only after it reads the
            # ServerHello, so the server flight waits for them (the late-keys path).
            assert res.status in ("plaintext", "decrypted", "pending"), res
            if (edit is None or side != "client" or res.inner_type != 23
                    or res.protection is None or res.seq is None):
                out += item.raw
                continue
            # The fault engine's part: open with the same state, change, re-seal.
            p = res.protection.clone()
            p.seq = res.seq
            inner, plaintext = p.open(item.header(), item.payload)
            self.app_records += 1
            p.seq = res.seq + self.shift
            sent = edit(self.app_records, plaintext)
            for pt in sent:
                payload = p.seal(inner, pt, item.version)
                out += Record(p.outer_type(inner), item.version, payload).raw
            self.shift += len(sent) - 1
        return bytes(out)

    def pump(self, edit: Edit | None = None) -> None:
        for _ in range(20):
            moved = False
            for obj in (self.client, self.server):
                try:
                    obj.do_handshake()
                except ssl.SSLWantReadError:
                    pass
            data = self.bios["c_out"].read()
            if data:
                self.bios["s_in"].write(self.carry("client", data, edit))
                moved = True
            data = self.bios["s_out"].read()
            if data:
                self.bios["c_in"].write(self.carry("server", data, None))
                moved = True
            if not moved:
                return


def server_reads(pair: Pair) -> bytes:
    out = b""
    while True:
        try:
            chunk = pair.server.read(65536)
        except ssl.SSLWantReadError:
            return out
        if not chunk:
            return out
        out += chunk


@pytest.mark.parametrize("name", sorted(CASES))
def test_change_insert_drop_are_accepted_by_the_real_server(certs: Certs, tmp_path: Path,
                                                            name: str) -> None:
    pair = Pair(certs, tmp_path / "keys.log", CASES[name])
    pair.pump()
    assert pair.dec.suite is not None
    if not pair.dec.suite.aead:  # the case tests the MAC order it names
        assert pair.dec.neg.etm is CASES[name][2]

    def edit(n: int, plaintext: bytes) -> list[bytes]:
        if n == 1:
            return [plaintext.upper()]                    # change
        if n == 2:
            return [plaintext, b"<inserted by the proxy>"]  # insert after
        if n == 3:
            return []                                     # drop
        return [plaintext]

    for chunk in (b"one;", b"two;", b"three;", b"four;", b"five;"):
        pair.client.write(chunk)
        pair.pump(edit)
    assert server_reads(pair) == b"ONE;two;<inserted by the proxy>four;five;"
    # The server's own records still decrypt here, and the server still answers.
    pair.server.write(b"bye")
    pair.pump(edit)
    assert pair.client.read(100) == b"bye"


def test_a_wrong_sequence_number_is_rejected_by_the_real_server(certs: Certs,
                                                                tmp_path: Path) -> None:
    # The planted mistake: re-sealing without shifting after an insert.
    pair = Pair(certs, tmp_path / "keys.log", CASES["tls12-gcm"])
    pair.pump()

    def edit(n: int, plaintext: bytes) -> list[bytes]:
        if n == 1:
            pair.shift -= 1  # forget the inserted record
            return [plaintext, b"extra"]
        return [plaintext]

    pair.client.write(b"one")
    pair.pump(edit)
    pair.client.write(b"two")
    pair.pump(edit)
    with pytest.raises(ssl.SSLError, match="(?i)bad.record.mac|decryption failed"):
        server_reads(pair)


class ResealerPair(Pair):
    """The same, with proxy/reseal.py doing the bookkeeping the fault engine uses."""

    def __init__(self, *a: object) -> None:
        super().__init__(*a)  # type: ignore[arg-type]
        self.rs = Resealer()

    def carry(self, side: Side, data: bytes, edit: Edit | None) -> bytes:
        out = bytearray()
        for item in self.framers[side].feed(data):
            assert isinstance(item, Record)
            self.index[side] += 1
            self._keys()
            res = self.dec.record(side, self.index[side], item.header(), item.payload)
            if edit is None or side != "client" or res.inner_type != 23:
                sent = self.rs.forward(res, item) if side == "client" else [item]
            else:
                self.app_records += 1
                plain = self.rs.open(res, item)
                sent = self.rs.replace(res, item, [Record(plain.content_type, plain.version, pt)
                                                   for pt in edit(self.app_records,
                                                                  plain.payload)])
            out += b"".join(r.raw for r in sent)
        return bytes(out)


@pytest.mark.parametrize("name", ["tls13", "tls12-gcm", "tls12-chacha", "tls12-cbc-mte"])
def test_resealer_change_insert_drop_accepted_by_the_real_server(certs: Certs, tmp_path: Path,
                                                                 name: str) -> None:
    pair = ResealerPair(certs, tmp_path / "keys.log", CASES[name])
    pair.pump()

    def edit(n: int, plaintext: bytes) -> list[bytes]:
        return {1: [b"inserted;", plaintext], 2: [], 3: [plaintext, b"+", b"+"],
                4: []}.get(n, [plaintext.upper()])

    for chunk in (b"one;", b"two;", b"three;", b"four;", b"five;", b"six;"):
        pair.client.write(chunk)
        pair.pump(edit)
    assert server_reads(pair) == b"inserted;one;three;++FIVE;SIX;"
    epoch = "application" if name == "tls13" else "tls12"
    assert pair.rs.shift(epoch) == 1 - 1 + 2 - 1  # the server counted every record
    pair.server.write(b"bye")
    pair.pump(edit)
    assert pair.client.read(100) == b"bye"
