"""`leantune drift check`: are the prompts a model gets now unlike what it was trained for? `drift compare`: did an
update (`train --from`) gain on the new rows without losing the old task? `drift watch`: both, behind a gate."""

from __future__ import annotations

import json
import sys

from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .common import RUNS_DIR, err

app = typer.Typer(no_args_is_help=True, help="Detect drift in production prompts against a run's held-out set.")


@app.command("check")
def check(
    run: str = typer.Argument(..., help="a run (directory, id, name@stage, name@vN)"),
    current: str = typer.Option(..., "--current", help="a data file of prompts (labelled rows add the task metric), "
                                "or serve-log:NAME (RUNS/requests/NAME.jsonl, from leantune serve --log-requests)"),
    alpha: float = typer.Option(0.05, "--alpha", help="false-alarm rate of the whole check (Holm-corrected)"),
    min_rows: int = typer.Option(30, "--min-rows", min=2, help="refuse to judge fewer current prompts"),
    permutations: int = typer.Option(200, "--permutations", min=10, help="permutations for the MMD test"),
    as_json: bool = typer.Option(False, "--json", help="print drift.json instead of the table"),
    runs_dir: str = RUNS_DIR,
):
    """Compare current prompts with the run's held-out prompts; exit 1 when drift is found (for cron and CI)."""
    from ..drift.check import check as run_check

    report = run_check(run, current, runs_dir, alpha, min_rows, permutations,
                       say=lambda m: err.print(m, highlight=False))
    if as_json:
        from dataclasses import asdict

        print(json.dumps(asdict(report), indent=2))
    else:
        table = Table(title=report.summary())
        for column in ("signal", "p (Holm)", "effect", "minimum", "drift"):
            table.add_column(column)
        for s in report.signals:
            table.add_row(s["name"], f"{s['p_adjusted']:.3g}", f"{s['effect']:.4g}", f"{s['min_effect']:g}",
                          "[red]yes[/]" if s["drifted"] else "no")
        Console().print(table)
    sys.exit(1 if report.verdict == "drift" else 0)


@app.command("compare")
def compare(
    run: str = typer.Argument(..., help="an update run (made by `leantune train --from PARENT`)"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="at most this many items per task (a random sample)"),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    runs_dir: str = RUNS_DIR,
):
    """Score an update against its parent on the same items (gain, retention, forgetting); writes update.json."""
    from ..drift.update import compare_run
    from ..evaluation.update import update_lines

    report = compare_run(run, runs_dir, limit, batch_size, note=lambda m: err.print(m, highlight=False))
    for line in update_lines(report):
        Console().print(line, highlight=False)


@app.command("watch")
def watch(policy: str = typer.Argument(..., help="policy YAML: production, current, new_data, min_rows, alpha, "
                                       "budget_usd, gate (min_gain, retention_margin, forgetting_margin), train")):
    """One decision: check drift; if drifted and the policy allows, update within budget, gate, promote.
    Exit 0: nothing to do or promoted; 1: drift found and production kept (see the reasons)."""
    from ..drift.watch import watch as run_watch

    decision = run_watch(policy, say=lambda m: err.print(m, highlight=False))
    print(json.dumps(decision))
    sys.exit(1 if decision["action"] == "alert" else 0)
