"""`leantune export RUN --format F`: the run (or a registry name@stage / name@vN) leaves leantune.

Every export is written into a temporary folder beside its destination, loaded back and checked against the
tuned model (verify.py), and only then renamed into place: a failed or interrupted export never replaces a good
one. What was written and how it was checked is kept in the export's export.json, the run's run.json
("exports") and, for a registry reference, the version's folder (exports.json)."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import atomic
from ..errors import ExportError
from ..runs.lookup import find_run
from ..runs.rundir import RunDir
from .quants import K_QUANTS, QUANTS, check_quant

FORMATS = ("hf", "gguf", "gguf-lora", "int8", "int4")


@dataclass
class ExportRecord:
    format: str
    quant: str | None
    path: str
    files: dict[str, int]  # file name -> bytes
    parameters: int
    bytes_per_parameter: float
    seconds: float
    check: dict
    notes: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.time)

    @property
    def size(self) -> int:
        return sum(self.files.values())

    def summary(self) -> str:
        return (f"{self.format}{'/' + self.quant if self.quant else ''} -> {self.path}: {self.size / 1e6:.1f} MB, "
                f"{self.bytes_per_parameter:.3f} bytes/parameter, {self.seconds:.1f} s")


MERGE_TARGETS = ("nf4", "original")  # QLoRA: the NF4 round trip the adapter trained over, or the float weights


def _check_request(run: RunDir, fmt: str, quant: str | None, merge_into: str = "nf4") -> str | None:
    if merge_into not in MERGE_TARGETS:
        raise ExportError(f"--merge-into {merge_into!r} is not one of {', '.join(MERGE_TARGETS)}.")
    if fmt not in FORMATS:
        raise ExportError(f"Unknown export format {fmt!r}. Choose one of: {', '.join(FORMATS)}.")
    if fmt == "gguf":
        quant = quant or "q8_0"
        check_quant(quant)
    elif quant is not None:
        raise ExportError(f"--quant applies to --format gguf only ({', '.join(QUANTS + K_QUANTS)}), not to {fmt}.")
    info = run.info()
    status = info.get("status", "unknown")
    if status != "completed":
        raise ExportError(f"Run '{run.path}' is {status}, not completed: there is no finished model to export. "
                          f"Finish it with `leantune train --resume {run.path}`.")
    if not (run.adapter / "adapter_config.json").is_file() and not run.full_model.is_dir():
        raise ExportError(f"Run '{run.path}' has neither an adapter nor a model folder to export.")
    if fmt == "gguf-lora" and run.full_model.is_dir():
        raise ExportError("A full fine-tune has no adapter: export it with --format gguf or --format hf.")
    return quant


def _check_destination(out: Path, force: bool, need_bytes: int) -> None:
    if out.exists() and not force:
        raise ExportError(f"'{out}' already exists. Pass --force to replace it (the old export stays until the new "
                          "one has been written and checked), or choose another --out.")
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if free < need_bytes:
        raise ExportError(f"Not enough disk space in {parent}: {free / 1e9:.2f} GB free, the export needs about "
                          f"{need_bytes / 1e9:.2f} GB. Free some space or choose another --out.")


def _base_bytes(config) -> int:
    from ..models.loading import hf_dir_for

    return sum(p.stat().st_size for p in hf_dir_for(config.model.base).glob("*.safetensors"))


def export(target: str, fmt: str, quant: str | None = None, out: str | Path | None = None, force: bool = False,
           runs_dir: str = "runs", merge_into: str = "nf4", check_items: int = 64, say=print) -> ExportRecord:
    found = find_run(str(target), runs_dir)
    run, registry_row = found.run, found.registry
    quant = _check_request(run, fmt, quant, merge_into)
    config = run.config()
    out = Path(out) if out else run.path / "exports" / (fmt + (f"-{quant}" if quant else ""))
    _check_destination(out, force, int(_base_bytes(config) * 1.1) + (64 << 20))
    from .writers import WRITERS  # torch and transformers from here on

    started = time.perf_counter()
    say(f"exporting {run.id} as {fmt}{'/' + quant if quant else ''} to {out}")
    with atomic.atomic_dir(out) as tmp:
        written = WRITERS[fmt](run, tmp, quant=quant, merge_into=merge_into, check_items=check_items, say=say)
        files = {p.name: p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        record = ExportRecord(fmt, quant, str(out), files, written.parameters,
                              written.counted_bytes / max(written.parameters, 1), time.perf_counter() - started,
                              written.check.to_dict(), written.notes)
        (tmp / "export.json").write_text(json.dumps(asdict(record), indent=2))
    _record(run, registry_row, runs_dir, record)
    return record


def _record(run: RunDir, registry_row: dict | None, runs_dir: str, record: ExportRecord) -> None:
    entry = {"format": record.format, "quant": record.quant, "path": record.path, "bytes": record.size,
             "bytes_per_parameter": round(record.bytes_per_parameter, 4), "passed": record.check["passed"],
             "created": record.created}
    exports = [e for e in run.info().get("exports", []) if e.get("path") != record.path] + [entry]
    run.update_info(exports=exports)
    if registry_row is not None:
        path = Path(registry_row["path"]) / "exports.json"
        known = json.loads(path.read_text()) if path.is_file() else []
        atomic.write_json(path, [e for e in known if e.get("path") != record.path] + [entry])
