"""LoRA through PEFT, so adapters are saved in PEFT's own format and load with PeftModel.from_pretrained."""

from __future__ import annotations

from pathlib import Path

from ..config import MethodConfig
from ..errors import ConfigError, RunDirError


def attach_lora(model, method: MethodConfig, seed: int):
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=method.r,
        lora_alpha=method.alpha,
        lora_dropout=method.dropout,
        target_modules=method.target_modules,
        task_type="CAUSAL_LM",
        bias="none",
    )
    # The B matrices start at zero, but A is random: seed it so a run is reproducible from its config.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return get_peft_model(model, config)
        except ValueError as e:
            if "not found in the base model" in str(e) or "Target modules" in str(e):
                names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
                raise ConfigError(
                    f"method.target_modules={method.target_modules!r} matches no layer of this model. "
                    f"Its linear layers are named: {', '.join(names)} (or use 'all-linear')."
                ) from None
            raise


def load_adapter(model, adapter_dir: str | Path):
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise RunDirError(f"'{adapter_dir}' holds no adapter (adapter_config.json missing). Has the run finished?")
    return PeftModel.from_pretrained(model, adapter_dir)


def trainable_parameter_count(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
