"""leantune's one-function LoRA layer against PEFT's modules: the same outputs, losses and gradients (dropout on
and off, under bf16 autocast, through a whole model and a training run), less kept for backward, and PEFT's own
forward wherever the layer is not plain (adapters switched off, DoRA, merged). Where dropout is on, the layer is
given PEFT's way of drawing the mask (`peft_draw`), so the arithmetic is compared value for value; its own
cheaper draw is checked for its keep rate and its seeding."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from conftest import tiny_overrides
from leantune import train
from leantune.config import load_config
from leantune.models import lora_autograd
from leantune.models.lora_autograd import LeantuneLoRALinear, use_lora_autograd


def peft_draw(x, p):
    """torch's CPU dropout's mask, drawn as nn.Dropout draws it (the same random numbers for the same seed)."""
    return torch.empty_like(x).bernoulli_(1 - p).bool(), 1 - p


@pytest.fixture
def with_peft_masks(monkeypatch):
    monkeypatch.setattr(lora_autograd, "dropout_keep_mask", peft_draw)


def adapted_pair(tiny_model_dir, dropout: float, base_dtype=torch.float32, **lora):
    """Two copies of the tiny model with identical adapters (B made non-zero so every path carries gradient):
    PEFT's layers, and the same layers with leantune's forward. PEFT keeps the adapters in float32 whatever
    base_dtype is."""
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=base_dtype)
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear",
                                                task_type="CAUSAL_LM", **lora))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
        models.append(model)
    return models[0], models[1], use_lora_autograd(models[1])


def loss_and_grads(model, seed: int = 1):
    ids = torch.randint(5, 300, (3, 17), generator=torch.Generator().manual_seed(7))
    model.train()
    torch.manual_seed(seed)  # the same dropout masks for both, when both draw them the same way
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_same_loss_and_gradients_as_peft(tiny_model_dir, dropout, with_peft_masks):
    peft_model, ours, changed = adapted_pair(tiny_model_dir, dropout)
    assert changed == 14  # 7 linear layers x 2 blocks
    assert sum(isinstance(m, LeantuneLoRALinear) for m in ours.modules()) == 14
    for seed in (1, 2):
        loss_peft, grads_peft = loss_and_grads(peft_model, seed)
        loss_ours, grads_ours = loss_and_grads(ours, seed)
        assert loss_ours == pytest.approx(loss_peft, rel=1e-6)
        assert grads_ours.keys() == grads_peft.keys() and len(grads_ours) == 28
        for name, grad in grads_peft.items():
            # float rounding only: the products are summed in another order (s applied to r columns)
            torch.testing.assert_close(grads_ours[name], grad, rtol=1e-4, atol=1e-5 * grad.abs().max().item(), msg=name)
    if dropout:  # a different draw of the masks gives a different loss: the masks matched above, not vanished
        assert loss_and_grads(ours, 3)[0] != pytest.approx(loss_peft, rel=1e-6)


def test_dropout_keeps_the_share_asked_for_seeded_by_torch():
    x = torch.ones(1000, 999)
    torch.manual_seed(5)
    keep, share = lora_autograd.dropout_keep_mask(x, 0.1)
    assert keep.shape == x.shape and keep.dtype == torch.bool
    assert share == pytest.approx(0.9, abs=1 / 65536)
    assert keep.float().mean().item() == pytest.approx(share, abs=0.002)  # ~1e6 draws: sd 0.0003
    assert keep[:, -1].float().mean().item() == pytest.approx(share, abs=0.03)  # every 16-bit field is uniform
    assert keep[1::4].float().mean().item() == pytest.approx(share, abs=0.003)
    torch.manual_seed(5)
    assert torch.equal(lora_autograd.dropout_keep_mask(x, 0.1)[0], keep)
    assert not torch.equal(lora_autograd.dropout_keep_mask(x, 0.1)[0], keep)
    assert lora_autograd.dropout_keep_mask(x, 1e-7) == (None, 1.0)


def test_its_own_masks_give_dropout_s_expectation(tiny_model_dir):
    """Averaged over many draws, the layer's output with its own masks is the layer without dropout."""
    _, ours, _ = adapted_pair(tiny_model_dir, 0.3)
    layer = next(m for m in ours.modules() if isinstance(m, LeantuneLoRALinear))
    x = torch.randn(4, 64)
    layer.train()
    mean = torch.stack([layer(x) for _ in range(2000)]).mean(0)
    layer.eval()
    exact = layer(x)
    adapter_part = exact - layer.base_layer(x)
    assert (mean - exact).abs().max() < 0.1 * adapter_part.abs().max()


def test_same_under_bf16_autocast(tiny_model_dir):
    peft_model, ours, _ = adapted_pair(tiny_model_dir, 0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_peft, grads_peft = loss_and_grads(peft_model)
        loss_ours, grads_ours = loss_and_grads(ours)
    assert loss_ours == pytest.approx(loss_peft, rel=2e-3)
    for name, grad in grads_peft.items():
        assert grads_ours[name].dtype == torch.float32  # gradients land on the float32 adapter weights
        cosine = torch.nn.functional.cosine_similarity(grads_ours[name].flatten(), grad.flatten(), dim=0)
        assert cosine > 0.99, name


def saved_bytes(model):
    """What autograd keeps for backward over one training forward of the tiny model, each storage once."""
    total = 0
    seen = set()

    def pack(t):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    ids = torch.randint(5, 300, (4, 64), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids).loss.backward()
    return total


def test_keeps_less_for_backward_with_dropout(tiny_model_dir):
    """With dropout, PEFT keeps a float copy of each adapted layer's input and its float noise; leantune a byte mask."""
    peft_model, ours, _ = adapted_pair(tiny_model_dir, 0.1)
    peft_model.train(), ours.train()
    saved_peft, saved_ours = saved_bytes(peft_model), saved_bytes(ours)
    # per adapted layer and token PEFT keeps 2 x 4 bytes x d_in more, leantune 1 byte x d_in more than without dropout
    assert saved_ours < 0.8 * saved_peft, (saved_ours, saved_peft)


def test_peft_forward_where_the_layer_is_not_plain(tiny_model_dir):
    peft_model, ours, _ = adapted_pair(tiny_model_dir, 0.0)
    ids = torch.randint(5, 300, (2, 9), generator=torch.Generator().manual_seed(3))
    calls = []
    real_apply = lora_autograd.LoRALinearFunction.apply  # counted, to see which forward each layer took

    def counting(*args):
        calls.append(1)
        return real_apply(*args)

    lora_autograd.LoRALinearFunction.apply = counting
    try:
        with torch.no_grad():
            with ours.disable_adapter():  # a reference pass (DPO, EWC's Fisher): the base alone
                off = ours(input_ids=ids).logits
            assert not calls
            with peft_model.disable_adapter():
                torch.testing.assert_close(off, peft_model(input_ids=ids).logits)
            on = ours(input_ids=ids).logits
            assert len(calls) == 14
            torch.testing.assert_close(on, peft_model(input_ids=ids).logits, rtol=1e-5, atol=1e-6)
            assert not torch.allclose(on, off)
    finally:
        lora_autograd.LoRALinearFunction.apply = real_apply
    # DoRA layers keep PEFT's forward entirely
    torch.manual_seed(0)
    dora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                          LoraConfig(r=4, target_modules="all-linear", use_dora=True, task_type="CAUSAL_LM"))
    assert use_lora_autograd(dora) == 0


def test_a_training_run_has_the_same_losses_either_way(tiny_model_dir, chat_file, tmp_path, with_peft_masks):
    """Through the whole trainer (packing, dropout 0.05, the recipe's seeds): training.lora_autograd=peft and the
    default give the same losses step by step, and the adapters saved are PEFT's either way."""
    losses = {}
    for setting in ("leantune", "peft"):
        cfg = load_config(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / setting) + [
            "training.max_steps=5", "method.dropout=0.05", f"training.lora_autograd={setting}"])
        result = train(cfg, allow_duplicate=True)
        records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        losses[setting] = [r["loss"] for r in records if "loss" in r]
        assert (result.run_dir / "adapter" / "adapter_config.json").is_file()
        info = json.loads((result.run_dir / "run.json").read_text())
        assert info["lora_autograd_layers"] == (14 if setting == "leantune" else 0)
    assert len(losses["peft"]) == 5
    assert losses["leantune"] == pytest.approx(losses["peft"], rel=1e-5)


def test_float32_adapter_over_a_bf16_base_as_on_a_gpu(tiny_model_dir, with_peft_masks):
    """A LoRA run on a GPU: the frozen base in bf16, PEFT's adapter in float32, no autocast. The function takes that
    layer too (it fell back to PEFT's forward before), with PEFT's arithmetic, and keeps less for backward."""
    peft_model, ours, changed = adapted_pair(tiny_model_dir, 0.1, base_dtype=torch.bfloat16)
    assert changed == 14
    layer = next(m for m in ours.modules() if isinstance(m, LeantuneLoRALinear))
    assert layer.base_layer.weight.dtype == torch.bfloat16 and layer.lora_A["default"].weight.dtype == torch.float32
    assert layer._plain_parts(torch.zeros(1, 64, dtype=torch.bfloat16), (), {}) is not None
    called = []
    original = lora_autograd.LoRALinearFunction.apply
    lora_autograd.LoRALinearFunction.apply = lambda *a: called.append(1) or original(*a)
    try:
        loss_ours, grads_ours = loss_and_grads(ours)
    finally:
        lora_autograd.LoRALinearFunction.apply = original
    assert len(called) == 14  # every adapted layer went through the function, none through PEFT's forward
    loss_peft, grads_peft = loss_and_grads(peft_model)
    assert loss_ours == pytest.approx(loss_peft, rel=1e-3)
    assert grads_ours.keys() == grads_peft.keys() and len(grads_ours) == 28
    for name, grad in grads_peft.items():
        assert grads_ours[name].dtype == torch.float32
        # bf16 activations: the same masks and casts, summed in another order where s is applied
        cosine = torch.nn.functional.cosine_similarity(grads_ours[name].flatten(), grad.flatten(), dim=0)
        assert cosine > 0.999, (name, cosine)
    peft_model.train(), ours.train()
    assert saved_bytes(ours) < 0.7 * saved_bytes(peft_model)
