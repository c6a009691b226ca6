"""Adapters through PEFT, so they are saved in PEFT's own format and load with PeftModel.from_pretrained.
The methods themselves (LoRA, DoRA, AdaLoRA, QLoRA, full) are in training/methods/."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from pathlib import Path

from peft import PeftModel

from ..errors import RunDirError
from .forward import unwrapped


def load_adapter(model, adapter_dir: str | Path):
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise RunDirError(f"'{adapter_dir}' holds no adapter (adapter_config.json missing). Has the run finished?")
    return PeftModel.from_pretrained(model, adapter_dir)


def enable_activation_checkpointing(model) -> None:
    # Non-reentrant checkpointing: works with frozen inputs (LoRA) without enable_input_require_grads.
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def trainable_parameter_count(model) -> tuple[int, int]:
    """(trainable, total) parameters; a packed quantised weight (NF4, GGUF blocks) counts the weights it stands
    for, not its bytes, and a tied weight counts once."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    seen, total = set(), 0
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            packed = name == "weight" and not p.is_floating_point() and hasattr(module, "in_features")
            total += module.in_features * module.out_features if packed else p.numel()
    return trainable, total


@contextmanager
def eval_mode(model):
    """The model in eval mode for the duration; its training mode is restored afterwards, whatever happens."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def base_behaviour(model):
    """The model as its base, in eval mode, for the duration: the adapter switched off where there is one (the
    DPO reference, self-distillation's teacher, EWC's Fisher); a model without one is only put in eval mode.
    Training mode is restored afterwards."""
    inner = unwrapped(model)
    with eval_mode(model), inner.disable_adapter() if hasattr(inner, "disable_adapter") else nullcontext():
        yield model
