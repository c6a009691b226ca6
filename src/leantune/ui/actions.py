"""The dashboard's writes: promote, rollback and a project budget, through the same registry and ledger functions the
CLI calls. Read-only unless the server was started with --allow-write; then a request must carry the session token
(printed once by `leantune ui`, kept in a same-site cookie) and every attempt, allowed or refused, is appended to
`<runs root>/ui-actions.log`."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from ..errors import UserError
from ..runs.index import RunIndex
from ..runs.ledger import set_project_budget
from ..runs.registry import check_name, check_promotion, promote, rollback, versions

LOG_NAME = "ui-actions.log"


class NotAllowed(UserError):
    """A write the server refuses: read-only mode, or no valid token."""


@dataclass
class WritePolicy:
    allow_write: bool
    token: str | None

    def check(self, given: str | None) -> None:
        if not self.allow_write:
            raise NotAllowed("This dashboard is read-only. Restart it with `leantune ui --allow-write` to promote, "
                             "roll back or set budgets; it prints a link with the token that allows it.")
        if not given or not self.token or not hmac.compare_digest(given.encode(), self.token.encode()):
            raise NotAllowed("This change needs the token `leantune ui --allow-write` printed: open the link it printed "
                             "(it sets a cookie) or pass the token in the form.")


def log_action(index: RunIndex, client: str, action: str, outcome: str) -> None:
    index.root.mkdir(parents=True, exist_ok=True)
    with open(index.root / LOG_NAME, "a", encoding="utf-8") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {client} {action}: {outcome}\n")


def describe_promote(index: RunIndex, name: str, version: int, stage: str) -> str:
    """What a promotion will do, for the confirmation page (raises what promote would for a bad request)."""
    check_name(name)
    rows = check_promotion(index, name, version, stage)
    current = [r["version"] for r in rows if r["stage"] == stage and r["version"] != version]
    then = (f"; v{', v'.join(map(str, current))} leaves {stage} for archived" if stage == "production" and current else "")
    return f"{name} v{version} -> {stage}{then}"


def describe_rollback(index: RunIndex, name: str) -> str:
    check_name(name)
    rows = versions(index, name)
    current = [r["version"] for r in rows if r["stage"] == "production"]
    return (f"{name}: production goes back from v{current[0]} to the version that held it before (v{current[0]} archived)"
            if current else f"{name} has no version in production, so there is nothing to roll back.")


def do_promote(index: RunIndex, name: str, version: int, stage: str) -> str:
    check_name(name)
    promote(index, name, version, stage)
    return f"{name} v{version} -> {stage}"


def do_rollback(index: RunIndex, name: str) -> str:
    check_name(name)
    old, new = rollback(index, name)
    return f"{name}: production v{old} -> v{new} (v{old} archived)"


def do_budget(index: RunIndex, project: str, amount: str) -> str:
    if not project:
        raise UserError("Say which project the budget is for.")
    dollars = set_project_budget(index, project, amount)
    return f"project '{project}': budget ${dollars:,.2f}"
