"""`leantune drift compare RUN`: an update run scored against its parent on the same items (evaluation/update.py),
from the saved adapters; what `train --from` does in memory at the end of training, for a retry or a full re-score."""

from __future__ import annotations

from ..errors import UserError
from ..evaluation.update import compare_with_parent
from ..models.inference import load_trained
from ..runs.ledger import row_for
from ..runs.lookup import find_run
from ..runs.rundir import open_run_dir


def compare_run(target: str, runs_dir: str = "runs", limit: int | None = None, batch_size: int = 16, note=print) -> dict:
    child = find_run(target, runs_dir).run
    parent_path = child.config().model.parent
    if not parent_path:
        raise UserError(f"Run '{child.path}' is not an update (it was not trained with `leantune train --from`), so it "
                        "has no parent to compare with. Use `leantune eval` for base vs tuned.")
    parent = open_run_dir(parent_path)
    trained = load_trained(child)
    return compare_with_parent(child, parent, trained.model, trained.tokenizer, row_for(child.path).get("cost_usd"),
                               batch_size=batch_size, limit=limit, note=note)
