"""`leantune plan`: memory, time and dollars before a GPU-hour is spent."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Optional

import typer

from ..plan import load_catalog, plan_from_options
from ..errors import ConfigError
from ..plan.render import print_gpus, print_models, print_own_or_rent, print_plan


def plan(
    config: Optional[str] = typer.Argument(None, help="a run config (the YAML `leantune train` takes); options below override it"),
    model: Optional[str] = typer.Option(None, "--model", help="preset name, HF model directory, config.json or .gguf"),
    method: Optional[str] = typer.Option(None, "--method", help="auto | full | lora | qlora | dora"),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="GPU type (see --list-gpus); omit to compare all"),
    gpus: int = typer.Option(1, "--gpus", help="GPU count (with --gpu)"),
    seq_len: Optional[int] = typer.Option(None, "--seq-len"),
    batch: Optional[int] = typer.Option(None, "--batch", help="micro-batch per GPU"),
    tokens: Optional[str] = typer.Option(None, "--tokens", help="training tokens, e.g. 20M"),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="count tokens from this dataset instead"),
    epochs: Optional[float] = typer.Option(None, "--epochs"),
    rank: Optional[int] = typer.Option(None, "--rank", help="LoRA rank"),
    grad_checkpointing: Optional[bool] = typer.Option(None, "--grad-checkpointing/--no-grad-checkpointing"),
    loss_chunk: Optional[int] = typer.Option(None, "--loss-chunk", help="chunked loss: labelled positions whose logits exist at once (0: off)"),
    offload: Optional[bool] = typer.Option(None, "--offload/--no-offload", help="activation offloading to CPU memory"),
    targets: Optional[str] = typer.Option(None, "--targets", help="LoRA targets: all-linear or e.g. q_proj,v_proj,o_proj"),
    pure_bf16: bool = typer.Option(False, "--pure-bf16", help="weights, gradients and Adam moments all in bf16, no fp32 master copy (torchtune, LitGPT bf16-true)"),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw | adamw8bit"),
    sharding: str = typer.Option("none", "--sharding", help="none | zero1 | zero2 | zero3 | fsdp"),
    attention: str = typer.Option("sdpa", "--attention", help="sdpa | eager"),
    dpo: bool = typer.Option(False, "--dpo", help="plan a DPO run (pairs of sequences, a reference pass)"),
    budget: Optional[float] = typer.Option(None, "--budget", help="dollars available"),
    spot: bool = typer.Option(False, "--spot", help="rank by spot prices"),
    mfu: Optional[float] = typer.Option(None, "--mfu", help="override the assumed model-FLOPs utilisation"),
    prices: Optional[str] = typer.Option(None, "--prices", help="JSON file overriding the GPU price table"),
    as_json: bool = typer.Option(False, "--json"),
    list_models: bool = typer.Option(False, "--list-models"),
    list_gpus: bool = typer.Option(False, "--list-gpus"),
    buy: bool = typer.Option(False, "--buy", help="rent or buy: owning the plan's GPUs against renting them for this workload"),
    runs_per_week: float = typer.Option(1.0, "--runs-per-week", help="with --buy: how often this run is repeated"),
    kwh_usd: float = typer.Option(0.15, "--kwh-usd", help="with --buy: electricity price per kWh"),
    pue: float = typer.Option(1.3, "--pue", help="with --buy: power usage effectiveness (cooling and losses)"),
    years: float = typer.Option(3.0, "--years", help="with --buy: years the cards are written off over"),
):
    """Memory, time and cost of a fine-tune before a GPU-hour is spent; ranks the setups that fit."""
    if list_models or list_gpus:
        print_models() if list_models else print_gpus(load_catalog(prices))
        return
    result = plan_from_options(config, model, method, gpu, gpus, seq_len, batch, tokens, dataset, epochs, rank,
                               grad_checkpointing, optimizer, sharding, attention, dpo, budget, spot, mfu, prices,
                               loss_chunk, offload, targets, pure_bf16)
    owned = None
    if buy:
        from ..plan.buy import own_or_rent

        if result.best is None:
            raise ConfigError("--buy needs a setup that fits; see the plan without --buy.")
        owned = own_or_rent(result.best, runs_per_week, kwh_usd, pue, years, spot)
    if as_json:
        data = result.to_dict()
        if owned is not None:
            data["buy"] = {**asdict(owned), "break_even_utilisation": owned.break_even_utilisation,
                           "one_off_ratio": owned.one_off_ratio}
        print(json.dumps(data, indent=2))
    else:
        print_plan(result)
        if owned is not None:
            print_own_or_rent(owned)
    if result.chosen is not None and not result.chosen.fits:
        raise typer.Exit(1)
