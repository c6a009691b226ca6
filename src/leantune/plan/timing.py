"""Time and dollars for a number of training tokens.

FLOPs per token (Kaplan et al. 2020; Chinchilla, Hoffmann et al. 2022): a forward pass costs 2N for N
(active) parameters; the backward pass 4N when every weight gets a gradient (full fine-tuning: 6N in all)
and 2N when only activations need gradients (LoRA / QLoRA: frozen weights get none, so ~4N; the adapters'
own FLOPs are <1% and ignored). Causal attention adds 2*s*q per token per layer in the forward (QK^T and AV
over on average s/2 earlier positions), times 3 for training. Gradient checkpointing repeats the forward
(+2N). DPO with a LoRA-family method runs an extra forward for the reference (adapters disabled).

Achieved throughput per GPU = dense bf16 peak x MFU, less what collectives between GPUs cost (below), and every
setup pays its instance's start-up and minimum billing. The MFU (model FLOPs utilisation: tokens/s x the FLOPs per
token below, recomputation included, over the catalog's dense bf16 peak) is what `leantune train` itself reached on
a GPU (below); override it with --mfu.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .catalog import GPU
from .memory import activation_split, trainable_params, weight_bytes
from .setup import Setup
from .shapes import ModelShape

# Measured: plain `leantune train` processes on one NVIDIA H200 (bench/gpu_mfu.py, random weights of the presets'
# shapes, 2 rows of 2048 tokens a step; bench/results/gpu_mfu_before_fixes.json, commit bb32dbc):
#   LoRA r=8, Llama 3.1 8B: 30.5% with checkpointing (32.3% at 8 rows, 27.7% without checkpointing);
#   full fine-tuning, Llama 3.2 3B, checkpointing: 30.5% -> 38% at the reference width through the width term below;
#   DoRA (PEFT's layers, which rebuild each weight's norm every forward), 8B with checkpointing: 4.8%.
# That run predates two fixes that can only make steps faster (LoRA layers on a GPU through leantune's own function;
# fused AdamW), so these are lower bounds until measured again. QLoRA was not measured (bitsandbytes was not on the
# GPU machine): LoRA's figure less a quarter for de-quantising every weight in every pass (user reports: 15-40%
# slower than LoRA), an assumption.
DEFAULT_MFU = {"full": 0.38, "lora": 0.30, "dora": 0.048, "qlora": 0.23}
# Narrower models reach less of the peak: their matrix products are smaller next to the work that does not grow with
# the width squared (norms, activations, kernel launches). LoRA at the same settings: Llama 3.2 1B (hidden 2048) 15.9%
# against 8B's (hidden 4096) 27.7%, i.e. MFU ~ width^0.8 - fitted on those two points alone; not extrapolated above
# the reference width. SmolLM2-135M's 576 gets 21% of the reference MFU from it (not measured).
MFU_REFERENCE_HIDDEN = 4096
MFU_WIDTH_EXPONENT = 0.8
PRETRAINING_MFU = 0.40  # large pretraining runs report ~38-43% (Llama 3 paper: 38-43% on H100)

# Several GPUs (ring collectives over the catalog's collective_gbs, the interconnect of one machine):
#   replicated weights (ddp, ZeRO-1/2): the gradients all-reduced once a step, 2 (n-1)/n of their bytes;
#   sharded weights (ZeRO-3 / FSDP): the weights all-gathered in forward and again in backward, 2 (n-1)/n of
#   their bytes, and the gradients reduce-scattered, (n-1)/n.
# Gradients are reduced in float32 (FSDP2's reduce dtype, and LoRA's float32 adapters). Communication overlaps
# compute (DDP buckets during backward, FSDP prefetches the next layer) for up to COMM_OVERLAP of the compute time;
# the rest adds to the step. Beyond one machine (more GPUs than the catalog's gpus_per_node) the ring crosses the
# machines' network, which every GPU of a machine shares: each GPU's collective bandwidth is then at most
# node_link_gbs / gpus_per_node (flat rings; NCCL's trees and rail-optimised fabrics do better, so this errs slow).
# Assumptions until measured on several GPUs.
GRADIENT_BYTES = 4
COMM_OVERLAP = 0.8
# What an instance costs before the first step: start, image pull, install, model download and load. Billed like
# training, on every GPU of the instance; clouds bill per second with a one-minute minimum. Assumed figures.
STARTUP_MINUTES = 5.0
DOWNLOAD_GBS = 0.25  # model weights from a hub or bucket, GB/s
MIN_BILLED_HOURS = 1 / 60
# Activation offloading copies what it offloads to the host in forward and back in backward over the card's PCIe
# link: ~20 GB/s each way for pinned copies on PCIe 4.0 x16 (25-26 GB/s peak in bandwidth tests). leantune's
# offloading (torch.autograd.graph.save_on_cpu) copies on the compute stream, so the copies add to the step; an
# assumed figure until measured on a GPU.
HOST_LINK_GBS = 20.0


def flops_per_token(shape: ModelShape, setup: Setup) -> float:
    n = shape.active_params
    attention_forward = 2 * setup.seq_len * shape.q_dim * shape.layers
    forward = 2 * n + attention_forward
    if setup.method == "full":
        backward = 4 * n + 2 * attention_forward
    else:
        backward = 2 * n + 2 * attention_forward
    total = forward + backward
    if setup.grad_checkpointing:
        total += forward
    if setup.loss_chunk:  # chunked loss recomputes the output layer for its positions in the backward pass
        total += 2 * shape.vocab * shape.hidden * setup.loss_positions
    if setup.objective == "dpo":
        total += forward  # reference log-probs: adapters off (LoRA family) or a frozen copy (full)
    return total


@dataclass
class TimeEstimate:
    tokens: float
    flops_per_token: float
    mfu: float
    tokens_per_s: float
    hours: float  # training steps only
    gpu_hours: float  # billed: (start-up + training, at least the minimum) x GPUs
    cost_on_demand: float | None
    cost_spot: float | None
    comm_s_per_step: float = 0.0  # collectives per micro-batch step, per GPU
    scaling_efficiency: float = 1.0  # compute time / step time: what the GPUs beyond one are worth
    startup_hours: float = 0.0
    nodes: int = 1  # machines the GPUs take (plan/gpus.json's gpus_per_node)


def nodes(setup: Setup, gpu: GPU) -> int:
    """Machines the setup's GPUs take."""
    return math.ceil(setup.gpus / max(1, gpu.gpus_per_node))


def collective_gbs(setup: Setup, gpu: GPU) -> float:
    """Each GPU's collective bandwidth (GB/s): the machine's interconnect, or its share of the network between
    machines when the setup spans several."""
    if nodes(setup, gpu) == 1:
        return gpu.collective_gbs
    return min(gpu.collective_gbs, gpu.node_link_gbs / min(setup.gpus, gpu.gpus_per_node))


def communication_seconds(shape: ModelShape, setup: Setup, gpu: GPU) -> float:
    """Seconds of collectives per micro-batch step on each of setup.gpus GPUs (0 for one)."""
    n = setup.gpus
    if n == 1:
        return 0.0
    ring = (n - 1) / n
    gradients = trainable_params(shape, setup) * GRADIENT_BYTES
    if setup.sharding in ("zero3", "fsdp"):
        volume = 2 * ring * weight_bytes(shape, setup) + ring * gradients
    else:
        volume = 2 * ring * gradients
    return volume / (collective_gbs(setup, gpu) * 1e9)


def startup_hours(shape: ModelShape) -> float:
    return (STARTUP_MINUTES * 60 + shape.total_params * 2 / (DOWNLOAD_GBS * 1e9)) / 3600


def default_mfu(shape: ModelShape, method: str) -> float:
    """The measured MFU of `method` (DEFAULT_MFU) scaled to the model's width."""
    return DEFAULT_MFU[method] * min(1.0, shape.hidden / MFU_REFERENCE_HIDDEN) ** MFU_WIDTH_EXPONENT


def estimate_time(shape: ModelShape, setup: Setup, gpu: GPU, tokens: float, mfu: float | None = None) -> TimeEstimate:
    mfu = mfu or default_mfu(shape, setup.method)
    fpt = flops_per_token(shape, setup)
    step_tokens = setup.micro_batch * setup.seq_len  # per GPU
    compute_s = step_tokens * fpt / (gpu.bf16_tflops * 1e12 * mfu)
    comm_s = communication_seconds(shape, setup, gpu)
    offload_s = 2 * activation_split(shape, setup)[1] / (HOST_LINK_GBS * 1e9) if setup.activation_offload else 0.0
    exposed_comm_s = max(0.0, comm_s - COMM_OVERLAP * compute_s)
    step_s = compute_s + exposed_comm_s + offload_s
    tokens_per_s = setup.gpus * step_tokens / step_s
    hours = tokens / tokens_per_s / 3600
    start = startup_hours(shape)
    gpu_hours = max(hours + start, MIN_BILLED_HOURS) * setup.gpus
    on_demand = gpu_hours * gpu.on_demand_usd if gpu.on_demand_usd is not None else None
    spot = gpu_hours * gpu.spot_usd if gpu.spot_usd is not None else None
    return TimeEstimate(tokens, fpt, mfu, tokens_per_s, hours, gpu_hours, on_demand, spot, comm_s,
                        compute_s / (compute_s + exposed_comm_s), start, nodes(setup, gpu))


@dataclass
class PretrainingGap:
    pretraining_tokens: float
    pretraining_flops: float
    pretraining_gpu_hours: float
    pretraining_cost: float | None
    finetune_flops: float
    orders_of_magnitude: float


def pretraining_gap(shape: ModelShape, gpu: GPU, finetune: TimeEstimate) -> PretrainingGap | None:
    """The first seed's point in numbers: pretraining compute 6ND (Kaplan et al. 2020) against this fine-tune."""
    if not shape.pretraining_tokens:
        return None
    flops = 6 * shape.active_params * shape.pretraining_tokens
    gpu_hours = flops / (gpu.bf16_tflops * 1e12 * PRETRAINING_MFU) / 3600
    cost = gpu_hours * gpu.on_demand_usd if gpu.on_demand_usd is not None else None
    ft_flops = finetune.flops_per_token * finetune.tokens
    return PretrainingGap(shape.pretraining_tokens, flops, gpu_hours, cost, ft_flops, math.log10(flops / ft_flops))
