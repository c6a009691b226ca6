"""Deterministic batching: the order is a function of (seed, epoch), so a resumed run sees exactly the
batches an uninterrupted run would have seen from the same data position."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from .tokenize import IGNORE, TokenizedExample

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions: `data check` uses this module's packing arithmetic, and importing
# torch alone costs ~150 MB of a check's memory.

SEGMENT_LENGTHS = "segment_lengths"  # batch key: a packed single row's examples' lengths (models/segment_attention.py)
SHARED_PREFIX = "shared_prefix"  # batch key: the length of the prefix the row's first segment holds for the others
MIN_SHARED_PREFIX = 8  # shorter common prefixes are not worth a layout of their own


def epoch_order(n: int, seed: int, epoch: int, mixed_in: int = 0) -> list[int]:
    """The order of items 0..n-1 in this epoch. The last `mixed_in` items (rows replay appended to the task's)
    are spread evenly through the others, and the others keep the order a run without them takes (theirs is the
    generator's first draw): a run with replay trains on the task's examples in the same order as the run without
    it at the same seed, so the two differ by the replayed rows alone and compare as a pair."""
    import torch  # only when training: `data check` and the planner use this module without torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    primary = n - mixed_in
    order = torch.randperm(primary, generator=generator).tolist()
    if not mixed_in:
        return order
    extra = [primary + i for i in torch.randperm(mixed_in, generator=generator).tolist()]
    # the j-th mixed-in row goes after (j + 1) * primary // (mixed_in + 1) task rows: every stretch of steps gets
    # its share, instead of replay arriving in clumps (or not at all within a short run)
    merged, j = [], 0
    for placed, index in enumerate(order):
        while j < mixed_in and (j + 1) * primary // (mixed_in + 1) <= placed:
            merged.append(extra[j])
            j += 1
        merged.append(index)
    return merged + extra[j:]


def collate(examples: list[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example in the batch (not to max_seq_len: padding is paid-for compute).

    Packed rows get `position_ids` that restart at 0 for every example in them and no attention mask:
    transformers then builds a block-diagonal causal mask from the restarts (its packed-sequence path; on GPU
    with FlashAttention-2 the same position ids select the variable-length kernel), so no token attends
    across an example boundary. The padding at the end becomes one more segment of its own. Only without a KV
    cache (use_cache=False, as models.forward runs): with one, transformers does not look for packed rows.
    A batch of one packed row also carries its examples' lengths (SEGMENT_LENGTHS, a tuple of ints), with which
    models/segment_attention.py runs attention example by example instead of under the mask; a row with a shared
    prefix (pack_shared_prefix) carries its length too (SHARED_PREFIX), and the position ids of every later
    segment start where the prefix ends. Such a row is only right with that attention: the mask transformers
    would build from its position ids would not let the later segments see the prefix.
    """
    import torch

    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    packed = any(e.segments for e in examples)
    position_ids = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        attention_mask[row, :n] = 1
        start = 0
        for i, length in enumerate(list(e.segments or (n,)) + ([width - n] if n < width else [])):
            first = e.shared_prefix if i else 0  # the examples after a shared prefix continue it
            position_ids[row, start : start + length] = torch.arange(first, first + length)
            start += length
    if packed:
        batch = {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}
        if len(examples) == 1:
            batch[SEGMENT_LENGTHS] = tuple(examples[0].segments)
            if examples[0].shared_prefix:
                batch[SHARED_PREFIX] = examples[0].shared_prefix
        elif any(e.shared_prefix for e in examples):
            raise ValueError("a row with a shared prefix must be its batch's only row")
        return batch
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pack_examples(examples: list[TokenizedExample], capacity: int, groups: list[list[int]] | None = None) -> list[TokenizedExample]:
    """Several examples per row of at most `capacity` tokens (see pack_lengths), each keeping its own labels.
    The first label of every example is dropped: nothing before it in its own example predicts it."""
    packs = []
    for members in groups or pack_lengths([len(e.input_ids) for e in examples], capacity):
        ids, labels, segments = [], [], []
        for i in members:
            e = examples[i]
            ids += e.input_ids
            labels += [IGNORE] + e.labels[1:]
            segments.append(len(e.input_ids))
        packs.append(TokenizedExample(ids, labels, examples[members[0]].source, tuple(segments)))
    return packs


def micro_batches_for_step(
    examples: list[TokenizedExample], step: int, micro_batch_size: int, grad_accum: int, seed: int, mixed_in: int = 0
) -> list[list[TokenizedExample]]:
    """The micro-batches of optimizer step `step` (0-based). Epochs follow each other without a gap;
    the last step of an epoch may be smaller. `mixed_in`: the last rows of `examples` are replay's (epoch_order)."""
    per_step = micro_batch_size * grad_accum
    steps_per_epoch = -(-len(examples) // per_step)
    epoch, within = divmod(step, steps_per_epoch)
    order = epoch_order(len(examples), seed, epoch, mixed_in)
    chosen = [examples[i] for i in order[within * per_step : (within + 1) * per_step]]
    return [chosen[i : i + micro_batch_size] for i in range(0, len(chosen), micro_batch_size)]


def steps_per_epoch(n_examples: int, micro_batch_size: int, grad_accum: int) -> int:
    return -(-n_examples // (micro_batch_size * grad_accum))


def pack_lengths(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of examples grouped into sequences of at most `capacity` tokens: best fit over the examples in
    decreasing length (ties in file order), which leaves little room unused and is deterministic."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    by_room: list[list[int]] = [[] for _ in range(capacity + 1)]  # room left -> bins with exactly that room
    for i in order:
        size = min(lengths[i], capacity)
        # the fullest bin that still has room; items come largest first, so a near fit is usually close by
        room = next((r for r in range(size, capacity + 1) if by_room[r]), None)
        if room is None:
            b, room = len(bins), capacity
            bins.append([])
        else:
            b = by_room[room].pop()
        bins[b].append(i)
        by_room[room - size].append(b)
    return [sorted(b) for b in bins]


def balanced_packing(lengths: list[int], capacity: int) -> list[list[int]]:
    """The examples of one micro-batch in as few rows as `capacity` allows, with rows of nearly equal length (the
    batch is padded to its longest row, so the tightest row capacity that keeps the row count is the one to use)."""
    total, longest = sum(min(n, capacity) for n in lengths), min(max(lengths), capacity)
    rows = -(-total // capacity)
    cap = max(longest, -(-total // rows))
    while True:
        bins = pack_lengths(lengths, cap)
        if len(bins) <= rows or cap >= capacity:
            return bins
        cap = min(capacity, cap + max(1, cap // 16))


def shared_prefix_length(examples: list[TokenizedExample]) -> int:
    """How many leading tokens all the examples share and can share one computation of: the longest common prefix
    that stops before any example's first labelled token and its predecessor (the prefix's last position then
    predicts nothing any example trains on) and leaves every example a token of its own. 0 when that is shorter
    than MIN_SHARED_PREFIX or there is nothing to share with."""
    if len(examples) < 2:
        return 0
    first = examples[0].input_ids
    limit = min(min(len(e.input_ids) - 1 for e in examples),
                min(next((j for j, t in enumerate(e.labels) if t != IGNORE), len(e.labels)) - 1 for e in examples))
    length = 0
    while length < limit and all(e.input_ids[length] == first[length] for e in examples):
        length += 1
    return length if length >= MIN_SHARED_PREFIX else 0


def pack_shared_prefix(examples: list[TokenizedExample], prefix: int) -> TokenizedExample:
    """One row: the examples' common `prefix` once, then each example's remainder. The remainders' attention sees
    the prefix as its own start (models/segment_attention.py), so every example computes what it would alone, and
    the prefix's hidden states - identical in every example, causal attention never lets them see what follows -
    are computed once instead of once per example. Labels are the examples' own; the first token of each
    remainder carries none (shared_prefix_length keeps labels out of the prefix and the token after it)."""
    ids, labels, segments = list(examples[0].input_ids[:prefix]), [IGNORE] * prefix, [prefix]
    for e in examples:
        ids += e.input_ids[prefix:]
        labels += [IGNORE] + e.labels[prefix + 1 :]
        segments.append(len(e.input_ids) - prefix)
    return TokenizedExample(ids, labels, examples[0].source, tuple(segments), shared_prefix=prefix)


def pack_micro_batch(examples: list[TokenizedExample], capacity: int | None, share_prefix: bool = False) -> list[TokenizedExample]:
    """Padding-free micro-batch: the same examples (so the same loss and gradient as unpacked, up to float
    rounding), concatenated into a few rows of at most `capacity` tokens, or with capacity None into one row
    (no padding at all; for attention that runs example by example, models/segment_attention.py), whose
    examples' common prefix is computed once with share_prefix."""
    if len(examples) < 2:
        return examples
    if capacity is None:
        if share_prefix and (prefix := shared_prefix_length(examples)):
            return [pack_shared_prefix(examples, prefix)]
        return pack_examples(examples, 0, [list(range(len(examples)))])
    return pack_examples(examples, capacity, balanced_packing([len(e.input_ids) for e in examples], capacity))


def first_epoch_micro_batches(items: list, micro_batch_size: int, seed: int, limit: int | None = None,
                              mixed_in: int = 0) -> Iterator[list]:
    """The first epoch's micro-batches of `items` (examples, or anything listed in their order) as a run with this
    seed takes them (micro_batches_for_step's order), at most `limit` of them."""
    order = epoch_order(len(items), seed, 0, mixed_in)
    for start in range(0, len(order), micro_batch_size)[:limit]:
        yield [items[i] for i in order[start : start + micro_batch_size]]


def padding_fraction(lengths: list[int], micro_batch_size: int, seed: int = 0, capacity: int | None = None,
                     mixed_in: int = 0) -> float:
    """Share of the token slots a step pays for that are padding: random micro-batches right-padded to their
    longest row, or (capacity given) each micro-batch packed into rows of at most `capacity` first."""
    if not lengths:
        return 0.0
    paid = real = 0
    for chosen in first_epoch_micro_batches(lengths, micro_batch_size, seed, mixed_in=mixed_in):
        batch = [min(length, capacity or length) for length in chosen]
        if capacity is not None:
            batch = [sum(batch[i] for i in b) for b in balanced_packing(batch, capacity)]
        paid += max(batch) * len(batch)
        real += sum(batch)
    return 1 - real / paid


def shared_prefix_fraction(examples: list[TokenizedExample], micro_batch_size: int, seed: int = 0,
                           mixed_in: int = 0) -> float:
    """Share of the tokens of the first epoch's micro-batches that a shared prefix saves computing."""
    saved = total = 0
    for batch in first_epoch_micro_batches(examples, micro_batch_size, seed, mixed_in=mixed_in):
        saved += shared_prefix_length(batch) * (len(batch) - 1)
        total += sum(len(e.input_ids) for e in batch)
    return saved / max(total, 1)


def packing_note(examples: list[TokenizedExample], micro_batch: int, seed: int, max_seq_len: int,
                 one_row: bool = False, shared_saving: float | None = None, mixed_in: int = 0) -> str:
    """What packing does to this run's micro-batches (shared_saving: shared_prefix_fraction, when prefixes are shared)."""
    lengths = [len(e.input_ids) for e in examples]
    before = padding_fraction(lengths, micro_batch, seed, mixed_in=mixed_in)
    if one_row:
        shared = (f"; the examples' common prefix computed once per micro-batch: {shared_saving:.1%} of the tokens"
                  if shared_saving is not None else "")
        return (f"packing: each micro-batch's {micro_batch} examples in one row, attention example by example; "
                f"padding {before:.1%} -> 0% of paid token slots{shared}")
    after = padding_fraction(lengths, micro_batch, seed, capacity=max_seq_len, mixed_in=mixed_in)
    return (f"packing: each micro-batch's {micro_batch} examples packed into rows of <= {max_seq_len} tokens; "
            f"padding {before:.1%} -> {after:.1%} of paid token slots")
