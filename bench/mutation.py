"""Mutation score of the sans-io core with cosmic-ray (``make mutation``).

For each module of proxy/ it copies the source tree to build/mutation/tree-<module> (so
the worktree is never mutated in place), lets cosmic-ray generate the mutants,
drops the redundant operator variants listed in EXCLUDED and the mutants inside
type annotations (never evaluated: PEP 563), runs the module's fast
unit and property tests against each mutant (``pytest -x``), and prints the
score per module and every surviving mutant with its source line.

    .venv/bin/python bench/mutation.py                 # every module in MODULES
    .venv/bin/python bench/mutation.py records faults  # some of them
    .venv/bin/python bench/mutation.py engine --sample 200  # a seeded random sample
    .venv/bin/python bench/mutation.py engine --sample 200 --seed r2  # another draw

``--survivors`` runs again only the mutants that survived the module's last run,
against the tests as they are now (after adding tests that target them); the
database then holds the updated outcomes.

``--sample N`` runs N mutants of the module drawn with a seed (the module's name, or
``--seed S`` for a fresh draw), the rest are recorded as "not sampled" and left out of
the score: an estimate, for the modules too large to run whole on a shared machine.
The draw is over the mutants in a stable order (operator, occurrence), so one seed on
one version of the module draws the same sample every time. The report says how many
mutants the module has and how many were run.

A mutant is killed when the tests fail or time out; "incompetent" mutants (the
module no longer imports) count as killed too, as cosmic-ray's own report does.
Results stay in build/mutation/<module>.sqlite; a run starts each module afresh
unless given --resume (then an interrupted module continues where it stopped).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "mutation"
TREE = BUILD / "tree"  # + "-<module>": a module's run never sees another's mutation
BIN = Path(sys.executable).parent

# module -> the fast tests that exercise it (no proxy processes, no network peers).
MODULES: dict[str, list[str]] = {
    "records": ["tests/test_records.py", "tests/test_engine_fuzz.py", "tests/test_faults.py"],
    "handshake": ["tests/test_handshake.py", "tests/test_handshake_reassembler.py",
                  "tests/test_hello.py", "tests/test_faults.py"],
    "hello": ["tests/test_hello.py", "tests/test_faults.py", "tests/test_fingerprint.py"],
    "extensions": ["tests/test_extensions.py", "tests/test_hello.py", "tests/test_engine.py"],
    # test_match_keys: the timer actions (after_ms, idle_ms) and coalesce, on the wire;
    # test_plaintext: the STARTTLS actions and plaintext matching; test_engine_keyhold:
    # which records a fault inside the encryption holds for keys (all sans-io).
    "faults": ["tests/test_faults.py", "tests/test_scenario.py", "tests/test_match_keys.py",
               "tests/test_plaintext.py", "tests/test_engine_keyhold.py"],
    "actions": ["tests/test_faults.py", "tests/test_scenario.py", "tests/test_match_keys.py",
                "tests/test_plaintext.py"],
    "engine": ["tests/test_engine.py", "tests/test_faults.py", "tests/test_engine_fuzz.py",
               "tests/test_engine_keys.py", "tests/test_engine_keyhold.py",
               "tests/test_match_keys.py", "tests/test_plaintext.py",
               "tests/test_events_schema.py", "tests/test_diagnosis.py",
               "tests/test_diagnosis_certificates.py", "tests/test_engine_contract.py",
               "tests/test_forward_first.py"],
    # The one sans-io test of tests/test_intercept.py (the rest runs live peers): which
    # certificate fault the inspector presented (interception-missing-intermediate).
    "diagnosis": ["tests/test_diagnosis.py", "tests/test_diagnosis_causes.py",
                  "tests/test_diagnosis_certificates.py", "tests/test_diagnosis_intercept.py",
                  "tests/test_plaintext.py",
                  "tests/test_intercept.py::test_the_inspector_names_what_it_presented"],
    "names": ["tests/test_names.py", "tests/test_names_oracle.py"],
}

# Selective mutation (Offutt et al., "An experimental determination of sufficient
# mutant operators", 1996): an arithmetic operator replaced by + and - (and the
# bitwise | and &) finds the same weak tests as replacing it by all twelve; the
# other targets multiply the run time by six and add mostly equivalent mutants.
EXCLUDED = [r"core/ReplaceBinaryOperator_.*_(Mul|Div|FloorDiv|Mod|Pow|LShift|RShift|BitXor)$",
            r"core/RemoveDecorator"]  # @dataclass/@property removal: a crash at import

CONFIG = """[cosmic-ray]
module-path = "proxy/{module}.py"
timeout = {timeout}
excluded-modules = []
test-command = "{python} -m pytest -x -q -p no:cacheprovider -o addopts= {tests}"

[cosmic-ray.distributor]
name = "local"

[cosmic-ray.filters.operators-filter]
exclude-operators = {excluded}
"""


def copy_tree(tree: Path) -> None:
    if tree.exists():
        shutil.rmtree(tree)
    shutil.copytree(ROOT, tree, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", "build", ".git", "*_cache", "__pycache__", "*.egg-info"))


def tree_of(module: str) -> Path:
    return TREE.with_name(f"tree-{module}")


def run_module(module: str, timeout: float, sample: int = 0, seed: str = ""
               ) -> dict[str, object]:
    import json

    tree = tree_of(module)

    db = BUILD / f"{module}.sqlite"
    cfg = BUILD / f"{module}.toml"
    cfg.write_text(CONFIG.format(module=module, timeout=timeout, python=sys.executable,
                                 tests=" ".join(MODULES[module]),
                                 excluded=json.dumps(EXCLUDED)))
    # Fewer hypothesis examples per mutant: the fuzz tests read this (tests/test_engine_fuzz).
    env = dict(os.environ, PYTHONPATH=str(tree), TLSINSPECTOR_FUZZ_EXAMPLES="25",
               TLSINSPECTOR_HYPOTHESIS_PROFILE="mutation")
    if not db.exists():
        subprocess.run([str(BIN / "cosmic-ray"), "init", str(cfg), str(db)], cwd=tree,
                       env=env, check=True)
        subprocess.run([str(BIN / "cr-filter-operators"), str(db), str(cfg)], cwd=tree,
                       env=env, check=True)
        skip_annotations(db, (tree / "proxy" / f"{module}.py").read_text())
        if sample:
            draw_sample(db, seed or module, sample)
    subprocess.run([str(BIN / "cosmic-ray"), "exec", str(cfg), str(db)], cwd=tree, env=env,
                   check=True)
    return summarize(module, db)


NOT_SAMPLED = "not sampled"
IN_ANNOTATION = "in a type annotation"


def annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) positions of every annotation: parameters, returns, annotated names.
    Every core module starts with ``from __future__ import annotations``, so these are
    strings never evaluated (PEP 563): a mutant inside one is equivalent by construction."""
    import ast

    spans = []
    for node in ast.walk(ast.parse(source)):
        ann: list[ast.expr | None] = []
        if isinstance(node, ast.arg):
            ann = [node.annotation]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            ann = [node.returns]
        elif isinstance(node, ast.AnnAssign):
            ann = [node.annotation]
        for a in ann:
            if a is not None and a.end_lineno is not None and a.end_col_offset is not None:
                spans.append(((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)))
    return spans


def skip_annotations(db: Path, source: str) -> None:
    """Record the mutants inside annotations as skipped, "in a type annotation"."""
    import sqlite3

    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    assert "from __future__ import annotations" in source
    spans = annotation_spans(source)
    with use_db(str(db), WorkDB.Mode.open) as work_db:
        jobs = [item.job_id for item in work_db.work_items
                if all(any(a <= tuple(m.start_pos) < b for a, b in spans)
                       for m in item.mutations)]
    with sqlite3.connect(db) as con:
        con.executemany("DELETE FROM work_results WHERE job_id = ?", [(j,) for j in jobs])
    with use_db(str(db), WorkDB.Mode.open) as work_db:
        work_db.set_multiple_results(jobs, WorkResult(worker_outcome=WorkerOutcome.SKIPPED,
                                                      output=IN_ANNOTATION))


def forget_survivors(db: Path) -> int:
    """Mark the mutants that survived as pending again (``--survivors``)."""
    import sqlite3

    with sqlite3.connect(db) as con:
        n = con.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED'").rowcount
    return n


def draw_sample(db: Path, seed: str, n: int) -> None:
    """Keep n of the pending mutants, drawn with ``seed``; record the others as
    skipped, "not sampled". cosmic-ray's job ids are random (uuid4) on every init, so
    the mutants are ordered by what they are (operator, occurrence): the same seed
    draws the same sample of the same code."""
    import random

    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(db), WorkDB.Mode.open) as work_db:
        items = sorted(work_db.pending_work_items, key=lambda item: [
            (m.operator_name, m.occurrence) for m in item.mutations])
        pending = [item.job_id for item in items]
        if n >= len(pending):
            return
        keep = set(random.Random(seed).sample(pending, n))
        work_db.set_multiple_results([j for j in pending if j not in keep], WorkResult(
            worker_outcome=WorkerOutcome.SKIPPED, output=NOT_SAMPLED))


EQUIVALENT = ROOT / "bench" / "equivalent_mutants.txt"


def mutated_lines(diff: str) -> list[str]:
    """The lines as the mutant writes them (the diff's added lines), stripped."""
    return [x[1:].strip() for x in diff.splitlines()
            if x.startswith("+") and not x.startswith("+++")]


def load_equivalent(path: Path = EQUIVALENT) -> dict[tuple[str, str], str]:
    """(module, mutated line) -> reason, from the reviewed list: one mutant a line,
    ``module | the line as the mutant writes it | why no input tells it apart``. The
    mutated line names the mutant whatever its line number or occurrence count."""
    out: dict[tuple[str, str], str] = {}
    if not path.exists():
        return out
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        if not raw.strip() or raw.startswith("#"):
            continue
        parts = [x.strip() for x in raw.split(" | ")]
        if len(parts) < 3 or not all(parts):
            raise SystemExit(f"{path}:{n}: want 'module | mutated line | reason'")
        # The module is the first field and the reason the last (a reason never holds
        # " | "); a bitwise-or mutant's line may, so the line is everything between.
        out[(parts[0], " | ".join(parts[1:-1]))] = parts[-1]
    return out


def summarize(module: str, db: Path) -> dict[str, object]:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    source = (tree_of(module) / "proxy" / f"{module}.py").read_text().splitlines()
    reviewed = load_equivalent()
    killed = survived = skipped = unsampled = annotations = equivalent = 0
    survivors: list[str] = []
    equivalents: list[str] = []
    with use_db(str(db), WorkDB.Mode.open) as work_db:
        for item, result in work_db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                if result.output == NOT_SAMPLED:
                    unsampled += 1
                elif result.output == IN_ANNOTATION:
                    annotations += 1
                else:
                    skipped += 1
                continue
            if result.test_outcome == TestOutcome.SURVIVED:
                survived += 1
                mutated = mutated_lines(result.diff or "")
                why = [reviewed[(module, x)] for x in mutated if (module, x) in reviewed]
                for m in item.mutations:
                    row = m.start_pos[0]
                    line = (f"proxy/{module}.py:{row}: {m.operator_name} "
                            f"#{m.occurrence}: {source[row - 1].strip()}  ->  "
                            f"{' / '.join(mutated)}")
                    if why:
                        equivalents.append(f"{line}  [equivalent: {why[0]}]")
                    else:
                        survivors.append(line)
                equivalent += bool(why)
            else:
                killed += 1  # killed, timed out or incompetent
        pending = work_db.num_work_items - work_db.num_results
    total = killed + survived
    score = 100.0 * killed / total if total else 0.0
    # Reviewed equivalent mutants cannot be killed: the score without them is the share
    # of the killable mutants the tests kill (both are printed).
    killable = total - equivalent
    net = 100.0 * killed / killable if killable else 0.0
    return {"module": module, "killed": killed, "survived": survived, "skipped": skipped,
            "unsampled": unsampled, "annotations": annotations, "pending": pending,
            "score": score, "equivalent": equivalent, "net_score": net,
            "survivors": sorted(survivors), "equivalents": sorted(equivalents)}


def main(argv: list[str]) -> int:
    sample, seed = 0, ""
    if "--sample" in argv:
        i = argv.index("--sample")
        sample = int(argv[i + 1])
        del argv[i:i + 2]
    if "--seed" in argv:
        i = argv.index("--seed")
        seed = argv[i + 1]
        del argv[i:i + 2]
    argv = [a for a in argv if a not in ("--resume", "--no-report", "--survivors")]
    modules = argv or list(MODULES)
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        print(f"unknown module(s): {', '.join(unknown)}; known: {', '.join(MODULES)}",
              file=sys.stderr)
        return 2
    BUILD.mkdir(parents=True, exist_ok=True)
    if len(modules) > 1:
        # One process per module: in one process, cosmic-ray's init generated no
        # mutants for the second module (seen with 8.7).
        for m in modules:
            subprocess.run([sys.executable, __file__, m, "--no-report",
                            *(["--sample", str(sample)] if sample else []),
                            *(["--seed", seed] if seed else [])], check=True)
        results = [summarize(m, BUILD / f"{m}.sqlite") for m in modules]
    else:
        [m] = modules
        copy_tree(tree_of(m))
        db = BUILD / f"{m}.sqlite"
        if "--survivors" in sys.argv:
            skip_annotations(db, (tree_of(m) / "proxy" / f"{m}.py").read_text())
            print(f"{m}: {forget_survivors(db)} surviving mutants to run again", flush=True)
        elif db.exists() and "--resume" not in sys.argv:  # a run cut short leaves its database
            db.unlink()
        results = [run_module(m, timeout=120.0, sample=sample, seed=seed)]
        if "--no-report" in sys.argv:
            return 0
    print("| module | mutants | in annotations | run | killed | survived "
          "| of them reviewed equivalent | score | score without the equivalent | 95% interval |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        run = r["killed"] + r["survived"]  # type: ignore[operator]
        total = run + r["unsampled"] + r["pending"]  # type: ignore[operator]
        note = " (sample)" if r["unsampled"] else ""
        note += f" ({r['pending']} not run)" if r["pending"] else ""
        killable = run - r["equivalent"]  # type: ignore[operator]
        print(f"| proxy/{r['module']}.py | {total} | {r['annotations']} | {run} "
              f"| {r['killed']} | {r['survived']} | {r['equivalent']} "
              f"| {r['score']:.1f}%{note} | {r['net_score']:.1f}% "
              f"| {interval(r['killed'], killable, total)} |")  # type: ignore[arg-type, operator]
    for r in results:
        print(f"\n## surviving mutants: proxy/{r['module']}.py\n")
        for s in r["survivors"]:  # type: ignore[attr-defined]
            print(f"- {s}")
        print(f"\n## reviewed equivalent mutants that survived: proxy/{r['module']}.py\n")
        for s in r["equivalents"]:  # type: ignore[attr-defined]
            print(f"- {s}")
    return 0


def interval(killed: int, n: int, population: int) -> str:
    """95% interval of a sampled score (Wilson, with the finite-population correction
    when the sample is a large share of the module): "all" when every mutant ran."""
    import math

    if n <= 0:
        return "-"
    if n >= population:
        return "all run"
    p, z = killed / n, 1.96
    fpc = math.sqrt((population - n) / (population - 1)) if population > 1 else 0.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n) * fpc
    return f"{100 * max(0.0, centre - half):.0f}-{100 * min(1.0, centre + half):.0f}%"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
