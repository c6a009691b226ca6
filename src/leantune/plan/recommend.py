"""Search the setups that fit and rank them by cost: method x GPU type x GPU count x micro-batch x the memory
levers (activation checkpointing, activation offloading, chunked loss, 8-bit Adam, sharding)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

from .catalog import GPU
from .memory import GiB, MemoryBreakdown, estimate_peak_memory
from .setup import Setup
from .shapes import ModelShape
from .timing import TimeEstimate, estimate_time

GPU_COUNTS = (1, 2, 4, 8, 16)  # 16: two machines of 8 (the network between them is priced: plan/timing.py)
MICRO_BATCHES = (1, 2, 4, 8, 16)
# the chunk the search tries when the run has none: torchtune's 8 chunks of a 2 x 2048 batch; the fp32 logits of
# 512 positions are 0.7 GiB for a 128k vocabulary
SEARCH_LOSS_CHUNK = 512


@dataclass
class Candidate:
    setup: Setup
    gpu: GPU
    memory: MemoryBreakdown
    time: TimeEstimate
    levers: list[dict] = field(default_factory=list)  # filled for the setups shown (lever_effects)

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.gpu.memory_gib * GiB

    def price(self, spot: bool) -> float:
        cost = self.time.cost_spot if spot else self.time.cost_on_demand
        return float("inf") if cost is None else cost


def evaluate_setup(shape: ModelShape, setup: Setup, gpu: GPU, tokens: float, mfu: float | None = None) -> Candidate:
    return Candidate(setup, gpu, estimate_peak_memory(shape, setup), estimate_time(shape, setup, gpu, tokens, mfu))


def lever_effects(shape: ModelShape, c: Candidate, tokens: float, mfu: float | None = None) -> list[dict]:
    """What each lever the setup pulls buys: GiB per GPU saved and the time it costs, against the same setup with
    that one lever released."""
    effects = []
    for lever, release in c.setup.lever_releases().items():
        without = evaluate_setup(shape, replace(c.setup, **release), c.gpu, tokens, mfu)
        effects.append({"lever": lever, "saves_gib": (without.memory.total - c.memory.total) / GiB,
                        "time_factor": c.time.hours / without.time.hours if without.time.hours else 1.0})
    return effects


def candidate_setups(base: Setup, methods: list[str], gpu_counts=GPU_COUNTS, micro_batches=MICRO_BATCHES):
    """Groups of setups: the first of each pulls no activation lever, the rest are its lever variants (checkpointing,
    offloading, a chunked loss), tried only when the first does not fit - a lever never makes a step cheaper."""
    chunks = sorted({base.loss_chunk, SEARCH_LOSS_CHUNK})
    offloads = (False, True) if base.device == "cuda" else (False,)  # on a CPU run the host memory is the device's
    for method, gpus, mb in itertools.product(methods, gpu_counts, micro_batches):
        optimizers = ("adamw", "adamw8bit") if method == "full" else ("adamw",)
        # Several GPUs: plain data parallelism, or ZeRO-3/FSDP sharding (which frozen LoRA/QLoRA base
        # weights need too once they outgrow one GPU, as in FSDP + QLoRA).
        shardings = ("none",) if gpus == 1 else ("none", "zero3")
        for opt, shard in itertools.product(optimizers, shardings):
            common = replace(base, method=method, gpus=gpus, micro_batch=mb, optimizer=opt, sharding=shard)
            yield [replace(common, grad_checkpointing=ckpt, activation_offload=offload, loss_chunk=chunk)
                   for ckpt, offload, chunk in itertools.product((False, True), offloads, chunks)]


def recommend(shape: ModelShape, base: Setup, gpus: list[GPU], tokens: float, methods: list[str],
              spot: bool = False, mfu: float | None = None) -> tuple[list[Candidate], list[str]]:
    """(setups that fit, cheapest first; one line per GPU type that fits the run in no setup, and why)."""
    fitting: list[Candidate] = []
    reasons: list[str] = []
    for gpu in gpus:
        smallest = None  # across methods: the closest this GPU type comes to holding the run
        for method in methods:
            for group in candidate_setups(base, [method]):
                for setup in group:
                    c = evaluate_setup(shape, setup, gpu, tokens, mfu)
                    if c.fits:
                        fitting.append(c)
                        if setup is group[0]:
                            break  # fits without a lever: its lever variants only cost more
                    elif smallest is None or c.memory.total < smallest.memory.total:
                        smallest = c
        if smallest is not None and not any(c.gpu.key == gpu.key for c in fitting):
            s = smallest.setup
            reasons.append(
                f"{gpu.name}: even the smallest setup ({s.method}, {s.gpus} GPU(s){', ' + s.sharding if s.sharding != 'none' else ''}, "
                f"micro-batch {s.micro_batch}{', checkpointing' if s.grad_checkpointing else ''}) needs "
                f"{smallest.memory.total / GiB:.1f} GiB per GPU; it has {gpu.memory_gib:.0f}"
            )
    # One row per (method, GPU type, GPU count): the cheapest fitting variant; among equals the one that pulls
    # the fewest levers, then the largest micro-batch (larger batches run closer to peak, which the flat MFU
    # assumption does not see).

    def preference(c: Candidate):
        return (c.price(spot), len(c.setup.levers()), -c.setup.micro_batch)

    best: dict[tuple, Candidate] = {}
    for c in fitting:
        key = (c.setup.method, c.gpu.key, c.setup.gpus)
        if key not in best or preference(c) < preference(best[key]):
            best[key] = c
    ranked = sorted(best.values(), key=lambda c: (round(c.price(spot), 4), c.time.hours))
    return ranked, reasons
