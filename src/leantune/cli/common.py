"""What the verb modules share: the stderr console, the --runs-dir option, argument parsing helpers."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from ..errors import ConfigError

err = Console(stderr=True)
RUNS_DIR = typer.Option("runs", "--runs-dir", help="the runs root (output.runs_dir)")


def running_as_program() -> bool:
    """Whether this process is the `leantune` program itself (its console script, `python -m leantune` or
    `python -m leantune.cli`), not a Python caller of main() such as a test. Only the program may restart itself
    with another allocator (training/allocator.py): an exec replaces whatever process calls it."""
    program = sys.modules.get("__main__")
    spec = getattr(program, "__spec__", None)
    if spec is not None:
        return spec.name in ("leantune.__main__", "leantune.cli.__main__")
    return Path(getattr(program, "__file__", None) or "").name == "leantune"


def parse_columns(pairs: list[str]) -> dict[str, str]:
    """`--column OURS=THEIRS` options -> {ours: theirs}."""
    columns = {}
    for pair in pairs:
        ours, sep, theirs = pair.partition("=")
        if not sep or not ours.strip() or not theirs.strip():
            raise ConfigError(f"--column '{pair}' must look like OURS=THEIRS, e.g. --column prompt=question.")
        columns[ours.strip()] = theirs.strip()
    return columns


def split_train_args(args: list[str]) -> tuple[str | None, list[str]]:
    """`[CONFIG.yaml] [key=value ...]` -> (config path or None, overrides)."""
    paths = [a for a in args if "=" not in a]
    if len(paths) > 1:
        raise ConfigError(f"Give at most one config file; got {', '.join(paths)}. Overrides take the form key=value.")
    return (paths[0] if paths else None), [a for a in args if "=" in a]
