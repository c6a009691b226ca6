"""The optimizer (AdamW, or bitsandbytes' 8-bit AdamW) and the check, before any model loads, that what the
method and optimizer need from bitsandbytes is there and works on this device."""

from __future__ import annotations

import torch

from ..config import MethodConfig
from ..errors import ConfigError


def make_optimizer(model, method: MethodConfig, lr: float, weight_decay: float):
    params = [p for p in model.parameters() if p.requires_grad]
    if method.optimizer == "adamw8bit":
        import bitsandbytes as bnb  # optional extra ('qlora')

        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    # On a GPU the fused kernel: torch's default there (foreach) takes a temporary the size of every trainable weight
    # for sqrt(v) in each step, which is the whole run's peak when the base trains (3.2B weights: +12 GiB, 59.9 GiB
    # against a 50.3 GiB plan, bench/results/gpu_mfu_before_fixes.json); fused has none and launches one kernel.
    # CPUs keep torch's default (one weight at a time: a temporary of the largest weight only).
    fused = bool(params) and all(p.device.type == "cuda" for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def needs_bitsandbytes(method: MethodConfig) -> str | None:
    if method.name == "qlora":
        return "method.name=qlora (4-bit NF4 base weights)"
    if method.optimizer == "adamw8bit":
        return "method.optimizer=adamw8bit"
    return None


def check_method_available(method: MethodConfig, device: str) -> None:
    """Fail before the model is loaded (minutes on a big model) when the method cannot run here."""
    what = needs_bitsandbytes(method)
    if what is None:
        return
    alternative = ("use method.name=lora (the same adapters over an unquantised base; the planner shows the memory "
                   "difference)" if method.name == "qlora" else "use method.optimizer=adamw")
    try:
        import bitsandbytes  # noqa: F401
        from bitsandbytes.functional import quantize_4bit
    except ImportError:
        raise ConfigError(f"{what} needs bitsandbytes, which is not installed (pip install 'leantune[qlora]'). "
                          f"Or {alternative}.") from None
    try:  # the library imports on any machine; whether it has a backend for this device shows when it runs
        quantize_4bit(torch.randn(64, 64, device=device), quant_type="nf4", compress_statistics=True)
    except Exception as e:  # noqa: BLE001 - bitsandbytes raises a variety of errors for a missing backend
        raise ConfigError(f"{what}: bitsandbytes {bitsandbytes.__version__} has no working backend for device "
                          f"'{device}' ({type(e).__name__}: {str(e)[:200]}). Or {alternative}.") from None
