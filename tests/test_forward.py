import pytest
import torch

from leantune.data.batches import collate, epoch_order, first_epoch_micro_batches, micro_batches_for_step
from leantune.data.records import ChatExample
from leantune.data.tokenize import tokenize_chat
from leantune.models.loading import load_base
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


def test_replayed_rows_are_spread_through_the_task_order_which_they_leave_unchanged():
    task, replayed = 100, 9  # items 0..99 the task's, 100..108 appended by replay
    for seed, epoch in ((0, 0), (3, 1)):
        order = epoch_order(task + replayed, seed, epoch, mixed_in=replayed)
        assert sorted(order) == list(range(task + replayed))
        assert [i for i in order if i < task] == epoch_order(task, seed, epoch)  # the run without replay's order
        places = [k for k, i in enumerate(order) if i >= task]
        assert max(b - a for a, b in zip([-1, *places], [*places, len(order)])) <= -(-task // (replayed + 1)) + 1
    # the first steps of a short run get their share: 4 steps of 8 rows (32 of 109) hold 2 or 3 of the 9
    steps = [micro_batches_for_step(list(range(task + replayed)), s, 8, 1, seed=0, mixed_in=replayed) for s in range(4)]
    assert sum(i >= task for step in steps for mb in step for i in mb) in (2, 3)
    assert epoch_order(10, 1, 0, mixed_in=0) == epoch_order(10, 1, 0)


def test_batches_are_a_function_of_seed_and_step():
    examples = list(range(10))
    assert epoch_order(10, 1, 0) == epoch_order(10, 1, 0) != epoch_order(10, 1, 1)
    steps = [micro_batches_for_step(examples, s, 2, 2, seed=1) for s in range(6)]
    first_epoch = [x for step in steps[:3] for mb in step for x in mb]
    assert sorted(first_epoch) == examples  # 3 steps of 4 cover the 10 examples once (last step has 2)
    assert steps[2] == [[first_epoch[8], first_epoch[9]]]
    # what the planner and the packing notes look at: the same micro-batches in the same order, `limit` of them
    run = [mb for step in steps[:3] for mb in step]
    assert list(first_epoch_micro_batches(examples, 2, seed=1)) == run
    assert list(first_epoch_micro_batches(examples, 2, seed=1, limit=2)) == run[:2]
    assert list(first_epoch_micro_batches(examples, 3, seed=2)) == [
        mb for s in range(2) for mb in micro_batches_for_step(examples, s, 3, 2, seed=2)]


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


def test_multiple_choice_picks_the_answer_the_full_logits_prefer(tiny_model_dir):
    from leantune.data.tokenize import end_of_turn_ids, tokenize_chat
    from leantune.evaluation.multiple_choice import Question, multiple_choice_accuracy, questions_with_distractors

    base = load_base(str(tiny_model_dir), dtype="float32")
    examples = [ChatExample(({"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"answer {i}"}))
                for i in range(6)]
    questions = questions_with_distractors(examples, n_choices=3, seed=1)
    assert all(len(q.choices) == 3 and q.choices[q.correct] == f"answer {i}" for i, q in enumerate(questions))
    assert questions == questions_with_distractors(examples, n_choices=3, seed=1)

    eot = end_of_turn_ids(base.tokenizer)

    def mean_logprob(prompt, choice):  # the reference: the model's own full logits, one row at a time
        row = tokenize_chat(base.tokenizer, ChatExample(tuple(prompt) + ({"role": "assistant", "content": choice},)))
        ids, labels = torch.tensor([row.input_ids]), torch.tensor(row.labels)
        with torch.no_grad():
            logp = torch.log_softmax(base.model(input_ids=ids).logits[0, :-1].float(), -1)
        targets = labels[1:]
        keep = targets != -100
        # a mean per token scores the answer's own tokens: the end of turn and what follows it are not scored
        first_end = next(i for i, t in enumerate(targets.tolist()) if t != -100 and t in eot)
        keep[first_end:] = False
        assert keep.any()
        return logp[keep].gather(1, targets[keep].unsqueeze(1)).mean().item()

    # each question marked right where the full logits prefer its "correct" choice: accuracy must follow exactly
    preferred = [max(range(3), key=lambda c: mean_logprob(q.prompt, q.choices[c])) for q in questions]
    for pick in range(3):
        marked = [Question(q.prompt, q.choices, pick) for q in questions]
        expected = sum(p == pick for p in preferred) / len(questions)
        assert multiple_choice_accuracy(base.model, base.tokenizer, marked) == pytest.approx(expected)


# A tiny random config of every model type the label-only output path accepts (models/forward.py FINAL_LOGITS).
# The final-logit settings are set far from their defaults so that skipping them would change the loss a lot.
ARCHITECTURES = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {}),
    "mixtral": ("MixtralConfig", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 16}),
    "qwen3_moe": ("Qwen3MoeConfig", {"head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}),
    "phi3": ("Phi3Config", {}),
    "gemma": ("GemmaConfig", {"head_dim": 16}),
    "gemma2": ("Gemma2Config", {"head_dim": 16, "final_logit_softcapping": 1.5}),
    "gemma3_text": ("Gemma3TextConfig", {"head_dim": 16, "final_logit_softcapping": 1.5}),
    "cohere": ("CohereConfig", {"logit_scale": 0.3}),
    "cohere2": ("Cohere2Config", {"logit_scale": 0.3}),
    "granite": ("GraniteConfig", {"logits_scaling": 4.0}),
}
TRANSFORMED = {"gemma2", "gemma3_text", "cohere", "cohere2", "granite"}


def tiny_of(model_type: str, tokenizer):
    import transformers

    name, extra = ARCHITECTURES[model_type]
    config = getattr(transformers, name)(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.3, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **extra)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def test_every_accepted_model_type_is_checked_below():
    from leantune.models.forward import FINAL_LOGITS

    assert set(ARCHITECTURES) == set(FINAL_LOGITS)


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_label_only_loss_and_choice_scores_equal_the_models_own_forward(tiny_model_dir, model_type):
    """SFT loss, the logits at labelled positions and shared-prompt choice scores against `model(**batch)`."""
    from leantune.evaluation.shared_prompt import score_shared_prompts
    from leantune.models.forward import decoder_and_head, label_hidden, label_logits

    tokenizer = load_base(str(tiny_model_dir), dtype="float32").tokenizer
    model = tiny_of(model_type, tokenizer)
    batch = batch_for(tokenizer, ["yes", "no thanks", "maybe later today"])
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        summed, n = summed_label_loss(model, batch)
        torch.testing.assert_close(summed / n, out.loss, atol=1e-5, rtol=1e-5)
        logits, targets, rows = label_logits(model, batch)
        keep = batch["labels"][:, 1:] != -100
        torch.testing.assert_close(logits, out.logits[:, :-1][keep].float(), atol=1e-5, rtol=1e-5)
        if model_type in TRANSFORMED:  # the transform matters: the bare output layer would be wrong
            hidden, _, _ = label_hidden(model, batch)
            bare = decoder_and_head(model)[1].head(hidden).float()
            assert (bare - logits).abs().max() > 1e-2

        # choices of one prompt scored through its shared KV cache == the full forward of each whole row
        prompt = ({"role": "user", "content": "Is this spam?"},)
        rows = [tokenize_chat(tokenizer, ChatExample(prompt + ({"role": "assistant", "content": c},))) for c in ("spam", "ham ok")]
        shared = score_shared_prompts(model, tokenizer.pad_token_id, [rows], per_token=False)[0]
        for row, score in zip(rows, shared):
            ids, labels = torch.tensor([row.input_ids]), torch.tensor(row.labels)
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            keep = labels[1:] != -100
            assert score == pytest.approx(logp[keep].gather(1, labels[1:][keep].unsqueeze(1)).sum().item(), abs=1e-4)


def test_a_model_type_with_unknown_final_logits_is_refused(tiny_model_dir):
    import transformers

    from leantune.errors import ModelError

    tokenizer = load_base(str(tiny_model_dir), dtype="float32").tokenizer
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(ModelError, match="does not know how a 'gpt2' model computes its final logits.*gemma2"):
        summed_label_loss(model, batch_for(tokenizer, ["yes"]))
