"""Shapes of popular open models, from their published config.json files, with the parameter counts
their model cards / safetensors metadata publish and, where the authors said, their pretraining tokens.

Pretraining tokens: Llama 3.1 ~15T and Llama 3.2 1B/3B up to 9T (Meta model cards); Qwen3 ~36T (Qwen3
technical report, 2025); SmolLM2 135M 2T, 360M 4T, 1.7B 11T (SmolLM2 paper, 2025); Gemma 2 2B 2T,
9B 8T (Gemma 2 report); Gemma 3 1B 2T (Gemma 3 report); Phi-3-mini 3.3T (Phi-3 report). Mistral and
Mixtral did not publish theirs. Qwen3's cards give rounded counts only (0.6B / 1.7B / 4.0B / 8.2B /
14.8B / 32.8B total; tests check those), so no exact published count is stored for them.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from ..errors import ModelError
from .shapes import ModelShape, shape_from_dir, shape_from_gguf, shape_from_hf_config

T = 1e12


def _llama(name, hidden, layers, heads, kv, inter, vocab, tied, params, tokens=None, head_dim=None, **kw) -> ModelShape:
    return ModelShape(name, hidden, layers, heads, kv, head_dim or hidden // heads, inter, vocab, tied,
                      published_params=params, pretraining_tokens=tokens, **kw)


_ALL = [
    # Llama 3.x (Meta)
    _llama("llama-3.2-1b", 2048, 16, 32, 8, 8192, 128256, True, 1_235_814_400, 9 * T),
    _llama("llama-3.2-3b", 3072, 28, 24, 8, 8192, 128256, True, 3_212_749_824, 9 * T),
    _llama("llama-3.1-8b", 4096, 32, 32, 8, 14336, 128256, False, 8_030_261_248, 15 * T),
    _llama("llama-3.1-70b", 8192, 80, 64, 8, 28672, 128256, False, 70_553_706_496, 15 * T),
    _llama("llama-3.1-405b", 16384, 126, 128, 8, 53248, 128256, False, 405_853_388_800, 15 * T),
    # Qwen3 (Alibaba): q/k norms, head_dim 128
    _llama("qwen3-0.6b", 1024, 28, 16, 8, 3072, 151936, True, None, 36 * T, head_dim=128, qk_norm=True),
    _llama("qwen3-1.7b", 2048, 28, 16, 8, 6144, 151936, True, None, 36 * T, head_dim=128, qk_norm=True),
    _llama("qwen3-4b", 2560, 36, 32, 8, 9728, 151936, True, None, 36 * T, head_dim=128, qk_norm=True),
    _llama("qwen3-8b", 4096, 36, 32, 8, 12288, 151936, False, None, 36 * T, head_dim=128, qk_norm=True),
    _llama("qwen3-14b", 5120, 40, 40, 8, 17408, 151936, False, None, 36 * T, head_dim=128, qk_norm=True),
    _llama("qwen3-32b", 5120, 64, 64, 8, 25600, 151936, False, None, 36 * T, head_dim=128, qk_norm=True),
    # Mistral AI
    _llama("mistral-7b", 4096, 32, 32, 8, 14336, 32000, False, 7_241_732_096),
    _llama("mixtral-8x7b", 4096, 32, 32, 8, 14336, 32000, False, 46_702_792_704, experts=8, experts_per_token=2),
    # Gemma (Google): four norms per block, head_dim 256
    _llama("gemma-2-2b", 2304, 26, 8, 4, 9216, 256000, True, 2_614_341_888, 2 * T, head_dim=256, norms_per_layer=4),
    _llama("gemma-2-9b", 3584, 42, 16, 8, 14336, 256000, True, 9_241_705_984, 8 * T, head_dim=256, norms_per_layer=4),
    _llama("gemma-3-1b", 1152, 26, 4, 1, 6912, 262144, True, 999_885_952, 2 * T, head_dim=256, norms_per_layer=4, qk_norm=True),
    # Microsoft
    _llama("phi-3-mini", 3072, 32, 32, 32, 8192, 32064, False, 3_821_079_552, 3.3 * T),
    # Hugging Face SmolLM2
    _llama("smollm2-135m", 576, 30, 9, 3, 1536, 49152, True, 134_515_008, 2 * T),
    _llama("smollm2-360m", 960, 32, 15, 5, 2560, 49152, True, 361_821_120, 4 * T),
    _llama("smollm2-1.7b", 2048, 24, 32, 32, 8192, 49152, True, 1_711_376_384, 11 * T),
]

PRESETS: dict[str, ModelShape] = {m.name: m for m in _ALL}


def suggest_preset(name: str) -> str:
    close = difflib.get_close_matches(name.lower(), list(PRESETS), n=3, cutoff=0.5)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def resolve_shape(spec: str) -> ModelShape:
    """A preset name, an HF model directory, a config.json file, or a .gguf file."""
    if spec.lower() in PRESETS:
        return PRESETS[spec.lower()]
    path = Path(spec).expanduser()
    if path.is_dir():
        return shape_from_dir(path)
    if path.is_file() and path.suffix == ".json":
        return shape_from_hf_config(json.loads(path.read_text()), name=path.parent.name)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return shape_from_gguf(path)
    raise ModelError(f"Unknown model '{spec}': not a preset, nor a model directory, config.json or .gguf file.{suggest_preset(spec)} "
                     "`leantune plan --list-models` shows the presets.")
