"""Greedy answers for many prompts at once, stopping at the end of the assistant's turn (exact match, token F1)."""

from __future__ import annotations

import torch

from ..data.records import ChatExample
from ..data.tokenize import end_of_turn_ids, render_ids
from ..models.adapters import eval_mode


@torch.no_grad()
def greedy_answers(model, tokenizer, examples: list[ChatExample], max_new_tokens: int = 64, batch_size: int = 16) -> list[str]:
    """The model's reply to each example's prompt (its own answer is ignored), decoded without special tokens.

    Prompts are left-padded in length-sorted batches so each batch's replies start at the same column."""
    eot = sorted(end_of_turn_ids(tokenizer))
    device = next(model.parameters()).device
    prompts = [render_ids(tokenizer, ex.prompt, add_generation_prompt=True) for ex in examples]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies: list[str] = [""] * len(prompts)
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in chunk)
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(chunk):
                ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]) :] = 1
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=eot, pad_token_id=tokenizer.pad_token_id)
            for row, i in enumerate(chunk):
                replies[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True).strip()
    return replies
