"""What `leantune runs ...` prints: tables of runs, one run in detail, side-by-side comparison, config diffs,
and a PNG of loss curves."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..atomic import atomic_path
from .cost import PHASE_LABELS, Price, usd
from .fingerprint import differing_fields
from .rundir import RunDir


def _info(path: Path) -> dict:
    try:
        return json.loads((path / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def _money(v) -> str:
    return "" if v is None else f"${v:,.4f}" if v < 1 else f"${v:,.2f}"


def _cost_cell(v) -> str:
    """A run's dollars; a run without a price has an unknown cost, not $0 (runs/cost.py)."""
    return "unknown" if v is None else _money(v) if v else "0"


def _num(v, fmt="{:.4f}") -> str:
    return "" if v is None else fmt.format(v)


def _when(ts) -> str:
    return "" if not ts else time.strftime("%m-%d %H:%M", time.localtime(ts))


def runs_table(runs: list[dict], title: str) -> Table:
    table = Table(title=title)
    # the id already ends with the run's name, so the name gets no column of its own (narrow terminals)
    for col in ("id", "status", "method", "base", "data", "steps", "best eval", "GPU-h", "$", "started"):
        table.add_column(col, overflow="fold")
    for r in runs:
        steps = f"{r['steps'] or 0}/{r['total_steps']}" if r.get("total_steps") else str(r["steps"] or 0)
        status = (r["status"] or "") + (f" ({r['alerts']} alert{'s' if r['alerts'] > 1 else ''})" if r.get("alerts") else "")
        table.add_row(escape(r["id"]), status, r["method"] or "", escape(Path(r["base"] or "").name),
                      escape(Path(r["data"] or "").name), steps, _num(r["best_eval_loss"]), _num(r["gpu_hours"], "{:.3f}"),
                      _cost_cell(r["cost_usd"]), _when(r["started"]))
    return table


def totals_line(runs: list[dict]) -> str:
    cost = sum(r["cost_usd"] or 0 for r in runs)
    gpu_h = sum(r["gpu_hours"] or 0 for r in runs)
    tokens = sum(r["tokens"] or 0 for r in runs)
    per_m = f", ${cost / tokens * 1e6:.4f} per 1M tokens" if tokens and cost else ""
    unpriced = sum(r["cost_usd"] is None for r in runs)
    unknown = f" ({unpriced} without a price, not counted)" if unpriced else ""
    return f"{len(runs)} runs, {gpu_h:.3f} GPU-h, {_money(cost) or '$0'}{unknown}, {tokens:,} tokens{per_m}"


def show_run(console: Console, run: dict) -> None:
    path = Path(run["path"])
    console.print(f"[bold]{escape(run['id'])}[/] ({escape(run['name'] or '')}), {run['status']}, project {run['project']}",
                  highlight=False)
    table = Table(show_header=True)
    for col in ("", "planned", "actual"):
        table.add_column(col)
    plan = {}
    if (path / "plan.json").is_file():
        try:
            plan = json.loads((path / "plan.json").read_text()).get("memory_gib", {})
        except ValueError:
            plan = {}
    peak = run["peak_memory_mb"]
    table.add_row("peak memory", f"{plan['total']:.2f} GiB" if "total" in plan else "",
                  f"{peak / 1024:.2f} GiB" if peak else "")
    table.add_row("steps", str(run["total_steps"] or ""), str(run["steps"] or 0))
    info = _info(path)
    billed = info.get("billed") or {}
    phases = ", ".join(f"{PHASE_LABELS[k]} {v:.1f}" for k, v in billed.get("phases", {}).items() if v >= 0.05)
    table.add_row("billed time", "", f"{run['wall_s'] or 0:.1f} s on {run['device']}" + (f" ({phases})" if phases else ""))
    price = Price.from_dict(billed["price"]) if billed.get("price") else None
    table.add_row("cost", "", (usd(run["cost_usd"]) if run["cost_usd"] is not None else "unknown (no price)")
                  + (f" at {price.describe()}" if price else f" at ${run['usd_per_hour']:g}/h" if run["usd_per_hour"] is not None else "")
                  + (f", ${run['usd_per_m_tokens']:.4f} per 1M tokens" if run["usd_per_m_tokens"] else ""))
    table.add_row("loss", "", f"final {_num(run['final_loss'])}, eval {_num(run['eval_loss'])}, best eval {_num(run['best_eval_loss'])}")
    console.print(table)
    config = json.loads(run["fields"] or "{}")
    console.print("config (fields that change the result): " + ", ".join(f"{k}={v}" for k, v in sorted(config.items())),
                  highlight=False, soft_wrap=True)
    for e in info.get("exports", []):
        console.print(f"export {e['format']}{'/' + e['quant'] if e.get('quant') else ''}: {escape(e['path'])}, "
                      f"{e['bytes'] / 1e6:.1f} MB, {e['bytes_per_parameter']:.3f} bytes/parameter, "
                      f"{'checked' if e.get('passed') else 'NOT checked'}", highlight=False)
    if run.get("parent"):
        console.print(f"update of run {escape(run['parent'])} (train --from)" + _update_line(path), highlight=False)
    drift = info.get("drift")
    if drift:
        console.print(f"drift: {drift['verdict']} ({escape(str(drift['current']))}, {drift['rows']} prompts"
                      + (f"; flagged by {', '.join(drift['flagged'])}" if drift["flagged"] else "") + ")", highlight=False)
    artifacts = [p.name + ("/" if p.is_dir() else "") for p in sorted(path.iterdir())] if path.is_dir() else []
    for message in RunDir(path).info().get("alerts", []):
        console.print(f"[yellow]{escape(message)}[/]", highlight=False)
    console.print(f"artifacts in {escape(str(path))}: {', '.join(artifacts)}", highlight=False)


def _update_line(path: Path) -> str:
    """The parent-vs-child comparison in one line, from update.json (evaluation/update.py writes it)."""
    try:
        u = json.loads((path / "update.json").read_text())
    except (OSError, ValueError):
        return ": not compared with it yet (`leantune drift compare RUN`)"

    def part(c: dict) -> str:
        return f"{c['change']:+.2f} {c['unit']} [{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}]"

    forgot = u.get("forgetting")
    return (f": gain {part(u['gain'])}, retention {part(u['retention'])}"
            + (f", forgetting {forgot['points']:+.2f} points [{forgot['ci'][0]:+.2f}, {forgot['ci'][1]:+.2f}]" if forgot else ""))


def diff_runs(a: dict, b: dict) -> list[tuple[str, object, object]]:
    fa, fb = json.loads(a["fields"] or "{}"), json.loads(b["fields"] or "{}")
    return [(k, fa.get(k), fb.get(k)) for k in differing_fields(fa, fb)]


def compare_table(runs: list[dict]) -> Table:
    table = Table(title="runs side by side")
    table.add_column("")
    for r in runs:
        table.add_column(escape(r["id"]), overflow="fold")
    rows = [("status", "status", str), ("method", "method", str), ("steps", "steps", str),
            ("final loss", "final_loss", _num), ("eval loss", "eval_loss", _num), ("best eval", "best_eval_loss", _num),
            ("tokens", "tokens", lambda v: f"{v or 0:,}"), ("time s", "wall_s", lambda v: f"{v or 0:.1f}"),
            ("cost", "cost_usd", _money), ("$ / 1M tokens", "usd_per_m_tokens", lambda v: _num(v)),
            ("peak memory MiB", "peak_memory_mb", lambda v: _num(v, "{:,.0f}"))]
    for label, key, fmt in rows:
        table.add_row(label, *[fmt(r.get(key)) for r in runs])
    evaluations = [read_evaluation(r) for r in runs]
    if any(evaluations):
        for label, cell in (("task score (base -> tuned)", _task_cell), ("forgetting (95% CI)", _forgetting_cell),
                            ("$ / point of task gain", _usd_per_point_cell)):
            table.add_row(label, *[cell(e) if e else "-" for e in evaluations])
    fields = [json.loads(r["fields"] or "{}") for r in runs]
    differing = sorted({k for f in fields for k in f if len({json.dumps(g.get(k)) for g in fields}) > 1})
    for k in differing:
        table.add_row(f"[cyan]{k}[/]", *[str(f.get(k)) for f in fields])
    return table


def read_evaluation(run: dict) -> dict | None:
    """The run's standard evaluation (eval.json: from eval.after_train or `leantune eval`), if it has one."""
    try:
        return json.loads((Path(run["path"]) / "eval.json").read_text())
    except (OSError, ValueError):
        return None


def _task_cell(e: dict) -> str:
    t = e.get("task_score")
    if not t or "tuned" not in t:
        return "-"
    return f"{t['task']} {t['metric']}: {t['base']:.1%} -> {t['tuned']:.1%}"


def _forgetting_cell(e: dict) -> str:
    f = e.get("forgetting")
    if not f:
        return "-"
    verdict = "noise" if f["ci"][0] <= 0 <= f["ci"][1] else ("forgot" if f["points"] > 0 else "improved")
    return f"{f['points']:+.1f} pt ({f['ci'][0]:+.1f}..{f['ci'][1]:+.1f}, {verdict})"


def _usd_per_point_cell(e: dict) -> str:
    v = e.get("usd_per_point")
    if v is not None:
        return f"${v:.4f}"
    t = e.get("task_score") or {}
    return "no gain" if t.get("delta") is not None and t["delta"] <= 0 else "-"


def loss_plot(runs: list[dict], target: Path) -> Path:
    import matplotlib  # ~0.5 s, only for `runs compare`: `runs ls` answers without it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in runs:
        metrics = RunDir(Path(r["path"])).read_metrics()
        steps = [m for m in metrics if "loss" in m]
        if steps:
            ax.plot([m["step"] for m in steps], [max(m["loss"], 1e-6) for m in steps], label=f"{r['id']} (train)")
        evals = [m for m in metrics if "eval_loss" in m]
        if evals:
            ax.plot([m["step"] for m in evals], [m["eval_loss"] for m in evals], "o--", label=f"{r['id']} (eval)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return target


def budget_line(project: str, budget: float | None, spent: float) -> str:
    if budget is None:
        return f"project '{project}': {usd(spent)} spent; no budget set (`leantune budget set N`)."
    return f"project '{project}': {usd(spent)} of {usd(budget)} spent ({spent / budget:.0%}), {usd(budget - spent)} left."


def registry_table(rows: list[dict]) -> Table:
    table = Table(title="registry")
    for col in ("name", "version", "stage", "run", "eval loss", "$"):
        table.add_column(col)
    for r in rows:
        metrics = json.loads(r["metrics"] or "{}")
        table.add_row(r["name"], str(r["version"]), r["stage"], r["run_id"],
                      f"{metrics['eval_loss']:.4f}" if metrics.get("eval_loss") is not None else "",
                      usd(r["cost_usd"]) if r["cost_usd"] is not None else "unknown")
    return table


def diff_lines(a: dict, b: dict) -> list[str]:
    rows = diff_runs(a, b)
    if not rows:
        return [f"{a['id']} and {b['id']} have the same result-relevant config."]
    return [f"{key}: {va!r} -> {vb!r}" for key, va, vb in rows]
