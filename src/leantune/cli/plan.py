"""`leantune plan`: memory, time and dollars before a GPU-hour is spent."""

from __future__ import annotations

import json
from typing import Optional

import typer

from ..plan import load_catalog, plan_from_options
from ..plan.render import print_gpus, print_models, print_plan


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
):
    """Memory, time and cost of a fine-tune before a GPU-hour is spent; ranks the setups that fit."""
    if list_models or list_gpus:
        print_models() if list_models else print_gpus(load_catalog(prices))
        return
    result = plan_from_options(config, model, method, gpu, gpus, seq_len, batch, tokens, dataset, epochs, rank,
                               grad_checkpointing, optimizer, sharding, attention, dpo, budget, spot, mfu, prices)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print_plan(result)
    if result.chosen is not None and not result.chosen.fits:
        raise typer.Exit(1)
