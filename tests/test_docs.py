"""Documentation generated from declarations stays equal to them.

The README's action table is generated from the action registry
(proxy/actions.py ACTIONS) by proxy.scenario_explain.actions_markdown; this test
regenerates it and fails when the README differs. Run it with UPDATE_DOCS=1 to
rewrite the block in place after adding or changing an action.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tlsinspector.proxy.actions import ACTIONS
from tlsinspector.proxy.scenario import actions_markdown, catalog, match_keys_markdown

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"(<!-- actions:begin[^\n]*-->\n)(.*?)(<!-- actions:end -->)", re.S)
KEYS_BLOCK = re.compile(r"(<!-- match-keys:begin[^\n]*-->\n)(.*?)(<!-- match-keys:end -->)",
                        re.S)


def test_readme_match_key_table_is_generated_from_the_registry() -> None:
    text = README.read_text(encoding="utf-8")
    found = KEYS_BLOCK.search(text)
    assert found, "README.md lost its <!-- match-keys:begin --> ... end markers"
    want = match_keys_markdown()
    if os.environ.get("UPDATE_DOCS") == "1":
        README.write_text(text[:found.start(2)] + want + text[found.end(2):], encoding="utf-8")
        return
    assert found.group(2) == want, (
        "README.md's match key table differs from proxy/match_keys.py; regenerate it: "
        "UPDATE_DOCS=1 .venv/bin/pytest -q tests/test_docs.py")


def test_readme_action_table_is_generated_from_the_registry() -> None:
    text = README.read_text(encoding="utf-8")
    found = BLOCK.search(text)
    assert found, "README.md lost its <!-- actions:begin --> ... <!-- actions:end --> markers"
    want = actions_markdown()
    if os.environ.get("UPDATE_DOCS") == "1":
        README.write_text(text[:found.start(2)] + want + text[found.end(2):], encoding="utf-8")
        return
    assert found.group(2) == want, (
        "README.md's action table differs from the action declarations; regenerate it: "
        "UPDATE_DOCS=1 .venv/bin/pytest -q tests/test_docs.py")


def test_the_table_has_one_row_per_declared_action_with_every_parameter() -> None:
    rows = actions_markdown().splitlines()[2:]
    assert [r.split(" | ")[0].removeprefix("| ") for r in rows] == list(ACTIONS)
    for row, spec in zip(rows, ACTIONS.values(), strict=True):
        for name in spec.params:
            assert f"`{name}`" in row


def test_check_list_names_every_match_key_action_and_parameter() -> None:
    text = "\n".join(catalog())
    for key in ("from", "index", "content_type", "handshake", "connection", "sni", "times",
                "probability"):
        assert f"\n  {key} " in text
    for spec in ACTIONS.values():
        block = text.split(f"\n  {spec.name}  [", 1)[1].split("\n  ", 1)[0]
        assert block.startswith(spec.fault_class)
        section = text.split(f"\n  {spec.name}  [", 1)[1]
        for name in spec.params:
            assert f"\n    {name}: " in section.split("predicted symptom")[0]
        assert f"predicted symptom: {spec.symptom}" in section


def test_check_list_offers_encrypted_true_only_to_record_actions() -> None:
    # The plaintext actions edit a STARTTLS line before TLS; the loader refuses them
    # with encrypted: true, yet check --list said "inside encryption with encrypted:
    # true (needs --keylog)" for them as for every record action.
    text = "\n".join(catalog())
    for spec in ACTIONS.values():
        head = text.split(f"\n  {spec.name}  [", 1)[1].split("]", 1)[0]
        assert ("encrypted: true" in head) is not spec.plaintext, spec.name
        assert ("plaintext line before TLS" in head) is spec.plaintext, spec.name
    assert sum(s.plaintext for s in ACTIONS.values()) == 3


def _splice_module() -> object:
    import importlib.util

    path = README.parent / "bench" / "splice.py"
    spec = importlib.util.spec_from_file_location("bench_splice", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_make_bench_replaces_only_the_tables_and_keeps_every_round() -> None:
    """`make bench` splices bench/quick.py's tables between BENCHMARKS.md's markers
    (bench/splice.py); the rounds recorded after them stay (it once rebuilt the file
    from the tables and a notes file that had fallen behind)."""
    splice = _splice_module()
    text = (README.parent / "BENCHMARKS.md").read_text(encoding="utf-8")
    begin, end = splice.BEGIN, splice.END  # type: ignore[attr-defined]
    assert text.count(begin) == 1 and text.count(end) == 1, "BENCHMARKS.md lost its markers"
    region = text.split(begin, 1)[1].split(end, 1)[0]
    assert splice.splice(text, region) == text  # type: ignore[attr-defined]
    fresh = splice.splice(text, "| path | new |\n|---|---|")  # type: ignore[attr-defined]
    head, tail = text.split(begin, 1)[0], text.split(end, 1)[1]
    assert fresh.startswith(head) and fresh.endswith(tail) and "| path | new |" in fresh
    assert "## Thirteenth round" in tail
    for broken in (text.replace(end, ""), text + begin):
        try:
            splice.splice(broken, "x")  # type: ignore[attr-defined]
        except ValueError:
            continue
        raise AssertionError("a file without exactly one pair of markers was spliced")
