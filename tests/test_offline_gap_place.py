"""The capture-gap finding's evidence names the packets around the gap in words,
also when one of them is unknown (never Python's None)."""

from __future__ import annotations

from tlsinspector.offline import _gap_place


def test_a_gap_at_the_stream_start_is_before_a_packet() -> None:
    assert _gap_place(None, 8) == "before packet 8"


def test_a_gap_at_the_stream_end_is_after_a_packet() -> None:
    assert _gap_place(12, None) == "after packet 12"


def test_a_gap_between_two_packets() -> None:
    assert _gap_place(5, 8) == "between packets 5 and 8"


def test_no_packet_known() -> None:
    assert "None" not in _gap_place(None, None)
