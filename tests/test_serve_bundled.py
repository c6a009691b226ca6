"""Slow: the real bundled SmolLM2-135M with a spam adapter trained here, served by `leantune serve` and asked by
the official openai client on loopback."""

import openai
import pytest

from leantune.data.builtin import SMS_INSTRUCTION, SMS_SYSTEM
from leantune.serve.api import build, running
from leantune.training.api import train

pytestmark = pytest.mark.slow

SPAM = "WINNER!! You have been selected to receive a 900 pound prize reward! To claim call 09061701461. Claim code KL341."
HAM = "Hey, are we still meeting for lunch at noon? I'll be at the usual place."


def test_the_demo_spam_adapter_served_classifies_sms(tmp_path):
    result = train(None, ["model.base=smollm2-135m", "data.train=sms-spam", "data.eval_size=16", "data.max_seq_len=128",
                          "training.max_steps=30", "training.micro_batch_size=8", "training.lr=5e-4",
                          "training.checkpoint_every=100", "output.name=spam", f"output.runs_dir={tmp_path}"])
    server = build([f"spam={result.run_dir}"], runs_dir=str(tmp_path), say=lambda _: None)
    with running(server) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)

        def label(text, model="spam"):
            reply = client.chat.completions.create(model=model, temperature=0, max_tokens=3, messages=[
                {"role": "system", "content": SMS_SYSTEM}, {"role": "user", "content": f"{SMS_INSTRUCTION}\n\n{text}"}])
            return reply.choices[0].message.content.strip().lower()

        assert label(SPAM) == "spam"
        assert label(HAM) == "ham"
        assert label(HAM, "smollm2-135m")  # the bare base answers from the same server, adapter off
