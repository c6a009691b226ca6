"""Incremental updates (`leantune train --from RUN`): a run that continues another run's adapter on new rows.

The child is the parent's config with the user's overrides (normally `data.train=new.jsonl`) and three defaults
of an update, each overridable:
- `data.eval` is dropped: the parent's eval file described the old data; the child holds out part of its new rows;
- replay rehearses the parent's *training* split (`forgetting.replay_data=parent`, 20% of the trained tokens),
  never its held-out rows, which measure retention afterwards;
- EWC is anchored to the parent (`forgetting.ewc_data=parent`): its Fisher is taken on the parent's task with the
  parent adapter active, and the penalty is on the change from the parent's weights, not from the base's;
- the base-vs-tuned evaluation after training gives way to parent vs child on the same items (evaluation/update.py).
The adapter must have the parent's shape (method, rank, alpha, targets) and sit on the same base; anything that
would change it is refused before a model loads.
"""

from __future__ import annotations

from pathlib import Path

from ..config import PARENT_DATA, RunConfig, apply_overrides, parse_override
from ..data import load_examples, run_splits
from ..errors import ConfigError, RunDirError
from ..runs.rundir import RunDir, open_run_dir

UPDATE_DEFAULTS = {"forgetting.replay_data": PARENT_DATA, "forgetting.replay_fraction": 0.2, "forgetting.replay_balance": "tokens",
                   "forgetting.ewc_data": PARENT_DATA, "forgetting.ewc_lambda": 1e4, "data.eval": None,
                   "eval.after_train": False}  # base vs child says little: the parent-vs-child comparison replaces it
# what makes two adapters the same tensors with the same scale: the child loads the parent's weights into its own
ADAPTER_SHAPE = ("name", "r", "alpha", "rslora", "target_modules")
NOT_CONTINUABLE = {
    "full": "a full fine-tune has no adapter to continue; train a new run with model.base={path}/model instead",
    "adalora": "AdaLoRA prunes its ranks on a schedule that ended in the parent; continuing would prune a pruned "
               "adapter again. Train the update with method.name=lora from the parent's base",
}


def parent_run(config: RunConfig) -> RunDir:
    """The completed run `model.parent` names, with its adapter on disk."""
    return _completed(open_run_dir(config.model.parent))


def _completed(run: RunDir) -> RunDir:
    info = run.info()
    if info.get("status") != "completed" or not (run.adapter / "adapter_config.json").is_file():
        raise RunDirError(f"model.parent: run '{run.path}' is not a completed run with an adapter (status: "
                          f"{info.get('status', 'unknown')}). Finish it first (`leantune train --resume {run.path}`).")
    return run


def check_continuable(parent: RunDir, child: RunConfig) -> None:
    """Refuses a child whose adapter could not hold the parent's weights, or that sits on another base."""
    before = parent.config()
    if before.method.name in NOT_CONTINUABLE:
        raise ConfigError(f"train --from {parent.path}: {NOT_CONTINUABLE[before.method.name].format(path=parent.path)}.")
    _completed(parent)  # refused here, before a run folder exists, not when the recipe loads the adapter
    changed = [f"method.{k}" for k in ADAPTER_SHAPE if getattr(before.method, k) != getattr(child.method, k)]
    if changed:
        shown = ", ".join(f"{k}={getattr(before.method, k.split('.')[1])!r} -> {getattr(child.method, k.split('.')[1])!r}"
                          for k in changed)
        raise ConfigError(f"train --from {parent.path}: the update must keep the parent's adapter shape, and {shown} "
                          "would not. Drop those overrides, or train a new run (without --from) to change the method.")
    if before.model.base != child.model.base:
        raise ConfigError(f"train --from {parent.path}: the parent's adapter was trained on model.base={before.model.base!r}, "
                          f"not {child.model.base!r}. Drop the model.base override.")


def update_config(parent: RunDir, overrides: list[str] | tuple[str, ...]) -> RunConfig:
    """The child's config: the parent's, the update defaults, then the user's overrides (which win)."""
    if not any(parse_override(o)[0] == ["data", "train"] for o in overrides):
        raise ConfigError(f"train --from {parent.path} needs the new rows to learn: add data.train=FILE "
                          "(a data file or a built-in dataset).")
    data = parent.config().model_dump(mode="json")
    for key, value in UPDATE_DEFAULTS.items():
        section, field = key.split(".")
        data[section][field] = value
    data["model"]["parent"] = str(parent.path.resolve())
    config = apply_overrides(data, list(overrides), f"train --from {parent.path}")
    check_continuable(parent, config)
    return config


def parent_training_examples(config: RunConfig) -> list:
    """The parent run's training split exactly as it trained on it (never its held-out rows)."""
    return run_splits(parent_run(config).config()).train


def examples_for(spec: str, config: RunConfig, key: str) -> list:
    """The examples a forgetting input names: 'parent' (model.parent's training split) or a dataset / file."""
    if spec != PARENT_DATA:
        return load_examples(spec)
    if not config.model.parent:
        raise ConfigError(f"{key}=parent needs model.parent (an update: `leantune train --from RUN data.train=...`).")
    return parent_training_examples(config)


def load_parent_adapter(model, parent: RunDir) -> int:
    """Copies the parent's adapter weights into the freshly attached adapter of the same shape; returns how many
    tensors were loaded. A tensor missing on either side is an error: a partial copy would be a silent new start."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    files = sorted(Path(parent.adapter).glob("adapter_model*.safetensors"))
    if not files:
        raise RunDirError(f"model.parent: {parent.adapter} holds no adapter_model.safetensors; it cannot be continued.")
    state = {}
    for f in files:
        state.update(load_file(f))
    try:
        result = set_peft_model_state_dict(model, state)
    except RuntimeError as e:  # size mismatch: a shape the config check did not catch
        raise ConfigError(f"model.parent: the adapter in {parent.adapter} does not fit this run's adapter ({e}).") from None
    expected = {n for n, _ in model.named_parameters() if any(t in n for t in ("lora_", "ia3_"))}
    missing = [k for k in result.missing_keys if k in expected]
    if result.unexpected_keys or missing:
        odd = (result.unexpected_keys or missing)[0]
        raise ConfigError(f"model.parent: the adapter in {parent.adapter} and this run's adapter hold different "
                          f"tensors (e.g. {odd}); it cannot be continued.")
    return len(state)
