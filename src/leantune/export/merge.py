"""The run's tuned model as one plain transformers model (the adapter merged into its base).

QLoRA: the adapter learned to correct the NF4-rounded base, so by default it is merged into those de-quantised
weights (`merge_into='nf4'`): the merged model computes what the trained 4-bit model computed. `'original'`
merges into the float weights the NF4 base was made from instead (what peft's merge onto a reloaded float base
gives); the export benchmark measures both."""

from __future__ import annotations

import torch

from ..models.adapters import load_adapter
from ..models.inference import TrainedModel, load_trained
from ..models.loading import load_base


def _nf4_round_trip(model) -> int:
    """Replace every linear weight bitsandbytes would have quantised (all but the output layer) with its
    NF4 round trip, quantised exactly as training's base was (double quantisation, blocks of 64)."""
    import bitsandbytes.functional as bnbf

    count = 0
    output = model.get_output_embeddings()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not output:
            w = module.weight.data
            packed, state = bnbf.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
            module.weight.data = bnbf.dequantize_4bit(packed, state).to(w.dtype)
            count += 1
    return count


def merged_model(run, trained: TrainedModel | None = None, merge_into: str = "nf4"):
    """(merged float model, notes). `trained` (from models/inference.load_trained) is reused for plain
    adapter runs; it is merged in place, so callers take reference logits before calling this."""
    config = run.config()
    if run.full_model.is_dir():
        trained = trained or load_trained(run, "cpu")
        return trained.model, ["full fine-tune: the saved model, nothing to merge"]
    if config.method.name != "qlora":
        trained = trained or load_trained(run, "cpu")
        return trained.model.merge_and_unload(), [f"{config.method.name} adapter merged into the base weights"]
    dtype = (trained.dtype if trained else None) or run.info().get("dtype") or config.model.dtype
    base = load_base(config.model.base, dtype, "cpu")
    notes = []
    if merge_into == "nf4":
        n = _nf4_round_trip(base.model)
        notes.append(f"QLoRA: merged into the de-quantised NF4 weights the adapter trained over ({n} layers)")
    else:
        notes.append("QLoRA: merged into the original float weights (not the NF4 base it trained over)")
    return load_adapter(base.model, run.adapter).merge_and_unload(), notes
