"""Attention for a packed micro-batch laid out as one row: each example attends within itself, one call each.

With packing, a micro-batch's examples are concatenated. Laid out in several rows of up to max_seq_len, the rows
are padded to the longest (on short, even chat rows ~20% of the token slots: tweets-sentiment's 8 examples of ~65
tokens make 3 rows of ~215), and attention runs over each whole row under a block-diagonal mask: the masked-out
blocks are computed and thrown away. Laid out as a single row there is no padding at all - every linear layer,
norm and activation sees only real tokens - and this function runs scaled-dot-product attention once per example
with a plain causal mask, so no work is spent across example boundaries.

It is registered with transformers as its own attention implementation. The model's decoder is called with
SEGMENT_LENGTHS (the examples' lengths, in order, which sum to the row); transformers hands that keyword to
every attention call. Without it (generation, an unpacked batch), or for attention this function does not
reproduce (soft-capped logits, attention sinks, a sliding window shorter than an example), it calls transformers'
own SDPA attention with the mask transformers built, which is exact for a packed row too. The result is the
masked SDPA's to float rounding (tests/test_segment_attention.py); nothing of it is saved with a model
(transformers does not write the implementation's name into config.json).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..data.batches import SEGMENT_LENGTHS, SHARED_PREFIX
from ..errors import ModelError
from .unwrap import transformers_model

NAME = "leantune_segments"


def segment_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention interface: query [1, heads, T, d], key/value [1, kv heads, T, d] ->
    ([1, T, heads, d], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    lengths = kwargs.pop(SEGMENT_LENGTHS, None)
    prefix = kwargs.pop(SHARED_PREFIX, 0)
    if lengths is None or not _plain(module, query, key, lengths, prefix, kwargs):
        if prefix:  # transformers' mask from the position ids would hide the prefix from the examples after it
            raise ModelError("A micro-batch with a shared prefix reached attention that cannot run example by "
                             "example (soft-capped logits, attention sinks or a sliding window shorter than an "
                             "example). Set data.share_prefix=false for this model.")
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    outputs, start = [], 0
    for i, length in enumerate(lengths):
        end = start + length
        q, k, v = query[:, :, start:end], key[:, :, start:end], value[:, :, start:end]
        if prefix and i:  # an example after the shared prefix: it sees the whole prefix, then itself causally
            k = torch.cat((key[:, :, :prefix], k), dim=2)
            v = torch.cat((value[:, :, :prefix], v), dim=2)
            sees = _prefix_causal_mask(length, prefix, q.device)
            outputs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=sees, dropout_p=dropout, scale=scaling,
                                                          enable_gqa=gqa))
        else:
            outputs.append(F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling,
                                                          is_causal=length > 1, enable_gqa=gqa))
        start = end
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


@functools.lru_cache(maxsize=64)
def _prefix_causal_mask(length: int, prefix: int, device: torch.device) -> torch.Tensor:
    """Which keys (the prefix, then the example's own) each of an example's `length` queries sees: built once per
    shape rather than in every layer of every micro-batch (it is only read, never written)."""
    return torch.ones(length, prefix + length, dtype=torch.bool, device=device).tril(prefix)


def _plain(module, query, key, lengths, prefix: int, kwargs) -> bool:
    """Whether per-example causal SDPA computes exactly what the model's attention would."""
    if query.shape[0] != 1 or query.shape[2] != key.shape[2] or sum(lengths) != query.shape[2]:
        return False  # not one packed row without a cache
    if not getattr(module, "is_causal", True):
        return False
    if any(kwargs.get(k) is not None for k in ("softcap", "s_aux", "position_bias")):
        return False
    window = kwargs.get("sliding_window", getattr(module, "sliding_window", None))
    return not window or max(lengths) + prefix <= window


def uses_segment_attention(model) -> bool:
    return getattr(transformers_model(model).config, "_attn_implementation", None) == NAME


def use_segment_attention(model) -> bool:
    """Make the model's attention this module's where it is transformers' SDPA (the default); True when it is
    (then a packed micro-batch may run as one row). Other implementations (eager, FlashAttention) are left alone."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    config = transformers_model(model).config
    if getattr(config, "_attn_implementation", None) == NAME:
        return True
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    ALL_ATTENTION_FUNCTIONS.register(NAME, segment_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # the fallback's mask, built as for SDPA
    config._attn_implementation = NAME
    return True
