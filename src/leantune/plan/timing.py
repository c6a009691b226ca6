"""Time and dollars for a number of training tokens.

FLOPs per token (Kaplan et al. 2020; Chinchilla, Hoffmann et al. 2022): a forward pass costs 2N for N
(active) parameters; the backward pass 4N when every weight gets a gradient (full fine-tuning: 6N in all)
and 2N when only activations need gradients (LoRA / QLoRA: frozen weights get none, so ~4N; the adapters'
own FLOPs are <1% and ignored). Causal attention adds 2*s*q per token per layer in the forward (QK^T and AV
over on average s/2 earlier positions), times 3 for training. Gradient checkpointing repeats the forward
(+2N). DPO with a LoRA-family method runs an extra forward for the reference (adapters disabled).

Achieved throughput = GPUs x dense bf16 peak x MFU. The MFU (model FLOPs utilisation) defaults below are
assumptions, not measurements: typical figures reported for well-tuned single-node fine-tuning
(torchtune/Unsloth benchmarks report 35-55% for LoRA on H100-class GPUs); QLoRA is lower because every
forward de-quantises the weights (bitsandbytes: 15-40% slower than LoRA in user reports). Override with
--mfu; bench/ will replace them with measured values where a GPU was available.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .catalog import GPU
from .setup import Setup
from .shapes import ModelShape

DEFAULT_MFU = {"full": 0.40, "lora": 0.38, "dora": 0.30, "qlora": 0.28}
# Data-parallel scaling inside one node loses some time to gradient all-reduce (and ZeRO-3's weight
# gathers); 90% per-GPU efficiency from 2 to 8 NVLink-connected GPUs is an assumption, not a measurement.
MULTI_GPU_EFFICIENCY = 0.90
PRETRAINING_MFU = 0.40  # large pretraining runs report ~38-43% (Llama 3 paper: 38-43% on H100)


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
    if setup.objective == "dpo":
        total += forward  # reference log-probs: adapters off (LoRA family) or a frozen copy (full)
    return total


@dataclass
class TimeEstimate:
    tokens: float
    flops_per_token: float
    mfu: float
    tokens_per_s: float
    hours: float
    gpu_hours: float
    cost_on_demand: float | None
    cost_spot: float | None


def estimate_time(shape: ModelShape, setup: Setup, gpu: GPU, tokens: float, mfu: float | None = None) -> TimeEstimate:
    mfu = mfu or DEFAULT_MFU[setup.method]
    fpt = flops_per_token(shape, setup)
    efficiency = 1.0 if setup.gpus == 1 else MULTI_GPU_EFFICIENCY
    tokens_per_s = setup.gpus * efficiency * gpu.bf16_tflops * 1e12 * mfu / fpt
    hours = tokens / tokens_per_s / 3600
    gpu_hours = hours * setup.gpus
    on_demand = gpu_hours * gpu.on_demand_usd if gpu.on_demand_usd is not None else None
    spot = gpu_hours * gpu.spot_usd if gpu.spot_usd is not None else None
    return TimeEstimate(tokens, fpt, mfu, tokens_per_s, hours, gpu_hours, on_demand, spot)


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
