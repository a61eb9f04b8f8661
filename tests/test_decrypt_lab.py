"""Every lab client that writes a key log, against the Go server (and the Go client
against OpenSSL): with the client's key log, every encrypted handshake message and
alert decodes and agrees with tshark's decryption of the same connection."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.relay import Relay
from tests.test_decrypt_real import decrypt, tshark_view
from tests.test_tshark import Capture
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.peers import run_client, start_server

PAIRS = [(c, "go", tls) for c in ("go", "openssl", "curl", "gnutls", "python")
         for tls in ("1.2", "1.3")]
# Not wolfSSL here: it logs TLS 1.2 only, after its handshake (its master secret now
# comes from wolfSSL_get1_session); tests/test_keys_live.py decrypts it live.
PAIRS += [("go", "openssl", "1.2"), ("go", "openssl", "1.3")]


@pytest.mark.parametrize(("client", "server", "tls"), PAIRS,
                         ids=[f"{c}-{s}-tls{t}" for c, s, t in PAIRS])
def test_lab_peers_decrypt_like_tshark(certs: Certs, tmp_path: Path, client: str,
                                       server: str, tls: str) -> None:
    keys = tmp_path / "keys.log"
    with start_server(server, certs, tls=tls, log_dir=tmp_path) as srv:
        relay = Relay(srv.port)
        cap = Capture(relay.port, tmp_path / "cap.pcapng")
        try:
            res = run_client(client, "127.0.0.1", relay.port, certs, tls=tls, keylog=keys)
            chunks = relay.wait()
        finally:
            cap.stop()
    assert res.ok, res.output[-400:]
    ours, dec = decrypt(chunks, keys)
    assert dec.version == (0x0304 if tls == "1.3" else 0x0303)
    assert not [r for r in ours.results if r.status in ("undecryptable", "pending")]
    assert "finished" in ours.handshakes["client"] and "finished" in ours.handshakes["server"]
    cert = next(m for r in ours.results for m in r.messages if m.fields["type"] == "certificate"
                ) if tls == "1.3" else None
    if cert is not None:
        assert "CN=localhost" in cert.summary
    theirs = tshark_view(tmp_path / "cap.pcapng", keys, relay.port)
    assert ours.handshakes == theirs.handshakes
    assert ours.alerts == theirs.alerts
