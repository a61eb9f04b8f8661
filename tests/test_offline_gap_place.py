"""The capture-gap finding's evidence names the packets around the gap in words,
also when one of them is unknown (never Python's None); a server stream the capture
lost bytes of is not diagnosed as a server that never answered."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.test_analyze_summary import BIN, _client_hello_without_sni, _pcap
from tlsinspector.offline import _gap_place


def test_a_gap_at_the_stream_start_is_before_a_packet() -> None:
    assert _gap_place(None, 8) == "before packet 8"


def test_a_gap_at_the_stream_end_is_after_a_packet() -> None:
    assert _gap_place(12, None) == "after packet 12"


def test_a_gap_between_two_packets() -> None:
    assert _gap_place(5, 8) == "between packets 5 and 8"


def test_no_packet_known() -> None:
    assert "None" not in _gap_place(None, None)


def test_a_server_flight_lost_from_the_capture_is_no_no_server_hello(tmp_path: Path) -> None:
    cap = tmp_path / "gap.pcap"
    # The server's first 100 bytes are not in the capture: its segment starts after them.
    _pcap(cap, b"", [("client", _client_hello_without_sni()), ("server-gap", b"\x17" * 50)])
    close = _close(cap, tmp_path)
    codes = [d["code"] for d in close["diagnosis"]]
    assert codes == ["capture-gap"], codes
    assert "(before packet 5)" in close["diagnosis"][0]["evidence"][0]


@pytest.mark.parametrize("gap_side", ["client", "server"])
@pytest.mark.parametrize("first_fin", ["client", "server"])
def test_who_closed_first_is_read_from_the_fins_also_for_a_side_with_a_gap(
        tmp_path: Path, gap_side: str, first_fin: str) -> None:
    """A side whose stream lost bytes gets no end of stream in the engine (a partial
    record would be blamed on it), but its FIN is in the capture: the close names
    the side that sent the first FIN (it named the other side, whatever the order)."""
    cap = tmp_path / "gap.pcap"
    _pcap(cap, b"", [("client", _client_hello_without_sni()),
                     ("server", bytes.fromhex("160303000a") + b"\x02" * 10),
                     (f"{gap_side}-gap", bytes.fromhex("1703030005") + b"hello")],
          first_fin=first_fin)
    close = _close(cap, tmp_path)
    assert close["by"] == first_fin, close
    assert "capture-gap" in [d["code"] for d in close["diagnosis"]]


def _close(cap: Path, tmp_path: Path) -> dict[str, Any]:
    """The close event of the capture's one connection, as analyze logs it."""
    log = tmp_path / "gap.jsonl"
    res = subprocess.run([str(BIN), "analyze", str(cap), "--quiet", "--log", str(log)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    [close] = [e for e in map(json.loads, log.read_text().splitlines())
               if e["event"] == "close"]
    return close
