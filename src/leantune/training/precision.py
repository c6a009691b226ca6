"""What a run keeps its weights in and what it computes in.

Weights that train are kept in float32 wherever 'auto' would store them in bf16 (CUDA): a bf16 weight cannot
take an AdamW update smaller than its spacing (~0.4% of the weight), and full fine-tuning of SmolLM2 on an H100
learned nothing in 40 steps that way (50% balanced accuracy on every seed; bench/results/quality.json was
re-measured after this fix). The forward and backward then run under bf16 autocast, so the matmuls stay bf16.
Frozen weights (LoRA and its family: only the adapter trains, and PEFT keeps it in float32) stay in bf16.
fp16-only cards train full fine-tunes in float32: fp16 autocast would need a loss scaler, which is not built.
"""

from __future__ import annotations

import contextlib

import torch

from ..models.loading import resolve_dtype


def weights_and_autocast(dtype: str, device: str, trains_base_weights: bool) -> tuple[str, torch.dtype | None]:
    """(the dtype to load the weights in, the autocast dtype or None)."""
    if dtype == "auto" and trains_base_weights and resolve_dtype("auto", device) == torch.bfloat16:
        return "float32", torch.bfloat16
    return dtype, None


def autocast(device: str, dtype: torch.dtype | None):
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device, dtype=dtype)
