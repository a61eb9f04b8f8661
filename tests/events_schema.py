"""The JSONL event schema (docs/events.schema.json) as a checker for the suite.

Every log a test writes under its tmp_path is checked after the test (see
conftest.py), and tests/test_events_schema.py checks the engine's events and the
README's field list against the same file. A field the product adds without a
schema entry fails with the event, the line and the field named.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "docs" / "events.schema.json"


@functools.cache
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return loaded


@functools.cache
def validator() -> Draft202012Validator:
    Draft202012Validator.check_schema(schema())
    return Draft202012Validator(schema())


def problems(events: Iterable[dict[str, Any]], where: str) -> list[str]:
    """One line per violation: where, which event, which field, what is wrong."""
    out = []
    events_list = list(events)
    for n, ev in enumerate(events_list, 1):
        for err in sorted(validator().iter_errors(ev), key=lambda e: list(e.path)):
            # allOf/if-then errors point into $defs/<event>: name it.
            field = "/".join(str(p) for p in err.absolute_path) or "(top level)"
            name = ev.get("event", "?") if isinstance(ev, dict) else "?"
            hint = ""
            if err.validator == "additionalProperties":
                hint = (f" -> declare it in {SCHEMA_PATH.name} under "
                        f"$defs/{'/'.join(str(p) for p in err.schema_path if p != 'allOf')}"
                        " and in README.md's JSON Lines section")
            elif err.validator == "enum" and field == "event":
                hint = f" -> a new event: add it to {SCHEMA_PATH.name} (see its description)"
            at = where if len(events_list) == 1 else f"{where}: event {n}"
            out.append(f"{at} ({name!r}), field {field}: {err.message}{hint}")
    return out


_DIGITS = re.compile(rb"[0-9]+")


def log_problems(log: Path, limit: int = 20) -> list[str]:
    """Check every complete line of a JSONL log (a line still being written is
    skipped), streaming: bulk tests write logs of millions of lines. Lines that
    differ from an already checked one only in their digits (ts, index, length)
    are not checked again: no constraint of the schema depends on which digits a
    number or a hex version has, and "-" or "." are not digits."""
    bad: list[str] = []
    seen: set[bytes] = set()
    with open(log, "rb") as f:
        for i, line in enumerate(f, 1):
            if not line.endswith(b"\n") or not line.strip():
                continue
            shape = _DIGITS.sub(b"0", line)
            if shape in seen:
                continue
            try:
                ev = json.loads(line)
            except ValueError as e:  # not JSON, or not UTF-8
                bad.append(f"{log}:{i}: not JSON: {e}")
                continue
            found = problems([ev], f"{log}:{i}")
            if found:
                bad += found
            elif len(seen) < 100_000:
                seen.add(shape)
            if len(bad) >= limit:
                break
    return bad
