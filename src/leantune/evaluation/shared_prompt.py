"""Scoring several replies to one prompt with the prompt run once (KV-cache reuse).

Multiple choice asks for log p(choice | prompt) for k choices of one question. Scoring the k (prompt + choice)
rows separately runs the prompt k times; here each prompt runs once, its key/value cache is repeated for its
choices, and only the choices' tokens go through the model again. For trivia on SmolLM2 the prompt (with the
template's system text) is ~80% of a row's tokens, so this removes most of the work (bench/eval_speed.py).

Several questions go through together: prompts right-padded in one batch; choices right-padded in a second
batch over the repeated cache, with an attention mask that hides the prompts' padding and position ids that
continue each prompt's own length (so rotary positions are the ones the unshared rows would have had).
The scores equal the unshared ones within float noise (tests/test_evaluate.py)."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from ..data.tokenize import IGNORE, TokenizedExample
from ..models.forward import decoder_and_head


def split_at_answer(row: TokenizedExample) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids, continuation ids, continuation labels): the prompt is everything before the first label."""
    first = next(i for i, label in enumerate(row.labels) if label != IGNORE)
    return row.input_ids[:first], row.input_ids[first:], row.labels[first:]


def _right_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def _select_rows(cache, index: torch.Tensor):
    """A new cache holding the given batch rows of `cache` (rows may repeat); `cache` is left as it is."""

    picked = DynamicCache()
    for layer_idx, layer in enumerate(cache.layers):
        picked.update(layer.keys.index_select(0, index), layer.values.index_select(0, index), layer_idx)
    return picked


@torch.no_grad()
def score_shared_prompts(model, pad_id: int, groups: list[list[TokenizedExample]], per_token: bool,
                         rows_per_batch: int = 16, tokens_per_batch: int = 512) -> list[list[float]]:
    """For each group (rows that differ only after a common prompt), each row's summed (or per-token mean)
    log-probability of its labelled tokens.

    The groups' prompts run as one batch; the continuations then run sorted by length across all groups (answers
    of one question often differ 10x in length: padding them to each other would cost more than the shared
    prompt saves), in batches of at most `rows_per_batch` rows and `tokens_per_batch` padded tokens, each over
    the cache rows of its own prompts (one-word answers go 64 at a time, sentences a dozen)."""

    decoder, head = decoder_and_head(model)
    device = next(model.parameters()).device
    split = [[split_at_answer(r) for r in group] for group in groups]
    prompts = [parts[0][0] for parts in split]
    prompt_ids, prompt_mask = _right_pad(prompts, pad_id)
    cache = DynamicCache()
    out = decoder(input_ids=prompt_ids.to(device), attention_mask=prompt_mask.to(device), past_key_values=cache, use_cache=True)
    lengths = torch.tensor([len(p) for p in prompts])
    last_hidden = out.last_hidden_state[torch.arange(len(prompts), device=device), (lengths - 1).to(device)]
    first_logp = torch.log_softmax(head(last_hidden).float(), dim=-1).cpu()  # predicts each reply's first token

    rows = [(g, c, lab) for g, parts in enumerate(split) for _, c, lab in parts]
    totals = torch.zeros(len(rows))
    for r, (g, ids, labs) in enumerate(rows):
        if labs[0] != IGNORE:
            totals[r] += first_logp[g, ids[0]]
    order = sorted(range(len(rows)), key=lambda r: len(rows[r][1]))
    batches, current = [], []
    for r in order:  # lengths only grow along `order`, so the newest row sets the batch's width
        if current and (len(current) == rows_per_batch or (len(current) + 1) * len(rows[r][1]) > tokens_per_batch):
            batches.append(current)
            current = []
        current.append(r)
    batches += [current] if current else []
    for batch in batches:
        owners = torch.tensor([rows[r][0] for r in batch])
        cont_ids, cont_mask = _right_pad([rows[r][1] for r in batch], pad_id)
        if cont_ids.shape[1] < 2:
            continue  # one-token replies: already scored from the prompt's last position
        mask = torch.cat([prompt_mask[owners], cont_mask], dim=1)
        positions = lengths[owners].unsqueeze(1) + torch.arange(cont_ids.shape[1]).unsqueeze(0)
        hidden = decoder(input_ids=cont_ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                         past_key_values=_select_rows(cache, owners.to(device)), use_cache=True).last_hidden_state
        # every labelled position at once: position j of a reply predicts its token j + 1
        at_row, at_col, targets = [], [], []
        for b, r in enumerate(batch):
            _, ids, labs = rows[r]
            for j in range(len(ids) - 1):
                if labs[j + 1] != IGNORE:
                    at_row.append(b), at_col.append(j), targets.append(ids[j + 1])
        if at_row:
            logp = torch.log_softmax(head(hidden[torch.tensor(at_row), torch.tensor(at_col)]).float(), dim=-1)
            picked = logp.gather(1, torch.tensor(targets, device=device).unsqueeze(1)).squeeze(1).cpu()
            totals.index_add_(0, torch.tensor([batch[b] for b in at_row]), picked)

    scores: list[list[float]] = [[] for _ in groups]
    for r, (g, _, labs) in enumerate(rows):
        n_labels = sum(1 for lab in labs if lab != IGNORE)
        scores[g].append(totals[r].item() / max(n_labels, 1) if per_token else totals[r].item())
    return scores
