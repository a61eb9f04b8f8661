"""HTML pages for reproduce and matrix runs: the verdict beside the ladders, and the grid.

``reproduce --out DIR`` writes DIR/report.html: the scenario, per client the
expected and actual outcome and error text side by side with the verdict, and
the ladder of every connection in DIR/inspector.jsonl. ``matrix --out DIR``
writes DIR/index.html: scenarios x clients coloured by outcome, each cell a
link to that client's lane in the scenario's report.html.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tlsinspector.lab.reproduce import Verdict, tally
from tlsinspector.proxy.scenario import Scenario, fault_class
from tlsinspector.report import lane_id, page, read_log, render


def error_text(output: str, lines: int = 3) -> str:
    """The last few non-empty lines a client printed: where stacks put the error."""
    tail = [x.strip() for x in output.strip().splitlines() if x.strip()][-lines:]
    return " | ".join(tail)


def _classes(scenario: Scenario) -> list[str]:
    return sorted({fault_class(f) for f in scenario.faults})


def verdict_rows(scenario: Scenario, verdicts: Sequence[Verdict]) -> list[dict[str, Any]]:
    rows = []
    for v in verdicts:
        expect = (scenario.expect or {}).get(v.client)
        exp: Mapping[str, Any] = expect if isinstance(expect, Mapping) else {}
        conns = sorted({str(e["conn"]) for e in v.events if "conn" in e},
                       key=lambda c: (len(c), c))
        rows.append({"client": v.client, "conns": [lane_id(c) for c in conns],
                     "expected_outcome": str(exp.get("outcome", "error")) if exp else "",
                     "expected_error": str(exp.get("error", "")),
                     "outcome": v.outcome, "error_text": error_text(v.client_output),
                     "client_output": v.client_output[-4000:],
                     "reproduced": v.reproduced, "differences": list(v.differences)})
    return rows


def write_reproduce_report(out: Path, log: Path, scenario: Scenario,
                           verdicts: Sequence[Verdict]) -> Path:
    """DIR/report.html for one reproduce run."""
    extra = {"scenario": {"name": scenario.name, "description": scenario.description,
                          "reproduces": scenario.reproduces or "",
                          "classes": _classes(scenario)},
             "verdicts": verdict_rows(scenario, verdicts)}
    events = read_log(log).events if log.exists() else []
    out.write_text(render(events, f"tlsinspector reproduce: {scenario.name}", extra),
                   encoding="utf-8")
    return out


def matrix_html(scenarios: Sequence[Scenario], results: Sequence[Verdict],
                clients: Sequence[str], root: Path) -> str:
    """The grid page; every value is escaped (descriptions and outputs are user text)."""
    by: dict[str, dict[str, Verdict]] = {}
    for v in results:
        by.setdefault(v.scenario, {})[v.client] = v
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in clients)
    rows = []
    for s in sorted(scenarios, key=lambda s: s.name):
        desc = s.description.strip().splitlines()
        cells = []
        for c in clients:
            found = by.get(s.name, {}).get(c)
            if found is None:
                cells.append("<td></td>")
                continue
            v = found
            cls = ("exp-" if v.reproduced or v.no_expectation else "unexp-") + v.outcome
            conns = sorted({str(x["conn"]) for x in v.events if "conn" in x})
            report = (v.out_dir / "report.html") if v.out_dir else None
            href = ""
            if report is not None:
                try:
                    href = report.relative_to(root).as_posix()
                except ValueError:
                    href = report.as_uri()
                if conns:
                    href += "#" + lane_id(conns[0])
            label = v.outcome + ("" if v.reproduced else " (no expect: entry)"
                                 if v.no_expectation else " (unexpected)")
            why = "; ".join(v.differences) or error_text(v.client_output, 1)
            text = f"<a href=\"{e(href)}\">{e(label)}</a>" if href else e(label)
            cells.append(f"<td class=\"{cls}\" title=\"{e(why)}\">{text}"
                         f"<div class=\"d\">{e(error_text(v.client_output, 1)[:80])}</div></td>")
        rows.append(f"<tr><th class=\"scen\"><b>{e(s.name)}</b><br>"
                    f"<span class=\"fc\">fault class: {e(', '.join(_classes(s)))}</span><br>"
                    f"<span class=\"d\">{e(' '.join(desc)[:300])}</span></th>{''.join(cells)}</tr>")
    body = ("<header><h1>tlsinspector matrix</h1>"
            f"<p>{e(tally(results))}</p></header>\n"
            "<p class=\"legend\" id=\"legend\"><span class=\"exp-ok\">ok, as expected</span>"
            "<span class=\"exp-error\">error, as expected</span>"
            "<span class=\"unexp-ok\">unexpected</span></p>\n"
            f"<table class=\"matrix\"><tr><th>scenario</th>{head}</tr>\n"
            + "\n".join(rows) + "</table>")
    return page("tlsinspector matrix", body)


def write_matrix_index(out: Path, scenarios: Sequence[Scenario], results: Sequence[Verdict],
                       clients: Sequence[str]) -> Path:
    out.write_text(matrix_html(scenarios, results, clients, out.parent), encoding="utf-8")
    return out
