"""Where leantune keeps what it computes once and reuses (converted models, Fisher estimates, file hashes):
$LEANTUNE_HOME, by default ~/.cache/leantune. Imports nothing heavy: every verb may need it."""

from __future__ import annotations

import os
from pathlib import Path


def leantune_home() -> Path:
    return Path(os.environ.get("LEANTUNE_HOME") or Path.home() / ".cache" / "leantune")
