"""Forward passes that compute the output layer only where a label is.

For chat data most positions are prompt tokens (for sms-spam ~95%), and the output layer
(hidden x vocabulary, 49k wide for SmolLM2) plus its fp32 logits is a large share of a step's time and
memory. We run the decoder, keep the hidden states at positions whose next token is a label, and apply
the output layer to those rows alone. The loss is identical to the full-logits one.

Some architectures change the logits after the output layer inside their `*ForCausalLM.forward`, which this path
does not call: Gemma 2/3 soft-cap them (tanh(x / c) * c), Cohere multiplies them by `logit_scale`, Granite
divides them by `logits_scaling`. `FINAL_LOGITS` names what each accepted model type does, and a model type it
does not list is refused rather than trained on silently wrong logits (tests/test_forward.py checks every
listed type against the model's own forward and loss).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..data.batches import SEGMENT_LENGTHS, SHARED_PREFIX
from ..data.tokenize import IGNORE
from ..errors import ModelError
from .segment_attention import uses_segment_attention
from .unwrap import transformers_model


def _softcap(config):
    cap = getattr(config, "final_logit_softcapping", None)
    return (lambda logits: torch.tanh(logits / cap) * cap) if cap else None


def _scale(config):
    return lambda logits: logits * config.logit_scale


def _divide(config):
    return lambda logits: logits / config.logits_scaling


# model_type -> what its *ForCausalLM.forward does to lm_head's output (None: nothing)
FINAL_LOGITS = {
    "llama": None, "mistral": None, "mixtral": None, "qwen2": None, "qwen3": None, "qwen3_moe": None, "phi3": None,
    "gemma": None, "gemma2": _softcap, "gemma3_text": _softcap, "cohere": _scale, "cohere2": _scale, "granite": _divide,
}


class OutputLayer(torch.nn.Module):
    """The model's output layer followed by its architecture's final transform of the logits."""

    def __init__(self, head, transform):
        super().__init__()
        self.head, self.transform = head, transform

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.head(hidden)
        return logits if self.transform is None else self.transform(logits)


def final_logit_transform(config):
    model_type = getattr(config, "model_type", "")
    if model_type not in FINAL_LOGITS:
        raise ModelError(f"leantune does not know how a '{model_type}' model computes its final logits (some "
                         f"architectures scale or soft-cap them), so it would train and score it wrongly. Supported "
                         f"model types: {', '.join(sorted(FINAL_LOGITS))}.")
    make = FINAL_LOGITS[model_type]
    return make(config) if make else None


class ForwardRoot(torch.nn.Module):
    """The model under one module whose forward runs any pass of this file. The passes call the decoder and the
    output layer directly, not the model's forward; FSDP2 gathers the weights outside the decoder layers
    (embeddings, final norm, output layer - one tensor when tied) and starts the gradient reduction from hooks on
    its root module's forward, so a sharded model's root is this module and every pass goes through it."""

    def __init__(self, model):
        super().__init__()
        self.wrapped = model

    def forward(self, compute, *args, **kwargs):
        return compute(self.wrapped, *args, **kwargs)


def unwrapped(model):
    """The model a ForwardRoot holds (or the model itself)."""
    return model.wrapped if isinstance(model, ForwardRoot) else model


def _through_root(compute):
    @functools.wraps(compute)
    def run(model, *args, **kwargs):
        return model(compute, *args, **kwargs) if isinstance(model, ForwardRoot) else compute(model, *args, **kwargs)

    return run


def decoder_and_head(model):
    """(the decoder stack, the output layer with the architecture's final logit transform)."""
    base = transformers_model(model)
    return base.get_decoder(), OutputLayer(base.get_output_embeddings(), final_logit_transform(base.config))


def check_architecture(model) -> None:
    """Refuse a model whose logits this module cannot compute (before any time is spent on it)."""
    final_logit_transform(transformers_model(model).config)


@_through_root
def label_hidden(model, batch: dict[str, torch.Tensor]):
    """(hidden states [n, d], targets [n], row index [n]) at every labelled position: what the output layer sees."""
    decoder, _ = decoder_and_head(model)
    device = next(model.parameters()).device
    # packed rows carry position_ids and no attention mask (see data.batches.collate)
    extra = {k: batch[k].to(device) for k in ("attention_mask", "position_ids") if k in batch}
    if SEGMENT_LENGTHS in batch and uses_segment_attention(model):
        extra[SEGMENT_LENGTHS] = batch[SEGMENT_LENGTHS]  # handed to every attention call
        extra[SHARED_PREFIX] = batch.get(SHARED_PREFIX, 0)
    elif SHARED_PREFIX in batch:
        raise ModelError("A micro-batch with a shared prefix needs leantune's per-example attention "
                         "(models/segment_attention.py), which this model does not use. Set data.share_prefix=false.")
    hidden = decoder(input_ids=batch["input_ids"].to(device), use_cache=False, **extra).last_hidden_state
    targets = batch["labels"][:, 1:].to(device)
    keep = targets != IGNORE
    rows = torch.arange(targets.shape[0], device=device).unsqueeze(1).expand_as(targets)[keep]
    return hidden[:, :-1][keep], targets[keep], rows


@_through_root
def label_logits(model, batch: dict[str, torch.Tensor]):
    """(logits [n, vocab] in fp32, targets [n], row index [n]) for every labelled position of the batch."""
    hidden, targets, rows = label_hidden(model, batch)
    _, head = decoder_and_head(model)
    return head(hidden).float(), targets, rows


def _chunk_loss(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


@_through_root
def summed_label_loss(model, batch, chunk: int = 0) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over labelled positions, and how many there were.

    With `chunk` > 0 the output layer and loss run `chunk` positions at a time under activation checkpointing,
    so at most chunk x vocabulary fp32 logits exist at once (recomputed in the backward pass) instead of
    n_labelled x vocabulary: for long answers and 128k+ vocabularies that is gigabytes. Same loss and
    gradients (tested)."""
    if not chunk:
        logits, targets, _ = label_logits(model, batch)
        return F.cross_entropy(logits, targets, reduction="sum"), int(targets.numel())

    hidden, targets, _ = label_hidden(model, batch)
    _, head = decoder_and_head(model)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(targets), chunk):
        part = slice(start, start + chunk)
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_loss, head, hidden[part], targets[part], use_reentrant=False)
        else:
            total = total + _chunk_loss(head, hidden[part], targets[part])
    return total, int(targets.numel())


@_through_root
def sequence_logprobs(model, batch) -> torch.Tensor:
    """Log-probability of each row's labelled tokens, summed per row: log p(answer | prompt)."""
    logits, targets, rows = label_logits(model, batch)
    token_lp = torch.log_softmax(logits, dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    out = torch.zeros(batch["input_ids"].shape[0], dtype=torch.float32, device=token_lp.device)
    return out.index_add_(0, rows, token_lp)
