"""Search the setups that fit and rank them by cost: method x GPU type x GPU count x micro-batch x
gradient checkpointing x optimizer x sharding."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from .catalog import GPU
from .memory import GiB, MemoryBreakdown, estimate_peak_memory
from .setup import Setup
from .shapes import ModelShape
from .timing import TimeEstimate, estimate_time

GPU_COUNTS = (1, 2, 4, 8)
MICRO_BATCHES = (1, 2, 4, 8, 16)


@dataclass
class Candidate:
    setup: Setup
    gpu: GPU
    memory: MemoryBreakdown
    time: TimeEstimate

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.gpu.memory_gib * GiB

    def price(self, spot: bool) -> float:
        cost = self.time.cost_spot if spot else self.time.cost_on_demand
        return float("inf") if cost is None else cost


def evaluate_setup(shape: ModelShape, setup: Setup, gpu: GPU, tokens: float, mfu: float | None = None) -> Candidate:
    return Candidate(setup, gpu, estimate_peak_memory(shape, setup), estimate_time(shape, setup, gpu, tokens, mfu))


def candidate_setups(base: Setup, methods: list[str], gpu_counts=GPU_COUNTS, micro_batches=MICRO_BATCHES):
    for method, gpus, mb, ckpt in itertools.product(methods, gpu_counts, micro_batches, (False, True)):
        optimizers = ("adamw", "adamw8bit") if method == "full" else ("adamw",)
        # Several GPUs: plain data parallelism, or ZeRO-3/FSDP sharding (which frozen LoRA/QLoRA base
        # weights need too once they outgrow one GPU, as in FSDP + QLoRA).
        shardings = ("none",) if gpus == 1 else ("none", "zero3")
        for opt, shard in itertools.product(optimizers, shardings):
            yield replace(base, method=method, gpus=gpus, micro_batch=mb, grad_checkpointing=ckpt, optimizer=opt, sharding=shard)


def recommend(shape: ModelShape, base: Setup, gpus: list[GPU], tokens: float, methods: list[str],
              spot: bool = False, mfu: float | None = None) -> tuple[list[Candidate], list[str]]:
    """(setups that fit, cheapest first; one line per GPU type that fits the run in no setup, and why)."""
    fitting: list[Candidate] = []
    reasons: list[str] = []
    for gpu in gpus:
        smallest = None  # across methods: the closest this GPU type comes to holding the run
        for method in methods:
            for setup in candidate_setups(base, [method]):
                c = evaluate_setup(shape, setup, gpu, tokens, mfu)
                if c.fits:
                    fitting.append(c)
                elif smallest is None or c.memory.total < smallest.memory.total:
                    smallest = c
        if smallest is not None and not any(c.gpu.key == gpu.key for c in fitting):
            s = smallest.setup
            reasons.append(
                f"{gpu.name}: even the smallest setup ({s.method}, {s.gpus} GPU(s){', ' + s.sharding if s.sharding != 'none' else ''}, "
                f"micro-batch {s.micro_batch}{', checkpointing' if s.grad_checkpointing else ''}) needs "
                f"{smallest.memory.total / GiB:.1f} GiB per GPU; it has {gpu.memory_gib:.0f}"
            )
    # One row per (method, GPU type, GPU count): the fitting variant that recomputes nothing, shards
    # nothing it need not, and uses the largest micro-batch (larger batches run closer to peak, which the
    # flat MFU assumption does not see).

    def preference(c: Candidate):
        return (c.price(spot), c.setup.grad_checkpointing, c.setup.sharding != "none", -c.setup.micro_batch)

    best: dict[tuple, Candidate] = {}
    for c in fitting:
        key = (c.setup.method, c.gpu.key, c.setup.gpus)
        if key not in best or preference(c) < preference(best[key]):
            best[key] = c
    ranked = sorted(best.values(), key=lambda c: (round(c.price(spot), 4), c.time.hours))
    return ranked, reasons
