"""Several processes training one run: `leantune train CONFIG --nproc N` (torchrun underneath) or torchrun itself.

Built on PyTorch's own stack: the process group (gloo on CPU, NCCL on GPU), FSDP2's `fully_shard` (each decoder
layer, then a root holding the rest), and torch.distributed.checkpoint (training/checkpoint.py).

What N processes compute is what one computes. The config's batch (micro_batch_size x grad_accum rows per step,
drawn from the step number and the seed alone, data/batches.py) is the global batch: each micro-batch's rows are
dealt out round-robin over the processes, every loss is divided by a count over the whole step, and gradients are
summed (never averaged) across processes. So a run resumes on another number of processes and sees the same
batches, and N processes reach the parameters one would (tests/test_distributed.py, 1e-5).

Gradient sums, not averages: gloo's reduce-scatter has averaged wrongly under FSDP2 (pytorch #162338, a silent
correctness bug), so every FSDP module is set to force SUM collectives with a divide factor of 1, the
sum-then-divide path torch provides; our losses are already divided by the whole step's count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..config import RunConfig
from ..errors import ConfigError
from ..models.forward import ForwardRoot, decoder_and_head
from ..runs.rundir import RunDir
from .objectives.base import StepBatches

# methods whose weights FSDP2 can shard as plain tensors (QLoRA's 4-bit and GGUF blocks are packed integers, and
# AdaLoRA's rank allocator reads whole matrices between steps)
SHARDABLE_METHODS = ("lora", "dora", "ia3", "full")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> "World":
        """What torchrun (or any launcher that follows its convention) says this process is."""
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run directory, the index, metrics and the bill."""
        return self.rank == 0

    @property
    def several(self) -> bool:
        return self.size > 1

    def start(self, device: str) -> None:
        if not self.several or dist.is_initialized():
            return
        if device == "cuda":
            torch.cuda.set_device(self.local_rank)
        dist.init_process_group("nccl" if device == "cuda" else "gloo")

    def stop(self) -> None:
        if self.several and dist.is_initialized():
            dist.destroy_process_group()

    def sum(self, values: list[float]) -> list[float]:
        if not self.several:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on any (a SIGTERM that reached one rank stops all at one step)."""
        return bool(self.sum([float(flag)])[0]) if self.several else flag

    def broadcast(self, value):
        """Rank 0's value on every process (picklable values)."""
        if not self.several:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list:
        """Every process's value, in rank order, on every process."""
        if not self.several:
            return [value]
        values = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.several:
            dist.barrier()

    def agree(self, stop: bool, over_budget: bool) -> tuple[bool, bool]:
        """(any process was signalled, rank 0's budget guard says stop): one small collective per step."""
        if not self.several:
            return stop, over_budget
        signalled, budget = self.sum([float(stop), float(over_budget and self.main)])
        return signalled > 0, budget > 0


class _FollowerRun(RunDir):
    """The run directory as ranks above 0 see it: they read it; rank 0 alone writes run.json and the metrics."""

    def update_info(self, **fields) -> None:
        pass

    def append_jsonl(self, name: str, record: dict) -> None:
        pass

    def truncate_metrics(self, last_step: int) -> None:
        pass


def follower_run(run: RunDir) -> RunDir:
    return _FollowerRun(run.path)


def check_supported(config: RunConfig, world: World) -> None:
    """Refuse, before anything loads, what several processes do not train correctly yet."""
    if not world.several:
        return
    where = f"with {world.size} processes"
    if config.method.name not in SHARDABLE_METHODS:
        raise ConfigError(f"method.name={config.method.name} does not train on several processes yet ({where}); "
                          f"use one of {', '.join(SHARDABLE_METHODS)}, or run it on one process.")
    if config.objective.name == "distill":
        raise ConfigError(f"objective.name=distill needs its teacher sharded too, which is not built ({where}); "
                          "run distillation on one process.")
    if config.training.compile:
        raise ConfigError(f"training.compile is not combined with sharding yet ({where}); set it to false.")


def my_share(micro_batches: list[list], world: World) -> StepBatches:
    """This process's rows of each micro-batch (round-robin), and a filler where a micro-batch has fewer rows than
    there are processes, so every process runs as many passes as the others."""
    if not world.several:
        return StepBatches.single(micro_batches)
    mine, weights = [], []
    for rows in micro_batches:
        part = rows[world.rank :: world.size]
        mine.append(part or rows[:1])
        weights.append(1.0 if part else 0.0)
    return StepBatches(micro_batches, mine, tuple(weights))


def mixed_precision(device: str):
    """bf16 compute with float32 gradient reduction on GPUs that have bf16; elsewhere the weights are gathered as
    they are stored (fp16-only cards compute in fp16 under autocast, with the sharded loss scaler of
    precision.LossScaling; CPUs in float32)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if device == "cuda" and torch.cuda.is_bf16_supported():
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard(model, config: RunConfig, world: World, device: str) -> ForwardRoot:
    """The model ready for several processes, under the ForwardRoot every forward pass goes through."""
    root = ForwardRoot(model)
    d = config.training.distributed
    if d.strategy == "ddp":
        # every process holds the whole model; the trainable weights start as rank 0's (they are seeded alike,
        # this makes sure) and gradients are summed once per step in reduce_gradients
        for p in model.parameters():
            if p.requires_grad:
                dist.broadcast(p.data, src=0)
        return root
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, OffloadPolicy, fully_shard

    mesh = init_device_mesh(device, (world.size,))
    offload = CPUOffloadPolicy() if d.cpu_offload and device == "cuda" else OffloadPolicy()
    options = dict(mesh=mesh, mp_policy=mixed_precision(device), offload_policy=offload)
    decoder, _ = decoder_and_head(model)
    for layer in decoder.layers:
        fully_shard(layer, reshard_after_forward=d.reshard_after_forward, **options)
    # the root keeps its gathered weights through forward and backward (FSDP2 does not reshard a root after forward)
    fully_shard(root, **options)
    for module in root.modules():
        if isinstance(module, FSDPModule):
            module.set_force_sum_reduction_for_comms(True)
            module.set_gradient_divide_factor(1.0)
    return root


def reduce_gradients(model, config: RunConfig, world: World) -> None:
    """ddp: sum the trainable weights' gradients over the processes, in one flat buffer, after the step's passes
    (fsdp2 reduces in its backward hooks)."""
    if not world.several or config.training.distributed.strategy != "ddp":
        return
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def gathered_state(model, every_weight: bool) -> dict:
    """The trained weights as whole tensors on rank 0's CPU (empty elsewhere); only what trains unless every weight
    does (an adapter is saved from its own tensors)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=not every_weight)
    whole = get_model_state_dict(model, options=options)
    # a tied output layer comes back under both names; saved once, as one process saves it
    own = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    return {n: t for n, t in whole.items() if n in own}


def describe(config: RunConfig, world: World) -> str:
    t, d = config.training, config.training.distributed
    rows = t.micro_batch_size * t.grad_accum
    return (f"{world.size} processes ({d.strategy}"
            f"{', reshard after forward' if d.strategy == 'fsdp2' and d.reshard_after_forward else ''}): the global "
            f"batch of {rows} rows per step (micro_batch_size {t.micro_batch_size} x grad_accum {t.grad_accum}) is "
            f"split between them, ~{-(-t.micro_batch_size // world.size)} rows per process per micro-batch")
