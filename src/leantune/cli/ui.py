"""`leantune ui`: the dashboard. Imports no torch (tests/test_architecture.py)."""

from __future__ import annotations

from typing import Optional

import typer

from .common import RUNS_DIR


def ui(runs_dir: str = RUNS_DIR,
       host: str = typer.Option("127.0.0.1", "--host", help="interface to listen on (loopback unless you mean otherwise)"),
       port: int = typer.Option(8765, "--port", min=1, max=65535),
       allow_write: bool = typer.Option(False, "--allow-write", help="allow promote, rollback and budgets (with a token)"),
       token: Optional[str] = typer.Option(None, "--token", envvar="LEANTUNE_UI_TOKEN",
                                           help="the token writes need (default: a new random one, printed)")):
    """A dashboard in the browser: runs, curves, plan vs actual, compare, budgets, registry, plan, drift."""
    from ..ui import check_installed

    check_installed()
    from ..ui.server import run

    run(runs_dir, host, port, allow_write, token)
