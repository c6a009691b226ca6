"""The planner's prediction for a run's own shapes, made when the model is ready and before the first step: the
peak memory (a run predicted not to fit hardware.memory_gib is refused unless forced) and the training time
(what the project budget check prices). Both go to the run's plan.json for the report's plan-vs-actual table."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .. import atomic
from ..data.batches import first_epoch_micro_batches
from ..errors import PlanError
from ..plan.memory import GiB, estimate_peak_memory
from ..plan.setup import setup_from_run_config
from ..plan.shapes import shape_from_hf_config
from ..plan.timing import default_mfu, flops_per_token
from ..runs.cost import gpu_for_device

CPU_FLOPS = 50e9  # the lower half of what bench/memory_model.py measured for training steps on 2 cores


def planned_tokens(config, rows: list, total_steps: int) -> float:
    """The tokens the run's steps will process (the mean row length x rows per step x steps; DPO: both replies)."""
    per_row = sum(len(e.input_ids) for e in rows) / max(len(rows), 1) * (2 if config.objective.name == "dpo" else 1)
    return total_steps * config.training.micro_batch_size * config.training.grad_accum * per_row


def planned_seconds(config, model_config: dict, tokens: float, device: str, device_name: str) -> float | None:
    """Training time before it starts: its tokens x the planner's FLOPs per token over this device's throughput
    (the detected GPU's catalog FLOP/s at the planner's measured MFU for this method and width; a CPU at
    CPU_FLOPS). None on a GPU the catalog does not list: guessing another card's speed would make a plan that looks
    real and is not."""
    shape = shape_from_hf_config(model_config, config.model.base)
    setup = setup_from_run_config(config, device=device)
    if device == "cuda":
        gpu = gpu_for_device(device_name)
        if gpu is None:
            return None
        flops = gpu.bf16_tflops * 1e12 * default_mfu(shape, setup.method)
    else:
        flops = CPU_FLOPS
    return tokens * flops_per_token(shape, setup) / flops


# Sizing the largest packed micro-batch looks at this many of the run's first micro-batches at most (a few seconds
# of list work); beyond that the run's micro-batches are the same examples in other random groups.
SIZED_MICRO_BATCHES = 20_000


@dataclass(frozen=True)
class MicroBatchShape:
    """The largest micro-batch a run feeds its model, as laid out: rows x the longest row (what is padded to), the
    examples in it, and the most labelled positions of any micro-batch (where logits are computed)."""

    rows: int
    row_len: int
    examples: int
    labelled: int


def largest_micro_batch(batches, examples: list, seed: int, micro_batches: int, mixed_in: int = 0) -> MicroBatchShape:
    """The largest of the run's first micro-batches (at most one epoch, at most SIZED_MICRO_BATCHES) after packing:
    the data order is fixed by the seed (data/batches.first_epoch_micro_batches), so these are the micro-batches the
    run will have. Packed in one row, a micro-batch of 8 short examples is one row of their summed length less the
    shared prefix - not 8 x the longest example of the data set, which overstates activations two-fold on chat
    data."""
    largest, labelled = (0, 0, 0), 0
    limit = min(micro_batches, SIZED_MICRO_BATCHES)
    for chosen in first_epoch_micro_batches(examples, batches.micro_batch_size, seed, limit, mixed_in):
        rows = batches.layout(chosen)
        shape = (len(rows), max(len(r.input_ids) for r in rows), len(chosen))
        if shape[0] * shape[1] > largest[0] * largest[1]:
            largest = shape
        labelled = max(labelled, sum(e.n_label_tokens for e in chosen))
    return MicroBatchShape(*largest, labelled)


def resident_bytes() -> int | None:
    """This process's resident memory now (Linux's /proc/self/statm), or None where it cannot be read."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


class ResidentGrowth:
    """Resident memory the process gained inside `during()` blocks, summed: on a CPU, what loading the data cost
    (what the allocator took for it and keeps, transients included). 0 where /proc cannot be read."""

    def __init__(self) -> None:
        self.bytes = 0

    @contextmanager
    def during(self):
        before = resident_bytes()
        yield
        after = resident_bytes()
        if before is not None and after is not None:
            self.bytes += max(0, after - before)


def check_memory_plan(config, model_config: dict, rows: list, dtype: torch.dtype, device: str, run, seconds,
                      force: bool, note, processes: int = 1, packed: MicroBatchShape | None = None,
                      data_bytes: int = 0) -> None:
    """Predict the peak with the planner for this run's own shapes (per process when there are several: each holds
    its shard under fsdp2 and runs its share of every micro-batch); refuse what cannot fit. `packed`: the largest
    packed micro-batch (largest_micro_batch), sized as laid out instead of micro-batch x the longest example;
    `data_bytes`: the resident memory reading and tokenising the data took (ResidentGrowth), counted on a CPU."""
    t = config.training
    if packed is not None and processes == 1:
        batch, seq_len = packed.rows, packed.row_len
        labelled = packed.labelled / (batch * seq_len)  # logits only at labelled positions (models/forward.py)
        shape_text = (f"the largest packed micro-batch ({packed.examples} examples in {batch} row"
                      f"{'s' if batch > 1 else ''} of up to {seq_len} tokens)")
        several = {"micro_batch": batch}
    else:
        seq_len = max(len(e.input_ids) for e in rows)
        labelled = max(e.n_label_tokens for e in rows) / seq_len
        per_process = -(-t.micro_batch_size // processes)  # each process's share of a micro-batch's rows
        shape_text = f"micro-batch {per_process} x up to {seq_len} tokens"
        several = {} if processes == 1 else {
            "gpus": processes, "sharding": "fsdp" if t.distributed.strategy == "fsdp2" else "none",
            "micro_batch": per_process}
    setup = setup_from_run_config(config, seq_len=seq_len, dtype="fp32" if dtype == torch.float32 else "bf16",
                                  device=device, loss_positions=labelled, **several)
    memory = estimate_peak_memory(shape_from_hf_config(model_config, config.model.base), setup)
    # On a CPU the data is in the same memory as the model: the rows and their tokens, held as Python lists
    # (~0.1 GiB for tweets-sentiment's 37,500 examples), measured while they were read and tokenised.
    data_bytes = data_bytes if device == "cpu" else 0
    memory = replace(memory, overhead=memory.overhead + data_bytes)
    gib = memory.as_gib()
    atomic.write_json(run.path / "plan.json", {"setup": setup.__dict__, "memory_gib": gib, "seconds": seconds})
    note(f"plan: peak ~{gib['total']:.2f} GiB for {shape_text} "
         f"(weights {gib['weights']:.2f}, activations {gib['activations']:.2f}, logits {gib['logits']:.2f}, "
         f"overhead {gib['overhead']:.2f}{f', of which data {data_bytes / GiB:.2f}' if data_bytes else ''})")
    limit = config.hardware.memory_gib
    if limit and memory.total > limit * GiB:
        message = (f"The plan predicts {gib['total']:.2f} GiB at peak, more than hardware.memory_gib={limit:g}. Lower "
                   "training.micro_batch_size or data.max_seq_len, set training.gradient_checkpointing=true, or pass "
                   "--force to try anyway.")
        if not force:
            raise PlanError(message)
        note(f"[yellow]--force: {message}[/]")
