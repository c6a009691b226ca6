"""The cost ledger: what each run used and cost, read from its directory into the index row.

Dollars and billed time come from runs/cost.py (the run's whole process at the price resolved when it started);
a run without a price has an unknown cost (NULL), counted as nothing spent. GPU-hours count only CUDA runs.
Budget alerts fire once each at 50%, 80% and 100% of a project's budget, printed and appended to
`<runs root>/alerts.log`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..config import load_config
from ..errors import BudgetError, ConfigError, RunDirError
from .cost import run_cost, usd
from .fingerprint import result_fields
from .index import RunIndex
from .jsonl import read_jsonl

ALERT_LEVELS = (50, 80, 100)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{path}: missing. This run directory is incomplete; `leantune runs reindex` skips it.") from None
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path}: unreadable ({e}). Restore or delete it; the other runs are unaffected.") from None


def row_for(run_dir: str | Path) -> dict:
    """The index row of a run directory. Raises RunDirError naming the file that is missing or corrupt."""
    run_dir = Path(run_dir)
    info = _read_json(run_dir / "run.json")
    try:
        config = load_config(run_dir / "config.yaml")
    except ConfigError as e:
        raise RunDirError(f"{run_dir / 'config.yaml'}: unreadable ({str(e).splitlines()[0]}).") from None
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    steps = [m for m in metrics if "loss" in m]
    evals = [m["eval_loss"] for m in metrics if "eval_loss" in m]
    last = steps[-1] if steps else {}
    tokens = int(last.get("tokens", 0))
    device = info.get("device", "cpu")
    billed = run_cost(info, metrics, config.cost.usd_per_hour)
    cost = billed.usd
    plan = {}
    if (run_dir / "plan.json").is_file():
        try:
            plan = json.loads((run_dir / "plan.json").read_text())
        except ValueError:
            plan = {}
    return {
        "id": run_dir.name, "path": str(run_dir.resolve()), "name": info.get("name", run_dir.name),
        "project": config.output.project, "status": info.get("status", "unknown"), "method": config.method.name,
        "objective": config.objective.name, "base": config.model.base, "data": config.data.train,
        "steps": int(last.get("step", 0)), "total_steps": info.get("total_steps"),
        "final_loss": last.get("loss"), "eval_loss": evals[-1] if evals else None,
        "best_eval_loss": min(evals) if evals else None, "tokens": tokens, "wall_s": billed.seconds, "device": device,
        "gpu_hours": billed.seconds / 3600 if device.startswith("cuda") else 0.0,
        "usd_per_hour": billed.price.usd_per_hour, "cost_usd": cost,
        "usd_per_m_tokens": cost / tokens * 1e6 if tokens and cost is not None else None,
        "peak_memory_mb": max((m.get("peak_memory_mb", 0) for m in steps), default=None),
        "planned_memory_gib": plan.get("memory_gib", {}).get("total"),
        "started": info.get("created"), "finished": info.get("finished"), "resumes": info.get("resumes", 0),
        "config_fp": info.get("config_fp"), "data_fp": info.get("data_fp"), "model_fp": info.get("model_fp"),
        "fields": json.dumps(result_fields(config), sort_keys=True),
        "parent": Path(config.model.parent).name if config.model.parent else None,  # lineage: the parent's id
        "alerts": len(info.get("alerts", [])),  # cost anomalies raised while it trained (runs/anomalies.py)
    }


def index_run(run_dir: str | Path, note=None) -> None:
    """Best effort: a run must not fail because its index row could not be written (reindex repairs it)."""
    run_dir = Path(run_dir)
    try:
        RunIndex(run_dir.parent).upsert(row_for(run_dir))
    except Exception as e:  # noqa: BLE001 - a locked or damaged index must never stop a training
        if note:
            note(f"[yellow]runs index not updated ({e}); `leantune runs reindex --runs-dir {run_dir.parent}` rebuilds it[/]")


def run_dirs(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "config.yaml").is_file())


def append_alert(runs_root: Path, message: str) -> None:
    """One timestamped line in the runs root's alerts.log: budget alerts and cost anomalies alike."""
    runs_root.mkdir(parents=True, exist_ok=True)
    with open(runs_root / "alerts.log", "a", encoding="utf-8") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


def budget_alerts(index: RunIndex, project: str, note=print) -> list[str]:
    """Alerts newly crossed since the last check (each level fires once per budget)."""
    budget, alerted = index.budget(project)
    if not budget:
        return []
    spent = index.spent(project)
    fired = []
    for level in ALERT_LEVELS:
        if level > alerted and spent >= budget * level / 100:
            message = (f"budget alert: project '{project}' has spent {usd(spent)} of its {usd(budget)} budget "
                       f"({spent / budget:.0%}, past {level}%)")
            fired.append(message)
            append_alert(index.root, message)
            index.mark_alerted(project, level)
    for message in fired:
        note(f"[bold yellow]{message}[/]")
    return fired


def set_project_budget(index: RunIndex, project: str, amount: str) -> float:
    """A project's budget from the text a person typed: a positive, finite number of dollars."""
    try:
        dollars = float(amount)
    except ValueError:
        dollars = float("nan")
    if not dollars > 0 or dollars == float("inf"):
        raise BudgetError(f"A budget must be a positive number of dollars, got {amount!r}. Example: leantune budget set 200")
    index.set_budget(project, dollars)
    return dollars
