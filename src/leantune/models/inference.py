"""A finished run loaded for inference: the one loader behind `leantune generate` and `leantune eval` (and the
coming export and serve), so they all get the same weights on the same device.

- Device: the detected one (a GPU when there is one), not always the CPU.
- Dtype: the one the run trained in (run.json's `dtype`), on the same kind of device; on another kind the
  config's dtype as this device resolves it ('auto': bf16 on a GPU, fp32 on a CPU). A QLoRA adapter always gets
  the training dtype: bitsandbytes quantises the base to NF4 from the weights as loaded, so a base loaded in
  fp32 is a different 4-bit base from the bf16 one the adapter learned to correct; and training upcast the
  base's norms and embeddings to fp32 (models/quantize.py), so serving does too.
- Full fine-tuning: the saved model; with `with_base`, the original base beside it (for tuned-vs-base scoring).

It takes a run directory object (`config()`, `info()`, `adapter`, `full_model`, `path`), not the runs layer's
class, so models/ imports nothing above it."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import RunDirError
from .adapters import load_adapter
from .loading import detected_device, load_base
from .quantize import prepare_4bit_base


@dataclass
class TrainedModel:
    model: object  # the tuned model (a PeftModel over its base, or the fully fine-tuned model)
    tokenizer: object
    device: str
    dtype: str
    base: object = None  # full fine-tuning with with_base=True: the original weights
    notes: list[str] = field(default_factory=list)


def inference_dtype(config, info: dict, device: str) -> str:
    trained = info.get("dtype")
    trained_on = "cuda" if str(info.get("device", "cpu")).startswith("cuda") else "cpu"
    if trained and (config.method.name == "qlora" or trained_on == device):
        return trained
    return config.model.dtype


def load_trained(run, device: str | None = None, with_base: bool = False) -> TrainedModel:
    """The run's tuned model (and tokenizer) on `device` (default: the detected one) in the dtype it trained in."""
    device = device or detected_device()[0]
    config, info = run.config(), run.info()
    dtype = inference_dtype(config, info, device)
    if run.full_model.is_dir():
        tuned = load_base(str(run.full_model), dtype, device)
        base = load_base(config.model.base, dtype, device).model if with_base else None
        return TrainedModel(tuned.model, tuned.tokenizer, device, dtype, base)
    if not (run.adapter / "adapter_config.json").is_file():
        status = info.get("status", "unknown")
        raise RunDirError(f"Run '{run.path}' has no adapter ({run.adapter} is missing; status: {status}). "
                          f"Finish it first: `leantune train --resume {run.path}`, or use the base model by name.")
    qlora = config.method.name == "qlora"
    base = load_base(config.model.base, dtype, device, quantize_4bit=qlora)
    if qlora:
        prepare_4bit_base(base.model)
    notes = ["QLoRA: 'base' is the 4-bit NF4 base the adapter was trained over, not the original weights."] if qlora else []
    return TrainedModel(load_adapter(base.model, run.adapter), base.tokenizer, device, dtype, notes=notes)
