"""What analyze says when a capture shows no TLS connection, and why a connection
was not shown: counts in the right number, the filters blamed only when a filter
hid something, and a ClientHello without SNI named in words (not Python's None)."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import dpkt  # type: ignore[import-untyped]

from tests.conversation import conversation

BIN = Path(sys.executable).parent / "tlsinspector"
LO = bytes([127, 0, 0, 1])


def _pcap(path: Path, client_data: bytes, flights: list[tuple[str, bytes]] | None = None,
          first_fin: str = "client") -> None:
    """One TCP connection 127.0.0.1:40000 -> :443: handshake, the client's bytes (or
    ``flights``: (side, bytes) in order; a side "client-gap" or "server-gap" sends its
    bytes after 100 that never reach the capture), FINs (``first_fin``'s first)."""
    seq = {40000: 1000, 443: 5000}

    def seg(sport: int, dport: int, flags: int, data: bytes = b"") -> bytes:
        ack = seq[dport] if flags != dpkt.tcp.TH_SYN else 0
        tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq[sport], ack=ack,
                           flags=flags, data=data)
        seq[sport] += len(data) + (1 if flags & (dpkt.tcp.TH_SYN | dpkt.tcp.TH_FIN) else 0)
        ip = dpkt.ip.IP(src=LO, dst=LO, p=6, data=tcp)
        ip.len = len(bytes(ip))
        return bytes(ip)

    A, S, F, P = dpkt.tcp.TH_ACK, dpkt.tcp.TH_SYN, dpkt.tcp.TH_FIN, dpkt.tcp.TH_PUSH
    pkts = [seg(40000, 443, S), seg(443, 40000, S | A), seg(40000, 443, A)]
    for side, data in flights or [("client", client_data)]:
        sender = 40000 if side.startswith("client") else 443
        if side.endswith("-gap"):   # the side's next 100 bytes never reach the capture
            seq[sender] += 100
        pkts.append(seg(sender, 443 if sender == 40000 else 40000, P | A, data))
    fins = [seg(40000, 443, F | A), seg(443, 40000, F | A)]
    pkts += (fins if first_fin == "client" else fins[::-1]) + [seg(40000, 443, A)]
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_RAW)
        for i, p in enumerate(pkts):
            w.writepkt(p, ts=1.0 + i / 1000)


def _client_hello_without_sni() -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=None)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def _analyze(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), "analyze", str(path), *args], capture_output=True,
                          text=True, timeout=60)


def test_a_plain_http_capture_is_not_blamed_on_filters(tmp_path: Path) -> None:
    cap = tmp_path / "http.pcap"
    _pcap(cap, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    res = _analyze(cap)
    assert res.returncode == 0
    assert res.stdout.strip().endswith("(7 packets, 1 TCP connection)"), res.stdout
    assert "not shown: no TLS records" in res.stderr
    res = _analyze(cap, "--port", "1")
    assert "(7 packets, 1 TCP connection, none through the filters)" in res.stdout


def test_a_hello_without_sni_hidden_by_sni_filter_says_so_in_words(tmp_path: Path) -> None:
    cap = tmp_path / "nosni.pcap"
    _pcap(cap, _client_hello_without_sni())
    res = _analyze(cap, "--sni", "api.*")
    assert "none through the filters" in res.stdout
    assert "no server name (SNI) in its ClientHello" in res.stderr, res.stderr
    assert "None" not in res.stderr


def test_a_key_log_without_the_connections_keys_gets_a_note(tmp_path: Path) -> None:
    """A key log of another run decrypted nothing and said nothing; now a note names
    the connection's client random and the secrets it lacked."""
    right = tmp_path / "right.log"
    cap = tmp_path / "tls13.pcap"
    _pcap(cap, b"", conversation("1.3", keylog=right))
    wrong = tmp_path / "wrong.log"
    wrong.write_text("CLIENT_HANDSHAKE_TRAFFIC_SECRET " + "11" * 32 + " " + "22" * 32 + "\n")
    res = _analyze(cap, "--keylog", str(wrong))
    assert res.returncode == 0, res.stderr
    assert "NOTE keys never arrived for client_random" in res.stdout, res.stdout
    assert "SERVER_HANDSHAKE_TRAFFIC_SECRET" in res.stdout
    assert "the key logs do not hold this connection's keys" in res.stdout
    res = _analyze(cap, "--keylog", str(right))
    assert "decrypted: handshake finished" in res.stdout, res.stdout
    assert "NOTE" not in res.stdout
    res = _analyze(cap)  # no key log: nothing to say about keys
    assert "NOTE" not in res.stdout
