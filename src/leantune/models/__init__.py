"""load base (HF dir, safetensors, GGUF) -> attach adapter (PEFT)."""

from .adapters import attach_lora, load_adapter
from .loading import BaseModel, load_base, resolve_dtype

__all__ = ["BaseModel", "attach_lora", "load_adapter", "load_base", "resolve_dtype"]
