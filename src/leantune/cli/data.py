"""`leantune data list / preview / check / clean`."""

from __future__ import annotations

import json
from typing import List, Optional

import typer
from rich.console import Console

from ..data import load_examples
from ..data.check import check_dataset
from ..data.check_render import print_check
from ..data.clean import clean_file
from ..data.preview import check_preview_options, preview_rows
from ..data.render import print_builtin_datasets, print_clean, print_preview, row_counter
from ..errors import ConfigError
from .common import err, parse_columns

app = typer.Typer(no_args_is_help=True, help="Datasets: built-in ones and your own files.")


def _tokenizer(model: str):
    # transformers only when a tokenizer is asked for: `data check` without --model stays torch-free
    from ..models.loading import load_tokenizer

    return load_tokenizer(model)


@app.command("list")
def data_list():
    """The built-in datasets, with their size, source package and license."""
    print_builtin_datasets(Console())


@app.command("preview")
def data_preview(
    data: str = typer.Argument(..., help="a data file or a built-in dataset name"),
    n: int = typer.Option(3, "-n", min=1, help="how many rows"),
    model: str = typer.Option("smollm2-135m", "--model", help="whose chat template and tokenizer to use"),
    max_seq_len: int = typer.Option(256, "--max-seq-len", min=8),
    train_on: str = typer.Option("all_assistant", "--train-on", help="all_assistant | last_assistant | everything"),
    fmt: str = typer.Option("auto", "--format", help="row format; auto-detected by default"),
    column: List[str] = typer.Option([], "--column", help="map a field name: OURS=THEIRS, e.g. prompt=question"),
    truncation: str = typer.Option("keep_end", "--truncation", help="keep_end | keep_start | drop (data.truncation)"),
):
    """Show rows exactly as the model will see them: trained tokens in green, masked ones dimmed, and what the
    truncation policy cuts off an over-long row in red."""
    check_preview_options(train_on, truncation)
    examples = load_examples(data, fmt, parse_columns(column))[:n]
    rows = preview_rows(_tokenizer(model), examples, max_seq_len, train_on, truncation)
    print_preview(Console(), rows, truncation)


@app.command("check")
def data_check(
    data: str = typer.Argument(..., help="a data file (.jsonl .json .csv .tsv .parquet) or a built-in dataset name"),
    eval_data: Optional[str] = typer.Option(None, "--eval", help="an eval set to check for train/eval overlap"),
    model: Optional[str] = typer.Option(None, "--model", help="tokenizer for token lengths and padding (e.g. smollm2-135m)"),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", min=8, help="count rows longer than this (needs --model; default 256)"),
    fmt: str = typer.Option("auto", "--format", help="row format; auto-detected per row by default"),
    column: List[str] = typer.Option([], "--column", help="map a field name: OURS=THEIRS, e.g. prompt=question"),
    near_threshold: float = typer.Option(0.8, "--near-dup-threshold", help="Jaccard similarity that counts as near-duplicate"),
    micro_batch_size: int = typer.Option(8, "--micro-batch-size", min=1, help="for the padding estimate"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
):
    """Find malformed, duplicate, conflicting, over-long and leaking rows before training. Exit 1 on errors."""
    if seq_len is not None and not model:
        raise ConfigError("--seq-len needs --model: token lengths come from the model's tokenizer, "
                          "e.g. --model smollm2-135m --seq-len 512.")
    tokenizer = _tokenizer(model) if model else None
    report = check_dataset(
        data, eval_data, fmt=fmt, columns=parse_columns(column), near_threshold=near_threshold, tokenizer=tokenizer,
        seq_len=(seq_len or 256) if tokenizer is not None else None, micro_batch_size=micro_batch_size,
        progress=None if as_json else row_counter(err),
    )
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_check(report)
    if report.errors:
        raise typer.Exit(1)


@app.command("clean")
def data_clean(
    data: str = typer.Argument(..., help="the data file to clean (never modified)"),
    output: str = typer.Option(..., "-o", "--output", help="where to write the clean rows (.jsonl)"),
    fmt: str = typer.Option("auto", "--format", help="row format; auto-detected per row by default"),
    column: List[str] = typer.Option([], "--column", help="map a field name: OURS=THEIRS, e.g. prompt=question"),
    near_threshold: float = typer.Option(0.8, "--near-dup-threshold", help="Jaccard similarity that counts as near-duplicate"),
    keep_near: bool = typer.Option(False, "--keep-near-duplicates", help="drop exact duplicates only"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
):
    """Drop malformed and duplicate rows, repair broken encoding, trim whitespace. Writes OUTPUT and
    OUTPUT.rejected.jsonl (every dropped row with its reason); running it on its own output changes nothing."""
    summary = clean_file(data, output, fmt=fmt, columns=parse_columns(column), near_threshold=near_threshold,
                         drop_near_duplicates=not keep_near, progress=None if as_json else row_counter(err))
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print_clean(Console(), summary)
