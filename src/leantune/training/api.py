"""`leantune.train(...)`: what `leantune train` calls."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from ..config import RunConfig, load_config, parse_override
from ..errors import BudgetError, ConfigError, DuplicateRunError, RunDirError
from ..models.loading import detected_device
from ..runs.cost import BilledClock, Price, missing_price_warning, refuse_budget_without_price, resolve_price, usd
from ..runs.fingerprint import differing_fields, fingerprints, result_fields
from ..runs.index import RunIndex
from ..runs.lookup import find_run
from ..runs.rundir import create_run_dir, open_run_dir
from .distributed import World, check_supported, follower_run
from .lineage import parent_run, update_config
from .recipe import FineTuneRecipe
from .result import TrainResult
from .signals import TrainingStopped


def train(
    config: RunConfig | str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    resume: str | Path | None = None,
    console: Console | None = None,
    force: bool = False,
    allow_duplicate: bool = False,
    started_at: float | None = None,
    parent: str | Path | None = None,
    resume_latest: bool = False,
) -> TrainResult:
    """Run a fine-tune from a RunConfig or YAML path (+ dotted overrides), or resume a run directory.

    A new run whose config (less the fields that cannot change the result), data and base model match a
    completed run's is refused before anything is loaded, naming that run (`allow_duplicate` overrides).
    The run is billed from `started_at` (the `leantune` command passes its process's start; a library call
    is billed from the call) to its end, at the price runs/cost.py resolves; a budget without a price is refused.

    `parent` (a run directory, id, name or registry reference): an incremental update of that run's adapter, its
    config with the overrides on top (training/lineage.py)."""
    started_at = time.time() if started_at is None else started_at
    console = console or Console(stderr=True)
    device, device_name = detected_device()
    world = World.from_environment()
    world.start(device)
    try:
        if not world.main:
            return _follow(world, console, started_at, device_name, force)
        announced: list = []

        def announce(opened) -> None:  # the run's path and price to the other processes, once
            world.broadcast(opened)
            announced.append(opened)

        try:
            if resume_latest:
                config, overrides, resume = _latest(config, overrides, console)
            recipe = _lead(config, overrides, resume, console, force, allow_duplicate, started_at, parent, world,
                           device_name, announce)
        except BaseException:
            if not announced:  # the other processes stop too, instead of waiting for a run that never comes
                world.broadcast(None)
            raise
        return _train(recipe, world)
    finally:
        world.stop()


def _latest(config, overrides, console: Console):
    """--resume-latest: (config, overrides, resume) - the newest unfinished run of output.name in output.runs_dir
    when there is one (a relaunched spot job), else the new run as given."""
    cfg = config if isinstance(config, RunConfig) else load_config(config, overrides)
    if not cfg.output.name:
        raise ConfigError("--resume-latest finds the run by output.name; set it (output.name=my-run).")
    root = Path(cfg.output.runs_dir)
    runs = sorted((p for p in root.glob("*") if (p / "run.json").is_file()), key=lambda p: p.name) if root.is_dir() else []
    mine = [p for p in runs if json.loads((p / "run.json").read_text()).get("name") == cfg.output.name]
    if not mine:
        console.print(f"--resume-latest: no run named '{cfg.output.name}' in {root} yet: starting it", highlight=False)
        return config, overrides, None
    status = json.loads((mine[-1] / "run.json").read_text()).get("status")
    if status == "completed":
        raise RunDirError(f"Run '{mine[-1]}' ({cfg.output.name}) has already completed; nothing to resume.")
    console.print(f"--resume-latest: resuming {mine[-1]} (status {status})", highlight=False)
    return None, (), mine[-1]


def _lead(config, overrides, resume, console, force, allow_duplicate, started_at, parent, world, device_name, announce):
    """The run as rank 0 (the only process when there is one) opens or creates it; the others follow."""
    if resume is not None:
        if config is not None or overrides or parent is not None:
            raise ConfigError("--resume continues a run with the config it was started with; drop the config file and overrides.")
        run = open_run_dir(resume)
        info = run.info()
        if info.get("status") == "completed":
            raise RunDirError(f"Run '{run.path}' has already completed; its adapter is in {run.adapter}. Start a new run to train further.")
        config = run.config()
        check_supported(config, world)
        price = check_price(config, device_name, console, world)
        # before setup truncates metrics.jsonl to the checkpoint: the steps past it were paid for all the same
        clock = BilledClock.resumed(started_at, info, run.read_metrics())
        recipe = FineTuneRecipe(config, run, console, clock, price, world)
        run.update_info(resumes=info.get("resumes", 0) + 1, processes=world.size)
        announce(("resume", str(run.path), price))
        try:
            recipe.setup(resume=True, force=force)
        except Exception:
            run.update_info(billed=clock.record(price))
            raise
        return recipe
    if parent is not None:
        if config is not None:
            raise ConfigError("--from starts from the parent run's config; pass overrides (data.train=...), not a config file.")
        config = update_config(find_run(str(parent), _runs_dir_of(overrides)).run, overrides)
    elif not isinstance(config, RunConfig):
        config = load_config(config, overrides)
    elif overrides:
        raise ConfigError("Pass overrides with a config file path, not with a RunConfig object (set its fields instead).")
    check_supported(config, world)
    price = check_price(config, device_name, console, world)
    prints = fingerprints(config)
    check_duplicate(config, prints, allow_duplicate, console)
    run = create_run_dir(config, prints, device_name, price.as_dict())
    if world.several:
        run.update_info(processes=world.size, distributed=config.training.distributed.strategy)
    clock = BilledClock(started_at)
    announce(("new", str(run.path), price))
    try:
        recipe = FineTuneRecipe(config, run, console, clock, price, world)
        recipe.setup(force=force)
        check_project_budget(recipe)
    except Exception:
        mark_failed(run, clock, price)
        raise
    return recipe


def _follow(world: World, console: Console, started_at: float, device_name: str, force: bool) -> TrainResult:
    """Ranks above 0: the run rank 0 opened, read-only (rank 0 writes the run directory), the same setup."""
    opened = world.broadcast(None)
    if opened is None:
        raise SystemExit(2)  # rank 0 refused the run and said why
    kind, path, price = opened
    run = follower_run(open_run_dir(path))
    quiet = Console(stderr=True, quiet=True)
    recipe = FineTuneRecipe(run.config(), run, quiet, BilledClock(started_at), price, world)
    recipe.setup(resume=kind == "resume", force=force)
    return _train(recipe, world)


def _train(recipe: FineTuneRecipe, world: World) -> TrainResult:
    run, clock, price, config = recipe.run, recipe.clock, recipe.price, recipe.config
    try:
        result = recipe.train()
    except TrainingStopped:
        raise
    except BaseException:
        if world.main:
            mark_failed(run, clock, price)
        raise
    if config.model.parent and world.main:
        result.update = compare_update(result, config, recipe.console)
    return result


def compare_update(result: TrainResult, config: RunConfig, console: Console) -> dict | None:
    """An update's parent-vs-child scores (evaluation/update.py) on the model still in memory. The run is complete
    and saved: a failure here costs the comparison, which `leantune drift compare RUN` retries."""
    from ..evaluation.update import compare_with_parent, update_lines

    child = open_run_dir(result.run_dir)
    console.print(f"comparing with the parent {Path(config.model.parent).name} on the same items ...", highlight=False)
    try:
        report = compare_with_parent(child, parent_run(config), result.model, result.tokenizer, result.cost_usd,
                                     batch_size=max(config.training.micro_batch_size, 8),
                                     note=lambda m: console.print(m, highlight=False))
    except Exception as e:  # noqa: BLE001 - reported; the run stays completed
        console.print(f"[yellow]the parent-vs-child comparison failed ({type(e).__name__}: {e}); the run is complete. "
                      f"Retry with `leantune drift compare {result.run_dir}`.[/]", highlight=False)
        return None
    for line in update_lines(report):
        console.print(line, highlight=False)
    return report


def _runs_dir_of(overrides) -> str:
    """Where a parent named by id or registry reference is looked up: the output.runs_dir override, or 'runs'."""
    for o in overrides:
        parts, value = parse_override(o)
        if parts == ["output", "runs_dir"]:
            return str(value)
    return "runs"


# statuses a run is given on purpose before it raises: they say more than "failed"
DELIBERATE_STOPS = ("refused-budget", "stopped-by-budget", "preempted")


def mark_failed(run, clock: BilledClock, price) -> None:
    """Status 'failed' (a deliberate stop or refusal keeps its own status) and what was billed until then."""
    if run.info().get("status") in DELIBERATE_STOPS:
        run.update_info(billed=clock.record(price))
    else:
        run.update_info(status="failed", billed=clock.record(price))


def check_price(config: RunConfig, device_name: str, console: Console, world: World | None = None):
    """The run's price; a budget (the run's or its project's) without one is refused before anything loads.
    Several processes on GPUs are billed per GPU (one each); on a CPU they share the one machine's price."""
    price = resolve_price(config.cost.usd_per_hour, device_name)
    if world is not None and world.several and device_name.startswith("cuda") and price.usd_per_hour is not None:
        price = Price(price.usd_per_hour * world.size, f"{price.source} x {world.size} GPUs", price.device)
    index = RunIndex(config.output.runs_dir)
    project_budget = index.budget(config.output.project)[0] if index.path.exists() else None
    refuse_budget_without_price(price, config.cost.budget_usd, config.output.project, project_budget)
    warning = missing_price_warning(price)
    console.print(f"[yellow]{warning}[/]" if warning else f"cost: {price.describe()}, billed from the process start",
                  highlight=False)
    return price


def check_duplicate(config: RunConfig, prints: dict, allow: bool, console: Console) -> None:
    index = RunIndex(config.output.runs_dir)
    if not index.path.exists():
        return
    same = index.completed_with(prints["config_fp"], prints["data_fp"], prints["model_fp"])
    if same:
        r = same[-1]
        result = f"eval loss {r['eval_loss']:.4f}, " if r["eval_loss"] is not None else ""
        message = (f"This run repeats completed run {r['id']} ({result}{usd(r['cost_usd'])}): same config, same data "
                   f"content, same base model weights. Its results are in {r['path']} (`leantune runs show {r['id']}`).")
        if not allow:
            raise DuplicateRunError(message + " Pass --allow-duplicate to train it again anyway (e.g. to measure noise).")
        console.print(f"[yellow]--allow-duplicate: {message}[/]", highlight=False)
    fields = result_fields(config)
    near = []
    for r in index.completed_on(prints["data_fp"], prints["model_fp"]):
        differs = differing_fields(fields, json.loads(r["fields"] or "{}"))
        if 0 < len(differs) <= 2:
            near.append(f"{r['id']} (differs in {', '.join(differs)})")
    if near:
        console.print("similar completed runs on the same data and model: " + "; ".join(near[:5]), highlight=False)


def check_project_budget(recipe: FineTuneRecipe) -> None:
    """A run whose planned cost is more than the project has left does not start."""
    config = recipe.config
    index = RunIndex(config.output.runs_dir)
    budget, _ = index.budget(config.output.project)
    if budget is None:
        return
    left = budget - index.spent(config.output.project)
    planned = recipe.planned_cost_usd()
    if planned is None:
        recipe.note(f"project '{config.output.project}': {usd(left)} of {usd(budget)} left; this run's cost cannot be "
                    "planned (its GPU's speed is not in the catalog)")
        return
    recipe.note(f"project '{config.output.project}': {usd(left)} of {usd(budget)} left; this run is planned at {usd(planned)}")
    if planned > left:
        recipe.run.update_info(status="refused-budget")
        raise BudgetError(f"This run is planned to cost {usd(planned)}, more than the {usd(left)} left of project "
                          f"'{config.output.project}''s {usd(budget)} budget. Raise it (`leantune budget set N --project "
                          f"{config.output.project}`), shorten the run, or lower cost.usd_per_hour if it is wrong.")
