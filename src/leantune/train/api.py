"""`leantune.train(...)`: what `leantune train` calls."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..config import RunConfig, load_config
from ..errors import ConfigError, RunDirError
from ..runs.rundir import create_run_dir, open_run_dir
from .recipe import LoraRecipe, TrainResult
from .signals import TrainingStopped


def train(
    config: RunConfig | str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    resume: str | Path | None = None,
    console: Console | None = None,
    force: bool = False,
) -> TrainResult:
    """Run a fine-tune from a RunConfig or YAML path (+ dotted overrides), or resume a run directory."""
    if resume is not None:
        if config is not None or overrides:
            raise ConfigError("--resume continues a run with the config it was started with; drop the config file and overrides.")
        run = open_run_dir(resume)
        if run.info().get("status") == "completed":
            raise RunDirError(f"Run '{run.path}' has already completed; its adapter is in {run.adapter}. Start a new run to train further.")
        recipe = LoraRecipe(run.config(), run, console)
        recipe.setup(resume=True, force=force)
    else:
        if not isinstance(config, RunConfig):
            config = load_config(config, overrides)
        elif overrides:
            raise ConfigError("Pass overrides with a config file path, not with a RunConfig object (set its fields instead).")
        recipe = LoraRecipe(config, create_run_dir(config), console)
        try:
            recipe.setup(force=force)
        except Exception:
            recipe.run.update_info(status="failed")
            raise
    try:
        return recipe.train()
    except TrainingStopped:
        raise
    except BaseException:
        recipe.run.update_info(status="failed")
        raise


