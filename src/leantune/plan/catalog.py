"""The GPU catalog and price table: one data file (gpus.json), optionally overridden by a user's file."""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

CATALOG_FILE = Path(__file__).with_name("gpus.json")


@dataclass(frozen=True)
class GPU:
    key: str
    name: str
    memory_gib: float
    bf16_tflops: float
    bandwidth_tbs: float
    on_demand_usd: float | None
    spot_usd: float | None
    price_date: str = ""
    price_source: str = ""
    device_names: tuple[str, ...] = ()  # what the driver calls this card (torch.cuda.get_device_name, nvidia-smi)
    interconnect: str = "unknown"  # how the GPUs of one machine reach each other
    collective_gbs: float = 10.0  # all-reduce bus bandwidth per GPU between GPUs of one machine (GB/s), assumed
    gpus_per_node: int = 8  # the most GPUs one machine of this kind holds; more are several machines
    node_link_gbs: float = 1.25  # one machine's network to the others (GB/s, all NICs), assumed: 10 GbE unless known
    purchase_usd: float | None = None  # one card's street price (plan --buy); None: not sold on its own
    tdp_watts: float | None = None  # board power


def load_catalog(prices: str | Path | None = None) -> dict[str, GPU]:
    """The built-in catalog; entries (or single fields) in `prices` replace or extend it."""
    entries = json.loads(CATALOG_FILE.read_text())["gpus"]
    if prices:
        path = Path(prices)
        try:
            override = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"Price file '{path}' does not exist.") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"Price file {path}:{e.lineno}: not valid JSON ({e.msg}).") from None
        for key, fields in override.get("gpus", override).items():
            if key.startswith("_"):
                continue
            if not isinstance(fields, dict):
                raise ConfigError(f"Price file '{path}': entry '{key}' must be an object like {{\"on_demand_usd\": 2.5}}.")
            merged = {**entries.get(key, {}), **fields}
            missing = {"name", "memory_gib", "bf16_tflops", "bandwidth_tbs"} - set(merged)
            if missing:
                raise ConfigError(f"Price file '{path}': new GPU '{key}' needs {', '.join(sorted(missing))}.")
            entries[key] = merged
    catalog = {}
    for key, e in entries.items():
        fields = {k: e.get(k, _default(k)) for k in GPU.__dataclass_fields__ if k not in ("key", "device_names")}
        catalog[key] = GPU(key=key, device_names=tuple(e.get("device_names", ())), **fields)
    return catalog


def _default(field: str):
    default = GPU.__dataclass_fields__[field].default
    return None if default is dataclasses.MISSING else default


def find_gpu(catalog: dict[str, GPU], name: str) -> GPU:
    key = name.lower().replace("_", "-").replace(" ", "-")
    if key in catalog:
        return catalog[key]
    close = difflib.get_close_matches(key, list(catalog), n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"Unknown GPU '{name}'.{hint} Known: {', '.join(catalog)}; add others with --prices FILE.")
