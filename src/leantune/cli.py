"""The `leantune` command: parses arguments, calls one library function per command, renders results.

No logic lives here; every command is a function a notebook can call the same way.
"""

from __future__ import annotations

import sys
from typing import List, Optional

import typer
from rich.console import Console

from .errors import ConfigError, UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Fine-tune open-weight language models for the least money that does the job.")
err = Console(stderr=True)
RUNS_DIR = typer.Option("runs", "--runs-dir", help="the runs root (output.runs_dir)")


def split_train_args(args: list[str]) -> tuple[str | None, list[str]]:
    """`[CONFIG.yaml] [key=value ...]` -> (config path or None, overrides)."""
    paths = [a for a in args if "=" not in a]
    if len(paths) > 1:
        raise ConfigError(f"Give at most one config file; got {', '.join(paths)}. Overrides take the form key=value.")
    return (paths[0] if paths else None), [a for a in args if "=" in a]


@app.command()
def train(
    args: Optional[List[str]] = typer.Argument(None, help="[CONFIG.yaml] [key=value ...], e.g. training.lr=2e-4"),
    resume: Optional[str] = typer.Option(None, "--resume", help="continue the run in this directory from its last checkpoint"),
    force: bool = typer.Option(False, "--force", help="train even if the plan predicts it will not fit hardware.memory_gib"),
    allow_duplicate: bool = typer.Option(False, "--allow-duplicate", help="train even if a completed run had the same config, data and model"),
):
    """Fine-tune a model from a config file and/or dotted overrides (any method, any objective)."""
    from .runs.cost import process_start_time
    from .training.api import train as run_training

    config, overrides = split_train_args(args or [])
    result = run_training(config, overrides, resume=resume, force=force, allow_duplicate=allow_duplicate,
                          started_at=process_start_time())
    err.print(
        f"[green]done[/]: {result.steps} steps, loss {result.final_loss:.4f}"
        + (f", eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else "")
        + f", {result.tokens_per_s:.0f} tok/s. Adapter and report in {result.run_dir}"
    )
    if result.evaluation is not None:
        Console().print(eval_table(result.evaluation))


def eval_table(result):
    """An EvalResult as a rich table (the rows of the report's markdown table)."""
    from rich.table import Table

    table = Table(title=f"evaluation of {result.target}")
    for col in result.columns:
        table.add_column(col)
    for row in result.rows():
        table.add_row(*row)
    return table


@app.command("eval")
def eval_command(
    target: str = typer.Argument(..., help="a run (directory, id or name) or a model (smollm2-135m, HF directory, .gguf)"),
    task: Optional[List[str]] = typer.Option(None, "--task", help="held-out, trivia, analogies, a built-in dataset or a data "
                                             "file; repeat for several (default: a run's held-out split + the general suite)"),
    metric: Optional[List[str]] = typer.Option(None, "--metric", help="loss, accuracy, multiple_choice, exact_match, token_f1, "
                                               "preference_accuracy; repeat for several (default: what fits each task)"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="at most this many items per task (a random sample)"),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    runs_dir: str = RUNS_DIR,
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    no_save: bool = typer.Option(False, "--no-save", help="do not write eval.json / report.md into the run"),
):
    """Score a run against its base model on the same items (task metrics + forgetting on the general suite), or a model alone."""
    from .evaluation.api import evaluate

    result = evaluate(target, task or (), metric or (), limit, batch_size, save=not no_save, runs_dir=runs_dir,
                      console=None if as_json else err)
    if as_json:
        print(result.to_json())
        return
    Console().print(eval_table(result))
    for line in result.summary():
        err.print(line, highlight=False)


@app.command()
def generate(
    model: str = typer.Argument(..., help="a run directory, or a base model (smollm2-135m, HF directory, .gguf)"),
    prompt: str = typer.Argument(..., help="the user message"),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1),
    system: Optional[str] = typer.Option(None, "--system", help="an optional system message"),
):
    """Print the model's reply to PROMPT, formatted with its chat template."""
    from .generate import generate as run_generate

    print(run_generate(model, prompt, max_new_tokens, system))


@app.command()
def plan(
    config: Optional[str] = typer.Argument(None, help="a run config (the YAML `leantune train` takes); options below override it"),
    model: Optional[str] = typer.Option(None, "--model", help="preset name, HF model directory, config.json or .gguf"),
    method: Optional[str] = typer.Option(None, "--method", help="auto | full | lora | qlora | dora"),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="GPU type (see --list-gpus); omit to compare all"),
    gpus: int = typer.Option(1, "--gpus", help="GPU count (with --gpu)"),
    seq_len: Optional[int] = typer.Option(None, "--seq-len"),
    batch: Optional[int] = typer.Option(None, "--batch", help="micro-batch per GPU"),
    tokens: Optional[str] = typer.Option(None, "--tokens", help="training tokens, e.g. 20M"),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="count tokens from this dataset instead"),
    epochs: Optional[float] = typer.Option(None, "--epochs"),
    rank: Optional[int] = typer.Option(None, "--rank", help="LoRA rank"),
    grad_checkpointing: Optional[bool] = typer.Option(None, "--grad-checkpointing/--no-grad-checkpointing"),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw | adamw8bit"),
    sharding: str = typer.Option("none", "--sharding", help="none | zero1 | zero2 | zero3 | fsdp"),
    attention: str = typer.Option("sdpa", "--attention", help="sdpa | eager"),
    dpo: bool = typer.Option(False, "--dpo", help="plan a DPO run (pairs of sequences, a reference pass)"),
    budget: Optional[float] = typer.Option(None, "--budget", help="dollars available"),
    spot: bool = typer.Option(False, "--spot", help="rank by spot prices"),
    mfu: Optional[float] = typer.Option(None, "--mfu", help="override the assumed model-FLOPs utilisation"),
    prices: Optional[str] = typer.Option(None, "--prices", help="JSON file overriding the GPU price table"),
    as_json: bool = typer.Option(False, "--json"),
    list_models: bool = typer.Option(False, "--list-models"),
    list_gpus: bool = typer.Option(False, "--list-gpus"),
):
    """Memory, time and cost of a fine-tune before a GPU-hour is spent; ranks the setups that fit."""
    import json as _json
    from dataclasses import replace

    from .plan import load_catalog, make_plan
    from .plan.render import print_gpus, print_models, print_plan
    from .plan.setup import Setup

    if list_models or list_gpus:
        print_models() if list_models else print_gpus(load_catalog(prices))
        return
    base, from_config = Setup(), {}
    if config:
        from .config import load_config
        from .plan.setup import setup_from_run_config

        run = load_config(config)
        base = setup_from_run_config(run)  # AdaLoRA plans as LoRA of its initial rank
        from_config = {"model": run.model.base, "method": base.method, "dataset": run.data.train, "epochs": float(run.training.epochs)}
    given = {"seq_len": seq_len, "micro_batch": batch, "lora_rank": rank, "grad_checkpointing": grad_checkpointing}
    setup = replace(
        base, **{k: v for k, v in given.items() if v is not None},
        optimizer=optimizer, sharding=sharding, attention=attention, gpus=gpus, objective="dpo" if dpo else "sft",
    )
    model = model or from_config.get("model")
    if not model:
        raise ConfigError("Say which model: --model llama-3.1-8b (see --list-models), a model directory, or a run config file.")
    result = make_plan(
        model, method or from_config.get("method", "auto"), gpu,
        tokens=tokens, dataset=dataset or (None if tokens else from_config.get("dataset")),
        epochs=epochs or from_config.get("epochs", 1.0), setup=setup,
        budget=budget, spot=spot, mfu=mfu, prices=prices,
    )
    if as_json:
        print(_json.dumps(result.to_dict(), indent=2))
    else:
        print_plan(result)
    if result.chosen is not None and not result.chosen.fits:
        raise typer.Exit(1)


data_app = typer.Typer(no_args_is_help=True, help="Datasets: built-in ones and your own files.")
app.add_typer(data_app, name="data")


@data_app.command("list")
def data_list():
    """The built-in datasets, with their size, source package and license."""
    from rich.table import Table

    from .data.builtin import BUILTIN_INFO

    table = Table(title="built-in datasets (installed with the project, never downloaded)")
    for col in ("name", "examples", "from package", "license", "what"):
        table.add_column(col)
    for d in BUILTIN_INFO.values():
        table.add_row(d.name, f"{len(d.load()):,}", d.package, d.license, d.description)
    Console().print(table)


@data_app.command("preview")
def data_preview(
    data: str = typer.Argument(..., help="a data file or a built-in dataset name"),
    n: int = typer.Option(3, "-n", min=1, help="how many rows"),
    model: str = typer.Option("smollm2-135m", "--model", help="whose chat template and tokenizer to use"),
    max_seq_len: int = typer.Option(256, "--max-seq-len", min=8),
    train_on: str = typer.Option("all_assistant", "--train-on", help="all_assistant | last_assistant | everything"),
    fmt: str = typer.Option("auto", "--format", help="row format; auto-detected by default"),
    column: List[str] = typer.Option([], "--column", help="map a field name: OURS=THEIRS, e.g. prompt=question"),
    truncation: str = typer.Option("keep_end", "--truncation", help="keep_end | keep_start | drop (data.truncation)"),
):
    """Show rows exactly as the model will see them: trained tokens in green, masked ones dimmed, and what the
    truncation policy cuts off an over-long row in red."""
    from rich.text import Text

    from .data import load_examples
    from .data.preview import preview_rows
    from .models.loading import load_tokenizer
    from .data.tokenize import TRAIN_ON, TRUNCATION

    if train_on not in TRAIN_ON:
        raise ConfigError(f"--train-on '{train_on}' is not one of {', '.join(TRAIN_ON)}.")
    examples = load_examples(data, fmt, parse_columns(column))[:n]
    console = Console()
    if truncation not in TRUNCATION:
        raise ConfigError(f"--truncation '{truncation}' is not one of {', '.join(TRUNCATION)}.")
    for row in preview_rows(load_tokenizer(model), examples, max_seq_len, train_on, truncation):
        note = f", [red]longer than --max-seq-len {row.truncated_at}[/]" if row.truncated_at else ""
        console.print(f"[bold]{row.source}[/]: {row.tokens} tokens, {row.trained_tokens} trained{note}")
        text = Text()
        for segment, trained in row.segments:
            text.append(segment, style="bold green" if trained else "dim")
        console.print(text)
        if row.dropped_where:
            what = {"start": "cuts off its first", "end": "cuts off its last", "row": "skips the whole row of"}[row.dropped_where]
            console.print(Text(f"training ({truncation}) {what} {row.tokens - row.truncated_at if row.dropped_where != 'row' else row.tokens} "
                               f"tokens: ", style="bold red") + Text(row.dropped[:300] + ("..." if len(row.dropped) > 300 else ""), style="red"))
        if row.rejected is not None:
            console.print(Text("rejected reply (DPO pushes its likelihood down): ", style="bold red") + Text(row.rejected))
        console.print()
    console.print("[dim]dim: context the model sees but is not trained on[/]  [bold green]green: tokens that carry the loss[/]")


def parse_columns(pairs: list[str]) -> dict[str, str]:
    columns = {}
    for pair in pairs:
        ours, sep, theirs = pair.partition("=")
        if not sep or not ours.strip() or not theirs.strip():
            raise ConfigError(f"--column '{pair}' must look like OURS=THEIRS, e.g. --column prompt=question.")
        columns[ours.strip()] = theirs.strip()
    return columns


def _row_counter(console: Console):
    """Wraps a row iterator with a live row count on stderr, so a long check is never silent."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    def wrap(pairs):
        with Progress(SpinnerColumn(), TextColumn("{task.completed:,} rows"), TimeElapsedColumn(), console=console,
                      transient=True) as bar:
            task = bar.add_task("check")
            for i, pair in enumerate(pairs, start=1):
                if i % 2000 == 0:
                    bar.update(task, completed=i)
                yield pair

    return wrap


@data_app.command("check")
def data_check(
    data: str = typer.Argument(..., help="a data file (.jsonl .json .csv .tsv .parquet) or a built-in dataset name"),
    eval_data: Optional[str] = typer.Option(None, "--eval", help="an eval set to check for train/eval overlap"),
    model: Optional[str] = typer.Option(None, "--model", help="tokenizer for token lengths and padding (e.g. smollm2-135m)"),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", min=8, help="count rows longer than this (needs --model; default 256)"),
    fmt: str = typer.Option("auto", "--format", help="row format; auto-detected per row by default"),
    column: List[str] = typer.Option([], "--column", help="map a field name: OURS=THEIRS, e.g. prompt=question"),
    near_threshold: float = typer.Option(0.8, "--near-dup-threshold", help="Jaccard similarity that counts as near-duplicate"),
    micro_batch_size: int = typer.Option(8, "--micro-batch-size", min=1, help="for the padding estimate"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
):
    """Find malformed, duplicate, conflicting, over-long and leaking rows before training. Exit 1 on errors."""
    import json

    from .data.check import check_dataset
    from .data.check_render import print_check

    tokenizer = None
    if seq_len is not None and not model:
        raise ConfigError("--seq-len needs --model: token lengths come from the model's tokenizer, "
                          "e.g. --model smollm2-135m --seq-len 512.")
    if model:
        from .models.loading import load_tokenizer

        tokenizer = load_tokenizer(model)
    report = check_dataset(
        data, eval_data, fmt=fmt, columns=parse_columns(column), near_threshold=near_threshold, tokenizer=tokenizer,
        seq_len=(seq_len or 256) if tokenizer is not None else None, micro_batch_size=micro_batch_size,
        progress=None if as_json else _row_counter(err),
    )
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_check(report)
    if report.errors:
        raise typer.Exit(1)


@data_app.command("clean")
def data_clean(
    data: str = typer.Argument(..., help="the data file to clean (never modified)"),
    output: str = typer.Option(..., "-o", "--output", help="where to write the clean rows (.jsonl)"),
    fmt: str = typer.Option("auto", "--format", help="row format; auto-detected per row by default"),
    column: List[str] = typer.Option([], "--column", help="map a field name: OURS=THEIRS, e.g. prompt=question"),
    near_threshold: float = typer.Option(0.8, "--near-dup-threshold", help="Jaccard similarity that counts as near-duplicate"),
    keep_near: bool = typer.Option(False, "--keep-near-duplicates", help="drop exact duplicates only"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
):
    """Drop malformed and duplicate rows, repair broken encoding, trim whitespace. Writes OUTPUT and
    OUTPUT.rejected.jsonl (every dropped row with its reason); running it on its own output changes nothing."""
    import json

    from .data.clean import clean_file

    summary = clean_file(data, output, fmt=fmt, columns=parse_columns(column), near_threshold=near_threshold,
                         drop_near_duplicates=not keep_near, progress=None if as_json else _row_counter(err))
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
        return
    console = Console()
    reasons = ", ".join(f"{code} {n:,}" for code, n in summary.dropped.most_common()) or "none"
    console.print(f"[bold]data clean[/] {summary.input}: {summary.rows:,} rows -> kept {summary.kept:,}, "
                  f"dropped {sum(summary.dropped.values()):,} ({reasons}); text repaired or trimmed in {summary.repaired:,} "
                  f"kept rows; {summary.seconds:.1f}s", highlight=False)
    console.print(f"  clean rows:    {summary.output}\n  dropped rows:  {summary.rejected_output} (each with its reason)",
                  highlight=False)


runs_app = typer.Typer(no_args_is_help=True, help="Runs: the index, costs, comparisons.")
app.add_typer(runs_app, name="runs")


def _index(runs_dir: str):
    from .runs.index import RunIndex

    return RunIndex(runs_dir)


@runs_app.command("ls")
def runs_ls(runs_dir: str = RUNS_DIR, project: Optional[str] = typer.Option(None, "--project"),
            as_json: bool = typer.Option(False, "--json")):
    """Every run: id, name, status, method, base, data, steps, best eval, GPU-hours, dollars, start."""
    import json

    from .runs.views import runs_table, totals_line

    runs = _index(runs_dir).runs(project)
    if as_json:
        print(json.dumps(runs, indent=2))
        return
    console = Console()
    console.print(runs_table(runs, f"runs in {runs_dir}" + (f", project {project}" if project else "")))
    console.print(totals_line(runs), highlight=False)


@runs_app.command("show")
def runs_show(run: str = typer.Argument(..., help="run id, id prefix, name or directory"), runs_dir: str = RUNS_DIR):
    """One run: plan vs actual (memory, time, dollars), losses, the config fields that matter, artifacts."""
    from .runs.views import show_run

    show_run(Console(), _index(runs_dir).find(run))


@runs_app.command("compare")
def runs_compare(runs: List[str] = typer.Argument(..., help="two or more runs"), runs_dir: str = RUNS_DIR,
                 output: Optional[str] = typer.Option(None, "-o", "--output", help="PNG path for the loss curves")):
    """Runs side by side (results, cost, the config fields that differ) and one PNG overlaying their loss curves."""
    from pathlib import Path

    from .runs.views import compare_table, loss_plot

    if len(runs) < 2:
        raise ConfigError("runs compare needs at least two runs.")
    index = _index(runs_dir)
    found = [index.find(r) for r in runs]
    console = Console()
    console.print(compare_table(found))
    target = Path(output) if output else Path(runs_dir) / f"compare-{'-vs-'.join(r['id'][:15] for r in found)}.png"
    console.print(f"loss curves: {loss_plot(found, target)}", highlight=False)


@runs_app.command("diff")
def runs_diff(a: str = typer.Argument(...), b: str = typer.Argument(...), runs_dir: str = RUNS_DIR):
    """The config fields (of those that change the result) in which two runs differ."""
    from .runs.views import diff_runs

    index = _index(runs_dir)
    ra, rb = index.find(a), index.find(b)
    rows = diff_runs(ra, rb)
    console = Console()
    if not rows:
        console.print(f"{ra['id']} and {rb['id']} have the same result-relevant config.")
    for key, va, vb in rows:
        console.print(f"{key}: {va!r} -> {vb!r}", highlight=False)


@runs_app.command("reindex")
def runs_reindex(runs_dir: str = RUNS_DIR):
    """Rebuild the index from the run directories (a damaged directory is reported and skipped)."""
    from .runs.ledger import row_for, run_dirs

    dirs = run_dirs(runs_dir)
    problems = _index(runs_dir).reindex(dirs, row_for)
    for p in problems:
        err.print(f"[yellow]skipped:[/] {p}", highlight=False)
    Console().print(f"indexed {len(dirs) - len(problems)} of {len(dirs)} run directories in {runs_dir}")


budget_app = typer.Typer(invoke_without_command=True, help="Spend so far against a project budget.")
app.add_typer(budget_app, name="budget")


@budget_app.callback()
def budget_show(ctx: typer.Context, runs_dir: str = RUNS_DIR, project: str = typer.Option("default", "--project")):
    """Spend so far against the project's budget."""
    if ctx.invoked_subcommand:
        return
    from .runs.cost import usd

    index = _index(runs_dir)
    budget, _ = index.budget(project)
    spent = index.spent(project)
    if budget is None:
        Console().print(f"project '{project}': {usd(spent)} spent; no budget set (`leantune budget set N`).", highlight=False)
    else:
        Console().print(f"project '{project}': {usd(spent)} of {usd(budget)} spent ({spent / budget:.0%}), "
                        f"{usd(budget - spent)} left.", highlight=False)


@budget_app.command("set")
def budget_set(amount: str = typer.Argument(..., help="dollars, e.g. 200"), runs_dir: str = RUNS_DIR,
               project: str = typer.Option("default", "--project")):
    """Set the project's budget in dollars."""
    from .errors import BudgetError

    try:
        usd = float(amount)
    except ValueError:
        usd = float("nan")
    if not usd > 0 or usd == float("inf"):
        raise BudgetError(f"A budget must be a positive number of dollars, got {amount!r}. Example: leantune budget set 200")
    index = _index(runs_dir)
    index.set_budget(project, usd)
    from .runs.cost import usd as money

    Console().print(f"project '{project}': budget {money(usd)}; {money(index.spent(project))} spent so far.", highlight=False)


registry_app = typer.Typer(no_args_is_help=True, help="Named, versioned adapters with stages.")
app.add_typer(registry_app, name="registry")


@registry_app.command("push")
def registry_push(run: str = typer.Argument(...), name: str = typer.Option(..., "--name"), runs_dir: str = RUNS_DIR):
    """Register a run's adapter (or model) as the next version of NAME."""
    from .runs.registry import check_name, push

    check_name(name)
    index = _index(runs_dir)
    version = push(index, index.find(run), name)
    Console().print(f"{name} v{version}")


@registry_app.command("ls")
def registry_ls(runs_dir: str = RUNS_DIR):
    """Every registered version with its stage, source run, eval loss and cost."""
    import json

    from rich.table import Table

    from .runs.registry import versions

    table = Table(title="registry")
    for col in ("name", "version", "stage", "run", "eval loss", "$"):
        table.add_column(col)
    for r in versions(_index(runs_dir)):
        metrics = json.loads(r["metrics"] or "{}")
        table.add_row(r["name"], str(r["version"]), r["stage"], r["run_id"],
                      f"{metrics['eval_loss']:.4f}" if metrics.get("eval_loss") is not None else "", f"{r['cost_usd'] or 0:.4f}")
    Console().print(table)


@registry_app.command("show")
def registry_show(name: str = typer.Argument(...), runs_dir: str = RUNS_DIR):
    """The versions of NAME, where their files are, and which run made them."""
    from .runs.registry import check_name, versions

    check_name(name)
    for r in versions(_index(runs_dir), name):
        Console().print(f"{name} v{r['version']} [{r['stage']}] from run {r['run_id']}: {r['path']} {r['metrics']}",
                        highlight=False)


@registry_app.command("promote")
def registry_promote(name: str = typer.Argument(...), version: int = typer.Argument(...),
                     stage: str = typer.Option("production", "--stage"), runs_dir: str = RUNS_DIR):
    """Move a version to a stage (none / staging / production / archived)."""
    from .runs.registry import check_name, promote

    check_name(name)
    promote(_index(runs_dir), name, version, stage)
    Console().print(f"{name} v{version} -> {stage}")


@registry_app.command("rollback")
def registry_rollback(name: str = typer.Argument(...), runs_dir: str = RUNS_DIR):
    """Give production back to the version that held it before the current one."""
    from .runs.registry import check_name, rollback

    check_name(name)
    old, new = rollback(_index(runs_dir), name)
    Console().print(f"{name}: production v{old} -> v{new} (v{old} archived)")


@app.command()
def demo(
    runs_dir: str = typer.Option("runs", "--runs-dir"),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="optimizer steps (default: the demo's tuned value)"),
):
    """Fine-tune the bundled SmolLM2-135M on bundled SMS spam data and compare base vs tuned accuracy."""
    from .demo import run_demo
    from .runs.cost import process_start_time

    run_demo(runs_dir, steps, started_at=process_start_time())


def main() -> None:
    from .training.signals import TrainingStopped

    try:
        code = app(standalone_mode=False)  # returns the code of typer.Exit instead of exiting
    except UserError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(e.exit_code)
    except TrainingStopped as e:
        err.print(f"[yellow]{e}[/]", highlight=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        sys.exit(130)
    except typer.Abort:
        sys.exit(130)
    except Exception as e:  # click usage errors arrive here in non-standalone mode
        # typer >= 0.16 vendors its own copy of click, so match the exception by its shape, not by click's class
        if type(e).__name__.endswith(("UsageError", "Exception", "Option", "Argument", "BadParameter")) and hasattr(e, "show"):
            e.show()
            sys.exit(getattr(e, "exit_code", 2) or 2)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
