"""`leantune runs ...`, `leantune budget`, `leantune registry ...`: the index, costs and adapter versions.
Nothing here loads a model, so nothing here imports torch (tests/test_architecture.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from ..errors import ConfigError
from ..runs.cost import usd
from ..runs.index import RunIndex
from ..runs.ledger import row_for, run_dirs, set_project_budget
from ..runs.registry import check_name, promote, push, rollback, versions
from ..runs.views import (
    budget_line,
    compare_table,
    diff_lines,
    loss_plot,
    registry_table,
    runs_table,
    show_run,
    totals_line,
)
from .common import RUNS_DIR, err

runs_app = typer.Typer(no_args_is_help=True, help="Runs: the index, costs, comparisons.")
budget_app = typer.Typer(invoke_without_command=True, help="Spend so far against a project budget.")
registry_app = typer.Typer(no_args_is_help=True, help="Named, versioned adapters with stages.")


@runs_app.command("ls")
def runs_ls(runs_dir: str = RUNS_DIR, project: Optional[str] = typer.Option(None, "--project"),
            as_json: bool = typer.Option(False, "--json")):
    """Every run: id, name, status, method, base, data, steps, best eval, GPU-hours, dollars, start."""
    runs = RunIndex(runs_dir).runs(project)
    if as_json:
        print(json.dumps(runs, indent=2))
        return
    console = Console()
    console.print(runs_table(runs, f"runs in {runs_dir}" + (f", project {project}" if project else "")))
    console.print(totals_line(runs), highlight=False)


@runs_app.command("show")
def runs_show(run: str = typer.Argument(..., help="run id, id prefix, name or directory"), runs_dir: str = RUNS_DIR):
    """One run: plan vs actual (memory, time, dollars), losses, the config fields that matter, artifacts."""
    show_run(Console(), RunIndex(runs_dir).find(run))


@runs_app.command("compare")
def runs_compare(runs: List[str] = typer.Argument(..., help="two or more runs"), runs_dir: str = RUNS_DIR,
                 output: Optional[str] = typer.Option(None, "-o", "--output", help="PNG path for the loss curves")):
    """Runs side by side (results, cost, the config fields that differ) and one PNG overlaying their loss curves."""
    if len(runs) < 2:
        raise ConfigError("runs compare needs at least two runs.")
    index = RunIndex(runs_dir)
    found = [index.find(r) for r in runs]
    console = Console()
    console.print(compare_table(found))
    target = Path(output) if output else Path(runs_dir) / f"compare-{'-vs-'.join(r['id'][:15] for r in found)}.png"
    console.print(f"loss curves: {loss_plot(found, target)}", highlight=False)


@runs_app.command("diff")
def runs_diff(a: str = typer.Argument(...), b: str = typer.Argument(...), runs_dir: str = RUNS_DIR):
    """The config fields (of those that change the result) in which two runs differ."""
    index = RunIndex(runs_dir)
    for line in diff_lines(index.find(a), index.find(b)):
        Console().print(line, highlight=False)


@runs_app.command("reindex")
def runs_reindex(runs_dir: str = RUNS_DIR):
    """Rebuild the index from the run directories (a damaged directory is reported and skipped)."""
    dirs = run_dirs(runs_dir)
    problems = RunIndex(runs_dir).reindex(dirs, row_for)
    for p in problems:
        err.print(f"[yellow]skipped:[/] {p}", highlight=False)
    Console().print(f"indexed {len(dirs) - len(problems)} of {len(dirs)} run directories in {runs_dir}")


@budget_app.callback()
def budget_show(ctx: typer.Context, runs_dir: str = RUNS_DIR, project: str = typer.Option("default", "--project")):
    """Spend so far against the project's budget."""
    if ctx.invoked_subcommand:
        return
    index = RunIndex(runs_dir)
    Console().print(budget_line(project, index.budget(project)[0], index.spent(project)), highlight=False)


@budget_app.command("set")
def budget_set(amount: str = typer.Argument(..., help="dollars, e.g. 200"), runs_dir: str = RUNS_DIR,
               project: str = typer.Option("default", "--project")):
    """Set the project's budget in dollars."""
    index = RunIndex(runs_dir)
    dollars = set_project_budget(index, project, amount)
    Console().print(f"project '{project}': budget {usd(dollars)}; {usd(index.spent(project))} spent so far.", highlight=False)


@registry_app.command("push")
def registry_push(run: str = typer.Argument(...), name: str = typer.Option(..., "--name"), runs_dir: str = RUNS_DIR):
    """Register a run's adapter (or model) as the next version of NAME."""
    check_name(name)
    index = RunIndex(runs_dir)
    Console().print(f"{name} v{push(index, index.find(run), name)}")


@registry_app.command("ls")
def registry_ls(runs_dir: str = RUNS_DIR):
    """Every registered version with its stage, source run, eval loss and cost."""
    Console().print(registry_table(versions(RunIndex(runs_dir))))


@registry_app.command("show")
def registry_show(name: str = typer.Argument(...), runs_dir: str = RUNS_DIR):
    """The versions of NAME, where their files are, and which run made them."""
    check_name(name)
    for r in versions(RunIndex(runs_dir), name):
        Console().print(f"{name} v{r['version']} [{r['stage']}] from run {r['run_id']}: {r['path']} {r['metrics']}",
                        highlight=False)


@registry_app.command("promote")
def registry_promote(name: str = typer.Argument(...), version: int = typer.Argument(...),
                     stage: str = typer.Option("production", "--stage"), runs_dir: str = RUNS_DIR):
    """Move a version to a stage (none / staging / production / archived)."""
    check_name(name)
    promote(RunIndex(runs_dir), name, version, stage)
    Console().print(f"{name} v{version} -> {stage}")


@registry_app.command("rollback")
def registry_rollback(name: str = typer.Argument(...), runs_dir: str = RUNS_DIR):
    """Give production back to the version that held it before the current one."""
    check_name(name)
    old, new = rollback(RunIndex(runs_dir), name)
    Console().print(f"{name}: production v{old} -> v{new} (v{old} archived)")
