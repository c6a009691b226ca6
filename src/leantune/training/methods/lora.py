"""LoRA (Hu et al. 2021) through PEFT: low-rank A, B per adapted layer over a frozen base as loaded.
`method.rslora` scales the update by alpha/sqrt(r) (rank-stabilised LoRA) instead of alpha/r."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model

from ...errors import ConfigError
from .base import Method


class LoRA(Method):
    name = "lora"
    title = "LoRA"

    def describe(self) -> str:
        return f"{self.title} r={self.config.r}" + (" rsLoRA" if self.config.rslora else "")

    def peft_config(self, total_steps: int):
        return LoraConfig(**self.common_peft_fields(), r=self.config.r)

    def common_peft_fields(self) -> dict:
        m = self.config
        return dict(lora_alpha=m.alpha, lora_dropout=m.dropout, target_modules=m.target_modules, task_type="CAUSAL_LM",
                    bias="none", use_rslora=m.rslora)

    def attach(self, model, seed: int, total_steps: int):
        config = self.peft_config(total_steps)
        # The B matrices start at zero, but A is random: seed it so a run is reproducible from its config.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                return get_peft_model(model, config)
            except ValueError as e:
                if "not found in the base model" in str(e) or "Target modules" in str(e):
                    names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
                    raise ConfigError(
                        f"method.target_modules={self.config.target_modules!r} matches no layer of this model. "
                        f"Its linear layers are named: {', '.join(names)} (or use 'all-linear')."
                    ) from None
                raise
