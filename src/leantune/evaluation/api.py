"""`leantune.evaluate(...)`, what `leantune eval` calls: a run (tuned vs its base on the same items) or a plain model.

For a run: its own held-out split and the general suite by default, the adapter switched off for the base
scores (no second copy of the weights; for full fine-tuning the base is loaded beside the tuned model).
The result is written to the run's eval.json and report.md unless `save=False`."""

from __future__ import annotations

import re
import time
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from .. import atomic
from ..data import run_splits
from ..errors import UserError
from ..models.adapters import base_behaviour, eval_mode
from ..models.inference import load_trained
from ..models.loading import detected_device, load_base
from ..runs.ledger import row_for
from ..runs.lookup import find_run
from ..runs.report import replace_report_section
from .general import GENERAL_TASKS
from .result import EvalResult
from .few_shot import DEFAULT_MAX_SHOTS, DEFAULT_PROMPT_USD_PER_MTOK, choose_shots, few_shot_cost
from .runner import FEW_SHOT, Contender, Settings, evaluate_task, forgetting_score
from .tasks import resolve_task

RUN_TASKS = ("held-out",) + GENERAL_TASKS


def base_and_tuned(tuned, base=None) -> list[Contender]:
    """The pair to score: a separate base model (full fine-tuning), or the tuned model with its adapter off."""
    if base is None:
        return [Contender("base", tuned, lambda: base_behaviour(tuned)), Contender("tuned", tuned, lambda: eval_mode(tuned))]
    return [Contender("base", base, lambda: eval_mode(base)), Contender("tuned", tuned, lambda: eval_mode(tuned))]


def run_contenders(run, device: str | None = None) -> tuple[list[Contender], object, list[str]]:
    """(base and tuned contenders, tokenizer, notes) for a finished run's saved weights (models/inference.py)."""

    trained = load_trained(run, device, with_base=True)
    return base_and_tuned(trained.model, trained.base), trained.tokenizer, trained.notes


def replay_note(config) -> list[str]:
    f = config.forgetting
    used = set()
    if f.replay_fraction:
        used.add(f.replay_data)
    if f.ewc_lambda:
        used.add(f.ewc_data)
    overlap = sorted(used & set(GENERAL_TASKS))
    if overlap:
        return [f"This run trained on (replay) or was anchored to (EWC) {', '.join(overlap)}: its forgetting score there "
                "measures memory of those questions as well as general knowledge."]
    return []


def evaluate_models(contenders: list[Contender], tokenizer, tasks, settings: Settings, target: str,
                    console: Console | None = None, cost_usd: float | None = None, notes: list[str] | None = None) -> EvalResult:
    started = time.perf_counter()

    def progress(name, done, total):
        if console:
            console.print(f"  eval {name}: {done}/{total} items", highlight=False)

    results = [evaluate_task(task, contenders, tokenizer, settings, progress) for task in tasks]
    return EvalResult(target, [c.name for c in contenders], results, forgetting_score(results), cost_usd,
                      time.perf_counter() - started, list(notes or []))


def add_few_shot(contenders: list[Contender], tasks, config, tokenizer, max_shots: int | None,
                 prompt_usd_per_mtok: float, training_usd: float | None) -> tuple[list[Contender], dict, list[str]]:
    """The base model with k training rows in its prompt, beside base and tuned (evaluation/few_shot.py)."""
    own = [t for t in tasks if not t.general]
    if not own:
        raise UserError("--baseline few-shot scores the run's own task: keep held-out (or a task of yours) among --task.")
    if prompt_usd_per_mtok < 0:
        raise UserError(f"--prompt-usd-per-mtok {prompt_usd_per_mtok:g} must be 0 or more (dollars per million prompt "
                        "tokens of the model that would serve the few-shot prompts).")
    base = next(c for c in contenders if c.name == "base")
    context = getattr(base.model.config, "max_position_embeddings", None) or 2048
    wanted = max_shots or DEFAULT_MAX_SHOTS
    shots = choose_shots(run_splits(config).train, own[0].examples, tokenizer, context, wanted, own[0].labels,
                         config.training.seed)
    cost = few_shot_cost(shots, own[0].examples, tokenizer, prompt_usd_per_mtok, training_usd)
    notes = []
    if len(shots.shots) < wanted:
        notes.append(f"Few-shot: {len(shots.shots)} shots, not {wanted}: more would not fit the model's context of "
                     f"{context} tokens beside the longest item.")
    few = Contender(FEW_SHOT, base.model, base.context, shots.view, context)
    ordered = [c for c in contenders if c.name == "base"] + [few] + [c for c in contenders if c.name != "base"]
    info = asdict(cost) | {"describe": cost.describe(), "context_tokens": context,
                           "shot_answers": [s.answer for s in shots.shots]}
    return ordered, info, notes


def evaluate(target: str | Path, tasks: list[str] | tuple[str, ...] = (), metrics: list[str] | tuple[str, ...] = (),
             limit: int | None = None, batch_size: int = 16, save: bool = True, runs_dir: str = "runs",
             console: Console | None = None, baseline: str | None = None, shots: int | None = None,
             prompt_usd_per_mtok: float = DEFAULT_PROMPT_USD_PER_MTOK) -> EvalResult:
    """Evaluate a run (directory or id in `runs_dir`) against its base, or a model (name, HF directory, .gguf) alone.

    tasks: 'held-out' (a run's eval split), 'trivia', 'analogies', a built-in dataset or a data file; by default a
    run gets held-out + the general suite and a model the general suite. metrics apply to every named task.
    baseline='few-shot' also scores the base model with `shots` training rows in its prompt on the run's own task."""

    if baseline not in (None, "few-shot"):
        raise UserError(f"--baseline {baseline!r} is not known; the one baseline is few-shot.")
    device, _ = detected_device()
    found = find_run(str(target), runs_dir, models_too=True)
    run = found.run if found else None
    metrics = tuple(metrics)
    if run is None and baseline:
        raise UserError(f"--baseline {baseline} compares a fine-tune with prompting its base: give a run, not a model "
                        f"({target}).")
    if run is not None:
        config = run.config()
        # resolve tasks before loading weights: a bad task or metric is refused in a second, not after a load
        task_list = [resolve_task(t, metrics, config) for t in (tasks or RUN_TASKS)]
        contenders, tokenizer, notes = run_contenders(run, device)

        cost = row_for(run.path).get("cost_usd")
        few_shot = None
        if baseline == "few-shot":
            contenders, few_shot, more = add_few_shot(contenders, task_list, config, tokenizer, shots,
                                                      prompt_usd_per_mtok, cost)
            notes = notes + more
        settings = Settings(batch_size=batch_size, max_seq_len=config.data.max_seq_len, limit=limit)
        result = evaluate_models(contenders, tokenizer, task_list, settings, str(run.path), console, cost,
                                 notes + replay_note(config))
        result.few_shot = few_shot
        if save:
            save_to_run(run, result, tuple(tasks))
        return result
    task_list = [resolve_task(t, metrics) for t in (tasks or GENERAL_TASKS)]
    loaded = load_base(str(target), "auto", device)
    model = loaded.model
    contenders = [Contender("model", model, lambda: eval_mode(model))]
    return evaluate_models(contenders, loaded.tokenizer, task_list, Settings(batch_size=batch_size, limit=limit), str(target), console)


def evaluate_after_training(model, tokenizer, config, tasks, run, device: str, train_seconds: float,
                            max_seconds: float | None, cost_usd: float | None, note) -> EvalResult | None:
    """`eval.after_train`: the trained model in memory against its base, time-boxed to eval.time_share of the
    training time, or `max_seconds` when less (what a run's budget has left; under a second: skipped); every task
    gets an equal share, and at least eval.min_items items unless the budget rules. Training is done and saved:
    a failure here costs the evaluation, never the run."""
    if max_seconds is not None and max_seconds < 1.0:
        note(f"eval.after_train skipped: the run's cost.budget_usd is nearly used up. `leantune eval {run.path}` "
             "scores the run later.")
        return None
    try:
        result = _evaluate_in_memory(model, tokenizer, config, tasks, run, device, train_seconds, max_seconds, cost_usd, note)
    except Exception as e:  # noqa: BLE001 - reported, and the run stays completed
        note(f"[yellow]eval.after_train failed ({type(e).__name__}: {e}); the run is complete. "
             f"Retry with `leantune eval {run.path}`.[/]")
        return None
    for line in result.summary():
        if line.startswith(("Forgetting", "Cost per point")):
            note(line)
    return result


def _evaluate_in_memory(model, tokenizer, config, tasks, run, device, train_seconds, max_seconds, cost_usd, note):
    if hasattr(model, "disable_adapter"):
        contenders = base_and_tuned(model)
    else:  # full fine-tuning: the base is loaded beside the tuned weights
        contenders = base_and_tuned(model, load_base(config.model.base, config.model.dtype, device).model)
    budget = config.eval.time_share * train_seconds
    min_items = config.eval.min_items
    if max_seconds is not None and max_seconds < budget:
        budget, min_items = max_seconds, 1  # the run's budget rules: no floor of items that could overshoot it
    settings = Settings(batch_size=max(config.training.micro_batch_size, 8), max_seq_len=config.data.max_seq_len,
                        budget_s=budget / len(tasks), min_items=min_items)
    note(f"eval.after_train: base vs tuned on {', '.join(t.name for t in tasks)} (time budget {budget:.0f} s = "
         f"{config.eval.time_share:.0%} of training; `leantune eval {run.path}` scores every item)")
    notes = [f"Time-boxed to {config.eval.time_share:.0%} of the training time; `leantune eval RUN` scores every item."]
    result = evaluate_models(contenders, tokenizer, tasks, settings, str(run.path), None, cost_usd,
                             notes + replay_note(config))
    save_to_run(run, result)
    return result


def save_to_run(run, result: EvalResult, tasks: tuple[str, ...] = ()) -> None:
    """The standard evaluation (held-out + general suite) goes to eval.json and the report's '## Evaluation'
    section, replacing an earlier one (the time-boxed one from training, say); other task sets get their own
    eval-<tasks>.json and section, so a custom evaluation never overwrites the standard one."""

    if not tasks or sorted(tasks) == sorted(RUN_TASKS):
        name, heading = "eval.json", "## Evaluation"
    else:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", "-".join(Path(t).stem for t in tasks)).strip("-")[:60]
        name, heading = f"eval-{slug}.json", f"## Evaluation: {', '.join(tasks)}"
    atomic.write_json(run.path / name, result.to_dict())
    replace_report_section(run, heading, result.markdown(heading))
