"""A merged llama-architecture model as one GGUF file, written with the `gguf` package (no compiler, no
llama.cpp checkout).

- Tensor names from gguf's own llama map; q/k rows permuted the way llama.cpp's converter does (its RoPE
  pairs dimensions differently from transformers); norms and other 1-D tensors in f32; a tied output layer
  is not written twice.
- A base that came from a GGUF file keeps that file's metadata (hyper-parameters, tokenizer, chat template),
  and every tensor the fine-tune did not change is copied from it byte for byte: no second quantisation.
  Only changed tensors are quantised to the requested type.
- A base that came as an HF directory gets its hyper-parameters from config.json and its vocabulary from
  tokenizer.json (byte-level BPE, as llama.cpp's 'gpt2' tokenizer model).
- K-quant requests: rows that are not a multiple of 256 fall back as llama.cpp's quantiser does; a tensor
  that would need a real K-quant encoding is refused (gguf ships K-quant decoders only)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ExportError
from .quants import K_FALLBACK, K_QUANTS, check_quant


def qtype(name: str):
    import gguf

    return gguf.GGMLQuantizationType[name.upper()]


def file_type(quant: str):
    """general.file_type: llama.cpp's LlamaFileType, numbered differently from the tensor types."""
    import gguf

    quant = K_FALLBACK.get(quant, quant)
    return gguf.LlamaFileType.ALL_F32 if quant == "f32" else gguf.LlamaFileType["MOSTLY_" + quant.upper()]


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """transformers' q/k row order -> llama.cpp's (interleaved rotary pairs per head)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_llama(config) -> None:
    if getattr(config, "model_type", None) != "llama":
        raise ExportError(f"GGUF export writes llama-architecture models (SmolLM2, Llama, ...); this base is "
                          f"'{getattr(config, 'model_type', '?')}'. Export --format hf and convert it with llama.cpp.")


@dataclass
class GGUFWritten:
    path: Path
    tensors: int
    copied: int = 0  # tensors copied byte for byte from the source GGUF
    quantised: dict[str, int] = field(default_factory=dict)  # type -> tensors quantised to it
    kinds: dict[str, str] = field(default_factory=dict)  # HF tensor name -> 'copied' or the type written
    notes: list[str] = field(default_factory=list)


def tensor_type_for(quant: str, row: int, ndim: int, notes: set) -> str:
    """The type one tensor gets: f32 for 1-D, the request when its rows fit the block, else llama.cpp's fallback."""
    if ndim == 1:
        return "f32"
    if quant in K_QUANTS:
        if row % 256 == 0:
            raise ExportError(f"--quant {quant}: a {row}-wide tensor needs a real K-quant encoding, which the gguf "
                              "package cannot write (it ships K-quant decoders only). Use q4_0, q5_0 or q8_0, or run "
                              "llama.cpp's llama-quantize on an f16 export.")
        notes.add(f"{quant}: rows of width {row} are not a multiple of 256, so they fall back to "
                  f"{K_FALLBACK[quant]} as llama.cpp does")
        quant = K_FALLBACK[quant]
    if quant.startswith("q") and row % 32:
        notes.add(f"rows of width {row} are not a multiple of 32: written as f16, as llama.cpp does")
        return "f16"
    return quant


def _encode(array: np.ndarray, type_name: str):
    import gguf

    if type_name == "f32":
        return array.astype(np.float32), None
    if type_name == "f16":
        return array.astype(np.float16), None
    return gguf.quants.quantize(array.astype(np.float32), qtype(type_name)), qtype(type_name)


def hf_to_gguf_names(config):
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    return lambda hf_name: names.get_name(hf_name, try_suffixes=(".weight", ".bias"))


def _gguf_array(name: str, tensor: torch.Tensor, config) -> np.ndarray:
    array = tensor.detach().to(torch.float32).cpu().numpy()
    if name.endswith("self_attn.q_proj.weight"):
        array = permute_rows(array, config.num_attention_heads)
    elif name.endswith("self_attn.k_proj.weight"):
        array = permute_rows(array, config.num_key_value_heads)
    return array


def _copy_metadata(writer, source) -> None:
    import gguf

    skip = {"general.architecture", "general.file_type", "general.name"}
    for name, f in source.fields.items():
        if name.startswith("GGUF.") or name in skip:
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, f.contents(), vtype, sub)


def _hf_metadata(writer, config, hf_dir: Path, tokenizer) -> None:
    """Hyper-parameters and a byte-level BPE vocabulary for a base that never was a GGUF."""
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    theta = getattr(config, "rope_theta", None) or (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
    if theta:
        writer.add_rope_freq_base(float(theta))
    writer.add_vocab_size(config.vocab_size)
    spec = json.loads((hf_dir / "tokenizer.json").read_text()) if (hf_dir / "tokenizer.json").is_file() else {}
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise ExportError(f"GGUF export of an HF-directory base needs a byte-level BPE tokenizer.json in {hf_dir}; "
                          f"this one is {model.get('type') or 'missing'}. Convert the base with llama.cpp instead.")
    vocab = dict(model["vocab"])
    added = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    vocab.update(added)
    size = max(config.vocab_size, max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = gguf.TokenType.CONTROL if text in added else gguf.TokenType.NORMAL
    merges = [" ".join(m) if isinstance(m, list) else m for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, adder in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                       ("pad_token_id", writer.add_pad_token_id)):
        value = getattr(tokenizer, key, None)
        if value is not None:
            adder(value)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def write_gguf(model, tokenizer, target: Path, quant: str, name: str, base_state: dict | None = None,
               source_gguf: Path | None = None, hf_dir: Path | None = None) -> GGUFWritten:
    """Write `model` (merged, float) to `target`. With `source_gguf` and `base_state` (the base's tensors as
    de-quantised from that file, by HF name), unchanged tensors are copied from the source file."""
    import gguf

    check_quant(quant)
    config = model.config
    check_llama(config)
    to_gguf = hf_to_gguf_names(config)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("rotary_emb.inv_freq")}
    tied = bool(getattr(config, "tie_word_embeddings", False))
    if tied:
        state.pop("lm_head.weight", None)
    writer = gguf.GGUFWriter(str(target), "llama")
    writer.add_name(name)
    notes: set[str] = set()
    written = GGUFWritten(target, 0)
    source_tensors = {}
    if source_gguf is not None:
        source = gguf.GGUFReader(str(source_gguf))
        _copy_metadata(writer, source)
        source_tensors = {t.name: t for t in source.tensors}
    else:
        _hf_metadata(writer, config, hf_dir, tokenizer)
    for hf_name, tensor in state.items():
        gguf_name = to_gguf(hf_name)
        if gguf_name is None:
            raise ExportError(f"No GGUF name for tensor {hf_name!r}: this llama variant is not supported by the exporter.")
        src = source_tensors.get(gguf_name)
        if src is not None and base_state is not None and hf_name in base_state and torch.equal(
                tensor.to(base_state[hf_name].dtype), base_state[hf_name]):
            writer.add_tensor(gguf_name, src.data, raw_shape=src.data.shape, raw_dtype=src.tensor_type)
            written.copied += 1
            written.kinds[hf_name] = "copied"
        else:
            array = _gguf_array(hf_name, tensor, config)
            kind = tensor_type_for(quant, array.shape[-1], array.ndim, notes)
            encoded, raw = _encode(array, kind)
            writer.add_tensor(gguf_name, encoded, raw_dtype=raw)
            written.quantised[kind] = written.quantised.get(kind, 0) + 1
            written.kinds[hf_name] = kind
        written.tensors += 1
    if source_gguf is not None and len(source_tensors) != written.tensors:
        missing = sorted(set(source_tensors) - {to_gguf(k) for k in state})
        raise ExportError(f"The export has {written.tensors} tensors, the source GGUF {len(source_tensors)} "
                          f"(missing: {', '.join(missing[:5])}); refusing to write a file that would load wrong.")
    writer.add_file_type(int(file_type(quant)))
    writer.add_string("leantune.exported_from", name)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    written.notes = sorted(notes)
    return written


def round_trip(tensor: torch.Tensor, kind: str) -> torch.Tensor:
    """What a tensor written as `kind` reads back as, computed without the file (in transformers' row order)."""
    import gguf

    array = tensor.detach().to(torch.float32).cpu().numpy()
    if kind == "f32" or kind == "copied":
        return tensor
    if kind == "f16":
        back = array.astype(np.float16).astype(np.float32)
    else:
        back = gguf.quants.dequantize(gguf.quants.quantize(array, qtype(kind)), qtype(kind))
    return torch.from_numpy(np.ascontiguousarray(back).reshape(array.shape)).to(tensor.dtype)


def expected_model(model, kinds: dict[str, str]):
    """A copy of `model` with every tensor replaced by what its GGUF encoding holds: the export, loaded by any
    correct reader, must compute exactly this. Quantisation error is in it; a wrong name, permutation or
    type is not."""
    import copy

    expected = copy.deepcopy(model)
    params = dict(expected.named_parameters())
    with torch.no_grad():
        for name, kind in kinds.items():
            if name in params:
                params[name].data = round_trip(params[name].data, kind)
    return expected
