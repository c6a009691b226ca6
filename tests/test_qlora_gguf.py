"""QLoRA over a GGUF file's own blocks: the de-quantisation is gguf's, bit for bit; training over the blocks is
training LoRA over the converted float weights (same losses, same adapter), with the weights at the file's size."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_overrides
from test_cli import assert_user_error, run_cli

from leantune.models.gguf_linear import BYTES, GGUFLinear, dequantize
from leantune.training.api import train


@pytest.mark.parametrize("kind", sorted(BYTES))
def test_dequantize_matches_gguf_bit_for_bit(kind):
    import gguf

    rng = np.random.default_rng(0)
    weights = (rng.standard_normal((6, 128)) * rng.uniform(0.01, 3, (6, 1))).astype(np.float32)
    blocks = gguf.quants.quantize(weights, gguf.GGMLQuantizationType[kind])
    expected = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[kind])
    got = dequantize(torch.from_numpy(blocks.copy()).reshape(6, 128 // 32, BYTES[kind]), kind)
    assert torch.equal(got, torch.from_numpy(expected))


@pytest.fixture(scope="module")
def gguf_base(tiny_model_dir, tmp_path_factory):
    """The tiny model written as a Q4_1 GGUF (the bundled model's type), then loaded as a base from that file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from leantune.export.gguf_model import write_gguf

    path = tmp_path_factory.mktemp("gguf") / "tiny.Q4_1.gguf"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    write_gguf(model, AutoTokenizer.from_pretrained(tiny_model_dir), path, "q4_1", "tiny", hf_dir=tiny_model_dir)
    return path


def test_training_over_the_blocks_is_lora_over_the_converted_weights(gguf_base, chat_file, tmp_path, monkeypatch):
    monkeypatch.setenv("LEANTUNE_HOME", str(tmp_path / "home"))
    results = {}
    for method in ("lora", "qlora-gguf"):
        overrides = tiny_overrides(gguf_base, chat_file, tmp_path / "runs", **{"method.name": method,
                                                                               "output.name": method,
                                                                               "training.max_steps": 6,
                                                                               "method.dropout": 0.0})
        results[method] = train(None, overrides)
    losses = {m: [json.loads(line)["loss"] for line in (r.run_dir / "metrics.jsonl").read_text().splitlines()
                  if '"loss"' in line] for m, r in results.items()}
    assert len(losses["lora"]) == 6
    np.testing.assert_allclose(losses["qlora-gguf"], losses["lora"], rtol=1e-5)
    info = json.loads((results["qlora-gguf"].run_dir / "run.json").read_text())
    assert info["quantized_bytes_per_param"] == pytest.approx(20 / 32)  # Q4_1: 20 bytes per 32 weights
    assert info["gguf_layers"] == {"Q4_1": 2 * 7}
    layers = [m for m in results["qlora-gguf"].model.modules() if isinstance(m, GGUFLinear)]
    assert len(layers) == 14 and all(m.weight.dtype == torch.uint8 for m in layers)


def test_qlora_gguf_on_an_hf_base_is_refused(tiny_model_dir, chat_file, tmp_path, monkeypatch, capsys):
    args = tiny_overrides(tiny_model_dir, chat_file, tmp_path / "runs", **{"method.name": "qlora-gguf"})
    code, _, err = run_cli(monkeypatch, capsys, "train", *args)
    assert_user_error(code, err, "did not come from one")


def test_qlora_gguf_refuses_a_non_llama_gguf(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from leantune.errors import UserError
    from leantune.models.gguf_linear import swap_in_blocks

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(UserError, match="reads llama-architecture GGUF files; this base is gpt2"):
        swap_in_blocks(model, tmp_path / "never-read.gguf")
