"""DPO: the policy learns to prefer the chosen replies, measured against the base model as reference."""

import json

import pytest
import torch

from conftest import tiny_overrides
from leantune.errors import DataError
from leantune import train
from leantune.training.objectives.dpo import dpo_terms


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    # one consistent preference (a helpful reply over a curt one) that the tiny model can pick up in a few steps
    rows = [{"prompt": f"Please summarise message {i}.", "chosen": f"Sure: message {i} is about a meeting.",
             "rejected": "No."} for i in range(48)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_loss_is_log2_when_policy_equals_reference_and_falls_with_the_margin():
    same = torch.tensor([-5.0, -3.0])
    loss, chosen, rejected = dpo_terms(same, same, same, same, beta=0.1)
    torch.testing.assert_close(loss, torch.full((2,), 0.6931), atol=1e-4, rtol=0)
    better, _, _ = dpo_terms(torch.tensor([-4.0]), torch.tensor([-6.0]), torch.tensor([-5.0]), torch.tensor([-5.0]), 0.1)
    assert better.item() < 0.6931
    assert chosen.tolist() == rejected.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_dpo_margin_grows(tiny_model_dir, pairs_file, tmp_path, method):
    values = {"objective.name": "dpo", "objective.beta": 0.5, "method.name": method, "training.max_steps": 16,
              "training.lr": 5e-3 if method == "lora" else 1e-3, "method.dropout": 0.0, "training.eval_every": 8}
    result = train(None, tiny_overrides(tiny_model_dir, pairs_file, tmp_path / method, **values))
    steps = [m for m in metrics(result.run_dir) if "loss" in m]
    assert abs(steps[0]["loss"] - 0.6931) < 0.05  # step 1 starts at the reference: log 2
    assert steps[-1]["reward_margin"] > steps[0]["reward_margin"] + 0.5
    assert steps[-1]["preference_accuracy"] >= 0.75
    evals = [m for m in metrics(result.run_dir) if "eval_loss" in m]
    assert evals[-1]["eval_reward_margin"] > 0 and evals[-1]["eval_loss"] < 0.6931


def test_dpo_on_chat_data_names_the_missing_fields(tiny_model_dir, chat_file, tmp_path):
    with pytest.raises(DataError, match=r"objective.name=dpo .* 'prompt', 'chosen' and 'rejected'"):
        train(None, tiny_overrides(tiny_model_dir, chat_file, tmp_path, **{"objective.name": "dpo"}))
