"""glibc's malloc on a CPU run: give freed large blocks back to the system at once, or keep them for speed.

glibc serves a large allocation with mmap until a block that size is freed; then it raises its mmap threshold
(up to 32 MiB) and serves the next ones from a heap it rarely returns. A training step frees and re-allocates
tens of large tensors (activations; under FSDP2 every layer's gathered weights, twice a micro-batch), so the
resident peak settles well above what the tensors need: a 2-process FSDP2 run of SmolLM2 LoRA peaked at 2.89 GiB
a process with the default and 1.36 GiB with the threshold fixed, at 1.37x the step time (bench/results/
distributed.json, commit 168f353). `training.release_memory` fixes the threshold (mallopt M_MMAP_THRESHOLD, which also stops its
adaptation) for the process; the planner's CPU figures are what the tensors need, the fixed-threshold regime.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
RELEASE_THRESHOLD = 128 * 1024  # bytes: blocks this large and larger are mmapped, and unmapped when freed


def release_freed_memory() -> bool:
    """Fix glibc's mmap threshold for this process; False where the C library has no mallopt (not glibc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, RELEASE_THRESHOLD))
    except (OSError, AttributeError):
        return False
