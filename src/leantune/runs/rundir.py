"""runs/<run-id>/ holds everything about one run; see shared/DESIGN.md for the layout.

run.json records the status (running / completed / preempted / failed), so a directory explains itself
without an index.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .. import atomic
from ..config import RunConfig, load_config
from ..errors import RunDirError
from .jsonl import append_jsonl, read_jsonl
from .ledger import index_run


@dataclass
class RunDir:
    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    config_path = property(lambda self: self.path / "config.yaml")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    checkpoints = property(lambda self: self.path / "checkpoints")
    adapter = property(lambda self: self.path / "adapter")
    full_model = property(lambda self: self.path / "model")  # full fine-tuning saves the whole model instead
    report_path = property(lambda self: self.path / "report.md")
    info_path = property(lambda self: self.path / "run.json")

    def config(self) -> RunConfig:
        return load_config(self.config_path)

    def info(self) -> dict:
        return json.loads(self.info_path.read_text()) if self.info_path.is_file() else {}

    def update_info(self, **fields) -> None:
        info = self.info()
        info.update(fields)
        atomic.write_json(self.info_path, info)
        if "status" in fields:  # the runs index follows every status change
            index_run(self.path)

    def append_metrics(self, record: dict) -> None:
        self.append_jsonl(self.metrics_path.name, record)

    def append_jsonl(self, name: str, record: dict) -> None:
        append_jsonl(self.path / name, record)

    def read_metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_path)

    def truncate_metrics(self, last_step: int) -> None:
        """Drop records past `last_step`: after a crash they describe steps the resume will redo."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= last_step]
        atomic.write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:60] or "run"


def create_run_dir(config: RunConfig, prints: dict | None = None, device: str = "cpu", price: dict | None = None) -> RunDir:
    """A new run folder; `device` is what the run trains on ('cpu' or 'cuda:<the driver's card name>') and `price`
    the price resolved for it (runs/cost.py), both kept in run.json."""
    root = Path(config.output.runs_dir)
    name = config.output.name or f"{config.method.name}-{Path(config.model.base).stem}-{Path(config.data.train).stem}"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root.mkdir(parents=True, exist_ok=True)
    suffix = 1
    while True:  # mkdir, not exists(): two trainings starting in the same second get different folders
        path = root / (f"{stamp}-{_slug(name)}" + (f"-{suffix}" if suffix > 1 else ""))
        try:
            path.mkdir()
            break
        except FileExistsError:
            suffix += 1
    run = RunDir(path)
    atomic.write_text(run.config_path, config.to_yaml())
    run.update_info(id=run.id, name=name, status="created", created=time.time(), device=device, price=price, **(prints or {}))
    return run


def open_run_dir(path: str | Path) -> RunDir:
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"'{path}' is not a directory. Pass the folder of a run, for example runs/20261123-101500-lora-smollm2-135m-sms-spam.")
    if not (path / "config.yaml").is_file():
        raise RunDirError(f"'{path}' is not a leantune run: it has no config.yaml. Pass the folder that `leantune train` created.")
    return RunDir(path)
