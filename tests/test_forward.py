import torch

from leantune.data.batches import collate, epoch_order, micro_batches_for_step
from leantune.data.records import ChatExample
from leantune.data.tokenize import tokenize_chat
from leantune.models import load_base
from leantune.models.forward import sequence_logprobs, summed_label_loss


def batch_for(tokenizer, replies):
    examples = [
        tokenize_chat(tokenizer, ChatExample(({"role": "user", "content": f"question {i}" * (i + 1)}, {"role": "assistant", "content": r})))
        for i, r in enumerate(replies)
    ]
    return collate(examples, tokenizer.pad_token_id)


def test_label_only_loss_equals_the_full_logits_loss(tiny_model_dir):
    base = load_base(str(tiny_model_dir), dtype="float32")
    batch = batch_for(base.tokenizer, ["yes", "no thanks", "maybe later today"])
    summed, n = summed_label_loss(base.model, batch)
    reference = base.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert n == int((batch["labels"][:, 1:] != -100).sum())
    torch.testing.assert_close(summed / n, reference)


def test_sequence_logprobs_are_per_row(tiny_model_dir):
    base = load_base(str(tiny_model_dir), dtype="float32")
    batch = batch_for(base.tokenizer, ["yes", "no thanks"])
    both = sequence_logprobs(base.model, batch)
    first = sequence_logprobs(base.model, {k: v[:1, : int(batch["attention_mask"][0].sum())] for k, v in batch.items()})
    torch.testing.assert_close(both[0], first[0], atol=1e-5, rtol=1e-5)
    assert (both < 0).all()


def test_batches_are_a_function_of_seed_and_step():
    examples = list(range(10))
    assert epoch_order(10, 1, 0) == epoch_order(10, 1, 0) != epoch_order(10, 1, 1)
    steps = [micro_batches_for_step(examples, s, 2, 2, seed=1) for s in range(6)]
    first_epoch = [x for step in steps[:3] for mb in step for x in mb]
    assert sorted(first_epoch) == examples  # 3 steps of 4 cover the 10 examples once (last step has 2)
    assert steps[2] == [[first_epoch[8], first_epoch[9]]]
