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


def test_chunked_cross_entropy_gives_the_same_loss_and_gradients(tiny_model_dir):
    base = load_base(str(tiny_model_dir), dtype="float32")
    batch = batch_for(base.tokenizer, ["a longer reply with many words in it", "no thanks", "maybe later today"])
    grads = []
    for chunk in (0, 5):
        base.model.zero_grad()
        summed, n = summed_label_loss(base.model, batch, chunk=chunk)
        summed.backward()
        grads.append((summed.detach(), n, [p.grad.clone() for p in base.model.parameters() if p.grad is not None]))
    (plain, n0, g0), (chunked, n1, g1) = grads
    assert n0 == n1 > 5 and len(g0) == len(g1) > 0
    torch.testing.assert_close(chunked, plain, atol=1e-4, rtol=1e-5)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_the_planner_caps_logits_memory_at_one_chunk():
    from leantune.plan.memory import logits_bytes
    from leantune.plan.presets import PRESETS
    from leantune.plan.setup import Setup

    shape = PRESETS["smollm2-135m"]
    whole = logits_bytes(shape, Setup(seq_len=2048, micro_batch=4))
    chunked = logits_bytes(shape, Setup(seq_len=2048, micro_batch=4, loss_chunk=1024))
    assert chunked == whole / 8


def test_multiple_choice_picks_the_likeliest_answer(tiny_model_dir):
    from leantune.evaluate.multiple_choice import Question, multiple_choice_accuracy, questions_with_distractors

    base = load_base(str(tiny_model_dir), dtype="float32")
    examples = [ChatExample(({"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"answer {i}"}))
                for i in range(6)]
    questions = questions_with_distractors(examples, n_choices=3, seed=1)
    assert all(len(q.choices) == 3 and q.choices[q.correct] == f"answer {i}" for i, q in enumerate(questions))
    assert questions == questions_with_distractors(examples, n_choices=3, seed=1)
    # the same candidate twice: whichever the model prefers, a question whose choices are identical is "right"
    same = [Question(examples[0].prompt, ("answer 0", "answer 0"), 0)]
    assert multiple_choice_accuracy(base.model, base.tokenizer, same) == 1.0
    assert 0.0 <= multiple_choice_accuracy(base.model, base.tokenizer, questions) <= 1.0
