"""Checkpoints that survive a crash: trainable weights (safetensors), optimizer, scheduler, RNG states
and the data position, written as one folder that appears only when complete.

Nothing is unpickled on resume: tensors come from safetensors and the rest from
`torch.load(..., weights_only=True)`, which accepts only tensors, numbers, strings and containers.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..atomic import atomic_dir

WEIGHTS = "trainable.safetensors"
STATE = "training_state.pt"
PROGRESS = "progress.json"


@dataclass
class Progress:
    step: int = 0  # optimizer steps done; the next step's batches follow from it (data/batches.py)
    tokens: int = 0
    elapsed_s: float = 0.0
    best_eval_loss: float | None = None


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}"


def save_checkpoint(root: Path, model, optimizer, scheduler, progress: Progress, keep: int, extra: dict | None = None) -> Path:
    """`extra`: method state outside the weights and optimizer (AdaLoRA's sensitivity statistics), tensors and
    containers only."""
    target = step_dir(root, progress.step)
    with atomic_dir(target) as tmp:
        save_file(trainable_state(model), tmp / WEIGHTS)
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
             "extra": extra or {}}, tmp / STATE
        )
        (tmp / PROGRESS).write_text(json.dumps(asdict(progress), indent=2))
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of an interrupted save start with '.')."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if p.is_dir() and (p / PROGRESS).is_file())


def load_checkpoint(path: Path, model, optimizer, scheduler) -> tuple[Progress, dict]:
    weights = load_file(path / WEIGHTS)
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {len(missing)} trainable tensors, e.g. {missing[0]}")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    state = torch.load(path / STATE, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return Progress(**json.loads((path / PROGRESS).read_text())), state.get("extra", {})
