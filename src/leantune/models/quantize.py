"""The 4-bit NF4 base of QLoRA, loaded the same way for training and for serving (models/loading.py,
models/inference.py): bitsandbytes' NF4 with double quantisation, norms and embeddings upcast to fp32 the way
PEFT prepares a k-bit model, and bitsandbytes' CPU inference repacking switched off."""

from __future__ import annotations

import torch
from peft import prepare_model_for_kbit_training
from transformers import BitsAndBytesConfig


def quantization_config(compute_dtype: torch.dtype):
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def prepare_4bit_base(model):
    """A 4-bit base as QLoRA trains over it: frozen, with its norms and embeddings upcast to fp32 (PEFT's
    prepare_model_for_kbit_training). Serving does the same, or the adapter would meet bf16 norms it never saw."""

    # activation checkpointing is ours to switch (training.gradient_checkpointing)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def keep_4bit_state_exact(model) -> None:
    """Turn off bitsandbytes' CPU inference repacking. On CPUs with AVX512-BF16, the first forward pass in eval
    mode without gradients repacks each 4-bit layer for a bf16 kernel: its block scales are rounded to bf16 and
    its matmul runs in bf16, and the next state_dict() quantises the rounded scales again. An eval pass in the
    middle of training then changes the base the adapter trains over, and a served model computes something else
    than the trained one (logits off by ~0.1 on the tiny test model). Training and serving must see one base."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def quantized_weight_bytes(model) -> tuple[int, int]:
    """(bytes held by the 4-bit layers' weights and quantisation statistics, parameters those layers stand for)."""
    try:
        import bitsandbytes as bnb  # optional extra ('qlora')
    except ImportError:
        return 0, 0
    stored = params = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = module.weight
            stored += weight.numel() * weight.element_size()
            state = getattr(weight, "quant_state", None)
            if state is not None:
                stored += state.absmax.numel() * state.absmax.element_size() + state.code.numel() * state.code.element_size()
                nested = getattr(state, "state2", None)
                if nested is not None:
                    stored += nested.absmax.numel() * nested.absmax.element_size() + nested.code.numel() * nested.code.element_size()
                params += int(torch.Size(state.shape).numel())
    return stored, params
