"""Direct Preference Optimisation (Rafailov et al. 2023), sigmoid loss:

    loss = -log sigmoid(beta * [(log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))])

with log-probabilities summed over each reply's tokens; a step's loss is the mean over its pairs. The reference
is the base model: for LoRA-family methods the same weights with the adapter switched off (no second copy in
memory); for full fine-tuning its log-probabilities are computed once before the first step, while the weights
still are the base's. Logged: rewards (beta * log pi/ref) of chosen and rejected replies, their margin, and how
often the chosen one wins (preference accuracy). Pairs are not packed: each reply is its own row."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...data.batches import collate
from ...data.preference import TokenizedPair, tokenize_pairs
from ...errors import ConfigError
from ...models.adapters import base_behaviour
from ...models.forward import sequence_logprobs, unwrapped
from .base import Batches, Objective, StepBatches


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


class DPO(Objective):
    name = "dpo"
    packs = False

    def __init__(self, config):
        super().__init__(config)
        if config.forgetting.replay_fraction:
            raise ConfigError("forgetting.replay_fraction mixes supervised examples into training and does not apply "
                              "to DPO; set it to 0 (or use forgetting.ewc_lambda).")
        self.reference_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def tokenize(self, tokenizer, examples: list):
        d = self.config.data
        return tokenize_pairs(tokenizer, examples, d.max_seq_len, d.truncation)

    def rows(self, data: list):
        return [side for pair in data for side in (pair.chosen, pair.rejected)]

    def prepare(self, model, tokenizer, batches, train_data, eval_data, device, note) -> None:
        if not hasattr(unwrapped(model), "disable_adapter"):
            # full fine-tuning has no adapter to switch off: score the base once, before any step changes it
            note("DPO reference: scoring every pair with the base model once before training")
            self.reference_cache = {"train": self._precompute(model, batches, train_data),
                                    "eval": self._precompute(model, batches, eval_data)}

    def _precompute(self, model, batches: Batches, pairs) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [reference_logprobs(model, chunk, batches.pad_id) for chunk in batches.chunks(pairs)]
        if not parts:
            return torch.zeros(0), torch.zeros(0)
        return torch.cat([c for c, _ in parts]), torch.cat([r for _, r in parts])

    def _reference(self, model, pairs, pad_id: int, split: str):
        if self.reference_cache:
            chosen, rejected = self.reference_cache[split]
            index = torch.tensor([p.index for p in pairs])
            return chosen[index], rejected[index]
        return reference_logprobs(model, pairs, pad_id)

    def _pass(self, model, batches: Batches, step: StepBatches, split: str) -> tuple[float, int, dict]:
        """The mean loss over the pairs (each micro-batch's sum over the whole count; backward when training)."""
        n_pairs = sum(len(mb) for mb in step.whole)
        rewards, total, n_tokens = RewardStats(), 0.0, 0
        for pairs, weight in step.runs():
            ref_chosen, ref_rejected = self._reference(model, pairs, batches.pad_id, split)
            chosen, rejected = split_logprobs(model, pairs, batches.pad_id)
            losses, chosen_reward, rejected_reward = dpo_terms(chosen, rejected, ref_chosen, ref_rejected,
                                                               self.config.objective.beta)
            if torch.is_grad_enabled():
                step.backward(losses.sum() * (weight / n_pairs))
            total += weight * losses.sum().item()
            if weight:
                rewards.add(chosen_reward, rejected_reward)
                n_tokens += sum(p.n_tokens for p in pairs)
        return total / n_pairs, n_tokens, rewards.as_dict()

    def step(self, model, batches: Batches, step: StepBatches) -> tuple[float, int, dict]:
        return self._pass(model, batches, step, "train")

    def eval_loss(self, model, batches: Batches, data: list) -> tuple[float, dict]:
        loss, _, rewards = self._pass(model, batches, StepBatches.single(batches.chunks(data)), "eval")
        return loss, {f"eval_{k}": v for k, v in rewards.items()}
