"""Model shapes and the parameter counts that follow from them.

Counts are exact for the architectures listed in presets.py (Llama, Mistral/Mixtral, Qwen2/3, Gemma 2/3,
Phi-3, SmolLM2): tests/test_plan_shapes.py checks each preset against the published count. Layout assumed:
pre-norm decoder blocks, attention with q/k/v/o projections (grouped-query: k and v have kv_heads
heads), SwiGLU MLP (gate, up, down), RMSNorm weights, optional per-head q/k norms (Qwen3, Gemma 3),
optional q/k/v biases (Qwen2), optional mixture-of-experts MLPs with a router.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from ..gguf_header import GGUFHeader


@dataclass(frozen=True)
class ModelShape:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    experts: int = 0  # 0: dense MLP
    experts_per_token: int = 0
    norms_per_layer: int = 2  # Gemma 2/3 add a norm after attention and after the MLP
    qk_norm: bool = False
    qkv_bias: bool = False
    pretraining_tokens: float | None = None  # published, for the gap-to-pretraining line
    published_params: int | None = None

    # ---- per-layer pieces (weights counted as elements) ----
    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def attention_params(self) -> int:
        weights = self.hidden * self.q_dim + 2 * self.hidden * self.kv_dim + self.q_dim * self.hidden
        bias = (self.q_dim + 2 * self.kv_dim) if self.qkv_bias else 0
        norms = 2 * self.head_dim if self.qk_norm else 0
        return weights + bias + norms

    @property
    def expert_params(self) -> int:
        """One SwiGLU MLP: gate and up (hidden -> intermediate), down (intermediate -> hidden)."""
        return 3 * self.hidden * self.intermediate

    @property
    def router_params(self) -> int:
        return self.hidden * self.experts

    def layer_params(self, active_only: bool = False) -> int:
        experts = (self.experts_per_token if active_only else self.experts) or 1
        mlp = experts * self.expert_params + self.router_params
        return self.attention_params() + mlp + self.norms_per_layer * self.hidden

    # ---- whole model ----
    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tied_embeddings else self.vocab * self.hidden

    def _params(self, active_only: bool) -> int:
        return self.embedding_params + self.layers * self.layer_params(active_only) + self.hidden + self.lm_head_params

    @property
    def total_params(self) -> int:
        return self._params(active_only=False)

    @property
    def active_params(self) -> int:
        """Parameters one token passes through (MoE: only its experts): the N of the 6N FLOPs rule."""
        return self._params(active_only=True)

    @property
    def block_linear_params(self) -> int:
        """Weights of the blocks' linear layers: what QLoRA quantises (embeddings, head and norms stay 16-bit)."""
        return self.layers * sum(copies * d_in * d_out for _, d_in, d_out, copies in self.linear_layers())

    def linear_layers(self) -> list[tuple[str, int, int, int]]:
        """(name, d_in, d_out, copies per layer) of every linear layer in a block, for LoRA sizing."""
        n = self.experts or 1
        return [
            ("q_proj", self.hidden, self.q_dim, 1),
            ("k_proj", self.hidden, self.kv_dim, 1),
            ("v_proj", self.hidden, self.kv_dim, 1),
            ("o_proj", self.q_dim, self.hidden, 1),
            ("gate_proj", self.hidden, self.intermediate, n),
            ("up_proj", self.hidden, self.intermediate, n),
            ("down_proj", self.intermediate, self.hidden, n),
        ]

    def lora_params(self, rank: int, targets: str | list[str] = "all-linear") -> int:
        """LoRA adds A (r x d_in) and B (d_out x r) per adapted layer: r(d_in + d_out) (Hu et al. 2021)."""
        total = 0
        for name, d_in, d_out, copies in self.linear_layers():
            if targets == "all-linear" or name in targets:
                total += copies * rank * (d_in + d_out)
        return self.layers * total


# Model types whose configs leave tie_word_embeddings unset mean different things by default.
_TIED_BY_DEFAULT = {"gemma", "gemma2", "gemma3", "gemma3_text"}


def shape_from_hf_config(config: dict, name: str = "model") -> ModelShape:
    """A ModelShape from a Hugging Face config.json dictionary."""
    if "text_config" in config:  # multimodal wrappers (Gemma 3 4B+) keep the LM under text_config
        config = {**config["text_config"], "model_type": config["text_config"].get("model_type", config.get("model_type"))}
    try:
        hidden = config["hidden_size"]
        heads = config["num_attention_heads"]
        model_type = config.get("model_type", "")
        experts = config.get("num_local_experts") or config.get("num_experts") or 0
        intermediate = config.get("moe_intermediate_size") if experts and config.get("moe_intermediate_size") else config["intermediate_size"]
        return ModelShape(
            name=name,
            hidden=hidden,
            layers=config["num_hidden_layers"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or hidden // heads,
            intermediate=intermediate,
            vocab=config["vocab_size"],
            tied_embeddings=config.get("tie_word_embeddings", model_type in _TIED_BY_DEFAULT),
            experts=experts,
            experts_per_token=config.get("num_experts_per_tok", 0) if experts else 0,
            norms_per_layer=4 if model_type.startswith("gemma2") or model_type.startswith("gemma3") else 2,
            qk_norm=model_type.startswith("qwen3") or model_type.startswith("gemma3"),
            qkv_bias=bool(config.get("attention_bias", model_type.startswith("qwen2"))),
        )
    except KeyError as e:
        raise ModelError(f"The config of '{name}' lacks {e.args[0]!r}, so its shape is unknown. Is it a decoder-only language model?") from None


def shape_from_dir(path: Path) -> ModelShape:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelError(f"'{path}' has no config.json, so its shape is unknown. Pass a Hugging Face model directory or a preset name.")
    return shape_from_hf_config(json.loads(config_path.read_text()), name=path.name)


def shape_from_gguf(path: Path) -> ModelShape:
    """Read the shape from a GGUF header (memory-mapped; no weights are loaded)."""

    header = GGUFHeader(path)
    field = header.field
    arch = header.architecture
    hidden, heads = field(f"{arch}.embedding_length"), field(f"{arch}.attention.head_count")
    if hidden is None or heads is None:
        raise ModelError(f"'{path}' ({arch}) lacks the shape fields leantune reads; pass the model's config.json directory instead.")
    tokens = header.reader.fields.get("tokenizer.ggml.tokens")
    names = header.tensor_names
    return ModelShape(
        name=path.stem,
        hidden=hidden,
        layers=field(f"{arch}.block_count"),
        heads=heads,
        kv_heads=field(f"{arch}.attention.head_count_kv", heads),
        head_dim=field(f"{arch}.attention.key_length", hidden // heads),
        intermediate=field(f"{arch}.feed_forward_length"),
        vocab=len(tokens.data) if tokens is not None else field(f"{arch}.vocab_size"),
        tied_embeddings="output.weight" not in names,
        experts=field(f"{arch}.expert_count", 0),
        experts_per_token=field(f"{arch}.expert_used_count", 0),
        qk_norm="blk.0.attn_q_norm.weight" in names,
        qkv_bias="blk.0.attn_q.bias" in names,
        norms_per_layer=4 if "blk.0.post_attention_norm.weight" in names else 2,
    )
