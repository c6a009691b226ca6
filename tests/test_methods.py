"""Each fine-tuning method really trains what it claims to, on the tiny model."""

import json

import pytest
import torch

from conftest import tiny_overrides
from leantune.config import load_config
from leantune.errors import ConfigError
from leantune import train

try:
    import bitsandbytes  # noqa: F401

    HAS_BNB = True
except ImportError:
    HAS_BNB = False


def losses(run_dir):
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def run(tiny_model_dir, chat_file, tmp_path, method, **extra):
    values = {"method.name": method, "training.max_steps": 16, "method.dropout": 0.0, **extra}
    return train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / method, **values))


@pytest.mark.parametrize("method", ["lora", "dora", "full", "adalora",
                                    pytest.param("qlora", marks=pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes"))])
def test_every_method_learns(tiny_model_dir, chat_file, tmp_path, method):
    result = run(tiny_model_dir, chat_file, tmp_path, method, **({"training.lr": 2e-2} if method == "adalora" else {}))
    curve = losses(result.run_dir)
    assert len(curve) == 16 and sum(curve[-4:]) / 4 < 0.7 * sum(curve[:4]) / 4, curve
    saved = result.run_dir / ("model" if method == "full" else "adapter")
    assert saved.is_dir() and any(saved.iterdir())


def test_dora_adds_a_magnitude_vector_and_rslora_changes_the_scale(tiny_model_dir, chat_file, tmp_path):
    dora = run(tiny_model_dir, chat_file, tmp_path, "dora", **{"training.max_steps": 1})
    assert any("lora_magnitude_vector" in n for n, _ in dora.model.named_parameters())
    rs = run(tiny_model_dir, chat_file, tmp_path / "rs", "lora", **{"training.max_steps": 1, "method.rslora": "true",
                                                                    "method.r": 4, "method.alpha": 8})
    layer = next(m for m in rs.model.modules() if hasattr(m, "scaling") and isinstance(m.scaling, dict) and m.scaling)
    assert layer.scaling["default"] == pytest.approx(8 / 4**0.5)


def test_adalora_prunes_ranks_and_logs_the_budget(tiny_model_dir, chat_file, tmp_path):
    result = run(tiny_model_dir, chat_file, tmp_path, "adalora", **{
        "training.max_steps": 20, "method.r": 6, "method.target_r": 2, "method.tinit": 0.1, "method.tfinal": 0.2,
        "training.lr": 2e-2})
    snapshots = [json.loads(line) for line in (result.run_dir / "adalora_ranks.jsonl").read_text().splitlines()]
    first, last = snapshots[0]["ranks"], snapshots[-1]["ranks"]
    layers = len(first)
    assert layers > 4 and sum(first.values()) == 6 * layers  # every layer starts at the initial rank
    assert sum(last.values()) <= 2 * layers < sum(first.values())  # pruned to the target budget
    assert len(set(last.values())) > 1  # and reallocated unevenly, not cut uniformly
    budget = [r["rank_budget"] for r in map(json.loads, (result.run_dir / "metrics.jsonl").read_text().splitlines())
              if "rank_budget" in r]
    assert budget[0] == 6 * layers and budget[-1] == sum(last.values()) and budget == sorted(budget, reverse=True)


def test_adalora_target_rank_above_initial_rank_is_refused():
    with pytest.raises(ConfigError, match=r"target_r=8 must be at most method.r=4"):
        load_config(None, ["method.name=adalora", "method.r=4", "method.target_r=8"])


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes")
def test_qlora_keeps_the_base_in_4_bit(tiny_model_dir, chat_file, tmp_path):
    import bitsandbytes as bnb

    result = run(tiny_model_dir, chat_file, tmp_path, "qlora", **{"training.max_steps": 2})
    quantised = [m for m in result.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantised and all(m.weight.dtype == torch.uint8 and not m.weight.requires_grad for m in quantised)
    info = json.loads((result.run_dir / "run.json").read_text())
    assert 0.5 <= info["quantized_bytes_per_param"] < 1.0  # 4 bits + block statistics (large share on tiny layers)


def packed_4bit(model) -> dict:
    import bitsandbytes as bnb

    return {n: m.weight.data.clone() for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes")
def test_a_qlora_run_is_served_over_the_same_4bit_base_it_trained_on(tiny_model_dir, chat_file, tmp_path):
    """The served model's logits are the trained model's: same NF4 base, same fp32 norms, same adapter."""
    from leantune.generate import load_for_inference

    result = run(tiny_model_dir, chat_file, tmp_path, "qlora", **{"training.max_steps": 3, "training.lr": 2e-2})
    ids = result.tokenizer("Is message 3 spam? spam", return_tensors="pt")["input_ids"]
    result.model.eval()
    with torch.no_grad():
        trained = result.model(input_ids=ids).logits
        served, _ = load_for_inference(str(result.run_dir))
        torch.testing.assert_close(served(input_ids=ids).logits, trained, atol=1e-6, rtol=0)


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes")
def test_a_qlora_base_is_quantised_again_from_the_dtype_the_run_loaded_it_in(tiny_model_dir, chat_file, tmp_path):
    """bitsandbytes quantises the weights as loaded: a bf16-loaded base gives other 4-bit weights than an fp32 one,
    so a run trained over the bf16 one is served over the bf16 one, on any device."""
    from leantune.generate import load_for_inference
    from leantune.models.loading import load_base

    result = run(tiny_model_dir, chat_file, tmp_path, "qlora", **{"training.max_steps": 2, "model.dtype": "bfloat16"})
    assert json.loads((result.run_dir / "run.json").read_text())["dtype"] == "bfloat16"
    trained = packed_4bit(result.model)
    served = packed_4bit(load_for_inference(str(result.run_dir))[0])
    assert served.keys() == trained.keys() and all(torch.equal(served[k], trained[k]) for k in trained)
    from_fp32 = packed_4bit(load_base(str(tiny_model_dir), "float32", "cpu", quantize_4bit=True).model)
    assert any(not torch.equal(a, b) for a, b in zip(from_fp32.values(), served.values()))


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes")
def test_full_fine_tuning_with_8bit_adamw(tiny_model_dir, chat_file, tmp_path):
    result = run(tiny_model_dir, chat_file, tmp_path, "full", **{"method.optimizer": "adamw8bit", "training.lr": 1e-3})
    curve = losses(result.run_dir)
    assert curve[-1] < curve[0]
    from leantune.generate import load_for_inference

    model, tokenizer = load_for_inference(str(result.run_dir))
    trained = dict(result.model.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, trained[name].detach())


def test_a_method_without_its_library_fails_before_loading_the_model(tiny_model_dir, chat_file, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_bnb(name, *args, **kwargs):
        if name.startswith("bitsandbytes"):
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    import leantune.training.recipe as recipe

    monkeypatch.setattr(recipe, "load_base", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match=r"method.name=qlora .* needs bitsandbytes.* use method.name=lora"):
        run(tiny_model_dir, chat_file, tmp_path, "qlora")


class Crash(Exception):
    pass


@pytest.mark.parametrize("method", ["adalora", "dora", "full"])
def test_a_crashed_run_resumes_to_the_same_losses(tiny_model_dir, chat_file, tmp_path, monkeypatch, method):
    """Everything a method keeps outside the weights (AdaLoRA's importance statistics and rank pattern, DoRA's
    magnitudes, the optimizer) comes back from the checkpoint: the resumed loss sequence is the uninterrupted one."""
    values = {"method.name": method, "training.max_steps": 12, "training.checkpoint_every": 5, "method.r": 6,
              "method.target_r": 2, "training.lr": 1e-2 if method == "adalora" else 3e-3}
    reference = losses(train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "ref", **values)).run_dir)

    import leantune.training.recipe as recipe

    original = recipe.FineTuneRecipe.log_step

    def crash_after_step_7(self, *args, **kwargs):
        record = original(self, *args, **kwargs)
        if self.progress.step == 7:
            raise Crash()
        return record

    monkeypatch.setattr(recipe.FineTuneRecipe, "log_step", crash_after_step_7)
    runs = tmp_path / "crashed"
    with pytest.raises(Crash):
        train(None, tiny_overrides(tiny_model_dir, chat_file, runs, **values))
    monkeypatch.setattr(recipe.FineTuneRecipe, "log_step", original)
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    train(resume=run_dir)
    assert losses(run_dir) == reference


def test_adalora_schedule_scales_with_the_run_and_warns_when_too_short():
    from leantune.config import MethodConfig
    from leantune.training.methods.adalora import AdaLoRA

    method = AdaLoRA(MethodConfig(name="adalora", r=12, target_r=8))
    assert method.schedule(1000) == {"tinit": 100, "tfinal": 200, "deltaT": 10, "total_step": 1000}
    assert method.schedule(40)["deltaT"] == 1
    assert method.warnings(1000) == []
    (warning,) = method.warnings(24)
    assert "this run has 18 steps to cut the rank budget from r=12 to target_r=8" in warning
    assert AdaLoRA(MethodConfig(name="adalora", delta_t=7)).schedule(1000)["deltaT"] == 7


def test_full_fine_tuning_keeps_float32_weights_where_auto_would_store_bf16(monkeypatch):
    """On a bf16 GPU 'auto' stores weights in bf16; full fine-tuning's weights train, and bf16 would drop AdamW's
    small updates (it learned nothing on an H100), so they stay float32 with bf16 autocast. Frozen bases stay
    bf16, CPUs float32, and an explicit dtype is the user's."""
    from leantune.training import precision

    monkeypatch.setattr(precision, "resolve_dtype", lambda name, device: torch.bfloat16 if device == "cuda" else torch.float32)
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.weights_and_autocast("auto", "cuda", trains_base_weights=True) == ("float32", torch.bfloat16)
    assert precision.weights_and_autocast("auto", "cuda", trains_base_weights=False) == ("auto", None)
    assert precision.weights_and_autocast("auto", "cpu", trains_base_weights=True) == ("auto", None)
    assert precision.weights_and_autocast("bfloat16", "cuda", trains_base_weights=True) == ("bfloat16", None)
    # training.autocast: auto leaves a CPU in float32 even with bf16 hardware (measured: little speed, worse early
    # loss); bf16 autocasts over float32 weights (auto) or whatever dtype was named; off never autocasts
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    for trains in (True, False):
        assert precision.weights_and_autocast("auto", "cpu", trains) == ("auto", None)
        assert precision.weights_and_autocast("auto", "cpu", trains, "bf16") == ("float32", torch.bfloat16)
    assert precision.weights_and_autocast("float32", "cpu", False, "bf16") == ("float32", torch.bfloat16)
    assert precision.weights_and_autocast("auto", "cuda", True, "off") == ("auto", None)
    assert "float32" in precision.autocast_note("bf16", torch.bfloat16, "cpu")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert "several times slower" in precision.autocast_note("bf16", torch.bfloat16, "cpu")
    assert precision.autocast_note("auto", None, "cpu") is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    from leantune.errors import ConfigError

    with pytest.raises(ConfigError, match="training.autocast=bf16: this GPU has no bf16; set it to auto"):
        precision.weights_and_autocast("auto", "cuda", True, "bf16")
    # a card without bf16 (T4, V100): auto computes in fp16 under autocast with loss scaling, for every method;
    # weights that train stay float32, a frozen base is stored in fp16; an explicit dtype is the user's
    monkeypatch.setattr(precision, "resolve_dtype", lambda name, device: torch.float16 if device == "cuda" else torch.float32)
    assert precision.weights_and_autocast("auto", "cuda", True) == ("float32", torch.float16)
    assert precision.weights_and_autocast("auto", "cuda", False) == ("float16", torch.float16)
    assert precision.weights_and_autocast("float32", "cuda", False, "fp16") == ("float32", torch.float16)
    assert precision.weights_and_autocast("auto", "cpu", False, "fp16") == ("float32", torch.float16)
    assert "loss scaling" in precision.autocast_note("auto", torch.float16, "cuda")
    assert precision.LossScaling(torch.float16, "cpu").on and not precision.LossScaling(torch.bfloat16, "cpu").on
    from leantune.training.methods import make_method
    from leantune.config import MethodConfig

    assert make_method(MethodConfig(name="full")).trains_base_weights
    assert not make_method(MethodConfig(name="lora")).trains_base_weights
    with precision.autocast("cpu", torch.bfloat16):  # the context the recipe's step runs in
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
