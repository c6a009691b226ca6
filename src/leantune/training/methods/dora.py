"""DoRA (Liu et al. 2024) through PEFT's `use_dora`: LoRA plus a magnitude vector per layer, so the direction
and the size of each weight are learned apart. It recomputes the weight norm every step (~1.8x LoRA's step on CPU)."""

from __future__ import annotations

from peft import LoraConfig

from .lora import LoRA


class DoRA(LoRA):
    name = "dora"
    title = "DoRA"

    def peft_config(self, total_steps: int):
        return LoraConfig(**self.common_peft_fields(), r=self.config.r, use_dora=True)
