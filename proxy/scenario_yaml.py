"""Reading a scenario file's YAML node tree into checked values, each error located.

To know lines, a scenario file is *composed* with ``yaml.SafeLoader`` into a
node tree and the values are built from that tree by :class:`NodeReader`;
scalars are constructed by PyYAML's ``SafeConstructor``, so no tag can run
code. Every mistake is one :class:`ScenarioError` naming the file, the line of
the offending node, the dotted field (``faults[2].match.from``; list positions
are 1-based) and the allowed values.

YAML 1.1 pitfalls are refused rather than silently misread: ``0303`` is octal
(195) and ``1:30`` is base 60 (90) to PyYAML, so such integers are errors that
say how to write the value; merge keys (``<<``) and duplicate keys are errors.
This module knows YAML and IANA names, nothing of faults.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from tlsinspector.proxy import names

V = TypeVar("V")
_TAG = "tag:yaml.org,2002:"
# Width of each IANA code space (the TLS wire field): 8 or 16 bits.
BITS = {"version": 16, "cipher_suite": 16, "extension": 16, "group": 16,
        "signature_scheme": 16, "alert_description": 8, "alert_level": 8,
        "handshake_type": 8, "content_type": 8}


class FrozenMap(Mapping[str, V]):
    """A read-only, hashable mapping (faults and scenarios stay hashable)."""

    __slots__ = ("_data",)

    def __init__(self, items: Mapping[str, V] | Iterable[tuple[str, V]] = ()) -> None:
        self._data: dict[str, V] = dict(items)

    def __getitem__(self, key: str) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


# A string a terminal would act on: C0 and C1 controls (ESC starts a control
# sequence), DEL, and the Unicode format characters that reorder or hide text (bidi
# overrides, zero-width). Tab and line ends are ordinary text in a description.
_TEXT_OK = frozenset("\t\n\r")


def _control(c: str) -> bool:
    return c not in _TEXT_OK and not c.isprintable() and c != " "


def terminal_safe(text: str) -> str:
    """``text`` with every control or format character escaped (``\\x1b``, ``\\u202e``),
    for a file name or key that goes into a message."""
    return "".join(c.encode("unicode_escape").decode("ascii") if _control(c) or c in _TEXT_OK
                   else c for c in text)


class ScenarioError(Exception):
    """A scenario file that cannot be used, located to file, line and field."""

    def __init__(self, file: str, line: int | None, field: str, message: str,
                 allowed: Sequence[str] | None = None, hint: str | None = None) -> None:
        self.file = file
        self.line = line
        self.field = field
        self.message = message
        self.allowed: tuple[str, ...] | None = tuple(allowed) if allowed is not None else None
        self.hint = hint
        # The file name and a key come from the user's or a customer's file: escaped.
        where = terminal_safe(file) if line is None else f"{terminal_safe(file)}:{line}"
        field = terminal_safe(field)
        text = f"{where}: {field}: {message}" if field else f"{where}: {message}"
        if self.allowed:
            text += f"; allowed: {', '.join(self.allowed)}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)


def did_you_mean(word: str, allowed: Iterable[str]) -> str | None:
    near = difflib.get_close_matches(word, list(allowed), n=3, cutoff=0.6)
    return f"did you mean {' or '.join(repr(n) for n in near)}?" if near else None


def line_of(node: Node) -> int:
    return int(node.start_mark.line) + 1


class NodeReader:
    """Builds checked values from one document's node tree, raising located errors."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.constructor = SafeConstructor()

    def error(self, node: Node | None, field: str, message: str,
              allowed: Sequence[str] | None = None, hint: str | None = None) -> ScenarioError:
        return ScenarioError(self.source, line_of(node) if node is not None else None, field,
                             message, allowed, hint)

    def scalar(self, node: Node, field: str) -> object:
        if not isinstance(node, ScalarNode):
            return _Collection(node)
        # PyYAML's scalar constructors raise plain Python errors for explicit tags on
        # text they cannot read (!!int "", !!bool maybe, !!timestamp x).
        try:
            return self.constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, LookupError, AttributeError,
                OverflowError) as e:
            tag = node.tag.removeprefix(_TAG)
            raise self.error(node, field, f"cannot read {node.value!r} as {tag}: {e}") from e

    def describe(self, node: Node, value: object) -> str:
        if isinstance(node, MappingNode):
            return "a mapping"
        if isinstance(node, SequenceNode):
            return "a list"
        if value is None:
            return "no value"
        if isinstance(value, bool):
            return f"the boolean {node.value}"
        if isinstance(value, int | float):
            return f"the number {node.value}"
        if isinstance(value, str):
            return f"the string {value!r}"
        return f"a {type(value).__name__} ({node.value!r})"

    def mapping(self, node: Node, field: str, what: str) -> dict[str, tuple[Node, Node]]:
        if not isinstance(node, MappingNode):
            got = self.describe(node, self.scalar(node, field))
            raise self.error(node, field, f"{what} must be a mapping, got {got}")
        out: dict[str, tuple[Node, Node]] = {}
        for key, value in node.value:
            if key.tag == _TAG + "merge":
                raise self.error(key, field, "merge keys (<<) are not supported; repeat the "
                                 "keys or alias the whole mapping (match: *name)")
            k = self.scalar(key, field)
            if not isinstance(k, str):
                raise self.error(key, field, f"keys must be strings, got {self.describe(key, k)}")
            if k in out:
                raise self.error(key, join_field(field, k), f"duplicate key {k!r} (first on line "
                                 f"{line_of(out[k][0])})")
            out[k] = (key, value)
        return out

    def check_keys(self, items: Mapping[str, tuple[Node, Node]], field: str,
                   allowed: Sequence[str], what: str) -> None:
        for k, (key, _) in items.items():
            if k not in allowed:
                raise self.error(key, join_field(field, k), f"unknown key {k!r} {what}", allowed,
                                 did_you_mean(k, allowed))

    def sequence(self, node: Node, field: str, what: str) -> list[Node]:
        if not isinstance(node, SequenceNode):
            got = self.describe(node, self.scalar(node, field))
            raise self.error(node, field, f"{what} must be a list, got {got}")
        return list(node.value)

    def string(self, node: Node, field: str, what: str = "a string",
               controls: bool = False) -> str:
        """A string; one with a terminal control character (ESC, other C0/C1 controls,
        bidi overrides) is refused unless ``controls`` (payload text sent as bytes):
        check, scenarios and reproduce print these strings."""
        v = self.scalar(node, field)
        if not isinstance(v, str):
            raise self.error(node, field, f"expected {what}, got {self.describe(node, v)}")
        bad = next((i for i, c in enumerate(v) if _control(c)), None)
        if bad is not None and not controls:
            raise self.error(node, field, f"control character U+{ord(v[bad]):04X} at position "
                             f"{bad + 1} of {v[:bad + 1]!r}: a terminal would act on it",
                             hint="tabs and line ends are fine; payload bytes go in hex")
        return v

    def integer(self, node: Node, field: str, lo: int | None = None,
                hi: int | None = None) -> int:
        v = self.scalar(node, field)
        span = _span(lo, hi)
        allowed = (span,) if span else None
        if not isinstance(v, int) or isinstance(v, bool):
            raise self.error(node, field, f"expected an integer, got {self.describe(node, v)}",
                             allowed)
        self._spelling(node, field)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise self.error(node, field, f"{v} is out of range", allowed)
        return v

    def _spelling(self, node: Node, field: str) -> None:
        """Refuse YAML 1.1 integer spellings nobody means in a TLS scenario."""
        raw = str(node.value).replace("_", "")
        if re.fullmatch(r"[-+]?0[0-9]+", raw):
            raise self.error(node, field, f"YAML reads {node.value} as an octal number "
                             f"({self.scalar(node, field)}); write 0x{raw.lstrip('+-0') or '0'} "
                             "for hex or drop the leading zero")
        if ":" in raw:
            raise self.error(node, field, f"YAML reads {node.value} as a base-60 number "
                             f"({self.scalar(node, field)}); quote it or write the number")

    def _decimal_version(self, node: Node, field: str, v: int | str) -> None:
        """Refuse a version written as 2-4 decimal digits that is no version (3030, 303):
        the digits of Go's error, which prints versions in hex without 0x ('received
        record with version 3030' is 0x3030), read as the decimal 3030 (0x0bd6)."""
        raw = v if isinstance(v, str) else str(node.value)
        if not re.fullmatch(r"[0-9]{2,4}", raw) or int(raw) in names.VERSIONS:
            return
        raise self.error(node, field, f"{raw} is the decimal number {raw} (0x{int(raw):04x}), "
                         "no TLS version; versions are hex (Go prints them with %x: "
                         "'received record with version 3030' is 0x3030, ASCII \"00\"): "
                         f"write 0x{raw}, or 0x{int(raw):04x} for the decimal",
                         ("a version name (TLSv1.2)", "a number (0x0303, 771)"))

    def boolean(self, node: Node, field: str) -> bool:
        v = self.scalar(node, field)
        if not isinstance(v, bool):
            raise self.error(node, field, f"expected a boolean, got {self.describe(node, v)}",
                             ("true", "false"))
        return v

    def choice(self, node: Node, field: str, allowed: Sequence[str], what: str) -> str:
        v = self.scalar(node, field)
        if isinstance(v, str) and v in allowed:
            return v
        shown = repr(v) if isinstance(v, str) else self.describe(node, v)
        raise self.error(node, field, f"unknown {what} {shown}", allowed,
                         did_you_mean(v, allowed) if isinstance(v, str) else None)

    def code(self, node: Node, field: str, kind: str) -> int:
        v = self.scalar(node, field)
        bits = BITS[kind]
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise self.error(node, field, f"expected a {kind} name or number from the IANA "
                             f"{kind} table, got {self.describe(node, v)}")
        if isinstance(v, int):
            self._spelling(node, field)
            if not 0 <= v < 1 << bits:
                raise self.error(node, field, f"{kind} {v!r} does not fit the {bits}-bit field",
                                 (f"0..0x{(1 << bits) - 1:x}",))
        if kind == "version":
            self._decimal_version(node, field, v)
        try:
            code = names.code_of(kind, v)
        except ValueError as e:  # names.UnknownName lists the close matches
            table = names.TABLE_NAMES[kind]
            # A short table is listed whole; a long one (cipher suites) by its grammar.
            allowed = (tuple(table.values()) if len(table) <= 16 else
                       (f"a name from the IANA {kind} table",
                        f"a number 0..0x{(1 << bits) - 1:x}"))
            raise self.error(node, field, str(e), allowed) from e
        if not 0 <= code < 1 << bits:
            raise self.error(node, field, f"{kind} {v!r} does not fit the {bits}-bit field",
                             (f"0..0x{(1 << bits) - 1:x}",))
        return code

    def hexbytes(self, node: Node, field: str) -> bytes:
        v = self.scalar(node, field)
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise self.error(node, field, f"expected hex bytes, got {self.describe(node, v)}")
        # An unquoted 0010 or 1e10 is a YAML number; the text written is what is meant.
        text = v if isinstance(v, str) else str(node.value)
        digits = re.sub(r"[\s:]", "", text)
        digits = digits[2:] if digits[:2].lower() == "0x" else digits
        bad = re.search(r"[^0-9A-Fa-f]", digits)
        if bad:
            raise self.error(node, field, f"not hex: {bad.group()!r} in {text!r} (hex digits, "
                             "spaces and colons allowed)")
        if len(digits) % 2:
            raise self.error(node, field, f"odd number of hex digits ({len(digits)}) in {text!r}")
        return bytes.fromhex(digits)


class _Collection:
    """Stands for a non-scalar node where a scalar was expected (never a valid value)."""

    __slots__ = ("node",)

    def __init__(self, node: Node) -> None:
        self.node = node


def _span(lo: int | None, hi: int | None) -> str | None:
    if lo is None and hi is None:
        return None
    if hi is None:
        return f">= {lo}"
    if lo is None:
        return f"<= {hi}"
    return f"{lo}..{hi}"


def join_field(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key
