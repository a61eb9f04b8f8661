"""Scenario files: load, validate and explain fault scenarios (DESIGN.md "Scenario files").

This module is the entry point and the loader (file -> text -> YAML node tree ->
:class:`Scenario`); the work is done by one module per idea, whose public names
are re-exported here so ``from tlsinspector.proxy.scenario import ...`` keeps
working:

- :mod:`proxy.scenario_yaml`: the YAML node reader, located errors
  (:class:`ScenarioError`: file, line, dotted field, allowed values, a
  did-you-mean) and the YAML 1.1 pitfalls it refuses;
- :mod:`proxy.scenario_build`: :class:`Match`, :class:`Fault`,
  :class:`Scenario`, validation against the action declarations in
  :data:`proxy.actions.ACTIONS`, and :func:`fault_class`;
- :mod:`proxy.scenario_explain`: ``tlsinspector check``'s explanation, the
  ``check --list`` catalog and the README's generated action table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml
from yaml.nodes import Node

from tlsinspector.proxy.actions import (
    ACTIONS,
    NEEDS_KEYS_SYMPTOM,
    ActionSpec,
    FaultClass,
    ParamSpec,
    ParamType,
)
from tlsinspector.proxy.scenario_build import (
    ALWAYS_ENCRYPTED,
    MATCH_DOCS,
    MATCH_KEYS,
    NAME_RE,
    SERVER_KINDS,
    SIDES,
    TOP_KEYS,
    Fault,
    Match,
    Scenario,
    Side,
    build,
    fault_class,
    inside,
    keys_refusal,
    needs_keys,
    plain_class,
)
from tlsinspector.proxy.scenario_explain import (
    actions_markdown,
    catalog,
    describe_match,
    describe_params,
    explain,
)
from tlsinspector.proxy.scenario_yaml import FrozenMap, NodeReader, ScenarioError

__all__ = [
    "ACTIONS", "ALWAYS_ENCRYPTED", "MATCH_DOCS", "MATCH_KEYS", "NAME_RE", "NEEDS_KEYS_SYMPTOM",
    "SERVER_KINDS", "SIDES", "TOP_KEYS", "ActionSpec", "Fault", "FaultClass", "FrozenMap",
    "Match", "ParamSpec", "ParamType", "Scenario", "ScenarioError", "Side", "actions_markdown",
    "catalog", "describe_match", "describe_params", "explain", "fault_class",
    "inside", "keys_refusal", "needs_keys", "plain_class", "load_scenario", "load_scenario_text",
    "load_scenarios",
]


def _compose(text: str, source: str) -> Node | None:
    try:
        node: Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = " ".join(str(p) for p in (e.context, e.problem) if p)
        raise ScenarioError(source, mark.line + 1 if mark else None, "",
                            f"YAML syntax error: {what}") from e
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        raise ScenarioError(source, line, "", f"YAML cannot read the text: {e.reason} "
                            f"(character {e.character!r})") from e
    except yaml.YAMLError as e:
        raise ScenarioError(source, None, "", f"YAML error: {e}") from e
    except RecursionError as e:
        raise ScenarioError(source, None, "", "YAML nested too deeply") from e
    return node


def _load(text: str, source: str) -> tuple[Scenario, int]:
    r = NodeReader(source)
    return build(r, _compose(text, source))


def _read(path: str | Path) -> str:
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ScenarioError(source, None, "", f"cannot read the file: {e.strerror or e}") from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ScenarioError(source, line, "", f"not UTF-8 text (byte {e.start})") from e


def load_scenario_text(text: str, source: str = "<string>") -> Scenario:
    return _load(text, source)[0]


def load_scenario(path: str | Path) -> Scenario:
    return _load(_read(path), str(path))[0]


def load_scenarios(paths: Sequence[str | Path]) -> tuple[Scenario, ...]:
    """Load several files (--scenario repeated); their faults all apply."""
    seen: dict[str, Scenario] = {}
    for path in paths:
        s, line = _load(_read(path), str(path))
        if s.name in seen:
            raise ScenarioError(s.source, line, "name", f"scenario {s.name!r} is already "
                                f"defined in {seen[s.name].source}; names must be unique")
        seen[s.name] = s
    return tuple(seen.values())
