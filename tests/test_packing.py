"""Packing: several examples per row with no attention across their boundaries. Each example's logits and
loss must be what they are when it runs alone."""

import torch

from leantune.data.batches import collate, pack_examples, pack_lengths, padding_fraction
from leantune.data.records import Example
from leantune.data.tokenize import IGNORE, tokenize_example
from leantune.models.loading import load_base
from leantune.models.forward import summed_label_loss


def tokenized(tokenizer):
    chats = [Example(({"role": "user", "content": "word " * (3 * i + 1)}, {"role": "assistant", "content": f"reply {i}"}))
             for i in range(5)]
    text = Example(text="plain text for continued pretraining, learned everywhere")
    return [tokenize_example(tokenizer, e) for e in chats + [text]]


def test_packed_logits_equal_each_example_alone(tiny_model_dir):
    base = load_base(str(tiny_model_dir), dtype="float32")
    examples = tokenized(base.tokenizer)
    [packed] = pack_examples(examples, capacity=10_000)
    assert sum(packed.segments) == len(packed.input_ids) and len(packed.segments) == len(examples)
    batch = collate([packed], base.tokenizer.pad_token_id)
    assert "attention_mask" not in batch and batch["position_ids"][0, 0] == 0
    with torch.no_grad():
        # use_cache=False as in training: with a KV cache transformers does not look for packed rows
        together = base.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for length in packed.segments:
            ids = packed.input_ids[start : start + length]
            [match] = [e for e in examples if e.input_ids == ids]
            alone = base.model(input_ids=torch.tensor([match.input_ids])).logits[0]
            torch.testing.assert_close(together[start : start + length], alone, atol=2e-5, rtol=1e-4)
            start += length


def test_packed_loss_equals_the_unpacked_loss(tiny_model_dir):
    base = load_base(str(tiny_model_dir), dtype="float32")
    examples = tokenized(base.tokenizer)
    pad = base.tokenizer.pad_token_id
    with torch.no_grad():
        plain, n_plain = summed_label_loss(base.model, collate(examples, pad))
        packs = pack_examples(examples, capacity=80)
        assert 1 < len(packs) < len(examples) and max(len(p.input_ids) for p in packs) <= 80
        packed, n_packed = summed_label_loss(base.model, collate(packs, pad))  # rows of unequal length: padding too
    assert n_plain == n_packed == sum(e.n_label_tokens for e in examples)
    torch.testing.assert_close(packed, plain, atol=1e-4, rtol=1e-5)


def test_cross_boundary_tokens_are_never_learned(tiny_model_dir):
    base = load_base(str(tiny_model_dir), dtype="float32")
    examples = tokenized(base.tokenizer)
    [packed] = pack_examples(examples, capacity=10_000)
    start = 0
    for length in packed.segments:
        assert packed.labels[start] == IGNORE
        start += length


def test_packing_is_deterministic_and_respects_capacity():
    lengths = [5, 9, 3, 7, 7, 1, 12, 4]
    bins = pack_lengths(lengths, 12)
    assert bins == pack_lengths(lengths, 12)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 12 for b in bins)
    assert len(bins) == -(-sum(lengths) // 12)  # these lengths pack perfectly
    assert padding_fraction(lengths, 2, capacity=12) < padding_fraction(lengths, 2)


def test_a_micro_batch_packs_into_as_few_rows_of_nearly_equal_length():
    from leantune.data.batches import balanced_packing

    lengths = [70, 40, 90, 30, 60, 50, 80, 20]  # 440 tokens: 2 rows of 256 at most
    rows = balanced_packing(lengths, 256)
    assert len(rows) == 2 and sorted(i for r in rows for i in r) == list(range(8))
    sizes = [sum(lengths[i] for i in r) for r in rows]
    assert max(sizes) <= 256 and max(sizes) - min(sizes) <= 40  # not 256 + 184
    assert balanced_packing([300, 10], 256) == [[0], [1]]  # an over-long example (already truncated upstream) alone
