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


def evaluate(shape: ModelShape, setup: Setup, gpu: GPU, tokens: float, mfu: float | None = None) -> Candidate:
    return Candidate(setup, gpu, estimate_peak_memory(shape, setup), estimate_time(shape, setup, gpu, tokens, mfu))


def candidate_setups(base: Setup, methods: list[str], gpu_counts=GPU_COUNTS, micro_batches=MICRO_BATCHES):
    for method, gpus, mb, ckpt in itertools.product(methods, gpu_counts, micro_batches, (False, True)):
        optimizers = ("adamw", "adamw8bit") if method == "full" else ("adamw",)
        shardings = ("none",) if gpus == 1 else (("zero3",) if method == "full" else ("none",))
        for opt, shard in itertools.product(optimizers, shardings):
            yield replace(base, method=method, gpus=gpus, micro_batch=mb, grad_checkpointing=ckpt, optimizer=opt, sharding=shard)


def recommend(shape: ModelShape, base: Setup, gpus: list[GPU], tokens: float, methods: list[str],
              spot: bool = False, mfu: float | None = None) -> tuple[list[Candidate], list[str]]:
    """(setups that fit, cheapest first; one line per GPU x method that fits in no configuration and why)."""
    fitting: list[Candidate] = []
    reasons: list[str] = []
    for gpu, method in itertools.product(gpus, methods):
        smallest = None
        found = False
        for setup in candidate_setups(base, [method]):
            c = evaluate(shape, setup, gpu, tokens, mfu)
            if c.fits:
                fitting.append(c)
                found = True
            elif smallest is None or c.memory.total < smallest.memory.total:
                smallest = c
        if not found and smallest is not None:
            s = smallest.setup
            reasons.append(
                f"{method} on {gpu.name}: needs {smallest.memory.total / GiB:.1f} GiB per GPU even at micro-batch {s.micro_batch}, "
                f"{'with' if s.grad_checkpointing else 'without'} checkpointing, {s.gpus} GPU(s); it has {gpu.memory_gib:.0f}"
            )
    # One row per (method, GPU type, GPU count): the fitting variant that recomputes nothing and uses the
    # largest micro-batch (larger batches run closer to peak, which the flat MFU assumption does not see).
    best: dict[tuple, Candidate] = {}
    for c in fitting:
        key = (c.setup.method, c.gpu.key, c.setup.gpus)
        rank = (c.price(spot), c.setup.grad_checkpointing, -c.setup.micro_batch)
        if key not in best or rank < (best[key].price(spot), best[key].setup.grad_checkpointing, -best[key].setup.micro_batch):
            best[key] = c
    ranked = sorted(best.values(), key=lambda c: (round(c.price(spot), 4), c.time.hours))
    return ranked, reasons
