"""QLoRA over the GGUF's own blocks (`method.name=qlora-gguf`): LoRA on a base whose linear layers keep the GGUF
file's quantised bytes and de-quantise them per layer in forward and backward (models/gguf_linear.py). The base is
never quantised a second time (NF4 QLoRA re-quantises the already 4-bit bundled model), the adapter learns over
exactly the weights llama.cpp will serve, and the frozen weights take the file's size instead of float32's."""

from __future__ import annotations

from ...errors import ConfigError
from ...models.gguf_linear import GGUFLinear, swap_in_blocks
from ...models.loading import gguf_behind
from .lora import LoRA


class GGUFQLoRA(LoRA):
    name = "qlora-gguf"
    title = "QLoRA over the GGUF's blocks"

    def describe(self) -> str:
        return f"LoRA r={self.config.r} over the GGUF's own quantised blocks" + (" rsLoRA" if self.config.rslora else "")

    def attach(self, model, seed: int, total_steps: int):
        source = gguf_behind(model.config._name_or_path)
        if source is None or not source.is_file():
            raise ConfigError("method.name=qlora-gguf trains over a GGUF file's blocks, and this base "
                              f"({model.config._name_or_path}) did not come from one (or the file is gone). Use a "
                              ".gguf base (e.g. smollm2-135m), or method.name=qlora for an HF directory.")
        self.counts = swap_in_blocks(model, source)
        return super().attach(model, seed, total_steps)

    def notes(self, model) -> dict:
        blocks = [m for m in model.modules() if isinstance(m, GGUFLinear)]
        stored = sum(m.weight.numel() for m in blocks)
        params = sum(m.in_features * m.out_features for m in blocks)
        return {"quantized_bytes_per_param": stored / params, "quantized_mib": stored / 2**20,
                "quantized_params": params, "record": {"gguf_layers": self.counts},
                "base": "GGUF blocks (" + ", ".join(f"{n} {k}" for k, n in self.counts.items()) + " layers)"} if params else {}
