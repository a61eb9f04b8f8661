"""Every scenario x every client: a Markdown table, JSON and an HTML grid (index.html)."""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tlsinspector.lab.certs import make_certs
from tlsinspector.lab.peers import CLIENT_KINDS
from tlsinspector.lab.report_pages import write_matrix_index
from tlsinspector.lab.reproduce import Verdict, reproduce, tally
from tlsinspector.proxy.scenario import load_scenario


def run_matrix(scenarios: list[Path], clients: list[str], out: Path,
               workers: int = 2) -> list[Verdict]:
    out.mkdir(parents=True, exist_ok=True)
    certs = make_certs(out / "certs")
    extra = [c for c in clients if c not in CLIENT_KINDS]
    total = len(scenarios) * (len(clients) - len(extra)) + sum(
        c in (load_scenario(p).expect or {}) for p in scenarios for c in extra)
    done, start = 0, time.monotonic()
    tty = sys.stderr.isatty()
    results: list[Verdict] = []

    def one(path: Path) -> list[Verdict]:
        # An opt-in client (chromium) runs only for the scenarios that expect it.
        expect = load_scenario(path).expect or {}
        kinds = [c for c in clients if c in CLIENT_KINDS or c in expect]
        return reproduce(path, kinds, out_dir=out / path.stem, certs=certs)

    with ThreadPoolExecutor(workers) as ex:
        for verdicts in ex.map(one, scenarios):
            results += verdicts
            done += len(verdicts)
            print(progress(done, total, time.monotonic() - start, verdicts[0].scenario,
                           tty), end="", file=sys.stderr, flush=True)
    if tty:
        print(file=sys.stderr)
    (out / "matrix.json").write_text(json.dumps([v.to_json() for v in results], indent=1))
    (out / "matrix.md").write_text(markdown(results, clients))
    write_matrix_index(out / "index.html", [load_scenario(p) for p in scenarios], results,
                       clients)
    return results


def progress(done: int, total: int, elapsed: float, scenario: str, tty: bool) -> str:
    """The progress after a scenario: a bar redrawn in place (``\\r``) on a terminal,
    one plain line per scenario otherwise (a CI log or a file gets no carriage returns
    and no run of bars on one line)."""
    if not tty:
        return f"{done}/{total} {elapsed:.0f}s {scenario}\n"
    bar = "#" * (30 * done // total)
    return f"\r[{bar:30}] {done}/{total} {elapsed:5.0f}s {scenario[:30]:30}"


def markdown(results: list[Verdict], clients: list[str]) -> str:
    by: dict[str, dict[str, Verdict]] = {}
    for v in results:
        by.setdefault(v.scenario, {})[v.client] = v
    lines = ["| scenario | " + " | ".join(clients) + " |",
             "|---|" + "---|" * len(clients)]
    for name in sorted(by):
        cells = []
        for c in clients:
            cell = by[name].get(c)
            if cell is None:
                cells.append("")
                continue
            if cell.outcome == "skipped":
                cells.append("n/a")  # the scenario cannot use this client
                continue
            mark = ("" if cell.reproduced else " (no expect: entry)" if cell.no_expectation
                    else " **(unexpected)**")
            cells.append(f"{cell.outcome}{mark}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ran = [v for v in results if v.outcome != "skipped"]
    differ = [v for v in ran if not v.reproduced and not v.no_expectation]
    lines += ["", tally(ran) + (" (a scenario written for a custom client)"
                                if any(v.no_expectation for v in ran) else "") + "."]
    for v in differ:
        lines.append(f"- {v.scenario} / {v.client}: " + "; ".join(v.differences))
    return "\n".join(lines) + "\n"
