"""`leantune ui`: a read-mostly dashboard over the runs root - runs, one run, compare, budgets, registry, plan, drift.

pages.py builds what each page shows from the same library functions the CLI uses; app.py serves it (FastAPI,
Jinja2 templates, uPlot vendored under static/); actions.py holds the few writes (promote, rollback, budget)
behind --allow-write and a token. No torch anywhere here."""

from __future__ import annotations

import importlib.util

from ..errors import UserError


def check_installed() -> None:
    missing = [m for m in ("fastapi", "uvicorn", "jinja2") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"leantune ui needs {', '.join(missing)}: pip install -c constraints.txt 'leantune[ui]'")
