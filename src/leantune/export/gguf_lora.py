"""An adapter-only GGUF for llama.cpp's `--lora` and Ollama's `ADAPTER`, plus a Modelfile.

llama.cpp applies a LoRA as W + (alpha / r) * B @ A with r read from lora_a's shape, and knows nothing of
rsLoRA, so the alpha written is PEFT's own scaling times r (alpha * sqrt(r) for rsLoRA). B's rows of q/k
projections are permuted like the base's (A's columns are the input and stay). DoRA and AdaLoRA have no
LoRA-GGUF form: their update is not a plain B @ A."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ExportError
from .gguf_model import check_llama, hf_to_gguf_names, permute_rows


@dataclass
class LoraWritten:
    path: Path
    pairs: int
    alpha: float
    rank: int


def lora_scaling(config_dict: dict) -> tuple[int, float]:
    r, alpha = int(config_dict["r"]), float(config_dict.get("lora_alpha", config_dict["r"]))
    scale = alpha / (r ** 0.5) if config_dict.get("use_rslora") else alpha / r
    return r, scale


def write_lora_gguf(peft_model, method: str, target: Path, name: str) -> LoraWritten:
    import gguf

    if method in ("dora", "adalora", "ia3") or method == "full":
        raise ExportError(f"A {method} {'fine-tune' if method == 'full' else 'adapter'} has no LoRA-GGUF form "
                          "(llama.cpp applies only W + alpha/r * B A). Export merged instead: --format gguf.")
    adapter_config = peft_model.peft_config["default"].to_dict()
    if adapter_config.get("rank_pattern") or adapter_config.get("alpha_pattern"):
        raise ExportError("This adapter has per-layer ranks or alphas; llama.cpp takes one alpha per file. "
                          "Export merged instead: --format gguf.")
    r, scale = lora_scaling(adapter_config)
    base = peft_model.get_base_model()
    config = base.config
    check_llama(config)
    to_gguf = hf_to_gguf_names(config)
    writer = gguf.GGUFWriter(str(target), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    alpha = scale * r
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_name(name)
    pairs = 0
    for module_name, module in base.named_modules():
        if not hasattr(module, "lora_A") or "default" not in module.lora_A:
            continue
        gguf_name = to_gguf(module_name + ".weight")
        if gguf_name is None:
            raise ExportError(f"The adapter targets {module_name!r}, which has no llama.cpp tensor name.")
        a = module.lora_A["default"].weight.detach().float().cpu().numpy()
        b = module.lora_B["default"].weight.detach().float().cpu().numpy()
        if module_name.endswith("self_attn.q_proj"):
            b = permute_rows(b, config.num_attention_heads)
        elif module_name.endswith("self_attn.k_proj"):
            b = permute_rows(b, config.num_key_value_heads)
        writer.add_tensor(gguf_name + ".lora_a", a)
        writer.add_tensor(gguf_name + ".lora_b", b)
        pairs += 1
    if not pairs:
        raise ExportError("The adapter has no LoRA matrices to write.")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    return LoraWritten(target, pairs, alpha, r)


def ollama_template(chat_template: str | None) -> str | None:
    """A Go template for Ollama when the chat template is one we recognise (ChatML), else None: Ollama then
    takes the template stored in the base GGUF."""
    if chat_template and "<|im_start|>" in chat_template and "<|im_end|>" in chat_template:
        return ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
                "<|im_start|>assistant\n")
    return None


def modelfile(base_gguf: str, adapter_file: str, tokenizer) -> str:
    lines = [f"FROM {base_gguf}", f"ADAPTER ./{adapter_file}"]
    template = ollama_template(getattr(tokenizer, "chat_template", None))
    if template:
        lines.append(f'TEMPLATE """{template}"""')
    eos = tokenizer.eos_token
    if eos:
        lines.append(f'PARAMETER stop "{eos}"')
    return "\n".join(lines) + "\n"


def apply_lora_gguf(base_model, path: Path):
    """Read a LoRA-GGUF back the way llama.cpp applies it (alpha from the file, r from lora_a) and add
    (alpha / r) * B @ A to a float copy of the base, undoing the q/k permutation. The export check compares
    this with the tuned model, so a wrong alpha or permutation fails it."""
    import copy

    import gguf
    import numpy as np
    import torch

    reader = gguf.GGUFReader(str(path))
    alpha = float(reader.fields[gguf.Keys.Adapter.LORA_ALPHA].contents())
    tensors = {t.name: np.asarray(t.data, dtype=np.float32).reshape(tuple(int(x) for x in reversed(t.shape)))
               for t in reader.tensors}
    model = copy.deepcopy(base_model)
    config = model.config
    to_gguf = hf_to_gguf_names(config)
    applied = 0
    for module_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        g = to_gguf(module_name + ".weight")
        if g is None or g + ".lora_a" not in tensors:
            continue
        a, b = tensors[g + ".lora_a"], tensors[g + ".lora_b"]
        delta = (alpha / a.shape[0]) * (b @ a)
        if module_name.endswith("self_attn.q_proj"):
            delta = _unpermute(delta, config.num_attention_heads)
        elif module_name.endswith("self_attn.k_proj"):
            delta = _unpermute(delta, config.num_key_value_heads)
        module.weight.data += torch.from_numpy(delta).to(module.weight.dtype)
        applied += 1
    return model, applied


def _unpermute(w, n_head: int):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
