"""What a run keeps its weights in and what it computes in.

Weights that train are kept in float32 wherever 'auto' would store them in bf16 (CUDA): a bf16 weight cannot
take an AdamW update smaller than its spacing (~0.4% of the weight), and full fine-tuning of SmolLM2 on an H100
learned nothing in 40 steps that way (50% balanced accuracy on every seed; bench/results/quality.json was
re-measured after this fix). The forward and backward then run under bf16 autocast, so the matmuls stay bf16.
Frozen weights (LoRA and its family: only the adapter trains, and PEFT keeps it in float32) stay in bf16.
fp16-only cards train full fine-tunes in float32: fp16 autocast would need a loss scaler, which is not built.

`training.autocast=bf16` applies the same split on a CPU: matmuls in bf16, every weight and AdamW update in float32
(unlike model.dtype=bfloat16, which stores the weights in bf16 and learned worse on the demo). It is opt-in there:
on this project's AVX512-BF16 machine it bought little for a SmolLM2 LoRA step, whose output layer already runs only
at labelled positions, and its 14-step eval loss was worse (bench/results/throughput_autocast.json); `auto` keeps
CPUs in float32.
"""

from __future__ import annotations

import contextlib

import torch

from ..errors import ConfigError
from ..models.loading import cpu_has_bf16, resolve_dtype


def weights_and_autocast(dtype: str, device: str, trains_base_weights: bool,
                         setting: str = "auto") -> tuple[str, torch.dtype | None]:
    """(the dtype to load the weights in, the autocast dtype or None) for model.dtype and training.autocast."""
    if setting == "off":
        return dtype, None
    if setting == "bf16":
        if device.startswith("cuda") and not torch.cuda.is_bf16_supported():
            raise ConfigError("training.autocast=bf16: this GPU has no bf16; set it to auto or off.")
        return ("float32" if dtype == "auto" else dtype), torch.bfloat16
    if dtype != "auto":
        return dtype, None  # an explicit dtype is what the user wants the model computed in
    if device.startswith("cuda"):
        return ("float32", torch.bfloat16) if trains_base_weights and resolve_dtype("auto", device) == torch.bfloat16 \
            else (dtype, None)
    return dtype, None  # a CPU computes in float32 unless asked: see the module docstring for what bf16 measured


def autocast_note(setting: str, autocast_dtype: torch.dtype | None, device: str) -> str | None:
    """What the log says about autocast on a CPU: that it is on, and when the cores have no bf16 hardware."""
    if autocast_dtype is None or device != "cpu":
        return None
    if not cpu_has_bf16():
        return ("[yellow]training.autocast=bf16 on a CPU without AVX512-BF16 or AMX: bf16 matmuls are emulated there "
                "and run several times slower than float32; set training.autocast=auto[/]")
    return f"training.autocast={setting}: matmuls in bf16 under autocast, weights and their updates in float32"


def autocast(device: str, dtype: torch.dtype | None):
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device, dtype=dtype)
