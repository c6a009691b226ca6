"""int4 weight-only models for CPU inference: save and load.

The quantisation is torchao's (HQQ-fitted scales and zeros in groups along the input dimension, packed for
`aten._weight_int4pack_mm_for_cpu`). Neither torchao 0.18 nor transformers 5.23 can serialise that CPU layout
(`Int4OpaqueTensor`; their safetensors support covers the CUDA/XPU int4 layouts only), so the packed tensors are
written here as plain safetensors entries with a small JSON header, and `load()` rebuilds them.

This file imports nothing from leantune: the exporter copies it into every int4 export as `load_int4.py`, so
    from load_int4 import load; model, tokenizer = load("path/to/export")
works with only torch, transformers, safetensors and torchao installed (and peft when the export kept a LoRA
adapter beside the int4 base, in `adapter/`).

The kernel is fast only with bfloat16 activations (measured on AVX512-BF16: 2x a float32 matmul on the output
layer; with float32 activations it falls back to a path 10x slower than float32), so the model runs in bfloat16.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SCHEME_FILE = "int4.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


def _opaque_class():
    from torchao.prototype.quantization.int4 import Int4OpaqueTensor

    return Int4OpaqueTensor


GROUP_SIZES = (32, 64, 128)  # smallest first: finer groups cost 1/8 bit per weight more and keep more of the model


def group_size_for(model) -> int | None:
    """The smallest group size that divides every linear layer's input width (the kernel needs whole groups)."""
    widths = {m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)}
    return next((g for g in GROUP_SIZES if all(w % g == 0 for w in widths)), None)


def _to_bfloat16(model):
    """Cast the parameters only: `model.to(torch.bfloat16)` would also round the rotary inverse frequencies,
    which transformers keeps in float32 (and so does `load`), and the two would no longer agree."""
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    return model


def quantise(model, group_size: int) -> int:
    """The model in bfloat16 (the kernel is fast only with bf16 activations) with every linear layer in int4, in
    place; returns how many layers. A tied output layer gets its own int4 copy (the input embedding stays
    bfloat16: it is a lookup, not a matmul)."""
    from torchao.prototype.quantization.int4.inference_workflow import (
        PrototypeInt4WeightOnlyConfig,
    )
    from torchao.quantization import quantize_

    _to_bfloat16(model)
    output = model.get_output_embeddings()
    if output is not None and output.weight is model.get_input_embeddings().weight:
        output.weight = torch.nn.Parameter(output.weight.detach().clone(), requires_grad=False)
        model.config.tie_word_embeddings = False
        if hasattr(model.config, "get_text_config"):
            model.config.get_text_config().tie_word_embeddings = False
    count = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    quantize_(model, PrototypeInt4WeightOnlyConfig(group_size=group_size, int4_choose_qparams_algorithm="hqq"))
    return count


def save(model, tokenizer, folder: Path, group_size: int, provenance: dict, adapter: str | None = None) -> None:
    """`model` is the quantised transformers model, or a peft model over it whose adapter was loaded from
    `folder/adapter` (only the base's weights are written here; the adapter folder is already in place)."""
    from safetensors.torch import save_file

    if adapter is not None:
        model = model.get_base_model()  # the adapter's own layers hold the base layers: save those alone
        state = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}
    else:
        state = model.state_dict()
    opaque = _opaque_class()
    tensors, packed = {}, {}
    for name, value in state.items():
        if isinstance(value, opaque):
            tensors[name + ".qdata"] = value.qdata.contiguous()
            tensors[name + ".scale_and_zero"] = value.scale_and_zero.contiguous()
            packed[name] = {"block_size": list(value.block_size), "shape": list(value.shape)}
        else:
            tensors[name] = value.contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    scheme = {"format_version": FORMAT_VERSION, "scheme": "int4 weight-only, asymmetric, HQQ-fitted, torchao "
              "Int4OpaqueTensor layout", "group_size": group_size, "activation_dtype": "bfloat16",
              "packed": packed, "adapter": adapter, **provenance}
    (folder / SCHEME_FILE).write_text(json.dumps(scheme, indent=2))


def load(folder: str | Path):
    """(model, tokenizer) from an int4 export folder; the model is in bfloat16 with int4 linear weights."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    scheme = json.loads((folder / SCHEME_FILE).read_text())
    if scheme.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{folder / SCHEME_FILE}: int4 format version {scheme.get('format_version')} is not "
                         f"{FORMAT_VERSION}; load it with the leantune version that wrote it.")
    config = AutoConfig.from_pretrained(folder)
    # built on the CPU (not the meta device) so computed buffers such as rotary frequencies are right
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    flat = load_file(str(folder / WEIGHTS_FILE))
    opaque = _opaque_class()
    state = {}
    for name, meta in scheme["packed"].items():
        state[name] = opaque(flat.pop(name + ".qdata"), flat.pop(name + ".scale_and_zero"),
                             meta["block_size"], torch.Size(meta["shape"]))
    state.update(flat)
    model.load_state_dict(state, strict=True, assign=True)  # a file that does not match its config raises
    if scheme.get("adapter"):
        from peft import (
            PeftModel,  # LoRA kept beside the int4 weights, computed in its own precision
        )

        model = PeftModel.from_pretrained(model, str(folder / scheme["adapter"]))
    model.eval()
    return model, AutoTokenizer.from_pretrained(folder)
