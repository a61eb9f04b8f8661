"""Put bench/quick.py's fresh tables into BENCHMARKS.md, between its markers.

    python bench/splice.py BENCHMARKS.md build/bench.md

``make bench`` runs it: only the region between BEGIN and END is replaced; every
round's measurements after it stay. (It used to rewrite the whole file from the
tables and bench/NOTES.md, which had fallen behind: a run would have deleted the
rounds recorded in BENCHMARKS.md alone.)
"""

from __future__ import annotations

import sys
from pathlib import Path

BEGIN = "<!-- make bench: begin (bench/quick.py writes what is between these lines) -->"
END = "<!-- make bench: end -->"


def splice(text: str, tables: str) -> str:
    """``text`` with the region between the markers replaced by ``tables``; ValueError
    unless each marker occurs exactly once, BEGIN first."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"expected one {BEGIN!r} and then one {END!r}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n\n{tables.strip()}\n\n{END}{tail}"


def main() -> None:
    target, tables = Path(sys.argv[1]), Path(sys.argv[2])
    try:
        out = splice(target.read_text(encoding="utf-8"), tables.read_text(encoding="utf-8"))
    except ValueError as e:
        sys.exit(f"{target}: {e}")
    target.write_text(out, encoding="utf-8")


if __name__ == "__main__":
    main()
