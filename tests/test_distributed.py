"""Several processes (torchrun, gloo on CPU) train what one process trains: the same parameters after K steps, the
same loss curve, exact resume from a sharded checkpoint on another number of processes, one SIGTERM stopping every
rank at one step, and an adapter gathered into the format one process writes. Real processes, the tiny model."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_overrides
from leantune import train
from leantune.runs.rundir import RunDir

# LoRA dropout draws a mask per row, which N processes draw differently from one: off, so the runs can be equal
SETTINGS = {"method.dropout": 0.0, "training.grad_accum": 2, "training.max_steps": 6, "training.checkpoint_every": 100}


def launch(*args, nproc: int = 2) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "leantune", "train", *args, "--nproc", str(nproc)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"}, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: int = 300) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc.returncode, err


def only_run(runs: Path) -> Path:
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    return run


def losses(run: Path) -> list[float]:
    return [m["loss"] for m in RunDir(run).read_metrics() if "loss" in m]


def trained(run: Path) -> dict[str, torch.Tensor]:
    folder = run / "adapter" if (run / "adapter").is_dir() else run / "model"
    return load_file(next(folder.glob("*.safetensors")))


def assert_same_weights(a: dict, b: dict, tol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=tol, rtol=0), (name, (a[name] - b[name]).abs().max())


@pytest.mark.parametrize("method,strategy,ewc", [("lora", "fsdp2", 1e3), ("lora", "ddp", 1e3), ("full", "fsdp2", 1e3)])
def test_two_processes_train_what_one_does(tiny_model_dir, chat_file, tmp_path, method, strategy, ewc):
    extra = {**SETTINGS, "method.name": method, "training.distributed.strategy": strategy,
             "forgetting.ewc_lambda": ewc, "forgetting.ewc_examples": 8}
    one = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "one", **extra))
    code, err = finish(launch(*tiny_overrides(tiny_model_dir, chat_file, tmp_path / "two", **extra)))
    assert code == 0, err
    run = only_run(tmp_path / "two")
    assert f"2 processes ({strategy}" in err
    assert_same_weights(trained(run), trained(one.run_dir))
    assert losses(run) == pytest.approx(losses(one.run_dir), abs=1e-5)
    if ewc:  # the penalty was there (0 at step 1, the adapter starts at zero) and is the same as one process's
        penalties = [m["ewc_penalty"] for m in RunDir(run).read_metrics() if "loss" in m]
        assert penalties[-1] > 0
        assert penalties == pytest.approx([m["ewc_penalty"] for m in RunDir(one.run_dir).read_metrics() if "loss" in m],
                                          rel=1e-4, abs=1e-9)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["processes"] == 2
    # rank 0 alone writes: one record per step, and one run in the index
    assert [m["step"] for m in RunDir(run).read_metrics() if "loss" in m] == list(range(1, 7))
    if method == "lora":  # the gathered adapter is an ordinary PEFT adapter
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), run / "adapter")
        assert sum("lora_" in n for n, _ in model.named_parameters()) == len(trained(run))


def test_fp16_loss_scaling_agrees_over_processes(tiny_model_dir, chat_file, tmp_path):
    """fp16 autocast under fsdp2: the sharded loss scaler agrees on overflow over both processes, so they skip the
    same steps with the same scales as one process does; the losses and weights match one process's to fp16's
    rounding of differently shaped matmuls (each process multiplies half the rows). With autocast's weight-cast
    cache on, FSDP2's re-gathered weights were served stale casts in the second micro-batch: 1.1% off by step 6."""
    # started at 2^18 the first steps' gradients overflow fp16 (the tiny model's overflow at 2^16 sometimes)
    extra = {**SETTINGS, "training.autocast": "fp16", "training.fp16_initial_scale": 2.0**18}
    one = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "one", **extra))
    code, err = finish(launch(*tiny_overrides(tiny_model_dir, chat_file, tmp_path / "two", **extra)))
    assert code == 0, err
    run = only_run(tmp_path / "two")

    def steps(path):
        return [(m["loss_scale"], m["skipped_step"]) for m in RunDir(path).read_metrics() if "loss" in m]

    assert steps(run) == steps(one.run_dir)
    skipped = [skipped for _, skipped in steps(run)]
    assert 1.0 in skipped and skipped.count(0.0) >= 2, skipped  # overflows found and agreed on; then it trained
    assert losses(run) == pytest.approx(losses(one.run_dir), rel=1e-3)
    assert_same_weights(trained(run), trained(one.run_dir), tol=1e-3)


def worker_pids(launcher: int) -> dict[int, int]:
    """rank -> pid of torchrun's workers (the launcher became torchrun: same pid)."""
    ranks = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != launcher:
                continue
            env = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        for entry in env:
            if entry.startswith(b"RANK="):
                ranks[int(entry[5:])] = int(stat.parent.name)
    return ranks


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training ended before {path} appeared: {proc.communicate()[1][-3000:]}")
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"{path} did not appear in {timeout}s")
        time.sleep(0.02)


LONG = {**SETTINGS, "training.max_steps": 120, "training.checkpoint_every": 2, "training.keep_checkpoints": 100}


def test_sigterm_on_one_rank_stops_all_and_resumes_exactly_on_one_process_then_two(tiny_model_dir, chat_file, tmp_path):
    reference = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "ref", **LONG))

    runs = tmp_path / "runs"
    proc = launch(*tiny_overrides(tiny_model_dir, chat_file, runs, **LONG))
    wait_for(runs, proc)
    run = only_run(runs)
    wait_for(run / "checkpoints" / "step-000002", proc)
    os.kill(worker_pids(proc.pid)[1], signal.SIGTERM)  # a preemption notice that reached rank 1 only
    code, err = finish(proc)
    assert code != 0
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "preempted", err
    stopped = info["stopped_at_step"]
    assert 2 <= stopped < 120
    assert err.count("Resume with: leantune train --resume") == 1  # said once, by rank 0
    saved = run / "checkpoints" / f"step-{stopped:06d}"
    assert (saved / "dcp" / ".metadata").is_file() and (saved / "progress.json").is_file()
    assert not list((run / "checkpoints").glob(".*partial"))

    # resume the 2-process checkpoint on 1 process, stopping it again later with SIGTERM, then finish on 2
    one = subprocess.Popen([sys.executable, "-m", "leantune", "train", "--resume", str(run)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for(run / "checkpoints" / f"step-{(stopped // 2 + 2) * 2:06d}", one)  # checkpoint_every=2
    one.send_signal(signal.SIGTERM)
    code, err = finish(one)
    assert code == 128 + signal.SIGTERM, err
    assert f"resumed from {saved}" in err.replace("\n", "")
    later = json.loads((run / "run.json").read_text())["stopped_at_step"]
    assert (run / "checkpoints" / f"step-{later:06d}" / "trainable.safetensors").is_file()

    code, err = finish(launch("--resume", str(run)))
    assert code == 0, err
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    assert_same_weights(trained(run), trained(reference.run_dir))
    assert losses(run) == pytest.approx(losses(reference.run_dir), abs=1e-5)


def test_what_several_processes_cannot_train_is_refused_before_launch(tiny_model_dir, chat_file, tmp_path):
    proc = launch(*tiny_overrides(tiny_model_dir, chat_file, tmp_path / "runs", **{"method.name": "adalora"}))
    code, err = finish(proc, timeout=120)
    assert code == 2
    assert "method.name=adalora does not train on several processes" in err
    assert not (tmp_path / "runs").exists()


def test_dpo_on_two_processes_matches_one_and_rank_0_evaluates_what_it_saved(tiny_model_dir, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Please summarise message {i}.", "chosen": f"Sure: message {i} "
                                         "is about a meeting.", "rejected": "No."}) + "\n" for i in range(48)))
    extra = {**SETTINGS, "objective.name": "dpo", "objective.beta": 0.1, "training.lr": 1e-3,
             "training.micro_batch_size": 3, "training.eval_every": 3}  # 3 pairs per micro-batch: 2 + 1 per rank
    # (at lr 5e-3 the loss reaches 1e-12 in 6 steps, and Adam turns the rounding of such tiny gradients - losses
    # equal to 1e-8 - into 1e-4 weight differences; at 1e-3 the comparison measures the sharding, not the rounding)
    one = train(None, tiny_overrides(tiny_model_dir, pairs, tmp_path / "one", **extra))
    code, err = finish(launch(*tiny_overrides(tiny_model_dir, pairs, tmp_path / "two",
                                              **{**extra, "eval.after_train": True, "eval.min_items": 4})))
    assert code == 0, err
    run = only_run(tmp_path / "two")
    metrics = RunDir(run).read_metrics()
    reference = RunDir(one.run_dir).read_metrics()
    assert_same_weights(trained(run), trained(one.run_dir))
    for key in ("loss", "eval_loss"):
        assert [m[key] for m in metrics if key in m] == pytest.approx([m[key] for m in reference if key in m], abs=1e-5)
    assert (run / "eval.json").is_file()  # rank 0 evaluated the adapter it saved, loaded back whole


def test_release_memory_gives_freed_blocks_back():
    """glibc raises its mmap threshold when a large mmapped block is freed, so the next megabyte-sized blocks come
    from its heap (kept after they are freed); with training.release_memory they stay mmapped (unmapped when freed).
    Read from glibc's own chunk header: the IS_MMAPPED bit (0x2) of the size word before the pointer."""
    code = ("import ctypes, sys\nfrom leantune.training.allocator import release_freed_memory\n"
            "libc = ctypes.CDLL('libc.so.6')\nlibc.malloc.restype = ctypes.c_void_p\n"
            "libc.free.argtypes = [ctypes.c_void_p]\n"
            "if sys.argv[1] == 'release':\n    assert release_freed_memory()\n"
            "libc.free(libc.malloc(16 * 2**20))\n"  # a freed 16 MiB block: the default threshold rises to 16 MiB
            "block = libc.malloc(2**20)\n"
            "print(bool(ctypes.c_size_t.from_address(block - ctypes.sizeof(ctypes.c_size_t)).value & 2))")
    mmapped = {}
    for mode in ("default", "release"):
        done = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        mmapped[mode] = done.stdout.split()[-1] == "True"
    assert mmapped == {"default": False, "release": True}
