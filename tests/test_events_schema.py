"""docs/events.schema.json against the product and against the README.

Three directions: every event the engine emits (real conversations, every
shipped scenario, the odd inputs) validates; the README's JSON Lines section and
the schema list the same fields per event; and a field added without a schema
entry is reported by name. Logs written by the end-to-end tests are validated by
the autouse fixture in conftest.py.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conversation import conversation
from tests.events_schema import problems, schema
from tlsinspector.proxy.engine import Connection, Emit
from tlsinspector.proxy.faults import FaultPlanner
from tlsinspector.proxy.records import Record
from tlsinspector.proxy.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


def engine_events(flights: list[tuple[str, bytes]], faults: FaultPlanner | None = None,
                  log_app: bool = True) -> list[dict[str, Any]]:
    c = Connection("1", "127.0.0.1:1", "127.0.0.1:2", faults=faults, log_app_data=log_app)
    outs = list(c.start(0.0))
    for side, data in flights:
        outs += c.receive(side, data, 1.0)  # type: ignore[arg-type]
    for t in (1.5, 3.0, 10.0):  # delays and paced writes
        outs += c.wakeup(t)
    outs += c.eof("client", 11.0) + c.eof("server", 11.0) + c.finish(11.0)
    return [o.event for o in outs if isinstance(o, Emit)]


@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("log_app", [True, False])
def test_engine_events_of_real_conversations_validate(version: str, log_app: bool) -> None:
    events = engine_events(conversation(version), log_app=log_app)
    assert {e["event"] for e in events} == {"connect", "record", "close"}
    assert problems(events, f"TLS {version}") == []


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_engine_events_under_every_shipped_scenario_validate(path: Path) -> None:
    planner = FaultPlanner([load_scenario(path)], 1, random.Random(1))
    for version in ("1.2", "1.3"):
        events = engine_events(conversation(version), planner)
        assert problems(events, f"{path.name} TLS {version}") == []


def test_odd_inputs_validate() -> None:
    odd = [("client", b"GET / HTTP/1.1\r\n\r\n"),
           ("server", Record(23, 0x0303, bytes(2**14 + 2049)).raw + b"\x16\x03\x03\x00\x10ab")]
    events = engine_events(odd)
    assert {"non_tls", "record"} <= {e["event"] for e in events}
    assert any(e.get("oversized") for e in events) and any("unparsed" in e for e in events)
    assert problems(events, "odd") == []


# -- a field the product adds without the schema fails, named ----------------------------


def test_an_undeclared_field_is_reported_by_event_and_name() -> None:
    events = engine_events(conversation("1.3"))
    events[-1] = {**events[-1], "new_field": 1}
    rec = next(i for i, e in enumerate(events) if e.get("messages"))
    events[rec] = {**events[rec], "messages": [{**events[rec]["messages"][0], "grease": 1}]}
    found = problems(events, "log.jsonl")
    assert any("('close')" in p and "'new_field' was unexpected" in p
               and "declare it in events.schema.json" in p for p in found), found
    assert any("('record')" in p and "messages/0" in p and "'grease' was unexpected" in p
               for p in found), found


def test_an_unknown_event_is_reported() -> None:
    found = problems([{"event": "telepathy", "ts": 1.0, "conn": "1"}], "log.jsonl")
    assert found and "'telepathy'" in found[0] and "a new event" in found[0]


# -- the README's field list and the schema name the same fields -----------------------


def readme_fields() -> dict[str, set[str]]:
    """Per event, the fields the README's JSON Lines section names: `backticked`
    words and the members of {braced, lists}."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The JSON Lines log"):]
    section = section[:section.index("\n## ", 5)]
    intro, _, bullets = section.partition("\n- ")
    common = set(re.findall(r"`([a-z_0-9]+)`", intro))
    out: dict[str, set[str]] = {}
    for item in ("- " + bullets).split("\n- "):
        m = re.match(r"-? ?`([a-z_0-9]+)`", item)
        if not m:
            continue
        body = item[m.end():]
        words = set(re.findall(r"`([a-z_0-9]+)(?:`|: )", body))
        for braced in re.findall(r"\{([a-z_0-9,\s]+)\}", body):
            words |= {w.strip() for w in braced.split(",")}
        out[m.group(1)] = words | common
    return out


def schema_fields(node: Any, defs: dict[str, Any], seen: frozenset[str] = frozenset()
                  ) -> set[str]:
    """Every property name below ``node``, following $ref; an object without
    "properties" (the fault's action-specific detail) is free-form."""
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if ref:
            name = ref.rsplit("/", 1)[1]
            if name not in seen:
                found |= schema_fields(defs[name], defs, seen | {name})
        for k, v in node.get("properties", {}).items():
            found.add(k)
            found |= schema_fields(v, defs, seen)
        for key in ("items", "oneOf", "anyOf"):
            sub = node.get(key)
            for s in sub if isinstance(sub, list) else [sub] if sub else []:
                found |= schema_fields(s, defs, seen)
    return found


def test_readme_and_schema_list_the_same_fields_per_event() -> None:
    s = schema()
    events = s["properties"]["event"]["enum"]
    readme = readme_fields()
    # A bullet that is not an event ("`analyze` and `replay` only: ...") documents
    # fields and events of the offline commands: its words may cover schema fields.
    extra = set().union(*(w for k, w in readme.items() if k not in events))
    heads = {k for k in readme if k in events}
    assert heads, readme
    for ev in events:
        ours = schema_fields(s["$defs"][ev], s["$defs"])
        if ev not in heads:
            assert ev in extra and ours <= extra | {"event", "ts", "conn"}, (
                f"{ev}: not in README.md's JSON Lines section: {sorted(ours - extra)}")
            continue
        words = readme[ev]
        if ev == "log_gap":
            words = words - {"conn"}  # "(no `conn`)"
        assert words <= ours, f"{ev}: only in the README: {sorted(words - ours)}"
        assert ours <= words | extra, f"{ev}: only in the schema: {sorted(ours - words - extra)}"
