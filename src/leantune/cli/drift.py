"""`leantune drift check`: are the prompts a model gets now unlike what it was trained for?"""

from __future__ import annotations

import json
import sys

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
