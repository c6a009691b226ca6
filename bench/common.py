"""What the benchmark scripts share."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(path: Path, results: dict) -> None:
    """Write a results JSON so that a crash mid-write never leaves a half-written file in place of the last one."""
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")
