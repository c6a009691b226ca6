"""The C allocator a CPU training process runs with.

glibc serves a large allocation with mmap until a block that size is freed; then it raises its mmap threshold
(up to 32 MiB) and serves the next ones from a heap it rarely returns. A training step frees and re-allocates
tens of large tensors (activations; under FSDP2 every layer's gathered weights, twice a micro-batch), so the
resident peak settles well above what the tensors need: SmolLM2 LoRA at 4 x 512 tokens peaked at 7.9 GiB where its
tensors need 4.4 (bench/results/memory_model.json). Two ways out, both measured there:

- `training.allocator=auto` (the default): `leantune train` re-executes itself once with a faster allocator
  preloaded (LD_PRELOAD) before torch loads - TCMalloc, whose thread caches reuse freed blocks of the same size
  class and which returns spans it no longer needs. On the same steps its peak stayed within 15% of the planner's
  figure on every SmolLM2 config, and its steps took 0.85x glibc's time (median), not longer. It is found as the
  system library (Debian/Ubuntu `libtcmalloc-minimal4`, which `make install` installs where it can); without it
  glibc stays, and the run says so.
- `training.release_memory` fixes glibc's threshold (mallopt M_MMAP_THRESHOLD, which also stops its adaptation):
  the same low peak at a median 1.2x glibc's step time (up to 1.8x). For a C library other than glibc it does
  nothing, and says so.

Only the CLI can choose the allocator (it must be loaded before anything allocates), and only for a CPU run (on a
machine with an NVIDIA driver the host allocator is left alone); `leantune.train(...)` called from Python runs with
whatever its process has.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
RELEASE_THRESHOLD = 128 * 1024  # bytes: blocks this large and larger are mmapped, and unmapped when freed

CHOSEN_ENV = "LEANTUNE_ALLOCATOR"  # set in the re-executed process: the allocator it was started with
# (name, the library's file names, in the order tried); the first found wins
CANDIDATES = [("tcmalloc", ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"))]
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")
# TCMalloc reports every allocation above 1 GiB on stderr by default; a training step makes such allocations
# (the logits), and the report is noise in the progress bar
QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(2**62)}


def release_freed_memory() -> bool:
    """Fix glibc's mmap threshold for this process; False where the C library has no mallopt (not glibc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, RELEASE_THRESHOLD))
    except (OSError, AttributeError):
        return False


def find_allocator(dirs: tuple[str, ...] = LIBRARY_DIRS) -> tuple[str, Path] | None:
    """(name, library path) of the first allocator found, or None."""
    for name, files in CANDIDATES:
        for directory in dirs:
            for file in files:
                path = Path(directory) / file
                if path.is_file():
                    return name, path
    return None


def running_allocator() -> str:
    """What this process allocates with: a candidate whose library is mapped into it (read from /proc/self/maps,
    so a preload the loader ignored is not claimed), or the C library's ('system')."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    for name, files in CANDIDATES:
        if any(f"/{file}" in maps for file in files):
            return name
    return "system"


def preload_and_restart(setting: str, argv: list[str] | None = None, dirs: tuple[str, ...] = LIBRARY_DIRS) -> None:
    """Re-execute this command with the allocator preloaded, once, when `training.allocator=auto` asks for it and
    one is installed. Returns without doing anything otherwise (already chosen, `system`, not Linux, none found).
    The process keeps its PID (exec), so signals, torchrun and the billed start time are unaffected."""
    if setting != "auto" or CHOSEN_ENV in os.environ or not sys.platform.startswith("linux"):
        return
    if Path("/dev/nvidiactl").exists():  # a GPU machine: the run trains on the GPU, host malloc is not its peak
        return
    found = find_allocator(dirs)
    if found is None:
        os.environ[CHOSEN_ENV] = "system"  # looked once; child processes (torchrun's) need not look again
        return
    name, path = found
    env = dict(os.environ)
    env[CHOSEN_ENV] = name
    env["LD_PRELOAD"] = ":".join(p for p in (str(path), env.get("LD_PRELOAD", "")) if p)
    for key, value in QUIET.items():
        env.setdefault(key, value)
    args = sys.argv[1:] if argv is None else argv
    os.execve(sys.executable, [sys.executable, "-m", "leantune", *args], env)


def allocator_note(setting: str, device: str, chosen: str) -> str | None:
    """What the log says about the allocator of a CPU run (`chosen`: running_allocator())."""
    if device != "cpu":
        return None
    if chosen != "system":
        return f"memory allocator: {chosen} (training.allocator=system keeps the C library's)"
    if setting == "auto" and CHOSEN_ENV in os.environ:  # the CLI looked for one and found none
        return ("[yellow]memory allocator: glibc's (no TCMalloc found: install libtcmalloc-minimal4). Its resident "
                "peak can run well above the plan; training.release_memory=true holds it down at some speed[/]")
    return None
