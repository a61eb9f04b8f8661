"""Cost of proxy/decrypt.py, measured on real conversations (Python ssl / OpenSSL in memory).

    .venv/bin/python bench/decrypt.py

Prints, per version/suite: connections/s of decrypting a whole handshake plus a
small exchange (every encrypted handshake message decoded, certificate
included), and MB/s of opening 16 KiB application records (what a fault that
needs keys pays; without such a fault application data is never opened).
"""

from __future__ import annotations

import ssl
import tempfile
import time
from pathlib import Path

from tlsinspector.lab.certs import make_certs
from tlsinspector.proxy.decrypt import Decryptor, Side
from tlsinspector.proxy.keylog import KeyLog
from tlsinspector.proxy.records import Record, RecordFramer


def conversation(tmp: Path, version: str, cipher: str, body: int) -> tuple[
        list[tuple[Side, Record]], KeyLog]:
    certs = make_certs(tmp / "certs")
    v = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(certs.rsa_cert, certs.rsa_key)
    cctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    keys = tmp / f"keys-{version}-{cipher}.log"
    cctx.keylog_filename = str(keys)
    for ctx in (sctx, cctx):
        ctx.minimum_version = ctx.maximum_version = v
        if cipher:
            ctx.set_ciphers(cipher)
    ci, co, si, so = (ssl.MemoryBIO() for _ in range(4))
    client = cctx.wrap_bio(ci, co, server_hostname="localhost")
    server = sctx.wrap_bio(si, so, server_side=True)
    framers: dict[Side, RecordFramer] = {"client": RecordFramer(), "server": RecordFramer()}
    out: list[tuple[Side, Record]] = []

    def pump() -> None:
        for _ in range(50):
            for obj in (client, server):
                try:
                    obj.do_handshake()
                except ssl.SSLWantReadError:
                    pass
            moved = False
            for side, src, dst in (("client", co, si), ("server", so, ci)):
                data = src.read()
                if data:
                    moved = True
                    dst.write(data)
                    out.extend((side, r) for r in framers[side].feed(data)  # type: ignore[misc]
                               if isinstance(r, Record))
            if not moved:
                return

    pump()
    client.write(b"GET / HTTP/1.1\r\n\r\n")
    pump()
    server.write(bytes(body))
    pump()
    log = KeyLog()
    log.feed(keys.read_text())
    return out, log


def run(records: list[tuple[Side, Record]], log: KeyLog) -> Decryptor:
    dec = Decryptor()
    index = {"client": 0, "server": 0}
    for side, rec in records:
        index[side] += 1
        dec.record(side, index[side], rec.header(), rec.payload)
        for r in dec.wanted():
            k = log.get(r)
            if k is not None:
                dec.add_keys(k)
    return dec


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-decrypt-"))
    for version, cipher in (("1.3", ""), ("1.2", "ECDHE-RSA-AES128-GCM-SHA256"),
                            ("1.2", "ECDHE-RSA-AES128-SHA")):
        small, log = conversation(tmp, version, cipher, 2)
        n = 300
        t = time.perf_counter()
        for _ in range(n):
            dec = run(small, log)
        hs = n / (time.perf_counter() - t)
        big, log2 = conversation(tmp, version, cipher, 8 << 20)
        t = time.perf_counter()
        dec = run(big, log2)
        mbs = (8 << 20) / (time.perf_counter() - t) / 1e6
        name = dec.suite.name if dec.suite else "?"
        print(f"TLS {version} {name}: {hs:.0f} handshakes decrypted/s, "
              f"{mbs:.0f} MB/s opening application records")


if __name__ == "__main__":
    main()
