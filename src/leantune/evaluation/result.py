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
    vs_few_shot: float | None = None  # tuned - few-shot base, when the few-shot baseline was scored
    vs_few_shot_ci: tuple[float, float] | None = None

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
    few_shot: dict | None = None  # the few-shot baseline's shots and what they cost a request (few_shot.FewShotCost)

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
    def paired(self) -> bool:
        return {"base", "tuned"} <= set(self.models)

    @property
    def with_few_shot(self) -> bool:
        return "few-shot" in self.models

    @property
    def columns(self) -> list[str]:
        return (["task", "metric", "n", *self.models] + (["tuned - base (95% CI)"] if self.paired else [])
                + (["tuned - few-shot (95% CI)"] if self.with_few_shot else []))

    def rows(self) -> list[list[str]]:
        """The table's rows, formatted: one per task and metric, then one per extra value (perplexity, ...)."""
        out = []
        for t in self.tasks:
            n = f"{t.n}" + (f" of {t.available}" if t.n < t.available else "")
            for m in t.metrics:
                out.append([t.task, m.metric, n, *[format_value(m.metric, m.scores.get(name)) for name in self.models],
                            *([format_delta(m)] if self.paired else []),
                            *([format_delta(m, m.vs_few_shot, m.vs_few_shot_ci)] if self.with_few_shot else [])])
                for extra_name, values in m.extra.items():
                    out.append([t.task, extra_name, n, *[format_value(extra_name, values.get(name)) for name in self.models],
                                *([""] if self.paired else []), *([""] if self.with_few_shot else [])])
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
        if self.few_shot and best and best[1].vs_few_shot is not None:
            m = best[1]
            gain = (f"{m.vs_few_shot * 100:+.1f} pt" + (f" (95% CI {m.vs_few_shot_ci[0] * 100:+.1f} to "
                                                       f"{m.vs_few_shot_ci[1] * 100:+.1f})" if m.vs_few_shot_ci else "")
                    if m.in_points else f"{m.vs_few_shot:+.4f}")
            lines.append(f"Fine-tuned vs few-shot ({self.few_shot['shots']} training rows in the prompt, base model): "
                         f"{gain} {m.metric} on {best[0].task}.")
            lines.append(self.few_shot["describe"])
        lines += self.notes
        lines.append(f"Evaluated in {self.seconds:.1f} s ({self.items_per_s:.1f} items/s per model).")
        return lines

    def markdown(self, heading: str = "## Evaluation") -> str:
        same = ("Tuned and base scored on the same items." if self.models == ["base", "tuned"] else
                f"{', '.join(self.models)} scored on the same items." if len(self.models) > 1 else "")
        lines = [heading, "", same, "",
                 "| " + " | ".join(self.columns) + " |", "|---" * len(self.columns) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows()]
        return "\n".join(lines + [""] + self.summary()) + "\n"


def format_value(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric in POINT_METRICS or metric == "balanced_accuracy":
        return f"{value:.1%}"
    return f"{value:.4f}" if metric == "loss" else f"{value:.3f}"


def format_delta(m: MetricScore, delta: float | None = None, ci: tuple[float, float] | None = None) -> str:
    """tuned - base by default; tuned - few-shot when those are passed."""
    if delta is None and ci is None:
        delta, ci = m.delta, m.ci
    if delta is None:
        return "-"
    if not m.in_points:
        return f"{delta:+.4f}"
    text = f"{delta * 100:+.1f} pt"
    if ci:
        text += f" ({ci[0] * 100:+.1f} to {ci[1] * 100:+.1f})"
    return text


def from_dict(data: dict) -> EvalResult:
    """An EvalResult back from eval.json."""
    tasks = [TaskResult(t["task"], t["n"], t["available"], t["general"],
                        [MetricScore(m["metric"], m["scores"], m.get("extra", {}), m.get("delta"),
                                     tuple(m["ci"]) if m.get("ci") else None, m.get("vs_few_shot"),
                                     tuple(m["vs_few_shot_ci"]) if m.get("vs_few_shot_ci") else None)
                         for m in t["metrics"]], t["seconds"])
             for t in data["tasks"]]
    f = data.get("forgetting")
    forgetting = Forgetting(f["points"], tuple(f["ci"]), f["n"], f["tasks"]) if f else None
    return EvalResult(data["target"], data["models"], tasks, forgetting, data.get("cost_usd"), data.get("seconds", 0.0),
                      data.get("notes", []), data.get("few_shot"))
