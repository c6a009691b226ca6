"""IA3 (Liu et al. 2022, "(IA)^3") through PEFT: a learned vector rescales the keys, values and the feed-forward
activations of each layer - about a hundredth of LoRA r=8's parameters. `method.target_modules` left at
'all-linear' takes PEFT's per-architecture choice (llama: k_proj, v_proj, down_proj)."""

from __future__ import annotations

from peft import IA3Config

from .lora import LoRA


class IA3(LoRA):
    name = "ia3"
    title = "IA3"

    def describe(self) -> str:
        return "IA3 (learned rescaling vectors)"

    def peft_config(self, total_steps: int):
        targets = self.config.target_modules
        if targets == "all-linear":
            return IA3Config(task_type="CAUSAL_LM")  # PEFT's mapping for the architecture
        feedforward = [t for t in targets if "down" in t or "fc2" in t or "w2" in t]
        return IA3Config(task_type="CAUSAL_LM", target_modules=targets, feedforward_modules=feedforward)
