"""Real TLS conversations produced in memory by Python's ssl (OpenSSL), no sockets.

Each conversation is the list of (sender, bytes) writes of a real client and a
real server talking through MemoryBIOs: a full handshake, an HTTP-ish request
and response, and close_notify both ways. Deterministic enough for property
tests (randoms differ per run, structure does not).
"""

from __future__ import annotations

import functools
import ssl
import tempfile
from pathlib import Path

from tlsinspector.lab.certs import Certs, make_certs

Flight = tuple[str, bytes]


@functools.cache
def _contexts(version: str, with_ca: bool = False, server_group: str | None = None
              ) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Server and client contexts for one TLS version, loaded once per run. The
    certificate files live only while they are read: modules call conversation()
    at import time, before any pytest fixture exists, and a folder shared across
    the run would be left behind (or vanish under a later test). ``with_ca``: the
    server sends the CA after its leaf (a chain of two); ``server_group``: the one
    (EC)DHE group the server accepts."""
    v = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="tlsinspector-conv-") as tmp:
        certs: Certs = make_certs(Path(tmp))
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        chain = certs.server_cert
        if with_ca:
            chain = Path(tmp) / "chain.pem"
            chain.write_bytes(certs.server_cert.read_bytes() + certs.ca_cert.read_bytes())
        sctx.load_cert_chain(chain, certs.server_key)
        cctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    if server_group is not None:
        sctx.set_ecdh_curve(server_group)
    sctx.minimum_version = sctx.maximum_version = v
    cctx.minimum_version = cctx.maximum_version = v
    cctx.check_hostname = False  # other SNI values than the certificate's name
    return sctx, cctx


RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def conversation(version: str = "1.3", request: bytes = b"GET / HTTP/1.1\r\n\r\n",
                 response: bytes = RESPONSE, sni: str = "localhost",
                 keylog: Path | None = None, resume: bool = False,
                 with_ca: bool = False, server_group: str | None = None) -> list[Flight]:
    """One connection; with ``resume``, the second of two, resuming the first's
    session (TLS 1.3: a ClientHello with pre_shared_key, RFC 8446 4.2.11);
    ``with_ca``: the server's chain is its leaf and the CA; ``server_group``: the one
    group the server accepts (a client whose first key share is for another gets a
    HelloRetryRequest in TLS 1.3, RFC 8446 4.1.4).
    ``keylog``: the client appends its NSS key log there (SSLContext.keylog_filename)."""
    sctx, cctx = _contexts(version, with_ca, server_group)
    # The contexts are shared across calls: set (or clear) the key log every time.
    cctx.keylog_filename = str(keylog) if keylog is not None else None  # type: ignore[assignment]
    if resume:
        _, session = _talk(cctx, sctx, sni, request, response, None)
        assert session is not None
        return _talk(cctx, sctx, sni, request, response, session)[0]
    return _talk(cctx, sctx, sni, request, response, None)[0]


def _talk(cctx: ssl.SSLContext, sctx: ssl.SSLContext, sni: str, request: bytes,
          response: bytes, session: ssl.SSLSession | None
          ) -> tuple[list[Flight], ssl.SSLSession | None]:
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = cctx.wrap_bio(c_in, c_out, server_hostname=sni, session=session)
    server = sctx.wrap_bio(s_in, s_out, server_side=True)
    flights: list[Flight] = []

    def pump() -> None:
        while True:
            moved = False
            data = c_out.read()
            if data:
                flights.append(("client", data))
                s_in.write(data)
                moved = True
            data = s_out.read()
            if data:
                flights.append(("server", data))
                c_in.write(data)
                moved = True
            if not moved:
                return

    done = {"client": False, "server": False}
    for _ in range(50):
        for name, obj in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        pump()
        if all(done.values()):
            break
    client.write(request)
    pump()
    assert server.read(65536) == request
    server.write(response)
    pump()
    got = b""
    while len(got) < len(response):
        got += client.read(65536)
    assert got == response
    resumed = client.session
    for obj in (client, server):
        try:
            obj.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
        pump()
    return flights, resumed
