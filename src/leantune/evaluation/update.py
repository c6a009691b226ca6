"""Parent vs child after an incremental update (`leantune train --from`): both adapters over one base, scored on
the same items, so each difference is paired.

- gain: the child's held-out new rows (child - parent);
- retention: the parent's held-out rows (child - parent; below zero is ground lost on the old task);
- forgetting: the general suite (parent - child, in points, as `leantune eval` reports it for base vs tuned);
each with a 95% paired-bootstrap interval over items. Accuracy-type metrics are in points (x100); a task with free
answers is compared on its loss (mean answer-token NLL per item, each item weighing the same; lower is better, so
its "gain" is parent loss - child loss). The cost per point divides the update run's dollars by the gain.
Written to the child's update.json and report; `drift watch` gates promotion on it.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from .. import atomic
from ..models.adapters import eval_mode
from ..runs.report import replace_report_section
from .general import GENERAL_TASKS
from .metrics import paired_bootstrap
from .runner import Contender, Settings, evaluate_task, forgetting_score, item_points
from .tasks import held_out_examples, resolve_task, task_from_examples

PARENT_ADAPTER = "parent"
SCORED = ("accuracy", "multiple_choice", "preference_accuracy", "exact_match", "token_f1")


@contextmanager
def adapter_active(model, name: str):
    """`name` as the only active adapter, in eval mode; the previous adapter afterwards."""
    previous = model.active_adapter
    model.set_adapter(name)
    try:
        with eval_mode(model):
            yield
    finally:
        model.set_adapter(previous)


def change_on(result) -> dict:
    """child - parent on a task's main metric with its interval: points for scores, nats for loss (sign flipped,
    so above zero is always better)."""
    metric = next((m for m in result.metrics if m.metric in SCORED), result.metrics[0])
    parent_items, child_items = result.items["base"][metric.metric], result.items["tuned"][metric.metric]
    if metric.metric == "loss":
        # per item: mean NLL of its answer tokens; parent - child, so a lower child loss is a gain
        parent_pts = [-lp / max(n, 1) for lp, n in parent_items]
        child_pts = [-lp / max(n, 1) for lp, n in child_items]
        value, lo, hi = paired_bootstrap(parent_pts, child_pts)
        unit, scale = "nats", 1.0
    else:
        value, lo, hi = paired_bootstrap(item_points(metric.metric, child_items), item_points(metric.metric, parent_items))
        unit, scale = "points", 100.0
    change = {"task": result.task, "metric": metric.metric, "unit": unit, "items": result.n,
              "parent": metric.scores["base"], "child": metric.scores["tuned"],
              "change": value * scale, "ci": [lo * scale, hi * scale]}
    balanced = metric.extra.get("balanced_accuracy")
    if balanced:  # a gain that is only the majority class shows here: its balanced accuracy stays at 1 / classes
        change["balanced_accuracy"] = {"parent": balanced["base"], "child": balanced["tuned"]}
    return change


def compare_with_parent(child, parent, model, tokenizer, cost_usd: float | None, batch_size: int = 16,
                        limit: int | None = None, general: tuple[str, ...] = GENERAL_TASKS, note=print,
                        new_rows: list | None = None) -> dict:
    """Scores the parent and child adapters on the same items and writes update.json into the child run.
    `model` is the child's PeftModel (adapter 'default'); the parent's adapter is loaded beside it, over the same
    base weights, and removed again afterwards. `new_rows`: the new task's held-out rows when the child's own
    split is not them (a model retrained from scratch on old + new rows, in bench/drift.py)."""
    started = time.perf_counter()
    child_config, parent_config = child.config(), parent.config()
    new_rows = held_out_examples(child_config) if new_rows is None else new_rows
    old_rows = held_out_examples(parent_config)
    tasks = [task_from_examples("new held-out", new_rows), task_from_examples("parent held-out", old_rows)]
    tasks += [resolve_task(name) for name in general]
    child_name = model.active_adapter
    model.load_adapter(str(parent.adapter), adapter_name=PARENT_ADAPTER)
    try:
        contenders = [Contender("base", model, lambda: adapter_active(model, PARENT_ADAPTER)),
                      Contender("tuned", model, lambda: adapter_active(model, child_name))]
        settings = Settings(batch_size=batch_size, max_seq_len=child_config.data.max_seq_len, limit=limit)

        def progress(name, done, total):
            note(f"  parent vs child, {name}: {done}/{total} items")

        results = [evaluate_task(t, contenders, tokenizer, settings, progress) for t in tasks]
    finally:
        model.delete_adapter(PARENT_ADAPTER)
        model.set_adapter(child_name)
    gain, retention = change_on(results[0]), change_on(results[1])
    forgetting = forgetting_score(results[2:])
    per_point = cost_usd / gain["change"] if cost_usd is not None and gain["unit"] == "points" and gain["change"] > 0 else None
    report = {
        "parent": parent.id, "parent_path": str(Path(parent.path).resolve()), "child": child.id,
        "gain": gain, "retention": retention,
        "forgetting": None if forgetting is None else {
            "points": forgetting.points, "ci": list(forgetting.ci), "questions": forgetting.n,
            "tasks": forgetting.tasks},
        "cost_usd": cost_usd, "usd_per_point": per_point, "eval_seconds": round(time.perf_counter() - started, 1),
    }
    atomic.write_json(child.path / "update.json", report)
    replace_report_section(child, "## Update vs parent", update_markdown(report))
    return report


def _fmt(c: dict) -> str:
    lo, hi = c["ci"]
    balanced = c.get("balanced_accuracy")
    shown = f"; balanced accuracy {balanced['parent']:.1%} -> {balanced['child']:.1%}" if balanced else ""
    return f"{c['change']:+.2f} {c['unit']} (95% CI {lo:+.2f} to {hi:+.2f}; {c['metric']}, {c['items']} items{shown})"


def update_lines(report: dict) -> list[str]:
    lines = [f"Gain on new held-out rows: {_fmt(report['gain'])}",
             f"Retention on the parent's held-out rows: {_fmt(report['retention'])}"]
    f = report.get("forgetting")
    if f:
        lines.append(f"Forgetting vs parent (general suite, {f['questions']} questions): {f['points']:+.2f} points "
                     f"(95% CI {f['ci'][0]:+.2f} to {f['ci'][1]:+.2f}; above zero: the child knows less)")
    if report.get("usd_per_point") is not None:
        lines.append(f"Cost per point of gain: ${report['usd_per_point']:.4f} (update ${report['cost_usd']:.4f})")
    return lines


def update_markdown(report: dict) -> str:
    body = "\n".join(f"- {line}" for line in update_lines(report))
    return f"## Update vs parent\n\nParent run: `{report['parent']}`. Both adapters over the same base, on the same items.\n\n{body}\n"
