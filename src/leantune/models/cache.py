"""Where converted models live: $LEANTUNE_HOME (default ~/.cache/leantune)/models/<key>/."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..paths import leantune_home


def gguf_cache_key(path: Path) -> str:
    """Key a user's GGUF file by where it is, its size and modification time: re-hashing hundreds of
    MB on every load would cost more than the cached load itself."""
    st = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return f"{path.stem}-{digest}"


def model_cache_dir(key: str) -> Path:
    return leantune_home() / "models" / key
