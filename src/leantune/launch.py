"""`leantune launch CONFIG --cloud [--spot]`: a SkyPilot task for the setup the planner picks, so a run goes to a
rented (or spot) GPU machine with the exact command that resumes it after a preemption.

What the task holds: the accelerators and count per node (the planner's cheapest setup that fits, or the ones
asked for), the nodes, spot with managed-job recovery, a bucket mounted for the runs directory (checkpoints live
there, so a replacement machine resumes from them), and `torchrun ... -m leantune train CONFIG ... --resume-latest`:
the newest unfinished run of that name resumes from its newest complete checkpoint, or a new run starts. The
price per machine and the budget go into the command, so the cost meter and the budget guard run on the machine.

SkyPilot's own parser checks the task (`sky.Task.from_yaml`) when SkyPilot is installed; its pins clash with
ours (click, uvicorn), so it lives in its own environment (`make skypilot-env` makes `.venv-sky`;
LEANTUNE_SKYPILOT_PYTHON names another). No cloud account is needed to write or check a task. No torch here.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

from . import atomic
from .config import load_config
from .errors import ConfigError, UserError
from .plan import Candidate, plan_from_options
from .plan.recommend import evaluate_setup

# the planner's GPU keys -> SkyPilot's accelerator names
SKYPILOT_ACCELERATORS = {
    "t4": "T4", "l4": "L4", "a10g": "A10G", "l40s": "L40S", "a100-40gb": "A100", "a100-80gb": "A100-80GB",
    "h100": "H100", "h100-pcie": "H100", "h200": "H200", "b200": "B200", "rtx-3090": "RTX3090",
    "rtx-4090": "RTX4090", "rtx-5090": "RTX5090",
}
RUNS_MOUNT = "/leantune-runs"
VALIDATE = "import sys, sky\ntask = sky.Task.from_yaml(sys.argv[1])\nprint(task.num_nodes, sorted(map(str, task.resources)))"


@dataclass
class LaunchTask:
    path: Path
    candidate: Candidate
    nodes: int
    command: str
    validated: str | None  # SkyPilot's reading of the task, or None when SkyPilot is not installed


def _accelerator(candidate: Candidate) -> str:
    try:
        return SKYPILOT_ACCELERATORS[candidate.gpu.key]
    except KeyError:
        raise ConfigError(f"GPU '{candidate.gpu.key}' has no SkyPilot accelerator name here; pick one of "
                          f"{', '.join(sorted(SKYPILOT_ACCELERATORS))} with --gpu.") from None


def _package_spec() -> str:
    try:
        return f"leantune=={version('leantune')}"
    except PackageNotFoundError:
        return "leantune"


def write_task(config_path: str, out: str | Path, spot: bool = False, gpu: str | None = None, gpus: int | None = None,
               nodes: int = 1, bucket: str | None = None, budget_usd: float | None = None,
               prices: str | None = None) -> LaunchTask:
    """Plan the run, write the SkyPilot task YAML to `out` (atomically) and check it with SkyPilot when it is here."""
    if not Path(config_path).is_file():
        raise ConfigError(f"Config file '{config_path}' does not exist; `leantune launch` takes the YAML `leantune "
                          "train` takes.")
    if nodes < 1:
        raise ConfigError(f"--nodes must be at least 1, not {nodes}.")
    config = load_config(config_path)
    plan = plan_from_options(config_path, gpu=gpu, gpus=gpus or 1, spot=spot, prices=prices)
    best = plan.best
    if best is None or not best.fits:
        raise UserError("No setup in the GPU catalog fits this run (see `leantune plan " + config_path + "`); lower "
                        "the sequence length or batch, or use a method that needs less memory.")
    per_node = best.setup.gpus
    strategy = "fsdp2" if best.setup.sharding != "none" or nodes > 1 else "ddp"
    if nodes > 1:  # the whole job, priced with the network between the machines (plan/timing.py)
        whole = replace(best.setup, gpus=per_node * nodes, sharding="fsdp" if best.setup.sharding == "none" else
                        best.setup.sharding)
        best = evaluate_setup(plan.shape, whole, replace(best.gpu, gpus_per_node=per_node), plan.tokens)
    price = best.gpu.spot_usd if spot else best.gpu.on_demand_usd
    name = config.output.name or Path(config_path).stem
    overrides = [f"output.runs_dir={RUNS_MOUNT}", f"output.name={name}", f"training.distributed.strategy={strategy}"]
    if price is not None:  # the machine's price (its GPUs), so the cost meter bills what the cloud bills
        overrides.append(f"cost.usd_per_hour={price * per_node:g}")
    if budget_usd is not None:
        overrides.append(f"cost.budget_usd={budget_usd:g}")
    train = ["-m", "leantune", "train", Path(config_path).name, *overrides, "--resume-latest"]
    launcher = ("torchrun --nnodes=$SKYPILOT_NUM_NODES --nproc-per-node=$SKYPILOT_NUM_GPUS_PER_NODE "
                "--node-rank=$SKYPILOT_NODE_RANK --master-addr=$(echo \"$SKYPILOT_NODE_IPS\" | head -n1) "
                "--master-port=29500")
    command = f"{launcher} {' '.join(shlex.quote(a) for a in train)}"
    resources = {"accelerators": f"{_accelerator(best)}:{per_node}", "use_spot": spot}
    if spot:  # a managed job is relaunched after a preemption (and a few times after a failure) and resumes
        resources["job_recovery"] = {"strategy": "FAILOVER", "max_restarts_on_errors": 3}
    task = {
        "name": f"leantune-{name}".replace("_", "-").lower(),
        "resources": resources,
        "num_nodes": nodes,
        "workdir": str(Path(config_path).resolve().parent),
        "setup": f"pip install {shlex.quote(_package_spec())}\n",
        "run": command + "\n",
    }
    if bucket:
        # checkpoints written to local disk first and uploaded behind (MOUNT_CACHED), so a step never waits on the
        # object store; a preemption mid-upload leaves a checkpoint without progress.json, which resume skips
        task["file_mounts"] = {RUNS_MOUNT: {"name": bucket, "mode": "MOUNT_CACHED"}}
    text = (f"# written by `leantune launch` for {Path(config_path).name}: {best.gpu.name} x {per_node} x {nodes} "
            f"node(s), {'spot' if spot else 'on-demand'}, planned {best.time.hours:.3g} h\n"
            + yaml.dump(task, Dumper=_BlockDumper, sort_keys=False, width=1000))
    out = Path(out)
    atomic.write_text(out, text)
    return LaunchTask(out, best, nodes, command, validate_task(out))


class _BlockDumper(yaml.SafeDumper):
    """Shell scripts (setup, run) as literal blocks, as people write SkyPilot tasks."""


_BlockDumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def skypilot_python() -> str | None:
    """An interpreter with SkyPilot: LEANTUNE_SKYPILOT_PYTHON, this one, or the project's .venv-sky."""
    named = os.environ.get("LEANTUNE_SKYPILOT_PYTHON")
    if named:
        return named
    try:
        import sky  # noqa: F401

        return sys.executable
    except ImportError:
        pass
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = root / ".venv-sky" / "bin" / "python"
        if candidate.is_file():
            return str(candidate)
    return None


def validate_task(path: Path) -> str | None:
    """SkyPilot's reading of the task (nodes and resources); None when SkyPilot is not installed. A task it refuses
    raises a UserError with SkyPilot's message (the file stays, to be fixed and checked again)."""
    python = skypilot_python()
    if python is None:
        return None
    done = subprocess.run([python, "-c", VALIDATE, str(path)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"SkyPilot refuses the task in {path}: {reason}")
    return done.stdout.strip()
