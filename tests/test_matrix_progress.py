"""matrix's progress: a bar redrawn in place on a terminal, plain lines elsewhere."""

from __future__ import annotations

from tlsinspector.lab.matrix import progress


def test_not_a_terminal_gets_one_plain_line_per_scenario() -> None:
    line = progress(4, 12, 7.2, "no-fault-baseline", tty=False)
    assert line == "4/12 7s no-fault-baseline\n"
    assert "\r" not in line and "#" not in line


def test_a_terminal_gets_the_bar_redrawn_in_place() -> None:
    line = progress(6, 12, 7.2, "record-version-3030", tty=True)
    assert line.startswith("\r[" + "#" * 15 + " " * 15 + "] 6/12")
    assert not line.endswith("\n")
