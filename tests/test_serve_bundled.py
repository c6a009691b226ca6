"""Slow: the real bundled SmolLM2-135M with a spam adapter trained here (the demo's data and learning rate, 40
steps), served by `leantune serve` and asked by the official openai client on loopback."""

import openai
import pytest

from leantune.evaluation.tasks import held_out_examples
from leantune.generate import generate_reply, load_for_inference
from leantune.runs.rundir import open_run_dir
from leantune.serve.api import build, running
from leantune.training.api import train

# 40 real training steps then serving: ~4 minutes on 2 cores, the suite's largest item; `make test-heavy` runs it
pytestmark = [pytest.mark.slow, pytest.mark.heavy]


def test_the_spam_adapter_served_classifies_held_out_sms(tmp_path):
    result = train(None, ["model.base=smollm2-135m", "data.train=sms-spam", "data.eval_size=40", "data.max_seq_len=128",
                          "training.max_steps=40", "training.micro_batch_size=8", "training.lr=5e-4",
                          "training.checkpoint_every=100", "output.name=spam", f"output.runs_dir={tmp_path}"])
    examples = held_out_examples(open_run_dir(result.run_dir).config())
    chosen = [e for e in examples if e.label == "spam"][:5] + [e for e in examples if e.label == "ham"][:5]
    direct_model, tokenizer = load_for_inference(str(result.run_dir), "cpu")
    server = build([f"spam={result.run_dir}"], runs_dir=str(tmp_path), say=lambda _: None)
    with running(server) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        right = spam_right = 0
        for example in chosen:
            system, user = example.messages[0]["content"], example.messages[1]["content"]
            reply = client.chat.completions.create(model="spam", temperature=0, max_tokens=3, messages=[
                {"role": "system", "content": system}, {"role": "user", "content": user}]).choices[0].message.content
            # the server answers what the run answers when loaded directly
            assert reply.strip() == generate_reply(direct_model, tokenizer, user, max_new_tokens=3, system=system)
            right += reply.strip().lower() == example.label
            spam_right += reply.strip().lower() == example.label == "spam"
        # always-ham scores 5 of 10; 40 steps learn the task only in part (measured: 7 of 10)
        assert right >= 7 and spam_right >= 2, f"{right} of 10 held-out SMS labelled right, {spam_right} of 5 spam"
        base = client.chat.completions.create(model="smollm2-135m", max_tokens=3, temperature=0,
                                              messages=[{"role": "user", "content": "Hello"}])
        assert base.choices[0].message.content  # the bare base answers from the same server, adapter off
