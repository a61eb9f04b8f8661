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

import os
import re
import stat
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
from tlsinspector.proxy.match_keys import MATCH_DOCS, MATCH_KEY_SPECS, MATCH_KEYS, MatchKeySpec
from tlsinspector.proxy.scenario_build import (
    ALWAYS_ENCRYPTED,
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
    intercept_refusal,
    keys_refusal,
    leg_refusal,
    needs_keys,
    plain_class,
)
from tlsinspector.proxy.scenario_explain import (
    actions_markdown,
    catalog,
    describe_match,
    describe_params,
    explain,
    match_keys_markdown,
)
from tlsinspector.proxy.scenario_yaml import FrozenMap, NodeReader, ScenarioError, line_of

__all__ = [
    "ACTIONS", "ALWAYS_ENCRYPTED", "MATCH_DOCS", "MATCH_KEYS", "MATCH_KEY_SPECS", "MatchKeySpec",
    "NAME_RE", "NEEDS_KEYS_SYMPTOM",
    "SERVER_KINDS", "SIDES", "TOP_KEYS", "ActionSpec", "Fault", "FaultClass", "FrozenMap",
    "Match", "ParamSpec", "ParamType", "Scenario", "ScenarioError", "Side", "actions_markdown",
    "catalog", "describe_match", "describe_params", "explain", "fault_class",
    "inside", "intercept_refusal", "keys_refusal", "leg_refusal", "match_keys_markdown",
    "needs_keys", "plain_class",
    "load_scenario", "load_scenario_text",
    "load_scenarios",
]


# Scenario files are small documents; these bounds keep a hostile or mistaken
# one (a 100 MB file, /dev/zero, a FIFO, a mapping nested 300 deep, an alias
# "billion laughs") a clear exit 2 instead of a hang, a MemoryError or a
# RecursionError (issue 12).
MAX_FILE = 1 << 20     # bytes
MAX_DEPTH = 32         # nesting of mappings and sequences
MAX_NODES = 100_000    # nodes with aliases expanded, as reading them would visit them


def _check_shape(root: Node, source: str) -> None:
    """Depth and expanded size of the node graph, without recursion (aliases make it
    a DAG: sizes are memoised per node, so an alias bomb costs its node count)."""
    size: dict[int, int] = {}
    entered: set[int] = set()  # expanded, not done: met again means a cycle
    shared = False             # a node met twice: an alias expands it again
    stack: list[tuple[Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        if not done and id(node) in entered:
            shared = True  # met again: an alias (a recursive one the reader reports)
            continue
        if depth > MAX_DEPTH:
            raise ScenarioError(source, line_of(node), "",
                                f"YAML nested more than {MAX_DEPTH} levels deep")
        kids: list[Node] = []
        if isinstance(node, yaml.MappingNode):
            kids = [x for pair in node.value for x in pair]
        elif isinstance(node, yaml.SequenceNode):
            kids = list(node.value)
        if done:
            size[id(node)] = 1 + sum(size.get(id(k), 0) for k in kids)
            if size[id(node)] > MAX_NODES:
                # "aliases of aliases?" only where there are aliases: a plain file of
                # 20,000 faults is just too large.
                why = ("aliases of aliases?" if shared else
                       "a scenario file is a few faults; split a larger one into several")
                raise ScenarioError(source, line_of(node), "",
                                    f"YAML expands to more than {MAX_NODES} nodes ({why})")
            continue
        if id(node) in size:
            shared = True
            continue
        entered.add(id(node))
        stack.append((node, depth, True))
        shared = shared or any(id(k) in size for k in kids)  # aliases of sized nodes
        stack.extend((k, depth + 1, False) for k in kids if id(k) not in size)


_UNQUOTED_COMPARISON = re.compile(r":\s*>=?\s*\d")


def _compose(text: str, source: str) -> Node | None:
    try:
        node: Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = " ".join(str(p) for p in (e.context, e.problem) if p)
        lines = text.splitlines()
        bad = lines[mark.line] if mark and mark.line < len(lines) else ""
        # A bare '>' starts a YAML block scalar: `size: >1500` is a syntax error whose
        # YAML wording ("chomping or indentation indicators") names no fix.
        hint = ("a size comparison must be quoted: '>1500', '>=1500'"
                if _UNQUOTED_COMPARISON.search(bad) else None)
        raise ScenarioError(source, mark.line + 1 if mark else None, "",
                            f"YAML syntax error: {what}", hint=hint) from e
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        raise ScenarioError(source, line, "", f"YAML cannot read the text: {e.reason} "
                            f"(character {e.character!r})") from e
    except yaml.YAMLError as e:
        raise ScenarioError(source, None, "", f"YAML error: {e}") from e
    except RecursionError as e:
        raise ScenarioError(source, None, "", "YAML nested too deeply") from e
    if node is not None:
        _check_shape(node, source)
    return node


def _load(text: str, source: str) -> tuple[Scenario, int]:
    r = NodeReader(source)
    return build(r, _compose(text, source))


def _read_bounded(path: str | Path) -> bytes:
    """The file's bytes: a regular file of at most MAX_FILE bytes. O_NONBLOCK: a
    FIFO without a writer would block open(2) forever; it is refused instead."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO"
                    if stat.S_ISFIFO(st.st_mode) else "a device or socket")
            raise ValueError(f"not a regular file ({kind})")
        if st.st_size > MAX_FILE:
            raise ValueError(f"{st.st_size} bytes; a scenario file is at most {MAX_FILE}")
        chunks, left = [], MAX_FILE + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 16))):
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > MAX_FILE:  # it grew while we read
            raise ValueError(f"more than {MAX_FILE} bytes; a scenario file is at most that")
        return data
    finally:
        os.close(fd)


def _read(path: str | Path) -> str:
    source = str(path)
    try:
        data = _read_bounded(path)
    except OSError as e:
        raise ScenarioError(source, None, "", f"cannot read the file: {e.strerror or e}") from e
    except ValueError as e:
        raise ScenarioError(source, None, "", f"cannot use the file: {e}") from e
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
