"""One validated config object describes a run.

`RunConfig` is built from YAML plus dotted `key=value` overrides and rejects anything it does not know
before a model is loaded: an unknown key names the closest valid one, a wrong type says what it expected.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    base: str = Field("smollm2-135m", description="short name, HF model directory or .gguf file")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: fp32 on CPUs without native bf16 (bf16 is ~6x slower there), bf16 on GPUs that have it"
    )
    parent: str | None = Field(None, description="the run this one continues (set by `train --from RUN`): training starts "
                               "from its adapter, and forgetting.*_data 'parent' means its training split")


class DataConfig(_Section):
    train: str = Field("sms-spam", description="built-in dataset name, or a .jsonl / .json / .csv / .tsv / .parquet file")
    eval: str | None = Field(None, description="eval data file; by default a held-out split of `train`")
    format: Literal["auto", "chat", "sharegpt", "alpaca", "prompt_completion", "preference", "text"] = Field(
        "auto", description="row schema; auto: detected from the first row")
    columns: dict[str, str] = Field(default_factory=dict, description="our field name -> the file's, e.g. {prompt: question}")
    eval_size: int = Field(200, ge=0, description="examples held out of `train` when `eval` is not given")
    max_train_examples: int | None = Field(None, ge=1)
    max_seq_len: int = Field(256, ge=8)
    train_on: Literal["all_assistant", "last_assistant", "everything"] = Field(
        "all_assistant", description="which tokens carry loss; assistant turns always include their end-of-turn token")
    truncation: Literal["keep_end", "keep_start", "drop"] = Field(
        "keep_end", description="rows over max_seq_len: keep_end cuts the start (the answer survives), keep_start cuts "
        "the end, drop skips them; plain text is split into max_seq_len pieces instead. Counts are always reported")
    packing: bool = Field(True, description="padding-free micro-batches: each micro-batch's examples share rows of up to "
                          "max_seq_len tokens (no attention across them) instead of padding to the longest; same "
                          "examples per step, so the same training, on fewer token slots")
    share_prefix: bool = Field(
        True, description="with packing in one row (training.segment_attention), the micro-batch's common prefix (a "
        "system prompt, an instruction; never a trained token) is computed once instead of once per example: the "
        "same losses and gradients without LoRA dropout; with it, the prefix's dropout draw is shared by the examples")


class MethodConfig(_Section):
    name: Literal["lora", "qlora", "qlora-gguf", "dora", "adalora", "ia3", "full"] = Field(
        "lora", description="lora; qlora: 4-bit NF4 frozen base + LoRA; qlora-gguf: LoRA over a GGUF base's own "
        "quantised blocks (no second quantisation); dora: weight-decomposed LoRA; ia3: learned rescaling vectors; adalora: "
        "rank budget pruned during training; full: every weight trained")
    r: int = Field(8, ge=1, description="LoRA rank (AdaLoRA: the initial rank of every layer)")
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    rslora: bool = Field(False, description="scale adapters by alpha/sqrt(r) instead of alpha/r (rank-stabilised LoRA)")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="'all-linear' adapts every linear layer of the blocks (not lm_head)"
    )
    # AdaLoRA: ranks start at r and the total budget shrinks to target_r per layer on average between the end
    # of tinit and the start of the last tfinal steps (fractions of the run's steps), reallocated every delta_t steps.
    target_r: int = Field(4, ge=1, description="AdaLoRA: average rank per layer at the end")
    tinit: float = Field(0.1, ge=0, lt=1, description="AdaLoRA: share of steps before pruning starts")
    tfinal: float = Field(0.2, ge=0, lt=1, description="AdaLoRA: share of steps at the end with the ranks frozen")
    delta_t: int | None = Field(None, ge=1, description="AdaLoRA: steps between budget reallocations; default: 1% of "
                                "the run's steps (at least 1)")
    orth_reg_weight: float = Field(0.5, ge=0, description="AdaLoRA: weight of the orthogonality regulariser on P and Q")
    optimizer: Literal["adamw", "adamw8bit"] = Field(
        "adamw", description="adamw8bit: bitsandbytes' 8-bit AdamW (optimizer state in 8 bits)")

    @model_validator(mode="after")
    def _adalora_rule(self):
        if self.name == "adalora" and self.target_r > self.r:
            raise ValueError(f"AdaLoRA prunes ranks, it cannot grow them: method.target_r={self.target_r} must be at most "
                             f"method.r={self.r} (the initial rank). Lower target_r or raise r.")
        if self.name == "adalora" and self.tinit + self.tfinal >= 1:
            raise ValueError(f"AdaLoRA needs steps to prune in: method.tinit + method.tfinal = {self.tinit + self.tfinal:g} "
                             "must be below 1.")
        return self


class DistributedConfig(_Section):
    """How several processes (`leantune train --nproc N`, or torchrun) share one run. One process ignores it."""

    strategy: Literal["fsdp2", "ddp"] = Field(
        "fsdp2", description="fsdp2: weights, gradients and optimizer state sharded across processes (each decoder "
        "layer, then the rest); ddp: every process holds the whole model and gradients are summed once per step")
    reshard_after_forward: bool = Field(True, description="fsdp2: free each layer's gathered weights after its "
                                        "forward (less memory, one more all-gather in backward)")
    cpu_offload: bool = Field(False, description="fsdp2 on a GPU: keep sharded weights, gradients and optimizer "
                              "state in CPU memory")


class TrainingConfig(_Section):
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    micro_batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0, description="peak learning rate; unset, the method's measured default where it has one (METHOD_LR)")
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, le=1)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decays to lr * min_lr_ratio")
    max_grad_norm: float | None = Field(1.0, gt=0)
    seed: int = 42
    gradient_checkpointing: bool = False
    activation_offload: bool = Field(False, description="keep what forward saves for backward in CPU memory until "
                                     "backward needs it (GPU memory for PCIe copies; training/offload.py)")
    loss_chunk: int = Field(0, ge=0, description="compute the output layer and loss this many labelled positions at a "
                            "time (recomputed in backward), so all fp32 logits never exist at once; 0: all together")
    autocast: Literal["auto", "bf16", "fp16", "off"] = Field(
        "auto", description="autocast over float32 trainable weights: matmuls in bf16 or fp16, weights and their "
        "updates in float32. auto: bf16 on bf16 GPUs for methods that train the base's weights, fp16 with dynamic loss "
        "scaling on GPUs without bf16 (T4, V100) for every method; CPUs stay float32 (measured, training/precision.py); "
        "bf16: always (on a CPU, one with AVX512-BF16 or AMX); fp16: always, with loss scaling; off: never")
    @field_validator("autocast", mode="before")
    @classmethod
    def _off_is_a_word(cls, value):
        """YAML reads a bare `off` (`training.autocast=off`, `autocast: off`) as false; it means the setting 'off'."""
        return "off" if value is False else value

    fp16_initial_scale: float = Field(2.0**16, gt=0, description="fp16 autocast's starting loss scale (dynamic: "
                                      "halved at every overflow, which skips that step, doubled after 2000 clean steps)")
    compile: bool = Field(False, description="torch.compile the decoder (dynamic shapes); pays only for long runs: "
                          "see bench/results/throughput.json for its compile time and step-time gain on this machine")
    lora_autograd: Literal["leantune", "peft"] = Field(
        "leantune", description="LoRA layers: leantune runs each plain one as one autograd function that keeps the "
        "dropout mask in bytes instead of a float copy of the input (the same losses; models/lora_autograd.py); peft: "
        "PEFT's modules as they are")
    segment_attention: bool = Field(
        True, description="with data.packing, a micro-batch runs as one row with no padding and attention example by "
        "example (models/segment_attention.py; models whose attention is transformers' SDPA, not compiled); false: "
        "rows of up to max_seq_len under a block-diagonal mask. The same losses to float rounding")
    eval_every: int = Field(0, ge=0, description="steps between eval-loss passes; 0: only at the end")
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    threads: int | None = Field(None, ge=1, description="CPU threads; default: all cores torch sees")
    release_memory: bool = Field(False, description="CPU: glibc gives freed large blocks back at once (a fixed mmap "
                                 "threshold): a lower resident peak for slower steps (training/allocator.py)")
    allocator: Literal["auto", "system"] = Field(
        "auto", description="CPU runs started by `leantune train`: auto preloads TCMalloc when it is installed (a "
        "resident peak near the plan, and faster steps than glibc's malloc: bench/results/memory_model.json); system "
        "keeps the C library's (training/allocator.py)")
    distributed: DistributedConfig = DistributedConfig()


class ForgettingConfig(_Section):
    """Protection of what the base model already knows (second seed: catastrophic forgetting)."""

    # measured (bench/results/quality_forgetting.json, SmolLM2-135M, 40 LoRA steps, 3 tasks x 3 seeds): 3e3 held the
    # base's trivia within noise at 88-97% of LoRA's task score, 1e3 lost 6-8 trivia points on two tasks, 1e4 held
    # trivia at 89-92% of LoRA's task score; on tweets, over 6 seeds, 3e3 cost a real 5.0 +- 3.9 points. The penalty
    # scales with the Fisher, so another model or protected data wants its own sweep.
    ewc_lambda: float = Field(0.0, ge=0, description="EWC strength; 0: off (3e3 measured on SmolLM2-135M). "
                              "Penalty: lambda * sum F * (weight change)^2")
    ewc_data: str = Field("trivia", description="general text the Fisher information is estimated on; 'parent': "
                          "model.parent's training split, with its adapter active, anchoring the update to that adapter")
    ewc_examples: int = Field(64, ge=1, description="examples for the Fisher estimate (computed once, cached)")
    # measured likewise: 0.25 of the trained tokens kept trivia on every task (+3.5 to +5.6 points) at 92-100% of
    # LoRA's task score; 0.1 kept 99-101% of the task score but lost 4-5 trivia points on two of the three tasks
    replay_fraction: float = Field(0.0, ge=0, lt=1, description="share of training drawn from replay_data, counted "
                                   "as replay_balance says (0.25 measured on SmolLM2-135M)")
    replay_balance: Literal["tokens", "examples"] = Field(
        "tokens", description="tokens: replay_fraction of the trained tokens (of the loss); examples: of the rows")
    replay_data: str = Field("trivia", description="general-domain examples mixed into training; 'parent': the "
                             "training split of model.parent's run (an incremental update rehearsing its old task)")


class CostConfig(_Section):
    usd_per_hour: float | None = Field(
        None, ge=0, description="price of the machine per hour (0: a machine you own); default: the GPU catalog's "
        "on-demand price for the detected GPU, none on a CPU (runs/cost.py)")
    budget_usd: float | None = Field(None, gt=0, description="stop (with a checkpoint) before the billed cost passes "
                                     "this; needs a price")


class HardwareConfig(_Section):
    memory_gib: float | None = Field(
        None, gt=0, description="memory of the training device; a run predicted not to fit is refused (train --force overrides)"
    )


class OutputConfig(_Section):
    runs_dir: str = "runs"
    name: str | None = Field(None, description="run name; the run id gets a timestamp prefix")
    project: str = Field("default", description="cost ledger and budget group (`leantune budget --project`)")


class ObjectiveConfig(_Section):
    name: Literal["sft", "dpo", "distill"] = Field(
        "sft", description="sft: next-token loss on the answers; dpo: preference pairs (prompt, chosen, rejected); "
        "distill: match a teacher's token distributions, mixed with the SFT loss")
    beta: float = Field(0.1, gt=0, description="DPO: how far the policy may move from the reference (higher: less)")
    teacher: str | None = Field(None, description="distill: the teacher model (same tokenizer); none: the base model "
                                "itself with the adapter switched off (self-distillation, no second copy)")
    temperature: float = Field(2.0, gt=0, description="distill: softens both distributions before comparing them")
    alpha: float = Field(0.5, ge=0, le=1, description="distill: weight of the teacher term; 1 - alpha goes to the SFT loss")


class TrackingConfig(_Section):
    backend: Literal["none", "mlflow"] = Field("none", description="where params, metrics and artifacts also go")
    uri: str | None = Field(None, description="mlflow: tracking server, e.g. http://127.0.0.1:5000")
    experiment: str = Field("leantune", description="mlflow: experiment name")


class EvalConfig(_Section):
    """The evaluation at the end of `leantune train` (the same as `leantune eval RUN` run later, but time-boxed)."""

    after_train: bool = Field(True, description="score base vs tuned on the held-out split and the general suite "
                              "after training; results in report.md and eval.json")
    tasks: list[str] = Field(["held-out", "trivia", "analogies"], min_length=1,
                             description="held-out, trivia, analogies, a built-in dataset or a data file")
    time_share: float = Field(0.1, gt=0, le=10, description="time budget as a share of the training time")
    min_items: int = Field(8, ge=1, description="items per task scored even when the time budget is spent (the "
                           "forgetting interval says how little a few items prove)")


PARENT_DATA = "parent"  # forgetting.replay_data / ewc_data: the training split of model.parent's run


# Learning rates that differ from training.lr's default, by method, each from a measurement: AdaLoRA's update is
# P diag(E) Q with E starting at zero (Adam moves each E by at most lr a step), and at 2e-3 a 40-step SmolLM2 run on
# sms-spam learned only the majority class (balanced accuracy 50%, eval loss 0.24); at 1e-2 it reached 92.0%, like
# LoRA at 5e-4; at 3e-2, 50% again. IA3 (vectors scaling activations, starting at 1): 50% at 2e-4 and at 3e-3,
# 91.2% at 1e-2 (bench/results/quality_ia3_lr.json). LoRA, 40 steps, 3 seeds (bench/results/quality_lora_lr.json):
# 82.0% +- 26.4 at 5e-4 (one seed 70.9%), 90.4% +- 0.7 at 1e-3 - full fine-tuning's 90.7% -, 84.3% +- 14.0 at 2e-3;
# 1e-3 forgets more trivia (-19 points against -8 at 5e-4: pair it with EWC or replay where that matters).
# qlora-gguf computes exactly LoRA's forward over the same weights; DoRA (LoRA plus a magnitude vector) and NF4
# QLoRA (LoRA over a re-quantised base) take the family's value without a sweep of their own. Numbers in README.
LORA_FAMILY_LR = 1e-3
METHOD_LR = {"lora": LORA_FAMILY_LR, "qlora-gguf": LORA_FAMILY_LR, "dora": LORA_FAMILY_LR, "qlora": LORA_FAMILY_LR,
             "adalora": 1e-2, "ia3": 1e-2}


class RunConfig(_Section):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    method: MethodConfig = MethodConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    forgetting: ForgettingConfig = ForgettingConfig()
    training: TrainingConfig = TrainingConfig()
    cost: CostConfig = CostConfig()
    hardware: HardwareConfig = HardwareConfig()
    output: OutputConfig = OutputConfig()
    tracking: TrackingConfig = TrackingConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _method_learning_rate(self):
        if "lr" not in self.training.model_fields_set and self.method.name in METHOD_LR:
            self.training.lr = METHOD_LR[self.method.name]
        return self

    @model_validator(mode="after")
    def _parent_rule(self):
        f = self.forgetting
        used = [k for k, spec, on in (("forgetting.replay_data", f.replay_data, f.replay_fraction),
                                       ("forgetting.ewc_data", f.ewc_data, f.ewc_lambda)) if on and spec == PARENT_DATA]
        if used and not self.model.parent:
            raise ValueError(f"{used[0]}=parent means the training split of the run this one continues, and this run "
                             "continues none. Use `leantune train --from RUN data.train=...`, or name a dataset.")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _section_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the key at `loc` (a validation error location)."""
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def _explain(err: ValidationError, source: str) -> ConfigError:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            section = _section_at(e["loc"])
            valid = list(section.model_fields) if section else []
            close = difflib.get_close_matches(str(e["loc"][-1]), valid, n=1, cutoff=0.5)
            prefix = ".".join(str(p) for p in e["loc"][:-1])
            hint = f"did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else ""
            lines.append(f"unknown key '{key}'. {hint} Valid keys here: {', '.join(valid)}.")
        elif not e["loc"]:  # a rule across sections: the whole config is its input, not worth printing
            lines.append(str(e["msg"]).removeprefix("Value error, "))
        else:
            lines.append(f"'{key}': {e['msg']} (got {e.get('input')!r}).")
    return ConfigError(f"Invalid config in {source}:\n  " + "\n  ".join(lines) + "\nFix the key or value and run again.")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`training.lr=2e-4` -> (['training', 'lr'], 0.0002). Values are read as YAML scalars or lists."""
    if "=" not in text:
        raise ConfigError(f"Override '{text}' is not of the form key=value (for example training.lr=2e-4).")
    key, _, raw = text.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"Override '{text}' has an empty key.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    # YAML 1.1 reads "2e-4" as a string; pydantic turns numeric strings into floats for float fields.
    return parts, value


def _set_dotted(tree: dict, parts: list[str], value: Any, override: str) -> None:
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"Override '{override}': '{part}' is a value, not a section.")
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file '{path}' does not exist. Check the path, or run without a config file to use the defaults.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"Cannot read YAML at {where}: {problem}. Fix the syntax and run again.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"Config file '{path}' is not UTF-8 text.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file '{path}' must hold a mapping of sections (model:, data:, ...), not {type(data).__name__}.")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Build a RunConfig from an optional YAML file and `key=value` overrides (overrides win)."""
    tree = read_yaml(path) if path else {}
    source = f"'{path}'" if path else "the command line"
    if overrides and path:
        source += " and the command-line overrides"
    return apply_overrides(tree, overrides, source)


def apply_overrides(tree: dict, overrides: list[str] | tuple[str, ...], source: str) -> RunConfig:
    """A RunConfig from a config tree (a file's, or another run's) with `key=value` overrides applied on top;
    `source` names where the tree came from in an error."""
    for text in overrides:
        parts, value = parse_override(text)
        _set_dotted(tree, parts, value, text)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        raise _explain(e, source) from None
