"""Checkpoints that survive a crash: trainable weights (safetensors), optimizer, scheduler, RNG states
and the data position, written as one folder that appears only when complete.

Several processes write a sharded checkpoint instead (torch.distributed.checkpoint, in `dcp/`: each process its
own shards of the trainable weights and optimizer state, keyed by parameter name), then rank 0 writes the rest and
renames the folder into place; `progress.json` is written last, so a folder without it (a preemption mid-save) is
never resumed from. Either format resumes on any number of processes: DCP reshards on load, and a one-process
checkpoint is spread over the shards by parameter name.

Nothing is unpickled on resume: tensors come from safetensors or DCP and the rest from
`torch.load(..., weights_only=True)`, which accepts only tensors, numbers, strings and containers.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..atomic import atomic_dir

WEIGHTS = "trainable.safetensors"
SHARDED = "dcp"
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


def save_sharded_checkpoint(root: Path, model, optimizer, scheduler, progress: Progress, keep: int, world,
                            extra: dict | None = None) -> Path:
    """Every process's shards under `dcp/`, then rank 0's scheduler, RNG and progress, the folder renamed into
    place by rank 0 once all are written. Needs the checkpoint folder on a filesystem every process sees."""
    import torch.distributed.checkpoint as dcp

    target = step_dir(root, progress.step)
    partial = root / f".{target.name}.partial"
    if world.main:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    world.barrier()
    dcp.save(_sharded_state(model, optimizer), checkpoint_id=str(partial / SHARDED))
    world.barrier()
    if world.main:
        torch.save({"scheduler": scheduler.state_dict(), "rng": rng_state(), "extra": extra or {},
                    "processes": world.size}, partial / STATE)
        (partial / PROGRESS).write_text(json.dumps(asdict(progress), indent=2))
        if target.exists():  # the same step saved again after a resume
            shutil.rmtree(target)
        os.replace(partial, target)
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    world.barrier()
    return target


def _sharded_state(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    return {"model": get_model_state_dict(model, options=StateDictOptions(ignore_frozen_params=True)),
            "optimizer": get_optimizer_state_dict(model, optimizer)}


def load_checkpoint(path: Path, model, optimizer, scheduler) -> tuple[Progress, dict]:
    """Restore a checkpoint of either format into this process's model and optimizer (sharded or whole)."""
    if (path / SHARDED).is_dir():
        _load_sharded(path, model, optimizer)
    elif _is_sharded(model):
        _load_whole_into_shards(path, model, optimizer)
    else:
        _load_whole(path, model, optimizer)
    state = torch.load(path / STATE, weights_only=True)
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return Progress(**json.loads((path / PROGRESS).read_text())), state.get("extra", {})


def _is_sharded(model) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _load_whole(path: Path, model, optimizer) -> None:
    weights = load_file(path / WEIGHTS)
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {len(missing)} trainable tensors, e.g. {missing[0]}")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(path / STATE, weights_only=True)["optimizer"])


def _load_sharded(path: Path, model, optimizer) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    state = _sharded_state(model, optimizer)  # the shapes and shards to read into (DCP reshards on load)
    dcp.load(state, checkpoint_id=str(path / SHARDED))
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=False))
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


def _load_whole_into_shards(path: Path, model, optimizer) -> None:
    """A one-process checkpoint into a sharded model: whole tensors by name, each process keeping its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    whole = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, load_file(path / WEIGHTS), options=whole)
    saved = torch.load(path / STATE, weights_only=True)["optimizer"]
    # torch's optimizer state is keyed by position; both runs built their optimizer over named_parameters() in order
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    by_name = {"state": {order[i]: v for i, v in saved["state"].items()},
               "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in saved["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
