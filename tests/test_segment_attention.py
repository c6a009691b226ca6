"""A packed micro-batch as one row, attention example by example, and the examples' common prefix computed once:
the same labelled positions, losses and LoRA gradients as the padded batch (LoRA dropout 0), generation untouched,
and a clear error where the layout would be wrong."""

from __future__ import annotations

import json
import mmap
import re
import types

import pytest
import torch
from peft import LoraConfig, get_peft_model

from conftest import tiny_overrides
from leantune import train
from leantune.config import load_config
from leantune.data.batches import (SEGMENT_LENGTHS, SHARED_PREFIX, collate, epoch_order, pack_micro_batch, shared_prefix_length,
                                   shared_prefix_fraction)
from leantune.data.records import Example
from leantune.data.tokenize import IGNORE, TokenizedExample, tokenize_example
from leantune.errors import ModelError
from leantune.models.forward import summed_label_loss
from leantune.models.loading import load_base
from leantune.models.segment_attention import segment_attention, use_segment_attention, uses_segment_attention

SYSTEM = "Is the following SMS message spam or ham (not spam)? Answer with one word: spam or ham."
TEXTS = ["Free entry in a weekly competition", "Are you coming home for dinner tonight?", "Congratulations, you have won",
         "I will cook pasta", "The quick brown fox jumps over the lazy dog. What is the capital of France?", "ok thanks"]


def examples(tokenizer, texts=TEXTS):
    rows = [Example(({"role": "system", "content": SYSTEM}, {"role": "user", "content": t},
                     {"role": "assistant", "content": "spam" if i % 2 else "ham"})) for i, t in enumerate(texts)]
    return [tokenize_example(tokenizer, e) for e in rows]


def adapted(tiny_model_dir):
    torch.manual_seed(0)
    base = load_base(str(tiny_model_dir), dtype="float32")
    model = get_peft_model(base.model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                                  task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
    return model, base.tokenizer


def loss_and_grads(model, batch):
    summed, count = summed_label_loss(model, batch)
    summed.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return summed.item(), count, grads


def test_one_row_and_a_shared_prefix_give_the_padded_batchs_loss_and_gradients(tiny_model_dir):
    model, tokenizer = adapted(tiny_model_dir)
    rows = examples(tokenizer)
    pad = tokenizer.pad_token_id
    padded = loss_and_grads(model, collate(rows, pad))  # one example a row, transformers' own SDPA + padding mask
    assert use_segment_attention(model) and uses_segment_attention(model)

    one_row = collate(pack_micro_batch(rows, None), pad)
    assert one_row["input_ids"].shape == (1, sum(len(e.input_ids) for e in rows))  # no padding at all
    assert one_row[SEGMENT_LENGTHS] == tuple(len(e.input_ids) for e in rows) and SHARED_PREFIX not in one_row

    [shared_row] = pack_micro_batch(rows, None, share_prefix=True)
    prefix = shared_row.shared_prefix
    assert prefix >= 8 and prefix == shared_prefix_length(rows)
    assert len(shared_row.input_ids) == sum(len(e.input_ids) for e in rows) - prefix * (len(rows) - 1)
    shared = collate([shared_row], pad)
    # the examples after the prefix continue its positions
    assert shared["position_ids"][0, prefix] == prefix and shared[SHARED_PREFIX] == prefix

    for batch in (one_row, shared):
        loss, count, grads = loss_and_grads(model, batch)
        assert count == padded[1] == sum(e.n_label_tokens for e in rows)
        assert loss == pytest.approx(padded[0], rel=1e-5)
        assert grads.keys() == padded[2].keys() and len(grads) > 0
        for name, g in grads.items():
            scale = padded[2][name].abs().max().item()
            assert (g - padded[2][name]).abs().max().item() <= 1e-5 * max(scale, 1e-3), name


def test_the_shared_prefix_stops_before_anything_trained():
    def row(ids, first_label):
        return TokenizedExample(ids, [IGNORE] * first_label + ids[first_label:])

    same_prompt = [row(list(range(20)) + [50], 20), row(list(range(20)) + [51], 20)]  # one prompt, two answers
    # token 20 is trained, so the prefix's last position (18) predicts token 19, never a label
    assert shared_prefix_length(same_prompt) == 19
    assert shared_prefix_length([row(list(range(12)), 10), row(list(range(12)), 4)]) == 0  # 3 < the minimum (8)
    assert shared_prefix_length([row(list(range(30)), 25), row([99] + list(range(29)), 25)]) == 0  # nothing common
    assert shared_prefix_length(same_prompt[:1]) == 0
    [packed] = pack_micro_batch(same_prompt, None, share_prefix=True)
    assert packed.segments == (19, 2, 2) and packed.n_label_tokens == 2  # each answer kept, nothing else trained
    assert shared_prefix_fraction(same_prompt, 2) == pytest.approx(19 / 42)


def test_the_memory_plan_sizes_the_largest_micro_batch_as_laid_out():
    from leantune.training.objectives.base import Batches
    from leantune.training.run_plan import largest_micro_batch as largest_shape

    def largest_micro_batch(*args):
        shape = largest_shape(*args)
        return (shape.rows, shape.row_len, shape.examples, shape.labelled)

    def row(length, first_label=12):  # 12 tokens every example shares, then its own
        ids = list(range(12)) + [100 + length] * (length - 12)
        return TokenizedExample(ids, [IGNORE] * first_label + ids[first_label:])

    data = [row(n) for n in (20, 30, 40, 50)]
    order = epoch_order(4, 0, 0)  # the run's micro-batches: pairs of examples in this order
    pairs = [[data[i] for i in order[:2]], [data[i] for i in order[2:]]]
    one_row = Batches(0, packing=True, max_seq_len=64, micro_batch_size=2, one_row=True, share_prefix=True)
    # shared prefix: 11 tokens (it stops before the position that predicts the first label), counted once
    widest = max(sum(len(e.input_ids) for e in p) - 11 for p in pairs)
    assert largest_micro_batch(one_row, data, 0, 2) == (1, widest, 2, max(sum(e.n_label_tokens for e in p) for p in pairs))
    rows = Batches(0, packing=True, max_seq_len=64, micro_batch_size=2)
    shapes = [(len(r), max(len(x.input_ids) for x in r)) for r in (rows.layout(p) for p in pairs)]
    assert largest_micro_batch(rows, data, 0, 2)[:2] == max(shapes, key=lambda s: s[0] * s[1])
    padded = Batches(0, packing=False, max_seq_len=64, micro_batch_size=2)
    assert largest_micro_batch(padded, data, 0, 2)[:2] == max(((2, max(len(e.input_ids) for e in p)) for p in pairs),
                                                             key=lambda s: s[1])
    assert largest_micro_batch(padded, data, 0, 1)[:2] == (2, max(len(e.input_ids) for e in pairs[0]))  # 1 step: 1 batch


def test_the_cpu_plan_counts_the_memory_the_data_took(tiny_model_dir, chat_file, tmp_path):
    from leantune.data.tokenize import TokenizedExample as Row
    from leantune.training.run_plan import ResidentGrowth, check_memory_plan

    growth = ResidentGrowth()
    with growth.during():  # a fresh mapping, touched page by page: resident whatever the allocator holds free
        held = mmap.mmap(-1, 64 * 2**20)
        for offset in range(0, len(held), 4096):
            held[offset] = 1
    assert growth.bytes >= 48 * 2**20
    config = load_config(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path / "runs"))
    model_config = json.loads((tiny_model_dir / "config.json").read_text())
    rows = [Row(list(range(40)), [IGNORE] * 30 + list(range(30, 40)))]
    notes, plans = [], {}
    for data_bytes in (0, 2**30):
        run = types.SimpleNamespace(path=tmp_path / str(data_bytes))
        run.path.mkdir()
        check_memory_plan(config, model_config, rows, torch.float32, "cpu", run, None, False, notes.append,
                          data_bytes=data_bytes)
        plans[data_bytes] = json.loads((run.path / "plan.json").read_text())["memory_gib"]
    assert plans[2**30]["total"] == pytest.approx(plans[0]["total"] + 1.0)
    assert "of which data 1.00" in notes[1] and "of which data" not in notes[0]
    held.close()


def test_generation_and_unpacked_batches_are_transformers_own_attention(tiny_model_dir):
    model, tokenizer = adapted(tiny_model_dir)
    ids = torch.tensor([examples(tokenizer)[0].input_ids[:12]])
    before = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
    with torch.no_grad():
        logits_before = model(input_ids=ids).logits
    use_segment_attention(model)
    assert torch.equal(model.generate(input_ids=ids, max_new_tokens=6, do_sample=False), before)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, logits_before)
    saved = model.get_base_model().config.to_dict()
    assert "leantune_segments" not in json.dumps(saved)  # nothing of it is written with a model


def test_a_shared_prefix_refuses_attention_that_cannot_run_per_example(tiny_model_dir):
    model, tokenizer = adapted(tiny_model_dir)
    batch = collate(pack_micro_batch(examples(tokenizer), None, share_prefix=True), tokenizer.pad_token_id)
    with pytest.raises(ModelError, match="data.share_prefix=false"):  # the model still runs transformers' SDPA
        summed_label_loss(model, batch)
    # a sliding window shorter than prefix + example: transformers' mask would be needed, which this row cannot use
    q = torch.randn(1, 4, 30, 8)
    kv = torch.randn(1, 2, 30, 8)
    windowed = types.SimpleNamespace(is_causal=True, sliding_window=16, num_key_value_groups=2)
    with pytest.raises(ModelError, match="sliding window"):
        segment_attention(windowed, q, kv, kv, None, **{SEGMENT_LENGTHS: (10, 10, 10), SHARED_PREFIX: 10})
    # without a shared prefix it falls back to SDPA under the mask given, which is then exact
    plain = types.SimpleNamespace(is_causal=True, sliding_window=None, num_key_value_groups=2)
    out, _ = segment_attention(plain, q, kv, kv, None, **{SEGMENT_LENGTHS: (10, 20)})
    first, _ = segment_attention(plain, q[:, :, :10], kv[:, :, :10], kv[:, :, :10], None)
    torch.testing.assert_close(out[:, :10], first, atol=1e-6, rtol=1e-5)


def write_prompted_chat(path, rows: int = 24):
    path.write_text("".join(json.dumps({"messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": TEXTS[i % len(TEXTS)] + f" {i}"},
        {"role": "assistant", "content": "spam" if i % 3 == 0 else "ham"}]}) + "\n" for i in range(rows)))
    return path


def test_training_in_one_row_with_shared_prefixes_matches_padded_rows(tiny_model_dir, tmp_path, capsys):
    data = write_prompted_chat(tmp_path / "prompted.jsonl")
    runs = {}
    for name, extra in (("rows", {"training.segment_attention": "false"}), ("one_row", {}),
                        ("no_share", {"data.share_prefix": "false"})):
        cfg = load_config(None, tiny_overrides(tiny_model_dir, data, tmp_path / name, **{
            "method.dropout": 0.0, "training.max_steps": 4, "data.max_seq_len": 256, "output.name": name, **extra}))
        result = train(cfg, allow_duplicate=True)
        info = json.loads((result.run_dir / "run.json").read_text())
        losses = [json.loads(l)["loss"] for l in (result.run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
        runs[name] = (info, losses)
    out = " ".join(capsys.readouterr().err.split())  # the notes, on stderr (rich wraps them)
    assert "packed into rows of <=" in out
    saved = re.search(r"common prefix computed once per micro-batch: ([0-9.]+)% of the tokens", out)
    assert saved and float(saved.group(1)) > 20
    assert runs["rows"][0]["packed_one_row"] is False and runs["one_row"][0]["shared_prefix"] is True
    assert runs["no_share"][0]["packed_one_row"] is True and runs["no_share"][0]["shared_prefix"] is False
    for name in ("one_row", "no_share"):
        assert runs[name][1] == pytest.approx(runs["rows"][1], rel=1e-5), name
    # the memory plan sizes each layout's largest micro-batch: one row, shorter again with the prefix shared
    plans = {name: json.loads((tmp_path / name / runs[name][0]["id"] / "plan.json").read_text()) for name in runs}
    assert plans["one_row"]["setup"]["micro_batch"] == plans["no_share"]["setup"]["micro_batch"] == 1
    assert plans["one_row"]["setup"]["seq_len"] < plans["no_share"]["setup"]["seq_len"]
    assert (plans["one_row"]["memory_gib"]["activations"] < plans["no_share"]["memory_gib"]["activations"]
            < plans["rows"]["memory_gib"]["activations"])
    assert "plan: peak" in out and "the largest packed micro-batch (4 examples in 1 row of up to" in out
