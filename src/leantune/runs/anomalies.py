"""Cost anomalies while a run trains (second seed: "real-time spending visibility with anomaly detection").

Three things make a run cost more than its plan without failing: the hardware runs slower than planned (a
throttled or shared GPU), it slows down part-way (a stalled data loader, another job on the machine), or the price
is wrong (a typo in cost.usd_per_hour). The watcher compares, step by step:
  - the price with the catalog's on-demand price of the detected GPU, once, before the first step;
  - the median tokens/s of the last WINDOW steps with the plan's tokens/s, once steps are long enough for the
    plan's FLOP count to mean something (MIN_PLANNED_STEP_S; tiny steps are all per-step overhead);
  - the same median with the run's own speed over its first WINDOW steps after warm-up.
Each kind fires once per process, goes to the log, to the runs root's alerts.log (beside the budget alerts) and to
run.json, which `runs ls` and `runs show` read. Thresholds are ratios, so the dollars follow: at a fixed price,
tokens/s at 1/3 of the plan is $/token at 3x the plan."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

WARMUP_STEPS = 2  # first steps allocate, compile and fill caches
WINDOW = 4
SLOWER_THAN_PLAN = 3.0  # actual tokens/s below plan / this
SLOWDOWN = 0.5  # actual tokens/s below this share of the run's own early speed
PRICE_RATIO = 3.0  # configured price more than this factor away from the catalog's
MIN_PLANNED_STEP_S = 0.5
MIN_SLOW_STEP_S = 0.1  # a slowdown among steps shorter than this is scheduling noise and costs next to nothing


def price_anomaly(configured_usd_per_hour: float | None, catalog_usd_per_hour: float | None, gpu: str) -> str | None:
    """A configured price far from the catalog's list price for the same card (a typo, the wrong unit)."""
    if not configured_usd_per_hour or not catalog_usd_per_hour:
        return None
    ratio = configured_usd_per_hour / catalog_usd_per_hour
    if 1 / PRICE_RATIO <= ratio <= PRICE_RATIO:
        return None
    return (f"cost anomaly: cost.usd_per_hour=${configured_usd_per_hour:g} is {ratio:.1f}x the catalog's on-demand "
            f"price for {gpu} (${catalog_usd_per_hour:g}/h); every dollar figure of this run uses it - check the "
            "price (per hour, per machine)")


@dataclass
class CostWatch:
    planned_tokens_per_s: float | None
    planned_step_s: float | None  # the plan's seconds for one step, to know whether the plan's speed is meaningful
    usd_per_hour: float | None
    fired: set[str] = field(default_factory=set)
    speeds: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    early: float | None = None

    def observe(self, tokens_per_s: float, step_s: float = 1.0) -> list[str]:
        """Alerts newly raised by this step's speed."""
        self.speeds.append(tokens_per_s)
        self.step_seconds.append(step_s)
        seen = len(self.speeds) - WARMUP_STEPS
        if seen < WINDOW:
            return []
        recent = statistics.median(self.speeds[-WINDOW:])
        if self.early is None:
            self.early = recent
        alerts = []
        plan = self.planned_tokens_per_s
        if (plan and "plan" not in self.fired and (self.planned_step_s or 0) >= MIN_PLANNED_STEP_S
                and recent < plan / SLOWER_THAN_PLAN):
            self.fired.add("plan")
            alerts.append(f"cost anomaly: {recent:,.0f} tokens/s over the last {WINDOW} steps, the plan said "
                          f"{plan:,.0f} ({plan / recent:.1f}x slower{self._dollars(recent, plan)}): a throttled or "
                          "shared GPU, slow data loading, or a plan that does not fit this machine")
        if ("slowdown" not in self.fired and recent < SLOWDOWN * self.early
                and statistics.median(self.step_seconds[-WINDOW:]) >= MIN_SLOW_STEP_S):
            self.fired.add("slowdown")
            alerts.append(f"cost anomaly: slowed to {recent:,.0f} tokens/s over the last {WINDOW} steps from "
                          f"{self.early:,.0f} early in the run ({self.early / recent:.1f}x{self._dollars(recent, self.early)}):"
                          " another process on the machine, thermal throttling, or a stalled data loader")
        return alerts

    def _dollars(self, actual: float, expected: float) -> str:
        if not self.usd_per_hour:
            return ""
        per_m = lambda rate: self.usd_per_hour / 3600 / rate * 1e6  # noqa: E731
        return f"; ${per_m(actual):.4f} per million tokens instead of ${per_m(expected):.4f}"

