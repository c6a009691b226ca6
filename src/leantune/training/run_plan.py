"""The planner's prediction for a run's own shapes, made when the model is ready and before the first step: the
peak memory (a run predicted not to fit hardware.memory_gib is refused unless forced) and the training time
(what the project budget check prices). Both go to the run's plan.json for the report's plan-vs-actual table."""

from __future__ import annotations

import torch

from .. import atomic
from ..errors import PlanError
from ..plan.memory import GiB, estimate_peak_memory
from ..plan.setup import setup_from_run_config
from ..plan.shapes import shape_from_hf_config
from ..plan.timing import DEFAULT_MFU, flops_per_token
from ..runs.cost import gpu_for_device

CPU_FLOPS = 50e9  # the lower half of what bench/memory_model.py measured for training steps on 2 cores


def planned_tokens(config, rows: list, total_steps: int) -> float:
    """The tokens the run's steps will process (the mean row length x rows per step x steps; DPO: both replies)."""
    per_row = sum(len(e.input_ids) for e in rows) / max(len(rows), 1) * (2 if config.objective.name == "dpo" else 1)
    return total_steps * config.training.micro_batch_size * config.training.grad_accum * per_row


def planned_seconds(config, model_config: dict, tokens: float, device: str, device_name: str) -> float | None:
    """Training time before it starts: its tokens x the planner's FLOPs per token over this device's throughput
    (the detected GPU's catalog FLOP/s at the planner's default MFU; a CPU at CPU_FLOPS). None on a GPU the
    catalog does not list: guessing another card's speed would make a plan that looks real and is not."""
    shape = shape_from_hf_config(model_config, config.model.base)
    setup = setup_from_run_config(config, device=device)
    if device == "cuda":
        gpu = gpu_for_device(device_name)
        if gpu is None:
            return None
        flops = gpu.bf16_tflops * 1e12 * DEFAULT_MFU.get(setup.method, 0.35)
    else:
        flops = CPU_FLOPS
    return tokens * flops_per_token(shape, setup) / flops


def check_memory_plan(config, model_config: dict, rows: list, dtype: torch.dtype, device: str, run, seconds,
                      force: bool, note, processes: int = 1) -> None:
    """Predict the peak with the planner for this run's own shapes (per process when there are several: each holds
    its shard under fsdp2 and runs its share of every micro-batch); refuse what cannot fit."""
    longest = max(len(e.input_ids) for e in rows)
    labelled = max(e.n_label_tokens for e in rows) / longest  # logits only at labelled positions (models/forward.py)
    t = config.training
    several = {} if processes == 1 else {
        "gpus": processes, "sharding": "fsdp" if t.distributed.strategy == "fsdp2" else "none",
        "micro_batch": -(-t.micro_batch_size // processes)}
    setup = setup_from_run_config(config, seq_len=longest, dtype="fp32" if dtype == torch.float32 else "bf16",
                                  device=device, loss_positions=labelled, **several)
    memory = estimate_peak_memory(shape_from_hf_config(model_config, config.model.base), setup)
    gib = memory.as_gib()
    atomic.write_json(run.path / "plan.json", {"setup": setup.__dict__, "memory_gib": gib, "seconds": seconds})
    note(f"plan: peak ~{gib['total']:.2f} GiB for micro-batch {setup.micro_batch} x up to {longest} tokens "
         f"(weights {gib['weights']:.2f}, activations {gib['activations']:.2f}, logits {gib['logits']:.2f}, "
         f"overhead {gib['overhead']:.2f})")
    limit = config.hardware.memory_gib
    if limit and memory.total > limit * GiB:
        message = (f"The plan predicts {gib['total']:.2f} GiB at peak, more than hardware.memory_gib={limit:g}. Lower "
                   "training.micro_batch_size or data.max_seq_len, set training.gradient_checkpointing=true, or pass "
                   "--force to try anyway.")
        if not force:
            raise PlanError(message)
        note(f"[yellow]--force: {message}[/]")
