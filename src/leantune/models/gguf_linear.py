"""Linear layers that keep a GGUF file's own quantised blocks and de-quantise them on the fly, in the forward pass
and again in the backward pass (QLoRA over the weights you will serve: `method.name=qlora-gguf`).

The bundled SmolLM2 is a Q4_1 GGUF; the usual path de-quantises it once to float32 (4 bytes per weight) and
NF4-QLoRA would quantise that a second time. Here each linear layer holds the file's bytes (Q4_1: 20 bytes per
32 weights, 0.625 bytes per weight) and computes with exactly the values the file encodes: the de-quantisation
below is checked bit for bit against `gguf`'s own (the one the float32 conversion used), so a LoRA adapter
trained here is the adapter LoRA would train over the converted weights, at a fraction of the weights' memory.

Block layouts (ggml): Q4_0 {f16 d; u8 qs[16]} w = (q - 8) d; Q4_1 {f16 d; f16 m; u8 qs[16]} w = q d + m (low
nibbles are weights 0-15, high nibbles 16-31); Q8_0 {f16 d; i8 qs[32]} w = q d. Other types (K-quants, Q5_x, F16)
stay as the de-quantised float weights, counted and reported."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelError

BLOCK = 32
BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}


def dequantize(blocks: torch.Tensor, kind: str, dtype=torch.float32) -> torch.Tensor:
    """[rows, n_blocks, bytes] uint8 -> [rows, n_blocks * 32] weights."""
    rows, n_blocks, _ = blocks.shape
    d = blocks[..., 0:2].contiguous().view(torch.float16).to(torch.float32)
    if kind == "Q8_0":
        q = blocks[..., 2:34].contiguous().view(torch.int8).to(torch.float32)
        w = d * q
    else:
        start = 4 if kind == "Q4_1" else 2
        packed = blocks[..., start:start + 16]
        q = torch.cat([packed & 0x0F, packed >> 4], dim=-1).to(torch.float32)
        if kind == "Q4_1":
            w = d * q + blocks[..., 2:4].contiguous().view(torch.float16).to(torch.float32)
        else:
            w = d * (q - 8)
    return w.reshape(rows, n_blocks * BLOCK).to(dtype)


class _BlockMatmul(torch.autograd.Function):
    """y = x W^T with W rebuilt from the blocks in forward and again in backward: nothing weight-sized is kept
    between the two (the weights are frozen, so only the input's gradient is computed)."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        return x @ layer.dequantized(x.dtype).T

    @staticmethod
    def backward(ctx, grad):
        return grad @ ctx.layer.dequantized(grad.dtype), None


class GGUFLinear(torch.nn.Linear):
    """An nn.Linear (so PEFT wraps it like any other) whose weight is the GGUF's uint8 blocks."""

    def __init__(self, blocks: torch.Tensor, kind: str, in_features: int, out_features: int, bias=None):
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features, self.kind = in_features, out_features, kind
        # a frozen uint8 parameter: PEFT reads the base layer's weight for device and (floating) dtype only
        self.weight = torch.nn.Parameter(blocks, requires_grad=False)
        self.bias = bias

    def dequantized(self, dtype=torch.float32) -> torch.Tensor:
        return dequantize(self.weight, self.kind, dtype)

    def forward(self, x):
        y = _BlockMatmul.apply(x, self)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.kind} blocks"


def _unpermute_rows(blocks: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's q/k row order -> transformers' (what its GGUF loader does to the float weights)."""
    rows = blocks.shape[0]
    return blocks.reshape(n_head, rows // n_head // 2, 2, *blocks.shape[1:]).swapaxes(1, 2).reshape(blocks.shape)


def swap_in_blocks(model, gguf_path: Path) -> dict:
    """Replace every linear layer whose GGUF tensor is Q4_0 / Q4_1 / Q8_0 by a GGUFLinear over the file's bytes;
    returns counts by kind (and 'kept' for layers left in float)."""
    import gguf

    config = model.config
    if config.model_type != "llama":
        raise ModelError(f"method.name=qlora-gguf reads llama-architecture GGUF files; this base is {config.model_type}.")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tensors = {t.name: t for t in gguf.GGUFReader(str(gguf_path)).tensors}
    counts: dict[str, int] = {}
    output = model.get_output_embeddings()
    for module_name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, torch.nn.Linear) or isinstance(child, GGUFLinear) or child is output:
                continue
            full = f"{module_name}.{child_name}" if module_name else child_name
            tensor = tensors.get(names.get_name(full + ".weight", try_suffixes=(".weight",)) or "")
            kind = tensor.tensor_type.name if tensor is not None else None
            if kind not in BYTES:
                counts["kept"] = counts.get("kept", 0) + 1
                continue
            rows, width = child.out_features, child.in_features
            blocks = torch.from_numpy(tensor.data.copy()).reshape(rows, width // BLOCK, BYTES[kind])
            if full.endswith("self_attn.q_proj"):
                blocks = _unpermute_rows(blocks, config.num_attention_heads)
            elif full.endswith("self_attn.k_proj"):
                blocks = _unpermute_rows(blocks, config.num_key_value_heads)
            blocks = blocks.contiguous().to(child.weight.device)
            setattr(module, child_name, GGUFLinear(blocks, kind, width, rows, child.bias))
            counts[kind] = counts.get(kind, 0) + 1
    return counts
