"""The `leantune` command: one module per verb group, each of which parses, calls one library function and
renders; the rendering lives next to its domain (plan/render.py, data/render.py, runs/views.py, ...).

Errors a user can cause (UserError) print without a traceback and exit 2; a training stopped on purpose
(preemption, budget) prints how to resume and exits with its own code; usage errors are typer's (exit 2)."""

from __future__ import annotations

import os
import sys

import typer
from rich.markup import escape

from ..errors import UserError
from ..training.signals import TrainingStopped
from . import data, drift, model_verbs, plan, runs, ui
from .common import err

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Fine-tune open-weight language models for the least money that does the job.")
app.command()(model_verbs.train)
app.command("eval")(model_verbs.eval_command)
app.command()(model_verbs.generate)
app.command()(plan.plan)
app.command()(model_verbs.demo)
app.command()(model_verbs.export)
app.command()(model_verbs.launch)
app.command()(model_verbs.serve)
app.command()(ui.ui)
app.add_typer(data.app, name="data")
app.add_typer(runs.runs_app, name="runs")
app.add_typer(runs.budget_app, name="budget")
app.add_typer(runs.registry_app, name="registry")
app.add_typer(drift.app, name="drift")


def main() -> None:
    try:
        app(prog_name="leantune")  # standalone: typer reports usage errors itself and exits
    except UserError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)  # 'leantune[serve]' is not markup
        sys.exit(e.exit_code)
    except TrainingStopped as e:
        if os.environ.get("RANK", "0") == "0":  # with several processes, rank 0 says how to resume, once
            err.print(f"[yellow]{escape(str(e))}[/]", highlight=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        sys.exit(130)
