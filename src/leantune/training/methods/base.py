"""What a fine-tuning method is to the loop: how it changes the model before training, what it does around
each optimizer step, what it keeps outside the weights for an exact resume, and what it saves at the end.
A method is one file in this folder with a subclass of `Method`, and one line in `__init__.py`'s registry."""

from __future__ import annotations

import warnings
from pathlib import Path

from ...atomic import atomic_dir
from ...config import MethodConfig


class Method:
    name = ""
    quantize_4bit = False  # load the base in 4-bit NF4 (QLoRA)
    trains_base_weights = False  # every weight trains (full fine-tuning): kept in fp32 where bf16 would be the default

    def __init__(self, config: MethodConfig):
        self.config = config

    def describe(self) -> str:
        raise NotImplementedError

    def attach(self, model, seed: int, total_steps: int):
        """The model ready to train: adapters attached, or weights unfrozen."""
        raise NotImplementedError

    def warnings(self, total_steps: int) -> list[str]:
        """What the user should know about this method at this run length (said before training)."""
        return []

    def notes(self, model) -> dict:
        """Facts about the prepared model worth recording in run.json (and saying)."""
        return {}

    def before_optimizer_step(self, model, backward) -> None:
        """After the step's backward passes: extra gradient terms of the method (AdaLoRA's orthogonality),
        back-propagated with `backward(loss)` so they carry the step's loss scale."""

    def after_optimizer_step(self, model, step: int) -> None:
        """Between optimizer.step() and zero_grad(): the gradients are still there, unscaled (AdaLoRA's rank
        allocator). Not called for a step skipped because fp16 gradients overflowed."""

    def log(self, model, record: dict, run, step: int, total_steps: int) -> None:
        """Add the method's own figures to a step's metrics record."""

    def state(self, model) -> dict:
        """State outside the weights and optimizer that an exact resume needs (tensors and containers only)."""
        return {}

    def load_state(self, model, state: dict) -> None:
        pass

    def saved_to(self, run) -> Path:
        return run.adapter

    def save(self, model, tokenizer, run, state_dict: dict | None = None) -> Path:
        """The trained result as a directory that appears only when complete. `state_dict`: the weights gathered
        whole from several processes (the model's own are shards)."""
        target = self.saved_to(run)
        with atomic_dir(target) as tmp, warnings.catch_warnings():
            # AdaLoRA layers pruned to rank 0 save as zero-sized tensors, and PEFT mistakes them for unsharded ones
            warnings.filterwarnings("ignore", message=".*have invalid shape.*")
            model.save_pretrained(tmp, **({} if state_dict is None else {"state_dict": state_dict}))
            self.save_extra(tokenizer, tmp)
        return target

    def save_extra(self, tokenizer, folder: Path) -> None:
        pass
