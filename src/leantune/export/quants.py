"""The GGUF types an export may ask for, checked before anything heavy is imported (no torch, no numpy):
a bad --quant is refused in a moment, not after a model load."""

from __future__ import annotations

from ..errors import ExportError

QUANTS = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
K_QUANTS = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k")
# llama.cpp's fallback when a row does not fit a 256-wide super-block (tensor_type_fallback in llama-quant.cpp)
K_FALLBACK = {"q2_k": "q4_0", "q3_k": "q4_0", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}


def check_quant(quant: str) -> None:
    if quant not in QUANTS + K_QUANTS:
        raise ExportError(f"Unknown GGUF quant {quant!r}. Choose one of: {', '.join(QUANTS + K_QUANTS)}.")
