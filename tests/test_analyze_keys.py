"""`tlsinspector analyze CAPTURE --keylog` and a capture's own Decryption Secrets Block:
offline decryption through the live engine's Decryptor. One real TLS 1.3 run (OpenSSL
both ends, the inspector between with --keylog and --pcap --pcap-keys, dumpcap on the
loopback) gives three captures; each must decrypt to the live log's `decrypted` views,
and to what tshark decrypts with the same key log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.proxyproc import Proxy
from tests.test_capture import analyze
from tests.test_decrypt_real import Seen
from tests.test_keys_live import _codes, _final
from tests.test_tshark import Capture
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.peers import run_client, start_server
from tlsinspector.proxy import names

BIN = Path(sys.executable).parent / "tlsinspector"
Json = dict[str, Any]


def tshark_view(pcap: Path, keys: Path, port: int) -> Seen:
    """What tshark decrypts of the one connection to ``port`` (the oracle)."""
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-o", f"tls.keylog_file:{keys}", "-d",
         f"tcp.port=={port},tls", "-Y", f"tls && tcp.port == {port}", "-T", "fields",
         "-e", "tcp.srcport", "-e", "tls.handshake.type", "-e", "tls.alert_message.desc",
         "-E", "occurrence=a", "-E", "aggregator=,"],
        capture_output=True, text=True, timeout=60, check=True)
    seen = Seen()
    for line in out.stdout.splitlines():
        src, types, alerts = (line.split("\t") + ["", ""])[:3]
        side = "server" if int(src) == port else "client"
        seen.handshakes[side] += [names.handshake_type_name(int(t)) for t in types.split(",")
                                  if t]
        seen.alerts[side] += [names.alert_description_name(int(a))
                              for a in alerts.split(",") if a]
    return seen


def leg(evs: list[Json], port: int) -> str:
    return str(next(e["conn"] for e in evs if e["event"] == "connect"
                and e["server"].endswith(f":{port}")))


def seen(evs: list[Json], conn: str) -> dict[str, dict[str, list[str]]]:
    """Handshake message types and alerts per side, in record order, the way tshark
    lists them: plaintext messages from the record events, encrypted ones from the
    last decrypted view of each record."""
    final = _final(evs, conn)
    out: dict[str, dict[str, list[str]]] = {
        s: {"handshakes": [], "alerts": []} for s in ("client", "server")}
    for e in evs:
        if e["event"] != "record" or e["conn"] != conn:
            continue
        view = final.get((e["from"], e["index"]), e)
        out[e["from"]]["handshakes"] += [m["type"] for m in view.get("messages", ())]
        if isinstance(view.get("alert"), dict):
            out[e["from"]]["alerts"].append(view["alert"]["description"])
    return out


@pytest.fixture(scope="module")
def tls13_run(tmp_path_factory: pytest.TempPathFactory, certs: Certs
              ) -> tuple[Path, list[Json], Path, Path, int, int]:
    """(tmp, live events, dumpcap capture, the inspector's own pcapng, proxy port,
    server port) of one TLS 1.3 connection, keys logged by the client."""
    tmp = tmp_path_factory.mktemp("keys")
    keys, ours, cap = tmp / "keys.log", tmp / "ours.pcapng", tmp / "dumpcap.pcapng"
    keys.touch()
    with start_server("openssl", certs, tls="1.3", log_dir=tmp) as srv, \
            Proxy(srv.addr, tmp / "live.jsonl", keylog=[keys],
                  # --key-wait-ms: the live view must not give up on keys a loaded
                  # client writes late (2 s by default); the capture's view never does.
                  extra=["--pcap", str(ours), "--pcap-keys", str(keys),
                         "--key-wait-ms", "60000"]) as proxy:
        capture = Capture(proxy.port, cap, srv.port)
        try:
            run_client("openssl", "127.0.0.1", proxy.port, certs, tls="1.3", timeout=20,
                       keylog=keys)
            live = proxy.wait_closes(1)
        finally:
            capture.stop()
    return tmp, live, cap, ours, proxy.port, srv.port


def _views(evs: list[Json], conn: str) -> dict[tuple[str, int], Json]:
    """The last decrypted view per record of a handshake message or alert; a late one
    (the live proxy read the key log after the record passed) names its record again
    in "record", which is dropped. Application data is left out: whether its record
    event carries a view (type and length) depends on the engine's path for it, which
    depends on how the bytes were cut into reads, live or from a capture."""
    return {k: {x: y for x, y in v.items() if x != "record"}
            for k, v in _final(evs, conn).items()
            if v.get("inner_type") != "application_data"}


def _live_final(live: list[Json]) -> dict[tuple[str, int], Json]:
    final = _views(live, "1")
    # What the live proxy decrypted: the whole TLS 1.3 handshake, both ways.
    types = [m["type"] for d in final.values() for m in d.get("messages", ())]
    for t in ("encrypted_extensions", "certificate", "certificate_verify", "finished"):
        assert t in types, types
    assert all(d["status"] == "decrypted" for d in final.values()), final
    return final


def _same_as_live(evs: list[Json], live: list[Json], proxy_port: int,
                  server_port: int) -> None:
    want = _live_final(live)
    # No fault: both legs carry the same records, so each leg decrypts to the live view.
    for port in (proxy_port, server_port):
        got = _views(evs, leg(evs, port))
        assert got.keys() == want.keys()
        for k, v in want.items():
            assert got[k] == v, (k, {x: (got[k].get(x), v.get(x)) for x in {*v, *got[k]}
                                     if got[k].get(x) != v.get(x)})
        assert _codes(evs, leg(evs, port)) == _codes(live)


def test_keylog_decrypts_a_dumpcap_capture_like_the_live_engine(
        tls13_run: tuple[Path, list[Json], Path, Path, int, int]) -> None:
    tmp, live, cap, _, proxy_port, server_port = tls13_run
    res, evs = analyze(cap, "--keylog", str(tmp / "keys.log"))
    assert res.returncode == 0, res.stderr
    _same_as_live(evs, live, proxy_port, server_port)
    # The outside oracle: tshark decrypts the same capture with the same key log.
    for port in (proxy_port, server_port):
        theirs = tshark_view(cap, tmp / "keys.log", port)
        ours = seen(evs, leg(evs, port))
        for side in ("client", "server"):
            assert ours[side]["handshakes"] == theirs.handshakes[side]
            assert ours[side]["alerts"] == theirs.alerts[side]
    # Without the keys the same capture gives no decrypted views, and says why not.
    res, plain = analyze(cap)
    assert res.returncode == 0, res.stderr
    assert not [e for e in plain if e["event"] == "decrypted" or "decrypted" in e]


def test_secrets_injected_by_editcap_need_no_option(
        tls13_run: tuple[Path, list[Json], Path, Path, int, int]) -> None:
    """editcap (Wireshark's own tool) writes the Decryption Secrets Block: `analyze`
    reads it with no --keylog, as tshark does."""
    tmp, live, cap, _, proxy_port, server_port = tls13_run
    injected = tmp / "injected.pcapng"
    subprocess.run(["editcap", "--inject-secrets", f"tls,{tmp / 'keys.log'}", str(cap),
                    str(injected)], check=True, capture_output=True, timeout=60)
    res, evs = analyze(injected)
    assert res.returncode == 0, res.stderr
    _same_as_live(evs, live, proxy_port, server_port)


def test_the_inspectors_own_pcap_keys_file_decrypts_with_no_option(
        tls13_run: tuple[Path, list[Json], Path, Path, int, int]) -> None:
    """run --pcap --pcap-keys writes each connection's secrets before its packets."""
    _, live, _, ours, proxy_port, server_port = tls13_run
    res, evs = analyze(ours)
    assert res.returncode == 0, res.stderr
    _same_as_live(evs, live, proxy_port, server_port)


@pytest.mark.parametrize("content,message", [
    (None, "cannot read the key log"),
    (b"# nothing here\nnot a key line\n", "no keys in"),
    (b"\x00\x01binary", "is a binary file, not an NSS key log"),
])
def test_bad_keylog_exits_2(tmp_path: Path, content: bytes | None, message: str) -> None:
    keys = tmp_path / "keys.log"
    if content is not None:
        keys.write_bytes(content)
    report = Path(__file__).parent / "fixtures" / "report_003.txt"
    res = subprocess.run([str(BIN), "analyze", "--hex", str(report), "--keylog", str(keys)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stdout
    assert message in res.stderr and "Traceback" not in res.stderr
