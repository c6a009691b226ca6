"""Forward passes that compute the output layer only where a label is.

For chat data most positions are prompt tokens (for sms-spam ~95%), and the output layer
(hidden x vocabulary, 49k wide for SmolLM2) plus its fp32 logits is a large share of a step's time and
memory. We run the decoder, keep the hidden states at positions whose next token is a label, and apply
the output layer to those rows alone. The loss is identical to the full-logits one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.tokenize import IGNORE


def decoder_and_head(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def label_hidden(model, batch: dict[str, torch.Tensor]):
    """(hidden states [n, d], targets [n], row index [n]) at every labelled position: what the output layer sees."""
    decoder, _ = decoder_and_head(model)
    device = next(model.parameters()).device
    # packed rows carry position_ids and no attention mask (see data.batches.collate)
    extra = {k: batch[k].to(device) for k in ("attention_mask", "position_ids") if k in batch}
    hidden = decoder(input_ids=batch["input_ids"].to(device), use_cache=False, **extra).last_hidden_state
    targets = batch["labels"][:, 1:].to(device)
    keep = targets != IGNORE
    rows = torch.arange(targets.shape[0], device=device).unsqueeze(1).expand_as(targets)[keep]
    return hidden[:, :-1][keep], targets[keep], rows


def label_logits(model, batch: dict[str, torch.Tensor]):
    """(logits [n, vocab] in fp32, targets [n], row index [n]) for every labelled position of the batch."""
    hidden, targets, rows = label_hidden(model, batch)
    _, head = decoder_and_head(model)
    return head(hidden).float(), targets, rows


def _chunk_loss(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def summed_label_loss(model, batch, chunk: int = 0) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over labelled positions, and how many there were.

    With `chunk` > 0 the output layer and loss run `chunk` positions at a time under activation checkpointing,
    so at most chunk x vocabulary fp32 logits exist at once (recomputed in the backward pass) instead of
    n_labelled x vocabulary: for long answers and 128k+ vocabularies that is gigabytes. Same loss and
    gradients (tested)."""
    if not chunk:
        logits, targets, _ = label_logits(model, batch)
        return F.cross_entropy(logits, targets, reduction="sum"), int(targets.numel())
    from torch.utils.checkpoint import checkpoint

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


def sequence_logprobs(model, batch) -> torch.Tensor:
    """Log-probability of each row's labelled tokens, summed per row: log p(answer | prompt)."""
    logits, targets, rows = label_logits(model, batch)
    token_lp = torch.log_softmax(logits, dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    out = torch.zeros(batch["input_ids"].shape[0], dtype=torch.float32, device=token_lp.device)
    return out.index_add_(0, rows, token_lp)
