"""QLoRA (Dettmers et al. 2023): LoRA over a base stored in 4-bit NF4 with double quantisation, de-quantised on
the fly by bitsandbytes; norms and embeddings in fp32 (models/quantize.py, shared with serving)."""

from __future__ import annotations

from ...models.quantize import prepare_4bit_base, quantized_weight_bytes
from .lora import LoRA


class QLoRA(LoRA):
    name = "qlora"
    title = "QLoRA (NF4 base)"
    quantize_4bit = True

    def attach(self, model, seed: int, total_steps: int):
        return super().attach(prepare_4bit_base(model), seed, total_steps)

    def notes(self, model) -> dict:
        stored, params = quantized_weight_bytes(model)
        return {"quantized_bytes_per_param": stored / params, "quantized_mib": stored / 2**20,
                "quantized_params": params} if params else {}
