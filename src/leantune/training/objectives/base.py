"""What an objective is to the loop: how it tokenises its data, what one optimizer step's loss is (it calls
backward itself, micro-batch by micro-batch, so accumulation holds one micro-batch's activations at a time),
and what the eval loss is. An objective is one file in this folder and one line in `__init__.py`'s registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...config import RunConfig
from ...data.batches import collate, pack_micro_batch
from ...data.tokenize import TokenizedExample


@dataclass(frozen=True)
class Batches:
    """How examples become tensors for this run: padded, or with data.packing several examples share a row
    (same examples per step either way, so packing changes the speed, not the training)."""

    pad_id: int
    packing: bool
    max_seq_len: int
    micro_batch_size: int
    loss_chunk: int = 0
    one_row: bool = False  # packed micro-batches as one row: the model's attention runs example by example
    share_prefix: bool = False  # in that row, the examples' common prefix once (data.batches.pack_shared_prefix)

    def layout(self, examples: list[TokenizedExample]) -> list[TokenizedExample]:
        """The rows a micro-batch becomes before padding (what the memory plan sizes, without building tensors)."""
        if self.packing:
            return pack_micro_batch(examples, None if self.one_row else self.max_seq_len,
                                    share_prefix=self.one_row and self.share_prefix)
        return examples

    def collate(self, examples) -> dict:
        return collate(self.layout(examples), self.pad_id)

    def chunks(self, data: list) -> list[list]:
        """Micro-batches for a pass over `data` in order (evaluation)."""
        return [data[i : i + self.micro_batch_size] for i in range(0, len(data), self.micro_batch_size)]


@dataclass(frozen=True)
class StepBatches:
    """One optimizer step's micro-batches as one process runs them. Every loss is divided by a count over the
    whole step (all processes' micro-batches), so the processes' gradients summed are exactly one process's
    gradient of the whole step. A process with a micro-batch fewer than the others runs a filler (weight 0) so
    that every process makes the same number of passes (their collectives must pair up).

    Objectives back-propagate through `backward`, never `loss.backward()`: under fp16 autocast every loss of the
    step must carry the loss scale (precision.LossScaling)."""

    whole: list[list]
    mine: list[list]
    weights: tuple[float, ...]
    scaling: Any = None  # precision.LossScaling, or None: plain backward

    def backward(self, loss) -> None:
        if self.scaling is None:
            loss.backward()
        else:
            self.scaling.backward(loss)

    @classmethod
    def single(cls, micro_batches: list[list]) -> "StepBatches":
        return cls(micro_batches, micro_batches, (1.0,) * len(micro_batches))

    def runs(self):
        """(examples, weight) for each micro-batch this process runs."""
        return zip(self.mine, self.weights)


class Objective:
    name = ""
    packs = True  # whether its rows may share packed rows

    def __init__(self, config: RunConfig):
        self.config = config

    def tokenize(self, tokenizer, examples: list):
        """(tokenised items, stats) for a list of examples."""
        raise NotImplementedError

    def rows(self, data: list) -> list[TokenizedExample]:
        """The token rows the data runs as (for the memory and time plan)."""
        return list(data)

    def prepare(self, model, tokenizer, batches: Batches, train_data: list, eval_data: list, device: str, note) -> None:
        """What it needs before the first step (a teacher, reference log-probabilities)."""

    def step(self, model, batches: Batches, step: StepBatches) -> tuple[float, int, dict]:
        """This process's share of one optimizer step's loss (backward done), its tokens, and extra metrics."""
        raise NotImplementedError

    def eval_loss(self, model, batches: Batches, data: list) -> tuple[float, dict]:
        """Mean eval loss and extra metrics (called in eval mode, without gradients)."""
        raise NotImplementedError
