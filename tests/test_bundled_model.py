"""End to end on the real bundled SmolLM2-135M-Instruct (slow: the GGUF conversion alone is ~25 s)."""

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Convert the bundled GGUF into a fresh cache and keep the GGUF-loaded model for comparison."""
    from leantune.models.loading import bundled_gguf_path, convert_gguf

    target = tmp_path_factory.mktemp("home") / "smollm2"
    gguf_model = convert_gguf(bundled_gguf_path("smollm2-135m"), target)
    return target, gguf_model


def test_cached_copy_gives_the_same_logits_as_the_gguf_load(converted):
    from transformers import AutoModelForCausalLM

    target, gguf_model = converted
    cached = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    assert sum(p.numel() for p in cached.parameters()) == 134_515_008
    ids = torch.tensor([[1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2]])
    with torch.no_grad():
        torch.testing.assert_close(cached(input_ids=ids).logits, gguf_model(input_ids=ids).logits, rtol=0, atol=0)


def test_the_bundled_model_knows_things(converted):
    from leantune.generate import generate_reply
    from transformers import AutoTokenizer

    target, gguf_model = converted
    tokenizer = AutoTokenizer.from_pretrained(target)
    reply = generate_reply(gguf_model, tokenizer, "What is the capital of France?", max_new_tokens=20)
    assert "Paris" in reply


def test_train_then_generate_on_the_real_model(monkeypatch, tmp_path, converted):
    """A few real LoRA steps from the CLI's library entry point, then a reply from the run directory."""
    from leantune.generate import generate
    from leantune import train

    target, _ = converted
    result = train(None, [
        f"model.base={target}", "model.dtype=float32", "data.train=sms-spam", "data.eval_size=8", "data.max_train_examples=24",
        "training.max_steps=3", "training.micro_batch_size=4", "training.checkpoint_every=2", f"output.runs_dir={tmp_path}",
    ])
    run = Path(result.run_dir)
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert result.steps == 3 and result.eval_loss is not None
    reply = generate(str(run), "Is this SMS spam or ham?\n\nHi, are we still on for lunch?", max_new_tokens=8)
    assert isinstance(reply, str) and reply
