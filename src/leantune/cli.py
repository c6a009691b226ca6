"""The `leantune` command: parses arguments, calls one library function per command, renders results.

No logic lives here; every command is a function a notebook can call the same way.
"""

from __future__ import annotations

import sys
from typing import List, Optional

import typer
from rich.console import Console

from .errors import ConfigError, UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Fine-tune open-weight language models for the least money that does the job.")
err = Console(stderr=True)


def split_train_args(args: list[str]) -> tuple[str | None, list[str]]:
    """`[CONFIG.yaml] [key=value ...]` -> (config path or None, overrides)."""
    paths = [a for a in args if "=" not in a]
    if len(paths) > 1:
        raise ConfigError(f"Give at most one config file; got {', '.join(paths)}. Overrides take the form key=value.")
    return (paths[0] if paths else None), [a for a in args if "=" in a]


@app.command()
def train(
    args: Optional[List[str]] = typer.Argument(None, help="[CONFIG.yaml] [key=value ...], e.g. training.lr=2e-4"),
    resume: Optional[str] = typer.Option(None, "--resume", help="continue the run in this directory from its last checkpoint"),
):
    """Fine-tune a model (LoRA) from a config file and/or dotted overrides."""
    from .train import train as run_training

    config, overrides = split_train_args(args or [])
    result = run_training(config, overrides, resume=resume)
    err.print(
        f"[green]done[/]: {result.steps} steps, loss {result.final_loss:.4f}"
        + (f", eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else "")
        + f", {result.tokens_per_s:.0f} tok/s. Adapter and report in {result.run_dir}"
    )


@app.command()
def generate(
    model: str = typer.Argument(..., help="a run directory, or a base model (smollm2-135m, HF directory, .gguf)"),
    prompt: str = typer.Argument(..., help="the user message"),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1),
    system: Optional[str] = typer.Option(None, "--system", help="an optional system message"),
):
    """Print the model's reply to PROMPT, formatted with its chat template."""
    from .generate import generate as run_generate

    print(run_generate(model, prompt, max_new_tokens, system))


@app.command()
def demo(
    runs_dir: str = typer.Option("runs", "--runs-dir"),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="optimizer steps (default: the demo's tuned value)"),
):
    """Fine-tune the bundled SmolLM2-135M on bundled SMS spam data and compare base vs tuned accuracy."""
    from .demo import run_demo

    run_demo(runs_dir, steps)


def main() -> None:
    from .train.signals import Preempted

    try:
        app(standalone_mode=False)
    except UserError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(e.exit_code)
    except Preempted as e:
        err.print(f"[yellow]{e}[/]", highlight=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        sys.exit(130)
    except typer.Abort:
        sys.exit(130)
    except Exception as e:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
