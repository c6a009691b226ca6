"""Which adapter a request's `model` names, resolved at admission.

A name is the served base, an alias given at start-up (`--adapter spam=RUN`) or by `/v1/load_lora_adapter`, or
itself a run or registry reference: `name@production` (any stage), `name@v4` / `name:v4`, a plain registry
`name` (its production version, else its newest), a run id or name, or a run directory. An alias keeps its
reference, not what it resolved to, so `support-bot@production` follows `leantune registry promote` and
`rollback` on the running server. The adapter is keyed by a hash of its files: a new version is a new key and
can never be served from an old version's loaded state (the stale-adapter bug class of vllm #42125)."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import RegistryError, RunDirError, UserError
from ..runs.index import RunIndex
from ..runs.lookup import find_run
from ..runs.registry import versions

BASE_KEY = "__base__"  # PEFT's name for "no adapter" in a mixed batch
BATCHED = ("lora", "qlora", "qlora-gguf")  # plain LoRA: mixed in one forward pass (stacked_lora.py)


class ModelNotFound(UserError):
    pass


@dataclass(frozen=True)
class Resolved:
    """What one request is served with, fixed for the whole answer."""

    key: str  # BASE_KEY, or a hash of the adapter's files
    path: Path | None = None  # the adapter folder
    label: str = "base"  # e.g. "support-bot v4 (production)" or the run id
    run_id: str | None = None
    version: int | None = None
    method: str = "base"  # lora, qlora, dora, adalora

    @property
    def batched(self) -> bool:
        return self.key == BASE_KEY or self.method in BATCHED


def _content_key(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        path = folder / name
        if path.is_file():
            digest.update(name.encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


class AdapterNames:
    """Served names -> references, and references -> Resolved (with the file hash cached per file state)."""

    def __init__(self, base_name: str, base_spec: str, runs_dir: str | Path):
        self.base_name, self.base_spec, self.runs_dir = base_name, base_spec, str(runs_dir)
        self.aliases: dict[str, str] = {}
        self._hashes: dict[tuple, str] = {}
        self._lock = threading.Lock()

    def add(self, name: str, reference: str, replace: bool = False) -> Resolved:
        if name == self.base_name:
            raise UserError(f"'{name}' is the base model's name; give the adapter another name.")
        if name in self.aliases and not replace:
            raise UserError(f"An adapter named '{name}' is already served (from {self.aliases[name]}); unload it first "
                            "or pass load_inplace=true to replace it.")
        resolved = self.resolve_reference(reference)  # refuse a bad reference now, not at the first request
        self.aliases[name] = reference
        return resolved

    def remove(self, name: str) -> None:
        if name not in self.aliases:
            raise ModelNotFound(f"No adapter named '{name}' is served (served: {', '.join(self.aliases) or 'none'}).")
        del self.aliases[name]

    def resolve(self, model: str) -> Resolved:
        if model == self.base_name:
            return Resolved(BASE_KEY)
        return self.resolve_reference(self.aliases.get(model, model), model)

    def locate(self, reference: str, asked: str | None = None):
        """(run, registry row or None) that a reference names."""
        ref = re.sub(r":v(\d+)$", r"@v\1", reference)  # name:v4, the spelling some clients allow in model names
        try:
            found = find_run(ref, self.runs_dir)
            return found.run, found.registry
        except (UserError, RunDirError) as e:
            row = self._registry_default(ref)
            if row is None:
                raise ModelNotFound(f"The model '{asked or reference}' does not exist: not the base "
                                    f"({self.base_name}), a served adapter ({', '.join(self.aliases) or 'none'}), nor a "
                                    f"run or registry reference ({e})") from None
            return find_run(row["run_id"], self.runs_dir).run, row

    def resolve_reference(self, reference: str, asked: str | None = None) -> Resolved:
        run, row = self.locate(reference, asked)
        config = run.config()
        if run.full_model.is_dir():
            raise UserError(f"{run.id} is a full fine-tune, not an adapter: serve it as its own base "
                            f"(`leantune serve --base {run.full_model}`).")
        if config.model.base != self.base_spec:
            raise UserError(f"{reference} was trained on {config.model.base}; this server's base is {self.base_spec}. "
                            "Start a server for that base.")
        folder = Path(row["path"]) if row else run.adapter
        if not (folder / "adapter_config.json").is_file():
            raise UserError(f"{reference}: {folder} holds no adapter (has the run finished?).")
        method = config.method.name
        if method == "lora" and json.loads((folder / "adapter_config.json").read_text()).get("use_dora"):
            method = "dora"
        label = f"{row['name']} v{row['version']} ({row['stage']})" if row else run.id
        return Resolved(self._key(folder), folder, label, run.id, row["version"] if row else None, method)

    def _registry_default(self, name: str) -> dict | None:
        """A plain registry name: its production version, else its newest."""
        index = RunIndex(self.runs_dir)
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,63}", name) or not index.path.exists():
            return None
        try:
            rows = versions(index, name)
        except RegistryError:
            return None
        production = [r for r in rows if r["stage"] == "production"]
        return (production or rows)[-1]

    def _key(self, folder: Path) -> str:
        files = sorted(p for p in folder.iterdir() if p.name.startswith("adapter_"))
        state = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
        with self._lock:
            if (folder, state) not in self._hashes:
                self._hashes[(folder, state)] = _content_key(folder)
            return self._hashes[(folder, state)]
