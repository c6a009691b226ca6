"""Mixed-adapter batches in two matrix products per layer, whatever the number of adapters in the batch.

PEFT's mixed-batch path (`adapter_names`) loops over the adapters present in the batch in every LoRA layer,
gathering each one's rows and scattering its update back: with 4 adapters among 4 rows it measured no faster
than serving the rows one at a time (bench/serve.py). Here every loaded adapter's A and B (scaling folded into B)
live in one zero-padded stack per layer with a scale per adapter, index 0 being "no adapter"; a batch gathers
each row's matrices and applies them with two batched products (the gather-matmul of Punica's BGMV / S-LoRA, written in plain torch).

The stacks are the adapters' only storage: PEFT's lora_A / lora_B weights are re-pointed to views into them, so
loaded adapters take no extra memory and PEFT's own paths (one active adapter, merging) keep working."""

from __future__ import annotations

import contextlib
import types

import torch


def _lora_layers(model):
    from peft.tuners.lora.layer import Linear as LoraLinear

    return [m for m in model.modules() if isinstance(m, LoraLinear)]


class StackedLoRA:
    def __init__(self, peft_model):
        self.model = peft_model
        self.index: dict[str, int] = {}  # adapter name -> row of the stacks (0: none)
        self.rows: torch.Tensor | None = None  # per batch row: its adapter's index, during a mixed forward
        self._last = None  # (indices, tensor) of the previous batch: the gathered matrices are kept for it
        self.layers = _lora_layers(peft_model)
        for layer in self.layers:
            self._wrap(layer)

    def _wrap(self, layer) -> None:
        original = layer.forward
        owner = self

        def forward(self_layer, x, *args, **kwargs):
            if owner.rows is None:
                return original(x, *args, **kwargs)
            result = self_layer.base_layer(x, *args, **kwargs)
            cached = getattr(self_layer, "_gathered", None)
            if cached is None or cached[0] is not owner.rows:
                # each row's A^T and (scaled) B^T, gathered once per batch composition, not once per token
                a_t = self_layer._stack_a[owner.rows].transpose(1, 2)  # [batch, in, r]
                b_t = (self_layer._stack_b[owner.rows] * self_layer._stack_scale[owner.rows].view(-1, 1, 1)).transpose(1, 2)
                cached = self_layer._gathered = (owner.rows, a_t, b_t)
            _, a_t, b_t = cached
            return result + torch.bmm(torch.bmm(x.to(a_t.dtype), a_t), b_t).to(result.dtype)

        layer.forward = types.MethodType(forward, layer)

    def rebuild(self, names: list[str]) -> None:
        """Stack the named adapters (vanilla LoRA only: DoRA and other variants are served alone)."""
        for layer in _lora_layers(self.model):
            if not hasattr(layer, "_stack_a"):
                self._wrap(layer)
                self.layers.append(layer)
            present = [n for n in names if n in layer.lora_A]
            rank = max([layer.lora_A[n].weight.shape[0] for n in present], default=1)
            any_a = layer.lora_A[present[0]].weight if present else None
            dtype = any_a.dtype if any_a is not None else torch.float32
            device = any_a.device if any_a is not None else torch.device("cpu")
            stack_a = torch.zeros(len(names) + 1, rank, layer.in_features, dtype=dtype, device=device)
            stack_b = torch.zeros(len(names) + 1, layer.out_features, rank, dtype=dtype, device=device)
            scale = torch.zeros(len(names) + 1, dtype=dtype, device=device)
            for i, name in enumerate(names, start=1):
                if name not in layer.lora_A:
                    continue
                a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
                r = a.shape[0]
                stack_a[i, :r] = a.detach()
                stack_b[i, :, :r] = b.detach()
                scale[i] = layer.scaling[name]
                # PEFT's weights become views of the stack: no second copy of any adapter
                layer.lora_A[name].weight.data = stack_a[i, :r]
                layer.lora_B[name].weight.data = stack_b[i, :, :r]
            layer._stack_a, layer._stack_b, layer._stack_scale = stack_a, stack_b, scale
        self.index = {name: i for i, name in enumerate(names, start=1)}
        self._last = None  # indices changed meaning: gather again
        for layer in self.layers:
            layer._gathered = None

    @contextlib.contextmanager
    def batch(self, names: list[str], device):
        """Run a forward pass with row i using adapter names[i] ('__base__': none). The same composition as the
        previous pass reuses its gathered matrices (a decode step after a decode step)."""
        wanted = [self.index.get(n, 0) for n in names]
        if self._last is None or self._last[0] != wanted:
            self._last = (wanted, torch.tensor(wanted, device=device))
        self.rows = self._last[1]
        try:
            yield
        finally:
            self.rows = None
