"""`leantune serve`: one base model, many adapters, an OpenAI-compatible API (serve/api.py)."""

from __future__ import annotations

import importlib.util

from ..errors import UserError

NEEDS = ("fastapi", "uvicorn", "prometheus_client")


def check_installed() -> None:
    """Refuse in a moment, with the fix, when the serving extra is missing (before the model loads)."""
    missing = [m for m in NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"leantune serve needs {', '.join(missing)}: pip install -c constraints.txt 'leantune[serve]'")
