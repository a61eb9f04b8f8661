"""Figures for RELIABILITY.md: tests print them, ``make reliability`` collects them.

A figure is one line, ``FIGURE| check | value``, printed by the test that
measured it (visible with ``pytest -s``). bench/reliability_report.py turns the
lines of one run into the table of RELIABILITY.md.
"""

from __future__ import annotations


def figure(check: str, value: str) -> None:
    print(f"\nFIGURE| {check} | {value}", flush=True)
