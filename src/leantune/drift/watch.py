"""`leantune drift watch POLICY.yaml`: one decision per invocation (cron-friendly; never a daemon of ours).

check drift of the current prompts against production's held-out prompts
  -> no drift, or too few prompts: keep production (exit 0)
  -> drift: with enough labelled new rows, train an update (`train --from production`) within the policy's budget,
     compare it with production on the same items, and promote it only through the gate:
       gain's 95% lower bound > gate.min_gain (points on the new held-out rows),
       retention (child - parent on the parent's held-out rows) >= -gate.retention_margin,
       forgetting (parent - child on the general suite) <= gate.forgetting_margin;
     promoted: exit 0; drift found but production kept (too few rows, over budget, gate failed): exit 1, so a
     scheduler flags it for a person.
Retention and forgetting are judged on their point estimates (the margins are the tolerance; their intervals are
recorded beside them); the gain on its lower bound, so noise never buys a promotion.
Every decision is appended to RUNS/watch/<registry name>.jsonl with its reasons; a lock file keeps two
overlapping invocations from deciding at once.
"""

from __future__ import annotations

import fcntl
import json
import time
from contextlib import contextmanager
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import BudgetError, ConfigError, DuplicateRunError, UserError
from ..runs.index import RunIndex
from ..runs.lookup import find_run
from ..runs.registry import promote, push
from .check import check, read_current


class Gate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_gain: float = Field(0.0, description="the gain's 95% lower bound must be above this (points)")
    retention_margin: float = Field(1.0, ge=0, description="points the old task may lose")
    forgetting_margin: float = Field(1.0, ge=0, description="points the general suite may lose")


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    production: str = Field(..., description="the registry name whose production version is watched (name or name@stage)")
    current: str = Field(..., description="current prompts: a data file or serve-log:NAME")
    new_data: str | None = Field(None, description="labelled new rows an update trains on; without: detect only")
    runs_dir: str = "runs"
    min_rows: int = Field(100, ge=2, description="fewer current prompts (or new labelled rows): no decision")
    alpha: float = Field(0.05, gt=0, lt=1)
    permutations: int = Field(200, ge=10)
    budget_usd: float | None = Field(None, gt=0, description="the update's cost.budget_usd (needs train.cost.usd_per_hour on a CPU)")
    gate: Gate = Gate()
    train: dict[str, object] = Field(default_factory=dict, description="overrides for the update, e.g. training.max_steps: 100")


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"Policy {path}: cannot be read ({e.strerror}).") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"Policy {path}: not valid YAML ({str(e).splitlines()[0]}).") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"Policy {path}: expected a mapping of keys (production, current, new_data, ...).")
    try:
        return Policy.model_validate(tree)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise ConfigError(f"Policy {path}: {problems}. Keys: {', '.join(Policy.model_fields)}.") from None


@contextmanager
def _one_at_a_time(runs_dir: str, name: str):
    folder = Path(runs_dir) / "watch"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"Another `drift watch` for {name} is running (lock {folder / (name + '.lock')}); "
                            "this invocation decides nothing. Schedule them further apart.") from None
        yield


def gate_verdict(update: dict, gate: Gate) -> tuple[bool, list[str]]:
    """(promote?, reasons) from an update.json (evaluation/update.py)."""
    reasons, ok = [], True
    gain = update["gain"]
    if gain["unit"] != "points":
        return False, [f"the new rows are free text (compared on loss, {gain['change']:+.3f} nats): the gate needs a "
                       "scored task; promote by hand after `leantune eval`"]
    lo = gain["ci"][0]
    if lo > gate.min_gain:
        reasons.append(f"gain {gain['change']:+.2f} points, lower bound {lo:+.2f} > {gate.min_gain:g}")
    else:
        ok = False
        reasons.append(f"gain {gain['change']:+.2f} points, lower bound {lo:+.2f} not above {gate.min_gain:g}")
    kept = update["retention"]
    if kept["unit"] == "points":
        within = kept["change"] >= -gate.retention_margin
        ok &= within
        reasons.append(f"retention {kept['change']:+.2f} points ({'within' if within else 'beyond'} the margin "
                       f"-{gate.retention_margin:g})")
    forgot = update.get("forgetting")
    if forgot:
        within = forgot["points"] <= gate.forgetting_margin
        ok &= within
        reasons.append(f"forgetting {forgot['points']:+.2f} points ({'within' if within else 'beyond'} the margin "
                       f"{gate.forgetting_margin:g})")
    return ok, reasons


def watch(policy_path: str | Path, say=print) -> dict:
    """One decision; returns its record (also appended to RUNS/watch/NAME.jsonl)."""
    policy = load_policy(policy_path)
    name, _, stage = policy.production.partition("@")
    stage = stage or "production"
    with _one_at_a_time(policy.runs_dir, name):
        decision = _decide(policy, name, stage, say)
    decision.update(time=time.time(), policy=str(policy_path), production=f"{name}@{stage}")
    log = Path(policy.runs_dir) / "watch" / f"{name}.jsonl"
    with open(log, "a", encoding="utf-8") as f:
        f.write(json.dumps(decision) + "\n")
    say(f"decision: {decision['action']} - {'; '.join(decision['reasons'])}")
    return decision


def _decide(policy: Policy, name: str, stage: str, say) -> dict:
    found = find_run(f"{name}@{stage}", policy.runs_dir)  # refuses a name with no such stage, saying which exist
    parent = found.run
    rows = read_current(policy.current, policy.runs_dir)
    if len(rows) < policy.min_rows:
        return {"action": "keep", "drift": None, "reasons": [
            f"not enough data: {len(rows)} current prompts, the policy wants {policy.min_rows} before it judges"]}
    report = check(str(parent.path), policy.current, policy.runs_dir, policy.alpha, policy.min_rows, policy.permutations,
                   say=say)
    record = {"drift": report.verdict, "checked_run": parent.id,
              "flagged": [s["name"] for s in report.signals if s["drifted"]]}
    if report.verdict != "drift":
        return {**record, "action": "keep", "reasons": [f"no drift ({report.summary()})"]}
    if not policy.new_data:
        return {**record, "action": "alert", "reasons": ["drift found and the policy names no new_data to update on"]}
    from ..data import load_examples

    labelled = [e for e in load_examples(policy.new_data) if getattr(e, "answer", None)]
    if len(labelled) < policy.min_rows:
        return {**record, "action": "alert", "reasons": [
            f"drift found, but {policy.new_data} has {len(labelled)} labelled rows; the policy wants {policy.min_rows}"]}
    overrides = [f"data.train={policy.new_data}", f"output.runs_dir={policy.runs_dir}"]
    overrides += [f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in policy.train.items()]
    if policy.budget_usd is not None:
        overrides.append(f"cost.budget_usd={policy.budget_usd}")
    from ..training.api import train
    from ..training.signals import TrainingStopped

    say(f"drift found ({', '.join(record['flagged'])}): updating {parent.id} on {len(labelled)} rows of {policy.new_data}")
    try:
        result = train(None, overrides, parent=str(parent.path))
    except DuplicateRunError as e:
        return {**record, "action": "alert", "reasons": [f"this update was already trained: {e}"]}
    except (BudgetError, TrainingStopped) as e:
        return {**record, "action": "alert", "reasons": [f"the update stopped before it finished: {e}"]}
    record.update(child=result.run_dir.name, cost_usd=result.cost_usd)
    if result.update is None:
        return {**record, "action": "alert", "reasons": ["the update trained but could not be compared with production"]}
    promote_it, reasons = gate_verdict(result.update, policy.gate)
    if not promote_it:
        return {**record, "action": "alert", "reasons": ["gate failed, production kept: " + "; ".join(reasons)]}
    index = RunIndex(policy.runs_dir)
    version = push(index, index.find(result.run_dir.name), name)
    promote(index, name, version, stage)
    return {**record, "action": "promoted", "version": version, "reasons": reasons}
