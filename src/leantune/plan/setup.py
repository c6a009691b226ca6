"""One training setup the planner prices: method, shapes of the batch, memory switches, hardware."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from ..errors import ConfigError

METHODS = ("full", "lora", "qlora", "dora")
BLOCK_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # a Llama-style block
SHARDING = ("none", "zero1", "zero2", "zero3", "fsdp")


@dataclass(frozen=True)
class Setup:
    method: Literal["full", "lora", "qlora", "dora"] = "lora"
    seq_len: int = 2048
    micro_batch: int = 1
    grad_checkpointing: bool = False
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    lora_rank: int = 16
    lora_targets: str | tuple[str, ...] = "all-linear"
    lora_dropout: float = 0.0
    # with dropout, what the adapter path keeps: PEFT's modules a dropped-out copy of each adapted layer's input and
    # its noise; leantune's LoRA function (models/lora_autograd.py) only a byte mask
    lora_dropout_mask_only: bool = False
    dtype: Literal["bf16", "fp32"] = "bf16"  # weights (when not quantised) and activations
    attention: Literal["sdpa", "eager"] = "sdpa"  # sdpa/flash never store the s x s score matrix
    objective: Literal["sft", "dpo"] = "sft"
    gpus: int = 1
    sharding: Literal["none", "zero1", "zero2", "zero3", "fsdp"] = "none"
    device: Literal["cuda", "cpu"] = "cuda"
    loss_positions: float = 1.0  # share of positions whose logits are computed (leantune: labelled ones only)
    loss_chunk: int = 0  # positions whose logits exist at once (chunked cross-entropy); 0: all of them
    activation_offload: bool = False  # saved activations kept in CPU memory until backward needs them
    master_weights: bool = True  # trained weights and their Adam moments in fp32 (mixed precision); False: pure bf16
    # torchtune's optimizer_in_bwd: each weight is updated as soon as its gradient is complete and the gradient freed,
    # so only one weight's gradient exists at a time (no accumulation, no clipping). Planned, not trained by leantune.
    optimizer_in_backward: bool = False

    @property
    def act_bytes(self) -> int:
        return 2 if self.dtype == "bf16" else 4

    @property
    def is_adapter(self) -> bool:
        return self.method != "full"

    def lever_releases(self) -> dict[str, dict]:
        """The memory levers this setup pulls, as the ranked list names them, each with the change that releases it."""
        named = [("checkpointing", self.grad_checkpointing, dict(grad_checkpointing=False)),
                 ("offload", self.activation_offload, dict(activation_offload=False)),
                 (f"chunked loss {self.loss_chunk}", bool(self.loss_chunk), dict(loss_chunk=0)),
                 ("8-bit Adam", self.optimizer == "adamw8bit", dict(optimizer="adamw")),
                 (self.sharding, self.sharding != "none", dict(sharding="none")),
                 ("pure bf16", not self.master_weights, dict(master_weights=True)),
                 ("optimizer in backward", self.optimizer_in_backward, dict(optimizer_in_backward=False))]
        return {name: release for name, on, release in named if on}

    def levers(self) -> list[str]:
        return list(self.lever_releases())

    def validate(self, hidden: int | None = None) -> "Setup":
        problems = []
        if self.method not in METHODS:
            problems.append(f"method '{self.method}' is not one of {', '.join(METHODS)}")
        if self.loss_chunk < 0:
            problems.append(f"loss-chunk must be 0 (off) or a number of positions, got {self.loss_chunk}")
        for name in ("seq_len", "micro_batch", "gpus", "lora_rank"):
            if getattr(self, name) < 1:
                problems.append(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if hidden is not None and self.is_adapter and self.lora_rank > hidden:
            problems.append(f"LoRA rank {self.lora_rank} is larger than the model's hidden size {hidden}; a rank that high is a full-rank update")
        if self.sharding not in SHARDING:
            problems.append(f"sharding '{self.sharding}' is not one of {', '.join(SHARDING)}")
        if self.sharding != "none" and self.gpus == 1:
            problems.append(f"sharding '{self.sharding}' needs more than one GPU (--gpus)")
        if not 0 <= self.lora_dropout < 1:
            problems.append("LoRA dropout must be in [0, 1)")
        if problems:
            raise ConfigError("Impossible plan: " + "; ".join(problems) + ".")
        return self


def setup_from_run_config(run, **changes) -> Setup:
    """The Setup a `leantune train` config describes (`run` is a RunConfig), with `changes` applied:
    `leantune plan RUN.yaml` and the trainer's own pre-flight check both start here."""
    targets = run.method.target_modules
    setup = Setup(
        # AdaLoRA: LoRA of its initial rank; QLoRA over GGUF blocks: a 4-bit base like NF4's (Q4_1 is 5 bits a weight)
        method={"adalora": "lora", "qlora-gguf": "qlora", "ia3": "lora"}.get(run.method.name, run.method.name),
        optimizer=run.method.optimizer,
        objective=run.objective.name,
        seq_len=run.data.max_seq_len,
        micro_batch=run.training.micro_batch_size,
        grad_checkpointing=run.training.gradient_checkpointing,
        lora_rank=run.method.r,
        lora_targets=targets if targets == "all-linear" else tuple(targets),
        lora_dropout=run.method.dropout,
        # DoRA and the quantised bases keep PEFT's layers (models/lora_autograd.py takes only plain LoRA layers)
        lora_dropout_mask_only=run.method.name == "lora" and run.training.lora_autograd == "leantune",
        loss_chunk=run.training.loss_chunk,
        activation_offload=run.training.activation_offload,
    )
    return replace(setup, **changes)
