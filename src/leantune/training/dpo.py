"""Direct Preference Optimisation (Rafailov et al. 2023), sigmoid loss:

    loss = -log sigmoid(beta * [(log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))])

with log-probabilities summed over each reply's tokens. The reference is the base model: for LoRA-family
methods the same weights with the adapter switched off (no second copy in memory); for full fine-tuning its
log-probabilities are computed once before the first step, while the weights still are the base's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.batches import collate
from ..data.preference import TokenizedPair
from ..models.adapters import base_behaviour
from ..models.forward import sequence_logprobs


def pair_batch(pairs: list[TokenizedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch: the chosen rows first, then the rejected ones in the same order."""
    return collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)


def split_logprobs(model, pairs: list[TokenizedPair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    logps = sequence_logprobs(model, pair_batch(pairs, pad_id))
    return logps[: len(pairs)], logps[len(pairs) :]


@torch.no_grad()
def reference_logprobs(model, pairs: list[TokenizedPair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The base model's log-probabilities: the adapter disabled when there is one."""
    with base_behaviour(model):
        return split_logprobs(model, pairs, pad_id)


def dpo_terms(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """(per-pair loss, chosen rewards, rejected rewards); rewards are beta * log(pi / ref)."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen_reward - rejected_reward), chosen_reward.detach(), rejected_reward.detach()


class RewardStats:
    """Running sums for the step's logged metrics."""

    def __init__(self):
        self.n = 0
        self.chosen = self.rejected = self.correct = 0.0

    def add(self, chosen: torch.Tensor, rejected: torch.Tensor) -> None:
        self.n += len(chosen)
        self.chosen += float(chosen.sum())
        self.rejected += float(rejected.sum())
        self.correct += float((chosen > rejected).float().sum())

    def as_dict(self, prefix: str = "") -> dict:
        if not self.n:
            return {}
        c, r = self.chosen / self.n, self.rejected / self.n
        return {f"{prefix}reward_chosen": c, f"{prefix}reward_rejected": r, f"{prefix}reward_margin": c - r,
                f"{prefix}preference_accuracy": self.correct / self.n}
