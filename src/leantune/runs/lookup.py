"""What a user's TARGET names: a run directory, a run id / prefix / name in the runs index, or a registry
reference (name@production, name@v3), or (where a model is also accepted) a base model. One lookup for every
verb that takes a run: eval, generate, export, serve."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import RunDirError, UserError
from ..models.registry import BUNDLED
from .index import RunIndex
from .registry import resolve as resolve_registry
from .rundir import RunDir, open_run_dir


@dataclass
class Found:
    run: RunDir
    registry: dict | None = None  # the registry row, when the target was name@stage / name@vN

    @property
    def label(self) -> str:
        r = self.registry
        return f"{r['name']} v{r['version']} ({r['stage']})" if r else self.run.id


def find_run(target: str, runs_dir: str | Path = "runs", models_too: bool = False) -> Found | None:
    """The run `target` names. With `models_too`, None when it names a model instead (a built-in name or an
    existing path that is not a run); without, anything that is not a run is an error saying why."""
    path = Path(target)
    if path.is_dir() and (path / "config.yaml").is_file():
        return Found(open_run_dir(path))
    if models_too and (target in BUNDLED or path.exists()):
        return None
    index = RunIndex(str(runs_dir))
    if not index.path.exists():
        if models_too:
            return None  # the model loader says what is wrong with it as a model
        raise UserError(f"'{target}' is not a run directory, and {runs_dir} has no runs index to look it up in. "
                        "Pass the folder `leantune train` created (or --runs-dir).")
    row = resolve_registry(index, target)
    if row is not None:
        return Found(open_run_dir(index.find(row["run_id"])["path"]), row)
    try:
        return Found(open_run_dir(index.find(target)["path"]))
    except RunDirError as e:
        if not models_too:
            raise
        raise RunDirError(f"'{target}' is neither a model (a built-in name: {', '.join(BUNDLED)}; a Hugging Face "
                          f"directory; a .gguf file) nor a run: {e}") from None
