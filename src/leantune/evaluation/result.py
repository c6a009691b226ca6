"""What an evaluation found, as an object that serialises to JSON (eval.json) and renders for people."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

POINT_METRICS = ("accuracy", "multiple_choice", "exact_match", "token_f1", "preference_accuracy")


@dataclass
class MetricScore:
    metric: str
    scores: dict[str, float]  # model name ('base', 'tuned' or 'model') -> value
    extra: dict[str, dict[str, float]] = field(default_factory=dict)  # e.g. perplexity, balanced accuracy
    delta: float | None = None  # tuned - base
    ci: tuple[float, float] | None = None  # 95% paired-bootstrap interval of delta (per-item metrics)

    @property
    def in_points(self) -> bool:
        return self.metric in POINT_METRICS


@dataclass
class TaskResult:
    task: str
    n: int  # items scored (per model)
    available: int  # items the task has; fewer were scored when the time budget ran out
    general: bool
    metrics: list[MetricScore]
    seconds: float
    # per model, per metric, the per-item values (for the forgetting score); kept in memory, not written out
    items: dict[str, dict[str, list]] = field(default_factory=dict, repr=False)


@dataclass
class Forgetting:
    """base - tuned on the general suite, in accuracy points: positive = the fine-tune forgot."""
    points: float
    ci: tuple[float, float]
    n: int
    tasks: list[str]

    @property
    def within_noise(self) -> bool:
        return self.ci[0] <= 0 <= self.ci[1]

    def describe(self) -> str:
        lo, hi = self.ci
        verdict = ("within noise" if self.within_noise else "forgot" if self.points > 0 else "improved")
        return (f"{self.points:+.1f} pt (95% CI {lo:+.1f} to {hi:+.1f}, {self.n} questions of {', '.join(self.tasks)}): "
                f"{verdict}")


@dataclass
class EvalResult:
    target: str
    models: list[str]  # ['base', 'tuned'] for a run, ['model'] for a plain model
    tasks: list[TaskResult]
    forgetting: Forgetting | None = None
    cost_usd: float | None = None  # the run's training cost
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def items_per_s(self) -> float:
        return sum(t.n for t in self.tasks) * len(self.models) / self.seconds if self.seconds else 0.0

    def primary(self) -> tuple[TaskResult, MetricScore] | None:
        """The task score: the first non-general task's first metric counted in points."""
        for t in self.tasks:
            if not t.general:
                for m in t.metrics:
                    if m.in_points:
                        return t, m
        return None

    @property
    def usd_per_point(self) -> float | None:
        """Training dollars per percentage point the task score gained over the base model (None: no gain)."""
        best = self.primary()
        if best is None or not self.cost_usd or best[1].delta is None or best[1].delta <= 0:
            return None
        return self.cost_usd / (best[1].delta * 100)

    def to_dict(self) -> dict:
        data = asdict(self)
        for task in data["tasks"]:
            del task["items"]
        data["items_per_s"] = self.items_per_s
        data["usd_per_point"] = self.usd_per_point
        best = self.primary()
        data["task_score"] = None if best is None else {"task": best[0].task, "metric": best[1].metric, **best[1].scores,
                                                        "delta": best[1].delta}
        if self.forgetting:
            data["forgetting"]["within_noise"] = self.forgetting.within_noise
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @property
    def columns(self) -> list[str]:
        return ["task", "metric", "n", *self.models] + (["tuned - base (95% CI)"] if len(self.models) == 2 else [])

    def rows(self) -> list[list[str]]:
        """The table's rows, formatted: one per task and metric, then one per extra value (perplexity, ...)."""
        paired = len(self.models) == 2
        out = []
        for t in self.tasks:
            n = f"{t.n}" + (f" of {t.available}" if t.n < t.available else "")
            for m in t.metrics:
                out.append([t.task, m.metric, n, *[format_value(m.metric, m.scores.get(name)) for name in self.models],
                            *([format_delta(m)] if paired else [])])
                for extra_name, values in m.extra.items():
                    out.append([t.task, extra_name, n, *[format_value(extra_name, values.get(name)) for name in self.models],
                                *([""] if paired else [])])
        return out

    def summary(self) -> list[str]:
        """The lines under the table: forgetting, cost per point, notes, speed."""
        lines = []
        if self.forgetting:
            lines.append(f"Forgetting (base - tuned on the general suite): {self.forgetting.describe()}.")
        best = self.primary()
        if self.usd_per_point is not None:
            lines.append(f"Cost per point of task gain: ${self.usd_per_point:.4f} (training ${self.cost_usd:.4f}, "
                         f"{best[1].delta * 100:+.1f} pt {best[1].metric} on {best[0].task}).")
        elif best and self.cost_usd == 0 and best[1].delta:
            lines.append("Cost per point of task gain: unknown (the run's price is 0: set cost.usd_per_hour).")
        lines += self.notes
        lines.append(f"Evaluated in {self.seconds:.1f} s ({self.items_per_s:.1f} items/s per model).")
        return lines

    def markdown(self, heading: str = "## Evaluation") -> str:
        lines = [heading, "", "Tuned and base scored on the same items." if len(self.models) == 2 else "", "",
                 "| " + " | ".join(self.columns) + " |", "|---" * len(self.columns) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows()]
        return "\n".join(lines + [""] + self.summary()) + "\n"


def format_value(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric in POINT_METRICS or metric == "balanced_accuracy":
        return f"{value:.1%}"
    return f"{value:.4f}" if metric == "loss" else f"{value:.3f}"


def format_delta(m: MetricScore) -> str:
    if m.delta is None:
        return "-"
    if not m.in_points:
        return f"{m.delta:+.4f}"
    text = f"{m.delta * 100:+.1f} pt"
    if m.ci:
        text += f" ({m.ci[0] * 100:+.1f} to {m.ci[1] * 100:+.1f})"
    return text


def from_dict(data: dict) -> EvalResult:
    """An EvalResult back from eval.json."""
    tasks = [TaskResult(t["task"], t["n"], t["available"], t["general"],
                        [MetricScore(m["metric"], m["scores"], m.get("extra", {}), m.get("delta"),
                                     tuple(m["ci"]) if m.get("ci") else None) for m in t["metrics"]], t["seconds"])
             for t in data["tasks"]]
    f = data.get("forgetting")
    forgetting = Forgetting(f["points"], tuple(f["ci"]), f["n"], f["tasks"]) if f else None
    return EvalResult(data["target"], data["models"], tasks, forgetting, data.get("cost_usd"), data.get("seconds", 0.0),
                      data.get("notes", []))
