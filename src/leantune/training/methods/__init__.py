"""Fine-tuning methods, one file each (the way PEFT keeps each tuner in its folder):

| method | trained | frozen base | library |
|---|---|---|---|
| lora | low-rank A, B per adapted layer | as loaded (fp32 / bf16) | PEFT |
| dora | LoRA + a magnitude vector per layer | as loaded | PEFT `use_dora` |
| adalora | SVD-shaped P, E, Q whose rank budget shrinks during training | as loaded | PEFT + our hooks |
| qlora | LoRA | 4-bit NF4, double quantisation | bitsandbytes, PEFT |
| qlora-gguf | LoRA | the GGUF file's own blocks (Q4_0 / Q4_1 / Q8_0), de-quantised per layer | ours (models/gguf_linear.py), PEFT |
| ia3 | a rescaling vector on keys, values and feed-forward activations | as loaded | PEFT |
| full | every weight | nothing | torch |

Adding a method: a subclass of `base.Method` in a new file, and one line in METHODS."""

from __future__ import annotations

from ...config import MethodConfig
from .adalora import AdaLoRA
from .base import Method
from .dora import DoRA
from .full import Full
from .ia3 import IA3
from .lora import LoRA
from .qlora import QLoRA
from .qlora_gguf import GGUFQLoRA

METHODS: dict[str, type[Method]] = {m.name: m for m in (LoRA, DoRA, QLoRA, GGUFQLoRA, AdaLoRA, IA3, Full)}


def make_method(config: MethodConfig) -> Method:
    return METHODS[config.name](config)
