"""The model registry: named models with integer versions and a stage, in the runs root.

`push` copies a run's adapter (or, for full fine-tuning, its model directory) to
`<runs root>/registry/<name>/v<N>/` by hard links where the filesystem allows (no extra space, and deleting the
run does not break the registered copy), by copying otherwise. Stages: none, staging, production, archived;
promoting a version to production archives the one that held it, and `rollback` gives production back to the
previous production version.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from ..atomic import atomic_dir
from ..errors import RegistryError
from .index import RunIndex

STAGES = ("none", "staging", "production", "archived")
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


def check_name(name: str) -> None:
    if not NAME.match(name):
        raise RegistryError(f"Registry name {name!r} is not valid: start with a letter, then letters, digits, '-' or '_' "
                            "(at most 64), e.g. support-bot.")


def _link_tree(source: Path, target: Path) -> None:
    for path in source.rglob("*"):
        dest = target / path.relative_to(source)
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except OSError:  # another filesystem, or links not allowed
            shutil.copy2(path, dest)


def push(index: RunIndex, run: dict, name: str) -> int:
    check_name(name)
    run_path = Path(run["path"])
    source = run_path / ("model" if (run_path / "model").is_dir() else "adapter")
    if run["status"] != "completed" or not source.is_dir():
        raise RegistryError(f"Run {run['id']} has no finished adapter or model to register (status: {run['status']}).")
    with index.connect(write=True) as db:
        version = (db.execute("SELECT MAX(version) FROM registry WHERE name = ?", (name,)).fetchone()[0] or 0) + 1
        target = index.root / "registry" / name / f"v{version}"
        with atomic_dir(target) as tmp:
            _link_tree(source, tmp)
            (tmp / "leantune-source.json").write_text(json.dumps({"run": run["id"], "config": str(run_path / "config.yaml")}))
        metrics = {k: run.get(k) for k in ("eval_loss", "best_eval_loss", "final_loss", "steps", "tokens")}
        db.execute("INSERT INTO registry VALUES (?, ?, 'none', ?, ?, ?, ?, ?)",
                   (name, version, run["id"], str(target), json.dumps(metrics), run.get("cost_usd"), time.time()))
    return version


def versions(index: RunIndex, name: str | None = None) -> list[dict]:
    with index.connect() as db:
        query, args = "SELECT * FROM registry", ()
        if name:
            query, args = query + " WHERE name = ?", (name,)
        rows = [dict(r) for r in db.execute(query + " ORDER BY name, version", args)]
    if name and not rows:
        known = sorted({r["name"] for r in versions(index)})
        raise RegistryError(f"No model named {name!r} in the registry" + (f" (it has: {', '.join(known)})." if known else " (it is empty)."))
    return rows


def check_promotion(index: RunIndex, name: str, version: int, stage: str) -> list[dict]:
    """Refuse a stage or version that does not exist; the name's rows otherwise."""
    if stage not in STAGES:
        raise RegistryError(f"Stage {stage!r} is not one of {', '.join(STAGES)}.")
    rows = versions(index, name)
    if version not in [r["version"] for r in rows]:
        raise RegistryError(f"{name} has no version {version} (versions: {', '.join(str(r['version']) for r in rows)}).")
    return rows


def promote(index: RunIndex, name: str, version: int, stage: str) -> None:
    check_promotion(index, name, version, stage)
    with index.connect(write=True) as db:
        if stage == "production":
            db.execute("UPDATE registry SET stage = 'archived' WHERE name = ? AND stage = 'production'", (name,))
        db.execute("UPDATE registry SET stage = ? WHERE name = ? AND version = ?", (stage, name, version))
    _log(index, name, f"v{version} -> {stage}")


def _production_stack(index: RunIndex, name: str) -> list[int]:
    """Versions that have held production, in order, with rolled-back ones popped off."""
    stack: list[int] = []
    for event in _history(index, name):
        if event.endswith("-> production"):
            stack.append(int(event.split()[0][1:]))
        elif event == "rollback" and stack:
            stack.pop()
    return stack


def rollback(index: RunIndex, name: str) -> tuple[int, int]:
    """Production goes back to the version that held it before the current one; returns (from, to)."""
    rows = versions(index, name)
    current = [r["version"] for r in rows if r["stage"] == "production"]
    if not current:
        raise RegistryError(f"{name} has no version in production, so there is nothing to roll back.")
    stack = [v for v in _production_stack(index, name)]
    while len(stack) > 1 and stack[-2] == stack[-1]:
        stack.pop()
    if len(stack) < 2:
        raise RegistryError(f"{name} v{current[0]} is the first version ever in production; there is nothing to roll back to.")
    previous = stack[-2]
    with index.connect(write=True) as db:
        db.execute("UPDATE registry SET stage = 'archived' WHERE name = ? AND stage = 'production'", (name,))
        db.execute("UPDATE registry SET stage = 'production' WHERE name = ? AND version = ?", (name, previous))
    _log(index, name, "rollback")
    return current[0], previous


def _log_path(index: RunIndex, name: str) -> Path:
    return index.root / "registry" / name / "history.log"


def _log(index: RunIndex, name: str, event: str) -> None:
    path = _log_path(index, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(event + "\n")


def _history(index: RunIndex, name: str) -> list[str]:
    path = _log_path(index, name)
    return path.read_text().splitlines() if path.is_file() else []


def resolve(index: RunIndex, ref: str) -> dict | None:
    """The registry row a reference names: 'name@production' (or any stage), 'name@v3' / 'name@3'; None when
    `ref` is not of that form (it is a run then)."""
    if "@" not in ref:
        return None
    name, _, which = ref.partition("@")
    rows = versions(index, name)
    if which in STAGES:
        hits = [r for r in rows if r["stage"] == which]
        if not hits:
            raise RegistryError(f"{name} has no version in {which} (versions: "
                                f"{', '.join('v%d %s' % (r['version'], r['stage']) for r in rows)}).")
        return hits[-1]
    number = which[1:] if which.startswith("v") else which
    if not number.isdigit() or int(number) not in [r["version"] for r in rows]:
        raise RegistryError(f"{ref!r}: {name} has no version {which!r}; give a stage ({', '.join(STAGES)}) or one "
                            f"of {', '.join('v%d' % r['version'] for r in rows)}.")
    return next(r for r in rows if r["version"] == int(number))
