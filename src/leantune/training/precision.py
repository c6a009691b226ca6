"""What a run keeps its weights in and what it computes in.

Weights that train are kept in float32 wherever 'auto' would store them in bf16 (CUDA): a bf16 weight cannot
take an AdamW update smaller than its spacing (~0.4% of the weight), and full fine-tuning of SmolLM2 on an H100
learned nothing in 40 steps that way (50% balanced accuracy on every seed; bench/results/quality.json was
re-measured after this fix). The forward and backward then run under bf16 autocast, so the matmuls stay bf16.
Frozen weights (LoRA and its family: only the adapter trains, and PEFT keeps it in float32) stay in bf16.

Cards without bf16 (T4, V100) compute in fp16 under autocast with a dynamic loss scaler (`LossScaling`): fp16 has
5 exponent bits, so a gradient below ~6e-8 flushes to zero unless the loss is multiplied up before backward; the
gradients are divided back before clipping and the optimizer, and a step whose gradients overflowed is skipped and
the scale halved. Full fine-tuning keeps float32 weights there too; LoRA's frozen base stays in fp16.

`training.autocast=bf16` applies the same split on a CPU: matmuls in bf16, every weight and AdamW update in float32
(unlike model.dtype=bfloat16, which stores the weights in bf16 and learned worse on the demo). It is opt-in there:
on this project's AVX512-BF16 machine it bought little for a SmolLM2 LoRA step, whose output layer already runs only
at labelled positions, and its 14-step eval loss was worse (bench/results/throughput_autocast.json); `auto` keeps
CPUs in float32.
"""

from __future__ import annotations

import contextlib

import torch

from ..errors import ConfigError
from ..models.loading import cpu_has_bf16, resolve_dtype


def weights_and_autocast(dtype: str, device: str, trains_base_weights: bool,
                         setting: str = "auto") -> tuple[str, torch.dtype | None]:
    """(the dtype to load the weights in, the autocast dtype or None) for model.dtype and training.autocast."""
    if setting == "off":
        return dtype, None
    if setting == "bf16":
        if device.startswith("cuda") and not torch.cuda.is_bf16_supported():
            raise ConfigError("training.autocast=bf16: this GPU has no bf16; set it to auto (fp16 with loss scaling) "
                              "or off.")
        return ("float32" if dtype == "auto" else dtype), torch.bfloat16
    if setting == "fp16":
        return _fp16_weights(dtype, device, trains_base_weights), torch.float16
    if dtype != "auto":
        return dtype, None  # an explicit dtype is what the user wants the model computed in
    if device.startswith("cuda"):
        if resolve_dtype("auto", device) == torch.float16:  # no bf16 on this card
            return _fp16_weights(dtype, device, trains_base_weights), torch.float16
        return ("float32", torch.bfloat16) if trains_base_weights else (dtype, None)
    return dtype, None  # a CPU computes in float32 unless asked: see the module docstring for what bf16 measured


def _fp16_weights(dtype: str, device: str, trains_base_weights: bool) -> str:
    """Weights under fp16 autocast: float32 where they train (AdamW's updates), fp16 on a GPU where they are frozen."""
    if dtype != "auto":
        return dtype
    return "float16" if device.startswith("cuda") and not trains_base_weights else "float32"


class LossScaling:
    """What backward and the optimizer step go through: plain without fp16 autocast, loss-scaled with it.

    Every backward of a step (each micro-batch's loss, a method's regulariser, EWC's penalty) goes through
    `backward`, so all of a step's gradients carry the same scale; `unscale` divides them back before clipping;
    `step` skips the optimizer when they overflowed and says so. Under fsdp2 the check for overflow is agreed
    over every process (torch's ShardedGradScaler), so all skip the same step."""

    def __init__(self, autocast_dtype: torch.dtype | None, device: str, sharded: bool = False,
                 initial_scale: float = 2.0**16):
        self.scaler = None
        if autocast_dtype == torch.float16:
            if sharded:
                from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

                self.scaler = ShardedGradScaler(device=device.split(":")[0], init_scale=initial_scale)
            else:
                self.scaler = torch.amp.GradScaler(device.split(":")[0], init_scale=initial_scale)

    @property
    def on(self) -> bool:
        return self.scaler is not None

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def unscale(self, optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer) -> bool:
        """The optimizer's step unless the gradients overflowed; whether it stepped. Updates the scale."""
        if self.scaler is None:
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return not self.scaler.get_scale() < before  # the scale backs off exactly when a step is skipped

    def scale(self) -> float | None:
        return None if self.scaler is None else float(self.scaler.get_scale())

    def state_dict(self) -> dict:
        return {} if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def autocast_note(setting: str, autocast_dtype: torch.dtype | None, device: str) -> str | None:
    """What the log says about autocast: fp16's loss scaling anywhere; on a CPU that it is on, and when the cores
    lack the hardware for it."""
    if autocast_dtype == torch.float16:
        note = "fp16 autocast with dynamic loss scaling: weights that train and their updates stay in float32"
        if device == "cpu":
            note += " (on a CPU fp16 matmuls are mostly emulated and slow: this is for checking a GPU setup)"
        return note
    if autocast_dtype is None or device != "cpu":
        return None
    if not cpu_has_bf16():
        return ("[yellow]training.autocast=bf16 on a CPU without AVX512-BF16 or AMX: bf16 matmuls are emulated there "
                "and run several times slower than float32; set training.autocast=auto[/]")
    return f"training.autocast={setting}: matmuls in bf16 under autocast, weights and their updates in float32"


def autocast(device: str, dtype: torch.dtype | None, cache: bool = True):
    """The step's autocast. `cache=False` under fsdp2: autocast keeps the cast of a float32 weight keyed by its
    storage's address for the whole context, and FSDP2 frees a layer's gathered weights after its forward and
    gathers them again later, so with two micro-batches in one step a cast was served for storage that had
    since been freed and reused (measured: 2-process fsdp2 under fp16 drifted 0.2% from one process by its second
    step, and matched it to fp16 rounding with the cache off; tests/test_distributed.py)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=dtype, cache_enabled=cache)
