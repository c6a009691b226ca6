"""The one owner of price and cost: what a run's machine costs per hour, how long the run is billed for, and
what that makes in dollars. The training loop's meter and budget guard, the report, the ledger (index rows,
`runs ls/show/compare`, project budgets) and the trackers all read it from here; nothing else multiplies
seconds by a price.

Price: `cost.usd_per_hour` when the config sets it (0 is a valid price: a machine you own); otherwise the
on-demand price of the detected GPU in the planner's catalog, found by an exact match of the driver's device
name against each card's `device_names` (plan/gpus.json) after normalising case, dashes and the vendor prefix.
A substring match would price an L40S as an L4 and leave "A100-SXM4-80GB" unpriced; an unknown card, or a CPU,
has no price: the cost is then unknown (not $0), said in one warning, and a budget cannot be enforced, so a run
with a budget and no price is refused before any model is loaded.

Billed time: a cloud bills the whole process, so the meter runs from the process's start (the `leantune`
command's; for a library call, from the call) to the end of the run, not just the optimizer steps. The time is
split into phases (loading the model, reading and tokenising data, preparing the objective's extra passes, the
training steps, evaluation, checkpoint writes, and everything else) for run.json, report.md and `runs show`.
A resumed run adds its new process's time to what the earlier ones were billed.

Nothing here imports torch: `runs ls`, `budget` and the planner read prices without loading a model.
"""

from __future__ import annotations

import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..plan.catalog import load_catalog

PHASES = ("load", "data", "prepare", "train", "eval", "checkpoint", "other")
PHASE_LABELS = {"load": "loading the model", "data": "reading and tokenising data",
                "prepare": "preparing (Fisher, reference, teacher)", "train": "training steps", "eval": "evaluation",
                "checkpoint": "checkpoints and saving", "other": "start-up, planning and the rest"}


def usd(value: float | None) -> str:
    """Dollars readable at any scale: cents for real runs, more digits for the fractions of a cent of tiny ones."""
    if value is None:
        return "unknown (no price)"
    return f"${value:,.2f}" if abs(value) >= 0.01 or value == 0 else f"${value:.6f}"

# ---------------------------------------------------------------- price


def normalise_device_name(name: str) -> str:
    """'NVIDIA A100-SXM4-80GB' -> 'a100 sxm4 80gb'; 'Tesla T4' -> 't4'; 'NVIDIA GeForce RTX 4090' -> 'rtx 4090'."""
    text = name.strip().lower()
    text = re.sub(r"^cuda:", "", text)
    text = re.sub(r"^(nvidia\s+)?(tesla\s+|geforce\s+)?", "", text)
    return " ".join(re.split(r"[\s_\-]+", text)).strip()


def gpu_for_device(device: str, catalog: dict | None = None):
    """The catalog entry of a device name ('cuda:NVIDIA H100 80GB HBM3' or the bare name), or None when the card
    is not in the catalog (or the device is a CPU)."""
    if not device or device.startswith("cpu"):
        return None
    catalog = catalog if catalog is not None else load_catalog()
    wanted = normalise_device_name(device)
    for gpu in catalog.values():
        if any(normalise_device_name(n) == wanted for n in gpu.device_names):
            return gpu
    return None


@dataclass(frozen=True)
class Price:
    usd_per_hour: float | None  # None: unknown
    source: str  # "config", "catalog <key>", or "none"
    device: str

    def describe(self) -> str:
        if self.usd_per_hour is None:
            return f"no price for {self.device}"
        where = "cost.usd_per_hour" if self.source == "config" else f"{self.source.removeprefix('catalog ')} on-demand list price"
        return f"${self.usd_per_hour:g}/h ({where})"

    def machine(self) -> str:
        """The machine in words, for messages about a missing price."""
        return "a CPU" if self.device == "cpu" else f"'{self.device.removeprefix('cuda:')}' (not in the GPU catalog)"

    def as_dict(self) -> dict:
        return {"usd_per_hour": self.usd_per_hour, "source": self.source, "device": self.device}

    @classmethod
    def from_dict(cls, data: dict) -> "Price":
        return cls(data.get("usd_per_hour"), data.get("source", "none"), data.get("device", "cpu"))


def resolve_price(configured: float | None, device: str, catalog: dict | None = None) -> Price:
    """The config's price, else the catalog's on-demand price for the detected GPU, else none."""
    if configured is not None:
        return Price(float(configured), "config", device)
    gpu = gpu_for_device(device, catalog)
    if gpu is not None and gpu.on_demand_usd is not None:
        return Price(gpu.on_demand_usd, f"catalog {gpu.key}", device)
    return Price(None, "none", device)


def missing_price_warning(price: Price) -> str | None:
    if price.usd_per_hour is not None:
        return None
    return (f"cost: this run is on {price.machine()}, so its cost is unknown; set cost.usd_per_hour (e.g. cost.usd_per_hour=0.5) "
            "to meter it and to use budgets")


def refuse_budget_without_price(price: Price, run_budget: float | None, project: str | None = None,
                                project_budget: float | None = None) -> None:
    """A budget cannot be enforced without a price: say so before anything is loaded, with the fix."""
    if price.usd_per_hour is not None:
        return
    budgets = []
    if run_budget is not None:
        budgets.append(f"cost.budget_usd={run_budget:g}")
    if project_budget is not None:
        budgets.append(f"project '{project}''s budget of {usd(project_budget)}")
    if not budgets:
        return
    raise ConfigError(f"This run has {' and '.join(budgets)} but no price: it runs on {price.machine()}, so leantune cannot tell "
                      "when the budget is spent. Set cost.usd_per_hour to what the machine costs (0 if it is yours), or "
                      "drop the budget.")


def cost_usd(seconds: float, price: Price | float | None) -> float | None:
    rate = price.usd_per_hour if isinstance(price, Price) else price
    return None if rate is None else seconds / 3600 * rate

# ---------------------------------------------------------------- billed time


def process_start_time() -> float:
    """When this process started (epoch seconds), from /proc on Linux; elsewhere when leantune was imported."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat(5): start time in clock ticks after boot
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        started = boot + ticks / os.sysconf("SC_CLK_TCK")
        # btime is whole seconds: never report a start in the future or long before this module loaded
        return min(started, _IMPORTED)
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED


_IMPORTED = time.time()


@dataclass
class BilledClock:
    """Wall time since `started`, split into phases. A resumed run carries what its earlier processes were billed:
    `earlier` (seconds per phase) and `earlier_usd` (their dollars, at the price of the machine they ran on)."""

    started: float
    earlier: dict = field(default_factory=dict)
    earlier_usd: float | None = None
    phases: dict = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    _open: str | None = None

    @contextmanager
    def phase(self, name: str):
        """Time spent inside goes to `name`; a phase opened inside another counts once, to the outer one."""
        if self._open is not None:
            yield
            return
        self._open, began = name, time.time()
        try:
            yield
        finally:
            self.phases[name] += time.time() - began
            self._open = None

    def this_process_s(self) -> float:
        return max(time.time() - self.started, sum(self.phases.values()))

    def seconds(self) -> float:
        """Billed seconds so far, earlier processes included."""
        return sum(self.earlier.values()) + self.this_process_s()

    def cost(self, price: Price) -> float | None:
        """Dollars so far: the earlier processes' own dollars plus this process's time at `price`."""
        if price.usd_per_hour is None:
            return None
        earlier = self.earlier_usd if self.earlier_usd is not None else cost_usd(sum(self.earlier.values()), price)
        return earlier + cost_usd(self.this_process_s(), price)

    def breakdown(self) -> dict[str, float]:
        """Seconds per phase, earlier processes included; 'other' is the rest of the wall time."""
        now = dict(self.phases)
        now["other"] += self.this_process_s() - sum(self.phases.values())
        return {k: round(self.earlier.get(k, 0.0) + now.get(k, 0.0), 3) for k in PHASES}

    def record(self, price: Price) -> dict:
        """What run.json keeps under "billed"."""
        return {"seconds": round(self.seconds(), 3), "phases": self.breakdown(), "price": price.as_dict(),
                "usd": self.cost(price)}

    @classmethod
    def resumed(cls, started: float, info: dict, metrics: list[dict]) -> "BilledClock":
        """A clock for a run continued in a new process: run.json's billed record, topped up to the last metrics
        line's billed_s when the earlier process was killed after logging a step but before it wrote run.json
        again (that gap was training steps, priced as the earlier process's machine)."""
        billed = info.get("billed") or {}
        phases = {k: float(v) for k, v in billed.get("phases", {}).items() if k in PHASES}
        earlier_usd = billed.get("usd")
        gap = max((float(m["billed_s"]) for m in metrics if "billed_s" in m), default=0.0) - sum(phases.values())
        if gap > 0:
            phases["train"] = phases.get("train", 0.0) + gap
            rate = (billed.get("price") or {}).get("usd_per_hour")
            earlier_usd = None if earlier_usd is None or rate is None else earlier_usd + cost_usd(gap, rate)
        return cls(started, phases, earlier_usd)


@dataclass(frozen=True)
class RunCost:
    """What a finished (or stopped) run was billed, read back from its files."""

    seconds: float
    price: Price
    usd: float | None


def run_cost(info: dict, metrics: list[dict], configured: float | None) -> RunCost:
    """A run's billed time and dollars from run.json and metrics.jsonl. The last logged step can be newer than
    run.json (a process killed in between): the larger wins. Runs from before billing was recorded are billed
    their summed step time at the price their config and device give."""
    billed = info.get("billed") or {}
    price = Price.from_dict(billed["price"]) if billed.get("price") else resolve_price(configured, info.get("device", "cpu"))
    logged = [m for m in metrics if "billed_s" in m]
    seconds = float(billed.get("seconds", 0.0))
    dollars = billed.get("usd")
    if logged and float(logged[-1]["billed_s"]) > seconds:
        seconds, dollars = float(logged[-1]["billed_s"]), logged[-1].get("cost_usd")
    if not billed and not logged:  # a run from before billed time was recorded
        steps = [m for m in metrics if "loss" in m]
        seconds = float(steps[-1].get("elapsed_s", 0.0)) if steps else 0.0
        dollars = cost_usd(seconds, price)
    return RunCost(seconds, price, dollars)
