"""`leantune launch`: a SkyPilot task for the planner's setup, checked by SkyPilot's own parser (its environment
is made by `make skypilot-env`, part of `make test`); `train --resume-latest`, the command the task runs; and resume
from the newest checkpoint that loads."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import tiny_overrides
from leantune import train
from leantune.errors import RunDirError, UserError
from leantune.launch import skypilot_python, validate_task

CONFIG = "model:\n  base: smollm2-135m\ndata:\n  train: sms-spam\noutput:\n  name: spam-bot\n"


def leantune(*args, cwd) -> subprocess.CompletedProcess:
    code = ("import sys\nfrom leantune.cli import main\nsys.argv = ['leantune', *sys.argv[1:]]\ntry:\n    main()\n"
            "finally:\n    print('HEAVY', [m for m in ('torch', 'transformers') if m in sys.modules], file=sys.stderr)")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "COLUMNS": "200"}, timeout=300)


@pytest.fixture
def sky():
    if skypilot_python() is None:
        pytest.skip("SkyPilot is not installed: `make skypilot-env`")


def test_spot_task_for_the_planned_setup_is_read_by_skypilot(tmp_path, sky):
    (tmp_path / "run.yaml").write_text(CONFIG)
    done = leantune("launch", "run.yaml", "--cloud", "--spot", "--gpu", "a10g", "--bucket", "ckpts", "--budget", "5",
                    "--out", "task.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stderr  # writing a task loads no model
    assert "SkyPilot reads it: 1 [\"<Cloud>([Spot], {'A10G': 1})\"]" in done.stderr
    task = yaml.safe_load((tmp_path / "task.yaml").read_text())
    assert task["resources"] == {"accelerators": "A10G:1", "use_spot": True,
                                 "job_recovery": {"strategy": "FAILOVER", "max_restarts_on_errors": 3}}
    assert task["file_mounts"] == {"/leantune-runs": {"name": "ckpts", "mode": "MOUNT_CACHED"}}
    run = task["run"]
    assert run.startswith("torchrun --nnodes=$SKYPILOT_NUM_NODES --nproc-per-node=$SKYPILOT_NUM_GPUS_PER_NODE")
    # the catalog's A10G spot price (per GPU) as the machine's price, and the budget, on the machine's command line
    assert run.rstrip().endswith("-m leantune train run.yaml output.runs_dir=/leantune-runs output.name=spam-bot "
                                 "training.distributed.strategy=ddp cost.usd_per_hour=0.4 cost.budget_usd=5 --resume-latest")
    assert "sky jobs launch task.yaml" in done.stderr


def test_several_nodes_shard_with_fsdp2(tmp_path, sky):
    (tmp_path / "run.yaml").write_text(CONFIG)
    done = leantune("launch", "run.yaml", "--cloud", "--gpu", "h100", "--gpus", "8", "--nodes", "2", "--out", "t.yaml",
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    task = yaml.safe_load((tmp_path / "t.yaml").read_text())
    assert task["num_nodes"] == 2 and task["resources"]["accelerators"] == "H100:8"
    assert "training.distributed.strategy=fsdp2" in task["run"] and "cost.usd_per_hour=24" in task["run"]
    assert "SkyPilot reads it: 2" in done.stderr
    # planned as 16 GPUs over the network between the two machines, not as one machine of 8
    from dataclasses import replace

    from leantune.plan import plan_from_options
    from leantune.plan.recommend import evaluate_setup

    plan = plan_from_options(str(tmp_path / "run.yaml"), gpu="h100", gpus=8)
    one = plan.best
    both = evaluate_setup(plan.shape, replace(one.setup, gpus=16, sharding="fsdp"), one.gpu, plan.tokens)
    assert both.time.nodes == 2
    header = (tmp_path / "t.yaml").read_text().splitlines()[0]
    assert f"planned {both.time.hours:.3g} h" in header and f"{both.time.hours:.3g}" != f"{one.time.hours:.3g}"


def test_a_task_skypilot_refuses_is_a_user_error(tmp_path, sky):
    bad = tmp_path / "bad.yaml"
    bad.write_text("resources:\n  accelerators: H100:8\n  use_spots: true\nrun: echo\n")
    with pytest.raises(UserError, match="SkyPilot refuses the task in .*use_spots"):
        validate_task(bad)


@pytest.mark.parametrize("args,message", [
    (["run.yaml"], "leantune launch CONFIG --cloud"),
    (["missing.yaml", "--cloud"], "Config file 'missing.yaml' does not exist"),
    (["run.yaml", "--cloud", "--gpu", "no-such-gpu"], "no-such-gpu"),
])
def test_launch_mistakes_exit_2(tmp_path, args, message):
    (tmp_path / "run.yaml").write_text(CONFIG)
    done = leantune("launch", *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr.replace("\n", "")
    assert not (tmp_path / "leantune-task.yaml").exists()


def test_resume_latest_starts_resumes_and_refuses_a_finished_run(tiny_model_dir, chat_file, tmp_path):
    runs = tmp_path / "runs"
    args = tiny_overrides(tiny_model_dir, chat_file, runs, **{"output.name": "bot", "training.max_steps": 200,
                                                                 "training.checkpoint_every": 5})
    proc = subprocess.Popen([sys.executable, "-m", "leantune", "train", *args, "--resume-latest"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not list(runs.glob("*/checkpoints/step-000005")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # the spot machine goes away
    _, err = proc.communicate(timeout=120)
    assert "no run named 'bot'" in err
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    assert json.loads((run / "run.json").read_text())["status"] == "preempted"

    result = train(None, args, resume_latest=True)  # the relaunched job: same command
    assert result.run_dir == run and result.steps == 200
    with pytest.raises(RunDirError, match="already completed"):
        train(None, args, resume_latest=True)


def test_resume_skips_a_newest_checkpoint_that_does_not_load(tiny_model_dir, chat_file, tmp_path):
    runs = tmp_path / "runs"
    args = tiny_overrides(tiny_model_dir, chat_file, runs, **{"training.max_steps": 400, "training.checkpoint_every": 4,
                                                                 "training.keep_checkpoints": 3})
    proc = subprocess.Popen([sys.executable, "-m", "leantune", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while len(list(runs.glob("*/checkpoints/step-*"))) < 2:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    checkpoints = sorted((run / "checkpoints").glob("step-*"))
    newest = checkpoints[-1]
    (newest / "trainable.safetensors").write_bytes(b"half an upload")  # landed incomplete in a bucket
    resumed = subprocess.run([sys.executable, "-m", "leantune", "train", "--resume", str(run)], capture_output=True,
                             text=True, timeout=300, env={**os.environ, "COLUMNS": "300"})
    assert resumed.returncode == 0, resumed.stderr
    assert f"checkpoint {newest} does not load" in resumed.stderr
    assert f"resumed from {checkpoints[-2]}" in resumed.stderr
