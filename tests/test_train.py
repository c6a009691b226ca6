import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from leantune.errors import ConfigError, RunDirError
from leantune.runs.rundir import RunDir
from leantune import train


def losses(run_dir) -> list[float]:
    return [m["loss"] for m in RunDir(Path(run_dir)).read_metrics() if "loss" in m]


def test_run_directory_holds_everything(tiny_model_dir, chat_file, tmp_path):
    result = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "runs"))
    run = Path(result.run_dir)
    for name in ("config.yaml", "metrics.jsonl", "run.json", "report.md", "loss.png", "adapter/adapter_config.json"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000008", "step-000012"]  # keep 2
    records = RunDir(run).read_metrics()
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert {"lr", "tokens", "tokens_per_s", "peak_memory_mb", "elapsed_s", "cost_usd"} <= set(steps[0])
    assert records[-1]["eval_loss"] == pytest.approx(result.eval_loss)
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    assert "| eval loss |" in (run / "report.md").read_text()


def test_training_learns_the_task(tiny_model_dir, chat_file, tmp_path):
    result = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "runs", **{"training.max_steps": 40, "training.lr": 2e-2}))
    seen = losses(result.run_dir)
    assert sum(seen[-5:]) / 5 < 0.5 * sum(seen[:5]) / 5


def test_saved_adapter_loads_with_peft_and_gives_the_same_logits(tiny_model_dir, chat_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "runs"))
    # on the trained model's device and dtype (bf16 on a GPU): the same test passes there (an H100 found it CPU-only)
    device, dtype = next(result.model.parameters()).device, result.model.get_base_model().dtype
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype).to(device)
    reloaded = PeftModel.from_pretrained(base, Path(result.run_dir) / "adapter")
    ids = torch.tensor([[5, 17, 42, 99, 3]], device=device)
    result.model.eval()
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, result.model(input_ids=ids).logits)
    with torch.no_grad(), result.model.disable_adapter():
        base_logits = result.model(input_ids=ids).logits
    assert not torch.allclose(base_logits, reloaded(input_ids=ids).logits)  # the adapter changed something


def test_gradient_accumulation_matches_one_big_batch(tiny_model_dir, chat_file, tmp_path):
    common = {"method.dropout": 0.0, "training.max_steps": 4, "training.max_grad_norm": "null"}
    big = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "a", **common, **{"training.micro_batch_size": 8}))
    accum = train(None, tiny_overrides(
        tiny_model_dir, chat_file, tmp_path / "b", **common, **{"training.micro_batch_size": 2, "training.grad_accum": 4}
    ))
    assert losses(big.run_dir) == pytest.approx(losses(accum.run_dir), rel=1e-4)


def test_gradient_checkpointing_gives_the_same_losses(tiny_model_dir, chat_file, tmp_path):
    common = {"method.dropout": 0.0, "training.max_steps": 3}
    plain = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "a", **common))
    checkpointed = train(None, tiny_overrides(
        tiny_model_dir, chat_file, tmp_path / "b", **common, **{"training.gradient_checkpointing": "true"}
    ))
    assert any(getattr(m, "gradient_checkpointing", False) for m in checkpointed.model.modules())
    assert losses(plain.run_dir) == pytest.approx(losses(checkpointed.run_dir), rel=1e-5)


def cli(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "leantune.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"}, **kwargs,
    )


def wait_for(path: Path, proc, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training ended before {path} appeared: {proc.communicate()}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear in {timeout}s")
        time.sleep(0.02)


def only_run(runs: Path) -> Path:
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    return run


LONG = {"training.max_steps": 60, "training.checkpoint_every": 10}


def test_resume_after_a_kill_continues_the_exact_loss_sequence(tiny_model_dir, chat_file, tmp_path):
    reference = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "ref", **LONG))

    runs = tmp_path / "killed"
    proc = cli("train", *tiny_overrides(tiny_model_dir, chat_file, runs, **LONG))
    wait_for(runs, proc)
    wait_for(only_run(runs) / "checkpoints" / "step-000020", proc)
    proc.send_signal(signal.SIGKILL)  # a crash: no chance to clean up
    proc.wait()
    run = only_run(runs)
    assert not (run / "adapter").exists()
    billed_before = max(m["billed_s"] for m in RunDir(run).read_metrics() if "billed_s" in m)

    resumed = cli("train", "--resume", str(run))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resumed from" in err
    assert losses(run) == losses(reference.run_dir)  # exactly, not approximately
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed"
    # the killed process's time stays billed (its steps past the checkpoint too), and the new one's is added
    assert info["billed"]["seconds"] > billed_before + 1.0  # the second process's imports alone take longer
    with pytest.raises(RunDirError, match="already completed"):
        train(resume=run)
    # `leantune train` restarted itself with TCMalloc preloaded (training.allocator=auto): mapped into the process
    from leantune.training.allocator import find_allocator

    if find_allocator() is None:
        pytest.skip("TCMalloc is not installed (`make tcmalloc`); the rest of this test passed")
    assert info["allocator"] == "tcmalloc"
    assert "memory allocator: tcmalloc" in err and "tcmalloc: large alloc" not in err


def test_sigterm_checkpoints_prints_the_resume_command_and_exits_nonzero(tiny_model_dir, chat_file, tmp_path):
    runs = tmp_path / "runs"
    proc = cli("train", *tiny_overrides(tiny_model_dir, chat_file, runs, **{"training.max_steps": 400, "training.checkpoint_every": 1000}))
    wait_for(runs, proc)
    run = only_run(runs)
    wait_for(run / "metrics.jsonl", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert f"leantune train --resume {run}" in " ".join(err.split())
    checkpoints = list((run / "checkpoints").glob("step-*"))
    assert len(checkpoints) == 1
    stopped_at = json.loads((run / "run.json").read_text())
    assert stopped_at["status"] == "preempted" and checkpoints[0].name == f"step-{stopped_at['stopped_at_step']:06d}"


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(RunDirError, match="not a leantune run"):
        train(resume=tmp_path)
    with pytest.raises(RunDirError, match="not a directory"):
        train(resume=tmp_path / "missing")


def test_resume_refuses_a_new_config(tmp_path):
    with pytest.raises(ConfigError, match="--resume continues a run"):
        train(None, ["training.lr=1"], resume=tmp_path)


def test_target_modules_that_match_nothing(tiny_model_dir, chat_file, tmp_path):
    with pytest.raises(ConfigError, match="matches no layer.*q_proj"):
        train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "runs", **{"method.target_modules": "[attn_qkv]"}))


def test_budget_stops_at_a_step_boundary_with_a_checkpoint(tiny_model_dir, chat_file, tmp_path):
    from leantune.training.signals import BudgetReached

    # $36/h is a cent a second: 2 cents last a few dozen tiny-model steps of the 2000
    overrides = tiny_overrides(tiny_model_dir, chat_file, tmp_path / "runs", **{
        "training.max_steps": 2000, "training.checkpoint_every": 5000, "cost.usd_per_hour": 36, "cost.budget_usd": 0.02})
    with pytest.raises(BudgetReached, match="next step with the final evaluation and save would pass cost.budget_usd") as e:
        train(None, overrides)
    run = only_run(tmp_path / "runs")
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "stopped-by-budget" and info["stopped_at_step"] < 2000
    assert Path(e.value.checkpoint).name == f"step-{info['stopped_at_step']:06d}"
    last = [m for m in RunDir(run).read_metrics() if "loss" in m][-1]
    assert last["cost_usd"] <= 0.02 and last["projected_cost_usd"] > 0.02


def test_a_run_predicted_not_to_fit_is_refused_unless_forced(tiny_model_dir, chat_file, tmp_path):
    from leantune.errors import PlanError

    overrides = tiny_overrides(tiny_model_dir, chat_file, tmp_path / "runs", **{"hardware.memory_gib": 0.01, "training.max_steps": 2})
    with pytest.raises(PlanError, match=r"predicts .* GiB at peak, more than hardware.memory_gib=0.01"):
        train(None, overrides)
    result = train(None, overrides[:-1] + ["training.max_steps=2"], force=True)
    plan = json.loads((Path(result.run_dir) / "plan.json").read_text())
    assert plan["memory_gib"]["total"] > 0.01 and plan["setup"]["method"] == "lora"


def test_packing_trains_exactly_like_padding_in_fewer_token_slots(tiny_model_dir, chat_file, tmp_path):
    """The packing lever: each micro-batch's examples share one row (attention example by example), or rows of up to
    max_seq_len under a mask, instead of padding to the longest, so the losses of every step (and the eval loss)
    are the unpacked run's up to float rounding."""
    from io import StringIO

    from rich.console import Console

    common = {"training.max_steps": 6, "method.dropout": 0.0, "data.max_seq_len": 48}
    logs, runs = {}, {}
    for name, extra in (("one_row", {}), ("rows", {"training.segment_attention": "false"}), ("padded", {"data.packing": "false"})):
        logs[name] = StringIO()
        runs[name] = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / name, **common, **extra),
                           console=Console(file=logs[name], width=200))
    assert "packing: each micro-batch's 4 examples in one row, attention example by example" in logs["one_row"].getvalue()
    assert "packing: each micro-batch's 4 examples packed into rows of <= 48 tokens" in logs["rows"].getvalue()

    def losses(run):
        return [json.loads(line)["loss"] for line in (run.run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]

    for name in ("one_row", "rows"):
        assert losses(runs[name]) == pytest.approx(losses(runs["padded"]), rel=1e-4)
        assert runs[name].eval_loss == pytest.approx(runs["padded"].eval_loss, rel=1e-4)


def test_torch_compile_lever_keeps_the_losses(tiny_model_dir, chat_file, tmp_path, monkeypatch):
    """training.compile compiles the decoder in place (inductor on CPU): same losses, same adapter names."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    common = {"training.max_steps": 3, "method.dropout": 0.0}
    compiled = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "c", **common, **{"training.compile": "true"}))
    plain = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "p", **common))

    def losses(run):
        return [json.loads(line)["loss"] for line in (run.run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]

    assert losses(compiled) == pytest.approx(losses(plain), rel=1e-4)
    from safetensors.torch import load_file

    assert load_file(compiled.run_dir / "adapter" / "adapter_model.safetensors").keys() == \
        load_file(plain.run_dir / "adapter" / "adapter_model.safetensors").keys()
    # Inductor's caches went under LEANTUNE_HOME (not /tmp), where a later run finds them (bench/compile_cache.py)
    import os
    from pathlib import Path

    cache = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    assert cache == Path(os.environ["LEANTUNE_HOME"]) / "inductor" and any(cache.rglob("*.py"))


def test_activation_offloading_moves_saved_tensors_and_keeps_the_losses(tiny_model_dir, chat_file, tmp_path, monkeypatch):
    """training.activation_offload runs each step under torch's save_on_cpu hooks: every tensor saved for backward
    goes through them (counted here), with and without checkpointing, and the losses are those of a plain run."""
    packed = []

    class CountingSaveOnCpu(torch.autograd.graph.save_on_cpu):
        def __init__(self, pin_memory=False, device_type="cuda"):
            super().__init__(pin_memory=pin_memory, device_type=device_type)
            pack = self.pack_hook
            self.pack_hook = lambda t: packed.append(t.numel()) or pack(t)

    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", CountingSaveOnCpu)
    common = {"method.dropout": 0.0, "training.max_steps": 3}
    plain = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "a", **common))
    assert not packed
    offloaded = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "b", **common,
                                           **{"training.activation_offload": "true"}))
    assert packed
    assert losses(plain.run_dir) == pytest.approx(losses(offloaded.run_dir), rel=1e-5)
    both = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "c", **common,
                                      **{"training.activation_offload": "true", "training.gradient_checkpointing": "true"}))
    assert losses(plain.run_dir) == pytest.approx(losses(both.run_dir), rel=1e-5)
    # the same experiment: where saved tensors wait does not change the fingerprint
    from leantune.config import load_config
    from leantune.runs.fingerprint import result_fields
    fields = result_fields(load_config(offloaded.run_dir / "config.yaml"))
    assert "training.gradient_checkpointing" in fields and "training.activation_offload" not in fields


def test_bf16_autocast_keeps_float32_weights_and_is_a_different_experiment(tiny_model_dir, chat_file, tmp_path):
    """training.autocast=bf16 on a CPU: the step's matmuls run in bf16 (its losses are not float32's) while the
    weights, the adapter and its updates stay float32; run.json records it and the fingerprint tells the two apart."""
    import json

    from leantune.config import load_config
    from leantune.runs.fingerprint import config_fingerprint

    common = {"method.dropout": 0.0, "training.max_steps": 3}
    plain = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "a", **common))
    cast = train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "b", **common, **{"training.autocast": "bf16"}))
    info = json.loads((cast.run_dir / "run.json").read_text())
    assert info["autocast"] == "bfloat16" and info["dtype"] == "float32"
    assert json.loads((plain.run_dir / "run.json").read_text())["autocast"] is None
    assert all(p.dtype == torch.float32 for p in cast.model.parameters())
    a, b = losses(plain.run_dir), losses(cast.run_dir)
    assert a[0] == pytest.approx(b[0], rel=2e-2) and a != b  # the same model, computed in another precision
    assert config_fingerprint(load_config(plain.run_dir / "config.yaml")) != config_fingerprint(load_config(cast.run_dir / "config.yaml"))


def test_fp16_autocast_scales_the_loss_skips_overflowed_steps_and_resumes_exactly(tiny_model_dir, chat_file, tmp_path):
    """training.autocast=fp16 (what a T4 or V100 gets by default): the step's matmuls in fp16, weights and updates in
    float32, every backward through the loss scaler. A step whose gradients overflow fp16 at the starting scale (2^16)
    is skipped with the scale halved, and training proceeds; the scaler's state is in the checkpoint, so a run
    that crashed after step 3 resumes into exactly the uninterrupted run's losses and scales."""
    import shutil

    overrides = tiny_overrides(tiny_model_dir, chat_file, tmp_path / "ref", **{
        "training.autocast": "fp16", "method.dropout": 0.0, "training.max_steps": 6, "training.checkpoint_every": 3,
        "training.lr": 1e-2})
    reference = train(None, overrides)
    info = json.loads((reference.run_dir / "run.json").read_text())
    assert info["autocast"] == "float16" and info["dtype"] == "float32"
    assert all(p.dtype == torch.float32 for p in reference.model.parameters())
    steps = [m for m in RunDir(reference.run_dir).read_metrics() if "loss" in m]
    scales = [m["loss_scale"] for m in steps]
    skipped = [m["skipped_step"] for m in steps]
    assert 1.0 in skipped and skipped.count(0.0) >= 4, skipped  # here: step 3 overflowed at 2^16
    previous = [65536.0] + scales[:-1]
    assert all(scale == (before / 2 if skip else before) for before, scale, skip in zip(previous, scales, skipped))
    adapter = reference.run_dir / "adapter" / "adapter_model.safetensors"
    assert adapter.is_file()
    from safetensors.torch import load_file

    assert any(t.abs().sum() > 0 for k, t in load_file(adapter).items() if "lora_B" in k)  # the kept steps trained

    # a crash after the step-3 checkpoint: the copy has no step-6 checkpoint, no adapter and is not completed
    crashed = tmp_path / "crashed" / reference.run_dir.name
    shutil.copytree(reference.run_dir, crashed)
    shutil.rmtree(crashed / "checkpoints" / "step-000006")
    shutil.rmtree(crashed / "adapter")
    state = json.loads((crashed / "run.json").read_text())
    (crashed / "run.json").write_text(json.dumps({**state, "status": "failed"}))
    train(resume=crashed)
    again = [m for m in RunDir(crashed).read_metrics() if "loss" in m]
    assert [m["loss"] for m in again] == [m["loss"] for m in steps]
    assert [m["loss_scale"] for m in again] == scales


def test_allocator_choice_falls_back_to_the_c_library_and_says_so(tmp_path, monkeypatch):
    """training.allocator=system never restarts; auto without TCMalloc installed keeps glibc, once, and the run's
    log says what that costs; a process that was not restarted reports what is really mapped into it."""
    from leantune.cli.common import running_as_program
    from leantune.training import allocator

    # a caller of main() from Python (tests/test_cli.py does) is never replaced by an exec
    assert not running_as_program()
    monkeypatch.delenv(allocator.CHOSEN_ENV, raising=False)
    monkeypatch.setattr(allocator.os, "execve", lambda *a: pytest.fail("restarted"))
    allocator.preload_and_restart("system")
    assert allocator.CHOSEN_ENV not in os.environ
    assert allocator.allocator_note("system", "cpu", "system") is None
    allocator.preload_and_restart("auto", dirs=(str(tmp_path),))  # nothing installed there
    assert os.environ[allocator.CHOSEN_ENV] == "system"
    assert "no TCMalloc found" in allocator.allocator_note("auto", "cpu", "system")
    assert allocator.allocator_note("auto", "cuda", "system") is None
    assert allocator.running_allocator() == "system"  # this pytest process was started without a preload
    (tmp_path / "libtcmalloc_minimal.so.4").write_bytes(b"")
    assert allocator.find_allocator((str(tmp_path),)) == ("tcmalloc", tmp_path / "libtcmalloc_minimal.so.4")
