"""A LoRA linear layer as one autograd function: y = x W^T + b + s * (dropout(x) A^T) B^T, W frozen.

PEFT builds the layer from modules (dropout, lora_A, lora_B, a multiply, an add) and autograd keeps what each
of them needs: with LoRA dropout on, every adapted layer keeps a dropped-out float copy of its input and the
float noise that made it (q, k and v each their own, of the same input), two full-size copies per layer. This
function keeps the input itself (which the layers around it hold anyway), the dropout mask as one byte a value,
and the small x A^T (r columns); backward rebuilds the dropped-out input from the two. It also skips the
full-size multiply by s in backward (s goes onto the r-column tensors instead).

The mask is drawn four values to one 64-bit random number (`dropout_keep_mask`): torch's CPU dropout draws one
Bernoulli number per value, and at LoRA's sizes that draw was most of what dropout cost (SmolLM2-135M, 2 cores:
~8 ns a value; dropout 0.05 took ~1.1 s of a 2.4 s forward, timed by hand). With this draw dropout costs ~13% of a
step (bench/results/throughput.json, levers: dropout 0 ran 1.15x). Given the same mask, the
arithmetic is PEFT's operation for operation, so losses and gradients are PEFT's to float rounding
(tests/test_lora_autograd.py draws PEFT's masks to check it).

Only the forward of PEFT's own `lora.Linear` changes (the module keeps its class's parents, parameters, names
and saving), and only where the layer is plain: one active adapter, unmerged, over a frozen `nn.Linear`, without
DoRA or a LoRA bias. Everything else - adapters switched off for a reference pass, QLoRA's 4-bit base, DoRA,
mixed-adapter batches - goes through PEFT's forward unchanged. A plain layer may keep its adapter in another dtype
than its base: on a GPU a LoRA run's frozen base is bf16 and PEFT's adapter float32, and the function computes the
adapter in float32 on a cast of x as PEFT does. (Until that case was taken, every GPU LoRA run fell back to PEFT's
forward, which kept a float32 dropped-out copy of each adapted layer's input: an 8B model's plan without
checkpointing was 15% under its measured peak, bench/results/gpu_mfu_before_fixes.json.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as PeftLoRALinear


def dropout_keep_mask(x: torch.Tensor, p: float) -> tuple[torch.Tensor | None, float]:
    """(which values of x dropout keeps, the share kept): each value dropped when a uniform 16-bit number, four of
    them cut from each 64-bit random draw of torch's generator (so seeded and restored with it), falls below
    p * 65536; p is thereby rounded to a multiple of 1/65536 and the kept values are scaled by the exact share."""
    threshold = round(p * 65536)
    if threshold == 0:
        return None, 1.0
    words = torch.randint(-(2**63), 2**63 - 1, ((x.numel() + 3) // 4,), dtype=torch.int64, device=x.device)
    fields = words.view(torch.int16)[: x.numel()].view(x.shape)
    return fields >= threshold - 32768, 1 - threshold / 65536


class LoRALinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, p: float):
        # The adapter may be kept in another dtype than the base (PEFT keeps it in float32 over a frozen 16-bit base
        # on a GPU): PEFT casts x to the adapter's dtype, adds the two outputs with type promotion and returns x's
        # dtype. The same order here; with one dtype every cast below is a no-op.
        x_adapter = x.to(lora_a.dtype)
        keep, kept_share = dropout_keep_mask(x_adapter, p) if p > 0 else (None, 1.0)
        # x * (mask / share): torch's dropout's own order of operations, so a PEFT mask gives PEFT's values
        dropped = x_adapter if keep is None else x_adapter * keep.to(x_adapter.dtype).div_(kept_share)
        down = F.linear(dropped, lora_a)
        out = F.linear(x, weight, bias)
        adapter_out = F.linear(down, lora_b) * scaling
        out = out.add_(adapter_out) if adapter_out.dtype == out.dtype else (out + adapter_out).to(x.dtype)
        # x itself, not its cast: the layers around it keep x anyway, so only the byte mask and x A^T are extra
        ctx.save_for_backward(x, weight, lora_a, lora_b, keep, down)
        ctx.scaling, ctx.kept_share = scaling, kept_share
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, lora_a, lora_b, keep, down = ctx.saved_tensors
        s, kept_share = ctx.scaling, ctx.kept_share
        needs_x, _, needs_bias, needs_a, needs_b = ctx.needs_input_grad[:5]
        grad_x = grad_bias = grad_a = grad_b = None
        grad_adapter = grad_out.to(lora_b.dtype)  # what the promoting add hands the adapter's branch
        # the gradient reaching x A^T, with s applied to r columns instead of the full output width
        grad_down = (grad_adapter @ lora_b) * s
        # the mask as dropout's factors (0 or 1/share), built once for both uses below
        factors = None if keep is None else keep.to(lora_a.dtype).div_(kept_share)
        if needs_x:
            through_adapter = grad_down @ lora_a
            if factors is not None:
                through_adapter *= factors
            grad_x = grad_out @ weight
            grad_x += through_adapter.to(grad_x.dtype)  # the cast of x to the adapter's dtype, backwards
        if needs_a:
            x_adapter = x.to(lora_a.dtype)
            dropped = x_adapter if factors is None else x_adapter * factors
            grad_a = grad_down.reshape(-1, grad_down.shape[-1]).T @ dropped.reshape(-1, dropped.shape[-1])
        if needs_b:
            grad_b = (grad_adapter.reshape(-1, grad_adapter.shape[-1]).T @ down.reshape(-1, down.shape[-1])) * s
        if needs_bias:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        return grad_x, None, grad_bias, grad_a, grad_b, None, None


class LeantuneLoRALinear(PeftLoRALinear):
    """PEFT's LoRA linear layer whose forward, when the layer is plain, is `LoRALinearFunction`. Assigned to
    existing layers' `__class__` by `use_lora_autograd` (never constructed), so it stays a `lora.Linear` to
    PEFT: saving, merging, switching adapters off."""

    def forward(self, x, *args, **kwargs):
        parts = self._plain_parts(x, args, kwargs)
        if parts is None:
            return super().forward(x, *args, **kwargs)
        weight, bias, lora_a, lora_b, scaling, p = parts
        device = x.device.type
        if torch.is_autocast_enabled(device):
            # what autocast does to each F.linear of PEFT's path, done once at the door: compute in its dtype
            dtype = torch.get_autocast_dtype(device)
            x, weight, lora_a, lora_b = x.to(dtype), weight.to(dtype), lora_a.to(dtype), lora_b.to(dtype)
            bias = None if bias is None else bias.to(dtype)
            with torch.autocast(device, enabled=False):
                return LoRALinearFunction.apply(x, weight, bias, lora_a, lora_b, scaling, p)
        if x.dtype != weight.dtype or lora_a.dtype != lora_b.dtype:
            return super().forward(x, *args, **kwargs)
        return LoRALinearFunction.apply(x, weight, bias, lora_a, lora_b, scaling, p)

    def _plain_parts(self, x, args, kwargs):
        """(W, b, A, B, s, dropout p) when one plain adapter is active; None for anything PEFT must handle."""
        if args or kwargs or self.disable_adapters or self.merged or len(self.active_adapters) != 1:
            return None
        name = self.active_adapters[0]
        if name not in self.lora_A or name in self.lora_variant or self.lora_B[name].bias is not None:
            return None
        base = self.base_layer
        if type(base) is not torch.nn.Linear or base.weight.requires_grad or self.fan_in_fan_out:
            return None
        dropout = self.lora_dropout[name]
        p = dropout.p if isinstance(dropout, torch.nn.Dropout) and dropout.training else 0.0
        return base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight, float(self.scaling[name]), p


def use_lora_autograd(model) -> int:
    """Give every plain PEFT LoRA linear layer of `model` the one-function forward; the number of layers changed."""
    changed = 0
    for module in model.modules():
        if type(module) is PeftLoRALinear and type(module.base_layer) is torch.nn.Linear \
                and not any(module.use_dora.values()):
            module.__class__ = LeantuneLoRALinear
            changed += 1
    return changed
