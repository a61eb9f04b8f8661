"""The JSONL event schema (docs/events.schema.json) as a checker for the suite.

Every log a test writes under its tmp_path is checked after the test (see
conftest.py), and tests/test_events_schema.py checks the engine's events and the
README's field list against the same file. A field the product adds without a
schema entry fails with the event, the line and the field named.
"""

from __future__ import annotations

import functools
import json
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
    for n, ev in enumerate(events, 1):
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
            out.append(f"{where}: event {n} ({name!r}), field {field}: {err.message}{hint}")
    return out


def log_problems(log: Path) -> list[str]:
    """Check every complete line of a JSONL log (a line still being written is skipped)."""
    lines = log.read_text(errors="replace").split("\n")[:-1]
    events: list[Any] = []
    bad: list[str] = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError as e:
            bad.append(f"{log}:{i}: not JSON: {e}")
    return bad + problems(events, str(log))
