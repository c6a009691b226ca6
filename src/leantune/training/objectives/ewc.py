"""Against forgetting, an extra term of every step: EWC (Kirkpatrick et al. 2017).

EWC adds lambda * sum_i F_i * (change of weight i)^2 to the loss, where F is the diagonal of the Fisher
information of the *base* model on general text: weights that general knowledge depends on are held in place,
the others are free to move. F_i is estimated as the mean squared gradient of the per-example loss (one
example at a time: squaring a batch's summed gradient would not be the Fisher). For LoRA-family methods the
change of an adapted weight matrix is the adapter's effective update (PEFT's get_delta_weight: B A times the
scaling); for full fine-tuning it is theta - theta_0 for every parameter. The Fisher is computed once per
(model content, data content, examples, method, targets, sequence length, dtype) and cached under
$LEANTUNE_HOME/fisher/; a cached one whose layers do not match the model is estimated again.

An incremental update (`train --from`, training/lineage.py) protects the parent instead of the base: the Fisher is
estimated with the parent's adapter active (on the parent's training split when ewc_data is 'parent'), and the
change is measured from the parent's adapter update, not from zero.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

try:  # what fsdp2 turns a weight into; absent where torch was built without distributed support
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover
    DTensor = None

from ...atomic import atomic_path
from ...config import PARENT_DATA
from ...data.batches import collate
from ...data.tokenize import tokenize_examples
from ...errors import ConfigError
from ...models.adapters import base_behaviour
from ...models.forward import summed_label_loss
from ...paths import leantune_home
from ...runs.fingerprint import data_content, model_fingerprint, parent_fingerprint
from ..lineage import examples_for


def adapted_layers(model) -> dict[str, torch.nn.Module]:
    """name -> PEFT LoRA-family layer (has get_delta_weight and a frozen base_layer)."""
    return {name: m for name, m in model.named_modules() if hasattr(m, "get_delta_weight") and hasattr(m, "base_layer")}


def _fisher_targets(model, full: bool) -> dict[str, torch.Tensor]:
    if full:
        return {n: p for n, p in model.named_parameters()}
    return {name: layer.base_layer.weight for name, layer in adapted_layers(model).items()}


def estimate_fisher(model, examples, pad_id: int, full: bool, adapter_active: bool = False) -> dict[str, torch.Tensor]:
    """The diagonal Fisher of the base model (adapters off), or of the model as it stands (`adapter_active`: the
    parent an update protects)."""
    targets = _fisher_targets(model, full)
    if not targets:
        raise ConfigError("forgetting.ewc_lambda needs adapted layers or full fine-tuning; this model has neither.")
    if any(not t.is_floating_point() for t in targets.values()):
        raise ConfigError("EWC cannot estimate a Fisher through a 4-bit quantised base (it has no gradient). "
                          "Use forgetting.replay_fraction with qlora, or method.name=lora for EWC.")
    saved = {n: t.requires_grad for n, t in targets.items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    for t in targets.values():
        t.requires_grad_(True)
    fisher = {n: torch.zeros_like(t, dtype=torch.float32) for n, t in targets.items()}
    try:
        with (contextlib.nullcontext() if adapter_active else base_behaviour(model)):
            for example in examples:
                summed, count = summed_label_loss(model, collate([example], pad_id))
                grads = torch.autograd.grad(summed / max(count, 1), list(targets.values()), allow_unused=True)
                for (name, _), g in zip(targets.items(), grads):
                    if g is not None:
                        fisher[name] += g.float() ** 2
    finally:
        for n, t in targets.items():
            t.requires_grad_(saved[n])
        for p in trainable:
            p.requires_grad_(True)
    return {n: f / len(examples) for n, f in fisher.items()}


def fisher_cache_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return leantune_home() / "fisher" / f"{digest}.safetensors"


def load_or_estimate_fisher(model, examples, pad_id: int, full: bool, key: dict, note=print,
                            adapter_active: bool = False) -> dict[str, torch.Tensor]:
    path = fisher_cache_path(key)
    if path.is_file():
        cached = load_file(path)
        wanted = _fisher_targets(model, full)
        if cached.keys() == wanted.keys() and all(cached[n].shape == wanted[n].shape for n in wanted):
            note(f"EWC: Fisher information from the cache ({path})")
            return cached
        note(f"EWC: the cached Fisher ({path}) does not match this model's layers; estimating it again")
    what = "of the parent's training examples, its adapter active" if adapter_active else "general-text examples"
    note(f"EWC: estimating the Fisher information on {len(examples)} {what} (once; cached)")
    fisher = estimate_fisher(model, examples, pad_id, full, adapter_active)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in fisher.items()}, tmp)
    return fisher


class EWCPenalty:
    """Built on the whole model, before any sharding (the Fisher and the anchors are whole tensors); evaluated on the
    model as it trains, which with fsdp2 holds each weight as a DTensor shard (`shard_aware`)."""

    def __init__(self, model, fisher: dict[str, torch.Tensor], strength: float, full: bool, from_start: bool = False):
        """`from_start`: the change is measured from the adapter update the model starts with (a parent's), not
        from the base's weights."""
        self.model, self.strength, self.full = model, strength, full
        self.device = next(model.parameters()).device
        self.fisher = {n: f.to(self.device) for n, f in fisher.items()}  # the cache is read on the CPU
        if full:
            params = dict(model.named_parameters())
            self.anchors = {n: params[n].detach().clone() for n in self.fisher}
        else:
            self.layers = adapted_layers(model)
            unmatched = sorted(set(self.fisher) - set(self.layers))
            if unmatched:  # dropping them would silently weaken (or zero) the penalty
                raise ConfigError(f"EWC: {len(unmatched)} Fisher entries match no adapted layer (e.g. {unmatched[0]}); "
                                  "the Fisher was estimated for other layers. Delete it and train again.")
            self.anchors = {n: _delta(self.layers[n]).detach().clone() for n in self.fisher} if from_start else {}
        self._local: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # fsdp2: this process's rows of F and anchor

    def add_to_step(self, backward) -> dict:
        """The penalty's gradient added to the step's (through `backward`, the step's loss scaling); its value
        (over every process) for the step's metrics."""
        own, total = self.terms()
        backward(own)
        return {"ewc_penalty": total}

    def __call__(self) -> torch.Tensor:
        own, _ = self.terms()
        return own

    def terms(self) -> tuple[torch.Tensor, float]:
        """(what this process back-propagates, the whole penalty's value).

        LoRA family: the adapter update B A of a layer needs whole A and B, which are small; with fsdp2 every process
        gathers them and computes the whole penalty, and the gradient each gets back is its own shard's part of the
        same whole gradient. Full fine-tuning: the penalty is a sum over weights, so each process takes the terms of
        its own shard (the whole model is never gathered for it) and the values are summed for the log."""
        total = torch.zeros((), device=self.device)
        sharded = False
        if self.full:
            params = dict(self.model.named_parameters())  # with fsdp2 these are the DTensors that replaced the weights
            for name, fisher in self.fisher.items():
                p = params[name]
                if _is_dtensor(p):
                    sharded = True
                    fisher_local, anchor_local = self._shard_of(name, p)
                    change = p.to_local() - anchor_local
                    total = total + (fisher_local.to(change.dtype) * change.pow(2)).sum()
                else:
                    change = p - self.anchors[name]
                    total = total + (fisher.to(change.dtype) * change.pow(2)).sum()
        else:
            for name, fisher in self.fisher.items():
                change = _delta(self.layers[name])
                if name in self.anchors:
                    change = change - self.anchors[name]
                total = total + (fisher.to(change.dtype) * change.pow(2)).sum()
        own = self.strength * total
        value = own.item()
        if sharded:
            import torch.distributed as dist

            summed = torch.tensor([value], dtype=torch.float64)
            dist.all_reduce(summed)
            value = summed.item()
        return own, value

    def _shard_of(self, name: str, param) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's part of a weight's Fisher and anchor, cut the way FSDP2 cut the weight (once)."""
        if name not in self._local:
            from torch.distributed.tensor import distribute_tensor

            self._local[name] = tuple(distribute_tensor(t.to(param.device), param.device_mesh, param.placements).to_local()
                                      for t in (self.fisher[name], self.anchors[name]))
        return self._local[name]


def _is_dtensor(t) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def _delta(layer) -> torch.Tensor:
    """PEFT's adapter update of a LoRA-family layer (get_delta_weight). Sharded by fsdp2, A and B are gathered
    first (`full_tensor`: differentiable, and its gradient is this process's slice of the whole one)."""
    adapter = layer.active_adapters[0]
    a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    if not (_is_dtensor(a) or _is_dtensor(b)):
        return layer.get_delta_weight(adapter)
    from peft.utils.other import transpose

    a, b = (w.full_tensor() if _is_dtensor(w) else w for w in (a, b))
    dtype = b.dtype
    cast = b.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16)  # as get_delta_weight does
    out = transpose((b.float() if cast else b) @ (a.float() if cast else a), layer.fan_in_fan_out) * layer.scaling[adapter]
    return out.to(dtype) if cast else out


def ewc_term(model, tokenizer, config, compute_dtype, note) -> EWCPenalty:
    """The EWC term of a run: the Fisher on forgetting.ewc_data, from the cache when the same model content, data
    content and settings estimated it before. An update (model.parent) protects its parent: the Fisher is taken
    with the parent adapter active and the change is measured from it."""
    forget, d = config.forgetting, config.data
    examples = examples_for(forget.ewc_data, config, "forgetting.ewc_data")[: forget.ewc_examples]
    general, _ = tokenize_examples(tokenizer, examples, d.max_seq_len, "all_assistant", d.truncation)
    full = config.method.name == "full"
    parent = parent_fingerprint(config.model.parent) if config.model.parent else None
    data = parent if forget.ewc_data == PARENT_DATA else data_content(forget.ewc_data, "forgetting.ewc_data")
    # by content: an edited model or data file must not reuse the Fisher of the old one
    key = {"model": model_fingerprint(config.model.base), "examples": forget.ewc_examples, "full": full,
           "data": data, "targets": config.method.target_modules, "max_seq_len": d.max_seq_len,
           "truncation": d.truncation, "dtype": str(compute_dtype), "method": config.method.name}
    if parent:  # the Fisher of the parent, not of the base
        key["adapter"] = parent
    fisher = load_or_estimate_fisher(model, general, tokenizer.pad_token_id, full, key, note, adapter_active=bool(parent))
    return EWCPenalty(model, fisher, forget.ewc_lambda, full, from_start=bool(parent))
