"""Starting the dashboard: check the runs root and the port before uvicorn takes over, so a typo or a busy port is a
one-line error (exit 2), not a traceback."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

from ..errors import UserError
from ..runs.index import INDEX_NAME


def check_runs_dir(runs_dir: str | Path) -> Path:
    root = Path(runs_dir)
    if not root.is_dir():
        raise UserError(f"No runs directory '{root}'. Pass the folder `leantune train` writes to (output.runs_dir) with "
                        "--runs-dir, or train a run first.")
    if not (root / INDEX_NAME).is_file() and any(root.iterdir()):
        raise UserError(f"'{root}' has no {INDEX_NAME}; if it holds runs, `leantune runs reindex --runs-dir {root}` "
                        "rebuilds the index the dashboard reads.")
    return root


def check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"Cannot listen on {host}:{port} ({e.strerror}). Another program (an earlier `leantune ui`?) "
                            "may hold it: pass --port with another number.") from None


def run(runs_dir: str, host: str, port: int, allow_write: bool, token: str | None, say=print) -> None:
    import uvicorn

    from .app import create_app, is_loopback

    root = check_runs_dir(runs_dir)
    check_port(host, port)
    if allow_write:
        token = token or secrets.token_urlsafe(18)
    app = create_app(root, allow_write=allow_write, token=token, host=host)
    shown = f"[{host}]" if ":" in host else host
    say(f"leantune ui on http://{shown}:{port}/ over {root} ({'writes allowed' if allow_write else 'read-only'}); Ctrl-C stops")
    if allow_write:
        say(f"open http://{shown}:{port}/?token={token} once to allow promote, rollback and budgets from this browser")
    if not is_loopback(host):
        say(f"warning: listening on {host}: other machines can reach this dashboard and read every run")
    uvicorn.run(app, host=host, port=port, log_level="warning")
