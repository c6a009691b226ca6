"""Exact and near-duplicate detection that streams: a few dozen bytes per row, whatever the row size.

Near duplicates: MinHash signatures (datasketch) over word 3-grams, then locality-sensitive hashing with the
band layout datasketch picks for the threshold. We keep the bands ourselves, as one uint64 per band per row in
numpy arrays, instead of datasketch's in-memory `MinHashLSH` index: that index keeps Python dicts of byte
strings per band and row (kilobytes a row), which would not keep a multi-GB check under 1 GB of memory.
Candidate pairs are confirmed with the low byte of each MinHash value ("b-bit minwise hashing"), 64 bytes a row.

The decision rule is greedy in file order, so it is the same for `check` (which counts) and `clean` (which
drops): a row is a near duplicate when its estimated Jaccard similarity to an earlier row that was *kept* is at
least the threshold. Running it again on the kept rows finds nothing, which makes `clean` idempotent.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

NUM_PERM = 64
SHINGLE_WORDS = 3
CHUNK = 4096


def key64(text: str) -> int:
    """A stable 64-bit content key (the same in every process, unlike hash())."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


_WORD_BYTE = np.zeros(256, bool)
_WORD_BYTE[list(b"abcdefghijklmnopqrstuvwxyz0123456789_")] = True
_WORD_BYTE[128:] = True  # bytes of non-ASCII characters count as letters
with np.errstate(over="ignore"):
    _POW = np.cumprod(np.full(4096, 0x100000001B3, dtype=np.uint64))  # FNV prime powers, mod 2**64


def word_hashes(text: str) -> np.ndarray:
    """A 64-bit hash per word of the lower-cased text, computed over its UTF-8 bytes in numpy (a polynomial hash
    per run of letters/digits): hashing word by word in Python was most of a check's time."""
    b = np.frombuffer(text.lower().encode("utf-8", "surrogatepass"), np.uint8)
    idx = np.flatnonzero(_WORD_BYTE[b])
    if not len(idx):
        return np.zeros(0, np.uint64)
    starts = np.empty(len(idx), bool)
    starts[0] = True
    starts[1:] = np.diff(idx) != 1
    first = np.flatnonzero(starts)
    offset = np.minimum(np.arange(len(idx)) - np.repeat(first, np.diff(np.append(first, len(idx)))), len(_POW) - 1)
    with np.errstate(over="ignore"):
        return np.add.reduceat((b[idx].astype(np.uint64) + np.uint64(1)) * _POW[offset], first)


def shingle_hashes(text: str) -> list[int]:
    """32-bit hashes of the word 3-grams of the lower-cased words (punctuation and spacing ignored)."""
    h = word_hashes(text)
    with np.errstate(over="ignore"):
        if len(h) <= SHINGLE_WORDS:
            combined = np.array([np.bitwise_xor.reduce(h * _MIX[: len(h)]) if len(h) else 0], dtype=np.uint64)
        else:
            combined = h[:-2] * _MIX[0] + h[1:-1] * _MIX[1] + h[2:] * _MIX[2]
    return ((combined >> np.uint64(29)) & np.uint64(0xFFFFFFFF)).tolist()


_MIX = np.array([0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D], dtype=np.uint64)


def _identity(value: int) -> int:
    return value


class Signer:
    """MinHash signatures (datasketch) with one fixed set of permutations (seeded: the same in every run).
    The shingles arrive already hashed, so datasketch's hash function is the identity."""

    def __init__(self, num_perm: int = NUM_PERM):
        from datasketch import MinHash  # ~0.3 s of scipy on import, only when near duplicates are searched

        self._MinHash = MinHash
        proto = MinHash(num_perm=num_perm, seed=1, hashfunc=_identity)
        self.num_perm, self._perms, self._scheme = num_perm, proto.permutations, proto.scheme

    def __call__(self, text: str) -> np.ndarray:
        m = self._MinHash(num_perm=self.num_perm, hashfunc=_identity, permutations=self._perms, scheme=self._scheme)
        m.update_batch(shingle_hashes(text))
        return m.hashvalues.astype(np.uint32)


# Candidate pairs are confirmed with an estimate of their similarity, so a false candidate costs only a comparison
# while a missed one is a duplicate nobody sees: weight misses 9:1 (datasketch's default 1:1 gives 5 bands of 11 at
# 0.8 with 64 permutations, which finds only 60% of pairs at 0.85 similarity; 9 bands of 7 find 97%).
LAYOUT_WEIGHTS = (0.1, 0.9)


def band_layout(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows per band) for the threshold, chosen by datasketch's optimiser with LAYOUT_WEIGHTS."""
    from datasketch import MinHashLSH

    try:
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LAYOUT_WEIGHTS)
    except ValueError:  # thresholds near 1 want a single band, which datasketch refuses: two long bands
        return 2, num_perm // 2
    return lsh.b, lsh.r


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """From the low bytes of two signatures: a random byte pair agrees 1/256 of the time by chance."""
    agree = float(np.mean(a == b))
    return max(0.0, (agree - 1 / 256) / (1 - 1 / 256))


class _Growing:
    """An append-only 2-D numpy array built in chunks (no per-row Python objects)."""

    def __init__(self, width: int, dtype):
        self.width, self.dtype, self.chunks, self.buf, self.n = width, dtype, [], np.empty((CHUNK, width), dtype), 0

    def append(self, row) -> None:
        self.buf[self.n % CHUNK] = row
        self.n += 1
        if self.n % CHUNK == 0:
            self.chunks.append(self.buf)
            self.buf = np.empty((CHUNK, self.width), self.dtype)

    def array(self) -> np.ndarray:
        return np.concatenate(self.chunks + [self.buf[: self.n % CHUNK]]) if self.n else np.empty((0, self.width), self.dtype)


@dataclass
class NearDuplicate:
    position: int  # the later row
    of: int  # the earlier kept row it resembles
    similarity: float


class NearDupIndex:
    """Rows are added in file order by position (0, 1, 2, ...); `find` returns the greedy near duplicates."""

    def __init__(self, threshold: float, num_perm: int = NUM_PERM):
        self.threshold = threshold
        self.bands, self.rows_per_band = band_layout(threshold, num_perm)
        # distinct odd 64-bit multipliers, one per value in a band: key = sum(value_i * mult_i) mod 2**64
        self._mult = np.array([pow(0x9E3779B97F4A7C15, i, 2**64) | 1 for i in range(1, self.rows_per_band + 1)], dtype=np.uint64)
        self.keys = _Growing(self.bands, np.uint64)
        self.low_bytes = _Growing(num_perm, np.uint8)

    def band_keys(self, signature: np.ndarray) -> np.ndarray:
        used = signature[: self.bands * self.rows_per_band].reshape(self.bands, self.rows_per_band).astype(np.uint64)
        with np.errstate(over="ignore"):
            return (used * self._mult).sum(axis=1, dtype=np.uint64) + np.arange(self.bands, dtype=np.uint64)

    def add(self, signature: np.ndarray) -> None:
        self.keys.append(self.band_keys(signature))
        self.low_bytes.append((signature & 0xFF).astype(np.uint8))

    def find(self, skip: np.ndarray | None = None) -> list[NearDuplicate]:
        """Greedy near duplicates among the added rows; rows marked in `skip` (bool per position: exact duplicates,
        malformed rows) take no part."""
        keys, low = self.keys.array(), self.low_bytes.array()
        n = len(keys)
        active = np.ones(n, bool) if skip is None else ~skip[:n]
        positions = np.flatnonzero(active)
        # bucket id per (row, band) for buckets holding more than one active row; -1 elsewhere
        shared = np.full((n, self.bands), -1, dtype=np.int64)
        for band in range(self.bands):
            k = keys[positions, band]
            order = np.argsort(k, kind="stable")
            sk = k[order]
            if len(sk) < 2:
                continue
            same_as_next = sk[1:] == sk[:-1]
            in_group = np.zeros(len(sk), bool)
            in_group[1:] |= same_as_next
            in_group[:-1] |= same_as_next
            group_start = np.concatenate([[True], ~same_as_next])
            group_id = np.cumsum(group_start) - 1
            members = positions[order[in_group]]
            shared[members, band] = group_id[in_group]
        candidates = np.flatnonzero((shared >= 0).any(axis=1))
        kept_in_bucket: dict[tuple[int, int], list[int]] = {}
        found = []
        for p in candidates.tolist():
            match = None
            buckets = [(band, int(b)) for band, b in enumerate(shared[p]) if b >= 0]
            for bucket in buckets:
                for q in kept_in_bucket.get(bucket, ()):
                    sim = estimated_jaccard(low[p], low[q])
                    if sim >= self.threshold:
                        match = NearDuplicate(p, q, sim)
                        break
                if match:
                    break
            if match:
                found.append(match)
            else:
                for bucket in buckets:
                    kept_in_bucket.setdefault(bucket, []).append(p)
        return found


class ReferenceIndex:
    """A small set of rows (an eval split) that training rows are checked against, exactly and nearly."""

    def __init__(self, threshold: float, num_perm: int = NUM_PERM):
        self.near = NearDupIndex(threshold, num_perm)
        self.exact: dict[int, int] = {}
        self.buckets: dict[int, list[int]] = {}
        self.low: list[np.ndarray] = []

    def add(self, exact_key: int, signature: np.ndarray) -> None:
        position = len(self.low)
        self.exact.setdefault(exact_key, position)
        for key in self.near.band_keys(signature).tolist():
            self.buckets.setdefault(key, []).append(position)
        self.low.append((signature & 0xFF).astype(np.uint8))

    def match(self, exact_key: int, signature: np.ndarray) -> tuple[str, int, float] | None:
        """('exact' | 'near', reference position, similarity) for the closest reference row, or None."""
        if exact_key in self.exact:
            return "exact", self.exact[exact_key], 1.0
        low = (signature & 0xFF).astype(np.uint8)
        for key in self.near.band_keys(signature).tolist():
            for q in self.buckets.get(key, ()):
                sim = estimated_jaccard(low, self.low[q])
                if sim >= self.near.threshold:
                    return "near", q, sim
        return None


def exact_duplicates(keys: np.ndarray, skip: np.ndarray | None = None) -> list[tuple[int, int]]:
    """(later position, first position) for every row whose key equals an earlier row's."""
    positions = np.flatnonzero(~skip[: len(keys)]) if skip is not None else np.arange(len(keys))
    k = keys[positions]
    order = np.argsort(k, kind="stable")  # stable: within equal keys, file order
    sk, sp = k[order], positions[order]
    if len(sk) < 2:
        return []
    starts = np.concatenate([[True], sk[1:] != sk[:-1]])
    first_of_group = sp[np.maximum.accumulate(np.where(starts, np.arange(len(sk)), 0))]
    dup = ~starts
    return sorted(zip(sp[dup].tolist(), first_of_group[dup].tolist()))
