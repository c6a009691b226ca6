"""The planner: memory, time and dollars before a GPU-hour is spent.

Pure functions over model shapes, a GPU catalog and a price table. Nothing here imports torch or
transformers (except tokens.py when it is asked to count a dataset with a real tokenizer), so
`leantune plan` answers in well under a second.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..config import load_config
from ..errors import ConfigError
from .catalog import GPU, find_gpu, load_catalog
from .memory import GiB, MemoryBreakdown, estimate_peak_memory, trainable_params
from .presets import resolve_shape
from .recommend import Candidate, evaluate_setup, lever_effects, recommend
from .setup import BLOCK_LINEARS, METHODS, Setup, setup_from_run_config
from .shapes import ModelShape
from .timing import PretrainingGap, TimeEstimate, estimate_time, pretraining_gap
from .tokens import count_dataset_tokens, parse_token_count


@dataclass
class Plan:
    shape: ModelShape
    tokens: float
    tokens_note: str
    chosen: Candidate | None  # the setup asked for, when method and GPU were both given
    ranked: list[Candidate] = field(default_factory=list)
    not_fitting: list[str] = field(default_factory=list)
    gap: PretrainingGap | None = None
    budget: float | None = None
    spot: bool = False

    @property
    def best(self) -> Candidate | None:
        return self.chosen if self.chosen is not None else (self.ranked[0] if self.ranked else None)

    def to_dict(self) -> dict:
        def cand(c: Candidate | None):
            if c is None:
                return None
            return {
                "setup": asdict(c.setup), "gpu": c.gpu.key, "fits": c.fits, "gpu_memory_gib": c.gpu.memory_gib,
                "memory_gib": c.memory.as_gib(), "time": asdict(c.time), "levers": c.levers,
            }

        return {
            "model": {"name": self.shape.name, "params": self.shape.total_params, "active_params": self.shape.active_params},
            "tokens": self.tokens, "tokens_note": self.tokens_note, "chosen": cand(self.chosen),
            "ranked": [cand(c) for c in self.ranked], "not_fitting": self.not_fitting,
            "pretraining_gap": asdict(self.gap) if self.gap else None, "budget_usd": self.budget, "spot": self.spot,
        }


def make_plan(
    model: str,
    method: str = "auto",
    gpu: str | None = None,
    tokens: str | float | None = None,
    dataset: str | None = None,
    epochs: float = 1.0,
    setup: Setup | None = None,
    budget: float | None = None,
    spot: bool = False,
    mfu: float | None = None,
    prices: str | Path | None = None,
    top: int = 10,
) -> Plan:
    """Plan a fine-tune. `setup` carries seq_len, micro_batch, rank, ... (its method and gpus are used
    when `method` is not 'auto')."""
    shape = resolve_shape(model)
    catalog = load_catalog(prices)
    setup = setup or Setup()
    if method != "auto" and method not in METHODS:  # checked first: Setup.validate cannot mention 'auto'
        raise ConfigError(f"--method '{method}' is not one of auto, {', '.join(METHODS)}.")
    if method != "auto":
        setup = replace(setup, method=method)
    setup.validate(shape.hidden)
    if mfu is not None and not 0 < mfu <= 1:
        raise ConfigError(f"--mfu {mfu} must be in (0, 1].")

    if tokens is not None and dataset is not None:
        raise ConfigError("Give either --tokens or --dataset, not both.")
    if tokens is not None:
        n_tokens, note = (parse_token_count(tokens) if isinstance(tokens, str) else float(tokens)), "as given"
    elif dataset is not None:
        per_epoch, note = count_dataset_tokens(dataset, Path(model) if Path(model).is_dir() else None)
        n_tokens, note = per_epoch * epochs, f"{note}, x {epochs:g} epoch(s)"
    else:
        raise ConfigError("Say how much training there is: --tokens 20M, or --dataset data.jsonl [--epochs 3].")

    gpus = [find_gpu(catalog, gpu)] if gpu else list(catalog.values())
    for g in gpus:
        if (spot and g.spot_usd is None) or (not spot and g.on_demand_usd is None):
            raise ConfigError(f"No {'spot' if spot else 'on-demand'} price for {g.name}; add one with --prices FILE.")

    chosen = None
    ranked, not_fitting = [], []
    if method != "auto" and gpu:
        chosen = evaluate_setup(shape, setup, gpus[0], n_tokens, mfu)
        if not chosen.fits:  # say what would fit on the same GPU type with the same method
            ranked, not_fitting = recommend(shape, setup, gpus, n_tokens, [method], spot, mfu)
            ranked = ranked[:top]
    else:
        methods = list(METHODS) if method == "auto" else [method]
        ranked, not_fitting = recommend(shape, setup, gpus, n_tokens, methods, spot, mfu)
        if budget is not None:
            ranked = [c for c in ranked if c.price(spot) <= budget] or ranked
        ranked = ranked[:top]
    for c in ranked + ([chosen] if chosen else []):
        c.levers = lever_effects(shape, c, n_tokens, mfu)
    plan = Plan(shape, n_tokens, note, chosen, ranked, not_fitting, budget=budget, spot=spot)
    if plan.best is not None:
        plan.gap = pretraining_gap(shape, plan.best.gpu, plan.best.time)
    return plan


def plan_from_options(config: str | None = None, model: str | None = None, method: str | None = None, gpu: str | None = None,
                      gpus: int = 1, seq_len: int | None = None, micro_batch: int | None = None, tokens: str | None = None,
                      dataset: str | None = None, epochs: float | None = None, rank: int | None = None,
                      grad_checkpointing: bool | None = None, optimizer: str = "adamw", sharding: str = "none",
                      attention: str = "sdpa", dpo: bool = False, budget: float | None = None, spot: bool = False,
                      mfu: float | None = None, prices: str | None = None, loss_chunk: int | None = None,
                      offload: bool | None = None, targets: str | None = None, pure_bf16: bool = False) -> Plan:
    """`leantune plan`'s options, over a run config when one is given (its model, method, data and epochs; an
    option overrides the config): the plan of that run."""
    base, from_config = Setup(), {}
    if config:
        run = load_config(config)
        base = setup_from_run_config(run)  # AdaLoRA plans as LoRA of its initial rank
        from_config = {"model": run.model.base, "method": base.method, "dataset": run.data.train,
                       "epochs": float(run.training.epochs)}
    given = {"seq_len": seq_len, "micro_batch": micro_batch, "lora_rank": rank, "grad_checkpointing": grad_checkpointing,
             "loss_chunk": loss_chunk, "activation_offload": offload, "lora_targets": parse_targets(targets)}
    setup = replace(base, **{k: v for k, v in given.items() if v is not None}, optimizer=optimizer, sharding=sharding,
                    attention=attention, gpus=gpus, objective="dpo" if dpo else "sft", master_weights=not pure_bf16)
    model = model or from_config.get("model")
    if not model:
        raise ConfigError("Say which model: --model llama-3.1-8b (see --list-models), a model directory, or a run config file.")
    return make_plan(model, method or from_config.get("method", "auto"), gpu, tokens=tokens,
                     dataset=dataset or (None if tokens else from_config.get("dataset")),
                     epochs=epochs or from_config.get("epochs", 1.0), setup=setup, budget=budget, spot=spot, mfu=mfu,
                     prices=prices)


def parse_targets(targets: str | None) -> str | tuple[str, ...] | None:
    """--targets: all-linear, or a comma-separated list of the block's linear layers."""
    if targets is None or targets == "all-linear":
        return targets
    names = tuple(t.strip() for t in targets.split(",") if t.strip())
    unknown = [n for n in names if n not in BLOCK_LINEARS]
    if unknown or not names:
        raise ConfigError(f"--targets {targets!r}: {', '.join(unknown) or 'empty'} is not a linear layer of a Llama-style "
                          f"block; give all-linear or names from {', '.join(BLOCK_LINEARS)}, e.g. q_proj,v_proj.")
    return names


__all__ = [
    "GPU", "Candidate", "MemoryBreakdown", "ModelShape", "Plan", "PretrainingGap", "Setup", "TimeEstimate",
    "GiB", "estimate_peak_memory", "estimate_time", "load_catalog", "make_plan", "plan_from_options", "resolve_shape", "trainable_params",
]
