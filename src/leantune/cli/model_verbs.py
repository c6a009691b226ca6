"""The verbs that load a model: train, eval, generate, demo. Their library functions import torch and
transformers inside the command (seconds of start-up that `leantune runs ls` and the planner must not pay)."""

from __future__ import annotations

import os
import sys
from typing import List, Optional

import typer
from rich.console import Console

from ..runs.cost import process_start_time
from .common import RUNS_DIR, err, running_as_program, split_train_args


def train(
    args: Optional[List[str]] = typer.Argument(None, help="[CONFIG.yaml] [key=value ...], e.g. training.lr=2e-4"),
    resume: Optional[str] = typer.Option(None, "--resume", help="continue the run in this directory from its last checkpoint"),
    force: bool = typer.Option(False, "--force", help="train even if the plan predicts it will not fit hardware.memory_gib"),
    allow_duplicate: bool = typer.Option(False, "--allow-duplicate", help="train even if a completed run had the same config, data and model"),
    parent: Optional[str] = typer.Option(None, "--from", help="update this run's adapter on new rows (data.train=FILE): "
                                         "replay and EWC protect its task, then parent vs child on the same items"),
    nproc: int = typer.Option(1, "--nproc", min=1, help="train with N processes on this machine (torchrun "
                              "underneath; training.distributed picks fsdp2 or ddp); same result as one"),
    resume_latest: bool = typer.Option(False, "--resume-latest", help="resume the newest unfinished run named "
                                       "output.name in output.runs_dir, or start it (what `leantune launch` runs)"),
):
    """Fine-tune a model from a config file and/or dotted overrides (any method, any objective)."""
    choose_allocator(args or [], resume)  # may re-execute this command once, before torch loads
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        refuse_what_cannot_shard(args or [], resume, nproc)  # exit 2 here, not a failed process inside torchrun
        launch_processes(nproc)  # does not return: torchrun starts N of this command without --nproc
    from ..evaluation.render import eval_table
    from ..training.api import train as run_training

    config, overrides = split_train_args(args or [])
    result = run_training(config, overrides, resume=resume, force=force, allow_duplicate=allow_duplicate,
                          resume_latest=resume_latest,
                          started_at=float(os.environ.get("LEANTUNE_STARTED_AT", 0)) or process_start_time(),
                          parent=parent)
    if os.environ.get("RANK", "0") != "0":
        return  # rank 0 reports the run
    err.print(f"[green]done[/]: {result.summary()}")
    if result.evaluation is not None:
        Console().print(eval_table(result.evaluation))


def launch(
    config: str = typer.Argument(..., help="the run config (the YAML `leantune train` takes)"),
    cloud: bool = typer.Option(False, "--cloud", help="a SkyPilot task (the one target for now)"),
    spot: bool = typer.Option(False, "--spot", help="spot instances, relaunched and resumed after a preemption"),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="GPU type (`leantune plan --list-gpus`); default: the plan's cheapest that fits"),
    gpus: Optional[int] = typer.Option(None, "--gpus", min=1, help="GPUs per node (with --gpu)"),
    nodes: int = typer.Option(1, "--nodes", min=1, help="machines"),
    bucket: Optional[str] = typer.Option(None, "--bucket", help="object-store bucket mounted for the runs directory "
                                         "(checkpoints survive the machine)"),
    budget: Optional[float] = typer.Option(None, "--budget", help="cost.budget_usd for the run"),
    out: str = typer.Option("leantune-task.yaml", "--out", help="where to write the task"),
    prices: Optional[str] = typer.Option(None, "--prices", help="JSON file overriding the GPU price table"),
):
    """Write a SkyPilot task for the planner's setup (spot, job recovery, checkpoint bucket, the resuming command)."""
    from ..errors import ConfigError
    from ..launch import write_task

    if not cloud:
        raise ConfigError("Say where: `leantune launch CONFIG --cloud` writes a SkyPilot task (the one target so far).")
    task = write_task(config, out, spot, gpu, gpus, nodes, bucket, budget, prices)
    c = task.candidate
    err.print(f"wrote {task.path}: {c.gpu.name} x {c.setup.gpus} x {nodes} node(s), "
              f"{'spot' if spot else 'on-demand'}, planned {c.time.hours:.3g} h", highlight=False)
    if spot and not bucket:
        err.print("[yellow]no --bucket: checkpoints stay on the machine, and a preempted spot job starts over[/]")
    if task.validated is None:
        err.print("[yellow]not checked by SkyPilot (not installed here): `make skypilot-env`, or set "
                  "LEANTUNE_SKYPILOT_PYTHON[/]", highlight=False)
    else:
        err.print(f"SkyPilot reads it: {task.validated}", highlight=False)
    err.print(f"launch with: sky jobs launch {task.path}" if spot else f"launch with: sky launch {task.path}",
              highlight=False)


def choose_allocator(args: list[str], resume: str | None) -> None:
    """training.allocator=auto: restart with TCMalloc preloaded where it is installed (training/allocator.py). A
    config that does not load is left for the training to report; main() called from Python restarts nothing."""
    if not running_as_program():
        return
    from ..errors import UserError
    from ..training.allocator import preload_and_restart

    try:
        setting = command_config(args, resume).training.allocator
    except (UserError, OSError):
        return
    preload_and_restart(setting)


def command_config(args: list[str], resume: str | None):
    """The config this `train` command will run: the resumed run's, or the file and overrides given."""
    from ..config import load_config
    from ..runs.rundir import open_run_dir

    if resume is not None:
        return open_run_dir(resume).config()
    path, overrides = split_train_args(args)
    return load_config(path, overrides)


def refuse_what_cannot_shard(args: list[str], resume: str | None, nproc: int) -> None:
    from ..training.distributed import World, check_supported

    check_supported(command_config(args, resume), World(rank=0, size=nproc))


def launch_processes(nproc: int) -> None:
    """Replace this process by torchrun running `python -m leantune train ...` N times on this machine (a free port
    on 127.0.0.1; torchrun forwards SIGTERM and Ctrl-C to every process, and stops them all when one fails). The run
    is billed from this command's start."""
    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    os.environ.setdefault("LEANTUNE_STARTED_AT", str(process_start_time()))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "leantune", *args]
    err.print(f"starting {nproc} processes: torchrun --standalone --nproc-per-node={nproc} -m leantune "
              f"{' '.join(args)}", highlight=False)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)


def eval_command(
    target: str = typer.Argument(..., help="a run (directory, id or name) or a model (smollm2-135m, HF directory, .gguf)"),
    task: Optional[List[str]] = typer.Option(None, "--task", help="held-out, trivia, analogies, a built-in dataset or a data "
                                             "file; repeat for several (default: a run's held-out split + the general suite)"),
    metric: Optional[List[str]] = typer.Option(None, "--metric", help="loss, accuracy, multiple_choice, exact_match, token_f1, "
                                               "preference_accuracy; repeat for several (default: what fits each task)"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="at most this many items per task (a random sample)"),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    runs_dir: str = RUNS_DIR,
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    no_save: bool = typer.Option(False, "--no-save", help="do not write eval.json / report.md into the run"),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="few-shot: also score the base model with k of the "
                                           "run's training rows in its prompt, and what those prompt tokens cost"),
    shots: Optional[int] = typer.Option(None, "--shots", min=1, help="with --baseline few-shot: at most this many "
                                        "training rows in the prompt (default 8, fewer when the context is full)"),
    prompt_usd_per_mtok: float = typer.Option(0.10, "--prompt-usd-per-mtok", help="with --baseline few-shot: price of "
                                              "a million prompt tokens where the model would be served"),
):
    """Score a run against its base model on the same items (task metrics + forgetting on the general suite), or a model alone."""
    from ..evaluation.api import evaluate
    from ..evaluation.render import eval_table

    result = evaluate(target, task or (), metric or (), limit, batch_size, save=not no_save, runs_dir=runs_dir,
                      console=None if as_json else err, baseline=baseline, shots=shots,
                      prompt_usd_per_mtok=prompt_usd_per_mtok)
    if as_json:
        print(result.to_json())
        return
    Console().print(eval_table(result))
    for line in result.summary():
        err.print(line, highlight=False)


def generate(
    model: str = typer.Argument(..., help="a run (directory, id, name@stage, name@vN), or a base model (smollm2-135m, "
                                "HF directory, .gguf)"),
    prompt: str = typer.Argument(..., help="the user message"),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1),
    system: Optional[str] = typer.Option(None, "--system", help="an optional system message"),
    runs_dir: str = typer.Option("runs", "--runs-dir"),
):
    """Print the model's reply to PROMPT, formatted with its chat template."""
    from ..generate import generate as run_generate

    print(run_generate(model, prompt, max_new_tokens, system, runs_dir))


def demo(
    runs_dir: str = typer.Option("runs", "--runs-dir"),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="optimizer steps (default: the demo's tuned value)"),
):
    """Fine-tune the bundled SmolLM2-135M on bundled SMS spam data and compare base vs tuned accuracy."""
    from ..training.allocator import preload_and_restart

    if running_as_program():
        preload_and_restart("auto")  # the demo trains with the allocator `leantune train` would choose
    from ..demo import run_demo

    run_demo(runs_dir, steps, started_at=process_start_time())


def export(
    target: str = typer.Argument(..., help="a run (directory, id or name) or a registry reference: name@production, name@v3"),
    fmt: str = typer.Option(..., "--format", help="hf (merged safetensors), gguf (one file for llama.cpp / Ollama), "
                            "gguf-lora (adapter-only GGUF + Ollama Modelfile), int8 / int4 (weight-only for CPU inference, torchao)"),
    quant: Optional[str] = typer.Option(None, "--quant", help="gguf: f32, f16, bf16, q8_0 (default), q4_0, q4_1, q5_0, q5_1; "
                                        "q2_k..q6_k where llama.cpp's fallback applies"),
    out: Optional[str] = typer.Option(None, "--out", help="destination folder (default: RUN/exports/FORMAT[-QUANT])"),
    force: bool = typer.Option(False, "--force", help="replace an existing export (only once the new one is checked)"),
    merge_into: str = typer.Option("nf4", "--merge-into", help="QLoRA: merge into the de-quantised NF4 weights the adapter "
                                   "trained over (nf4) or the original float weights (original)"),
    check_items: int = typer.Option(64, "--check-items", min=1, help="held-out items the check scores"),
    runs_dir: str = RUNS_DIR,
):
    """Merge, quantise and export a finished run; every export is loaded back and checked before it is kept."""
    from ..export.api import export as run_export

    record = run_export(target, fmt, quant, out, force, runs_dir, merge_into, check_items,
                        say=lambda line: err.print(line, highlight=False))
    err.print(f"[green]exported[/] {record.summary()}", highlight=False)
    err.print(f"checked by {record.check['how']}: max |dlogit| {record.check['max_abs_diff']:.2e}, mean KL "
              f"{record.check['mean_kl']:.2e}, top-1 agreement {record.check['top1_agreement']:.1%}", highlight=False)
    if record.check.get("held_out"):
        err.print("held-out: " + ", ".join(f"{m} {v['reference']:.4g} (tuned) -> {v['export']:.4g} (export)"
                                           for m, v in record.check["held_out"].items()), highlight=False)
    for note in record.notes:
        err.print(f"  {note}", highlight=False)


def serve(
    adapter: Optional[List[str]] = typer.Option(None, "--adapter", help="NAME=RUN or a reference served under its own "
                                                "text; RUN: a run directory or id, name@production, name@v3, name:v3"),
    base: Optional[str] = typer.Option(None, "--base", help="the base model (default: the first adapter's base)"),
    host: str = typer.Option("127.0.0.1", "--host", help="interface to listen on (loopback unless you mean otherwise)"),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="require 'Authorization: Bearer KEY' on /v1/"),
    max_loaded: int = typer.Option(8, "--max-loaded", min=1, help="adapters kept in memory (least recently used out)"),
    max_batch: int = typer.Option(16, "--max-batch", min=1, help="requests decoded together in one pass"),
    max_queue: int = typer.Option(64, "--max-queue", min=1, help="waiting requests before answering 429"),
    log_requests: Optional[str] = typer.Option(None, "--log-requests", help="write each request and answer to "
                                               "DIR/<model>.jsonl (rotated at 10 MB, 5 kept)"),
    default_max_tokens: int = typer.Option(256, "--default-max-tokens", min=1, help="chat answers' length limit when "
                                           "a request sets none"),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int4: the base's linear layers in int4 "
                                           "(torchao, as `export --format int4`); adapters stay beside them"),
    runs_dir: str = RUNS_DIR,
):
    """Serve a base model and many adapters behind an OpenAI-compatible API (/v1/chat/completions, ...)."""
    from ..serve import check_installed

    check_installed()
    from ..serve.api import build
    from ..serve.api import serve as run_server

    server = build(adapter or [], base, runs_dir, max_loaded, max_batch, max_queue, api_key, log_requests,
                   default_max_tokens, quantize=quantize, say=lambda m: err.print(m, highlight=False))
    run_server(server, host, port)
