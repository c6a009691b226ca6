"""What each dashboard page shows, as plain dicts and lists built from the same index, run directories and
library functions the CLI reads (runs/index.py, runs/views.py, runs/registry.py, plan/). No web framework here:
app.py turns these into HTML and JSON, so a page's numbers can be checked without a server.

Nothing here is cached except the summary of each run's eval.json, keyed by its modification time: the runs page
must answer for a thousand runs without parsing a thousand files each time, and a new evaluation must show at once.
Configs, metrics and registry rows are read fresh on every request (a stale config view is a bug users report
of other dashboards)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from ..evaluation.result import POINT_METRICS
from ..runs.cost import Price, cost_usd
from ..runs.fingerprint import differing_fields
from ..runs.index import RunIndex
from ..runs.jsonl import read_jsonl
from ..runs.registry import STAGES, versions

# the runs table: (key, heading, how it sorts); every key is a field of runs_page's rows
RUN_COLUMNS = (
    ("id", "run", "text"), ("status", "status", "text"), ("method", "method", "text"), ("base", "base", "text"),
    ("data", "data", "text"), ("steps", "steps", "number"), ("best_eval_loss", "best eval", "number"),
    ("task_score", "task score", "number"), ("forgetting", "forgetting (pt)", "number"),
    ("gpu_hours", "GPU-h", "number"), ("cost_usd", "$", "number"), ("usd_per_point", "$ / point", "number"),
    ("started", "started", "number"),
)
SORTABLE = {key for key, _, _ in RUN_COLUMNS}
CURVES = (("loss", "loss"), ("lr", "learning rate"), ("tokens_per_s", "tokens / s"), ("cost_usd", "cost so far ($)"))


@dataclass
class EvalSummary:
    task: str | None = None
    metric: str | None = None
    base: float | None = None
    tuned: float | None = None
    delta: float | None = None
    forgetting: float | None = None
    forgetting_ci: tuple[float, float] | None = None
    usd_per_point: float | None = None


class EvalCache:
    """eval.json summaries keyed by (path, mtime): a stat per run per request, a parse only when the file changed."""

    def __init__(self):
        self._seen: dict[Path, tuple[int, EvalSummary | None]] = {}

    def get(self, run_path: Path) -> EvalSummary | None:
        path = run_path / "eval.json"
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return None
        hit = self._seen.get(path)
        if hit and hit[0] == mtime:
            return hit[1]
        summary = summarise_eval(read_json(path))
        self._seen[path] = (mtime, summary)
        return summary


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # missing or half-written: the page shows a dash, the file is left alone


def summarise_eval(data: dict | None) -> EvalSummary | None:
    if not data:
        return None
    task = data.get("task_score") or {}
    forgot = data.get("forgetting") or {}
    return EvalSummary(task=task.get("task"), metric=task.get("metric"), base=task.get("base"), tuned=task.get("tuned"),
                       delta=task.get("delta"), forgetting=forgot.get("points"),
                       forgetting_ci=tuple(forgot["ci"]) if forgot.get("ci") else None,
                       usd_per_point=data.get("usd_per_point"))


def runs_page(index: RunIndex, evals: EvalCache, query: str = "", status: str = "", method: str = "", project: str = "",
              sort: str = "started", descending: bool = True) -> dict:
    """The runs table: every indexed run with its evaluation, filtered and sorted on the server (so it reads
    without JavaScript), plus the choices the filter offers."""
    runs = index.runs()
    rows = []
    for r in runs:
        e = evals.get(Path(r["path"]))
        rows.append({**r, "task_score": e.tuned if e else None, "task_label": f"{e.task} {e.metric}" if e and e.task else "",
                     "task_base": e.base if e else None, "forgetting": e.forgetting if e else None,
                     "forgetting_ci": e.forgetting_ci if e else None, "usd_per_point": e.usd_per_point if e else None,
                     "base_name": Path(r["base"] or "").name, "data_name": Path(r["data"] or "").name})
    choices = {k: sorted({r[k] for r in rows if r[k]}) for k in ("status", "method", "project")}
    needle = query.strip().lower()
    shown = [r for r in rows
             if (not status or r["status"] == status) and (not method or r["method"] == method)
             and (not project or r["project"] == project)
             and (not needle or needle in " ".join(str(r[k] or "") for k in ("id", "name", "base", "data", "method")).lower())]
    key = sort if sort in SORTABLE else "started"
    kind = next(k for c, _, k in RUN_COLUMNS if c == key)
    # rows without a value go last whichever way the column sorts
    present = [r for r in shown if r[key] is not None]
    missing = [r for r in shown if r[key] is None]
    present.sort(key=lambda r: (str(r[key]).lower() if kind == "text" else r[key]), reverse=descending)
    return {"rows": present + missing, "total": len(rows), "choices": choices, "sort": key, "descending": descending,
            "query": query, "status": status, "method": method, "project": project, "columns": RUN_COLUMNS,
            "totals": _totals(shown)}


def _totals(rows: list[dict]) -> dict:
    priced = [r["cost_usd"] for r in rows if r["cost_usd"] is not None]
    return {"runs": len(rows), "usd": sum(priced), "unpriced": len(rows) - len(priced),
            "gpu_hours": sum(r["gpu_hours"] or 0 for r in rows), "tokens": sum(r["tokens"] or 0 for r in rows)}


def curves(metrics: list[dict]) -> dict:
    """A run's series for the charts: training records (those with a loss) and evaluation records apart, each
    a list per field; a field missing from a record is None (the chart leaves a gap)."""
    train = [m for m in metrics if "loss" in m]
    evals = [m for m in metrics if "eval_loss" in m]
    out = {"step": [m["step"] for m in train]}
    for key, _ in CURVES:
        out[key] = [_finite(m.get(key)) for m in train]
    out["eval_step"] = [m["step"] for m in evals]
    out["eval_loss"] = [_finite(m["eval_loss"]) for m in evals]
    return out


def _finite(v):
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def run_page(row: dict) -> dict:
    """One run: its curves, plan vs actual, evaluation, forgetting, config, exports, alerts, drift and update."""
    path = Path(row["path"])
    info = read_json(path / "run.json") or {}
    plan = read_json(path / "plan.json") or {}
    evaluation = read_json(path / "eval.json")
    metrics = read_jsonl(path / "metrics.jsonl")
    config_text = (path / "config.yaml").read_text() if (path / "config.yaml").is_file() else ""
    artifacts = ([{"name": p.name + ("/" if p.is_dir() else ""), "bytes": None if p.is_dir() else p.stat().st_size}
                  for p in sorted(path.iterdir())] if path.is_dir() else [])
    return {"run": row, "info": info, "curves": curves(metrics), "plan_vs_actual": plan_vs_actual(row, info, plan, metrics),
            "evaluation": evaluation, "eval_rows": eval_rows(evaluation), "config_text": config_text,
            "fields": json.loads(row["fields"] or "{}"), "artifacts": artifacts, "exports": info.get("exports", []),
            "alerts": info.get("alerts", []), "drift": read_json(path / "drift.json"), "parent_comparison": read_json(path / "update.json"),
            "live": is_live(row)}


def is_live(row: dict) -> bool:
    """Whether a run may still write steps: its page keeps polling until this turns false."""
    return row["status"] in ("running", "created")


def plan_vs_actual(row: dict, info: dict, plan: dict, metrics: list[dict]) -> list[dict]:
    """Rows of planned, actual and their ratio: peak memory, training time, dollars of the training steps."""
    out = []
    planned_gib = (plan.get("memory_gib") or {}).get("total")
    actual_gib = row["peak_memory_mb"] / 1024 if row["peak_memory_mb"] else None
    out.append(_pva("peak memory (GiB)", planned_gib, actual_gib, "{:.2f}"))
    planned_s = plan.get("seconds")
    timed = [m["elapsed_s"] for m in metrics if "elapsed_s" in m]
    elapsed = timed[-1] if timed else None  # the training steps' time, what the plan's seconds estimate
    out.append(_pva("training time (s)", planned_s, elapsed, "{:.3g}"))
    price = Price.from_dict(info.get("price") or {})
    planned_usd = cost_usd(planned_s, price) if planned_s else None
    actual_usd = cost_usd(elapsed, price) if elapsed else None
    out.append(_pva("cost of the training steps ($)", planned_usd, actual_usd, "{:.3g}"))
    out.append({"label": "whole bill ($)", "planned": "", "actual": "unknown (no price)" if row["cost_usd"] is None
                else f"{row['cost_usd']:.3g}", "ratio": ""})
    return out


def _pva(label: str, planned, actual, fmt: str) -> dict:
    return {"label": label, "planned": "" if planned is None else fmt.format(planned),
            "actual": "" if actual is None else fmt.format(actual),
            "ratio": f"{actual / planned:.2f}" if planned and actual is not None else ""}


def eval_rows(evaluation: dict | None) -> list[dict]:
    """One row per task and metric: each model's score and the tuned - base change with its 95% interval."""
    if not evaluation:
        return []
    rows = []
    for task in evaluation.get("tasks", []):
        for m in task.get("metrics", []):
            rows.append({"task": task["task"], "general": task.get("general", False), "n": task.get("n"),
                         "metric": m["metric"], "scores": m.get("scores", {}), "delta": m.get("delta"),
                         "ci": m.get("ci"), "points": m["metric"] in POINT_METRICS})
    return rows


def compare_page(rows: list[dict], evals: EvalCache) -> dict:
    """Several runs: their loss curves on one step axis, side-by-side results, and the config fields that differ."""
    fields = [json.loads(r["fields"] or "{}") for r in rows]
    differing = sorted({k for a in fields for b in fields for k in differing_fields(a, b)})
    series = []
    for r in rows:
        c = curves(read_jsonl(Path(r["path"]) / "metrics.jsonl"))
        series.append({"id": r["id"], "step": c["step"], "loss": c["loss"], "eval_step": c["eval_step"],
                       "eval_loss": c["eval_loss"]})
    return {"runs": rows, "series": series, "evals": [evals.get(Path(r["path"])) for r in rows],
            "diff": [{"field": k, "values": [f.get(k) for f in fields]} for k in differing]}


def budgets_page(index: RunIndex) -> dict:
    """Per project: spent, budget, share and what is left; then the alerts log, newest first."""
    projects = sorted({r["project"] for r in index.runs()} | index.budgeted_projects())
    rows = []
    for project in projects:
        budget, _ = index.budget(project)
        spent = index.spent(project)
        rows.append({"project": project, "spent": spent, "budget": budget,
                     "share": spent / budget if budget else None, "left": budget - spent if budget else None})
    log = index.root / "alerts.log"
    alerts = list(reversed(log.read_text(encoding="utf-8").splitlines())) if log.is_file() else []
    return {"rows": rows, "alerts": alerts}


def registry_page(index: RunIndex) -> dict:
    """Every name with its versions (stage, source run, eval loss, cost, when) and its stage history."""
    names: dict[str, list[dict]] = {}
    for r in versions(index):
        metrics = json.loads(r["metrics"] or "{}")
        names.setdefault(r["name"], []).append({**r, "eval_loss": metrics.get("eval_loss"),
                                                "created_text": time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"]))})
    history = {}
    for name in names:
        log = index.root / "registry" / name / "history.log"
        history[name] = log.read_text().splitlines() if log.is_file() else []
    return {"names": names, "history": history, "stages": STAGES}


def drift_page(index: RunIndex) -> dict:
    """Drift checks written into run directories, and the decisions `drift watch` logged per registry name."""
    checks = []
    for r in index.runs():
        report = read_json(Path(r["path"]) / "drift.json")
        if report:
            flagged = [s["name"] for s in report.get("signals", []) if s.get("drifted")]
            checks.append({"run": r["id"], "verdict": report.get("verdict"), "current": report.get("current"),
                           "current_rows": report.get("current_rows"), "reference_rows": report.get("reference_rows"),
                           "flagged": flagged, "signals": report.get("signals", []), "created": report.get("created")})
    decisions = []
    folder = index.root / "watch"
    for log in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        for d in read_jsonl(log):
            decisions.append({"name": log.stem, **d})
    decisions.sort(key=lambda d: d.get("time") or 0, reverse=True)
    return {"checks": checks, "decisions": decisions}
