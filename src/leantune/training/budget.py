"""The live cost meter and the budget guard of one run (prices and billed time come from runs/cost.py).

The guard judges, before each step, the slowest step so far (plus a margin), not the average, and the work
still owed after the last step (the final eval pass and the save): a run stopped a step early is cheap, one that
overshoots its budget is the failure this guard exists for. Loading and preparing are billed too, so a budget
they already used up stops the run before its first step. What the budget has left after training caps the
time box of the after-training evaluation."""

from __future__ import annotations

from ..runs.cost import BilledClock, Price, cost_usd, usd


class BudgetGuard:
    def __init__(self, budget_usd: float | None, price: Price, clock: BilledClock):
        self.budget, self.price, self.clock = budget_usd, price, clock
        self.slowest_step_s = 0.0
        self.step_tokens = 0
        self.last_eval_s: float | None = None  # what the final eval pass is expected to take
        self.slowest_save_s: float | None = None

    def cost_so_far(self) -> float | None:
        return self.clock.cost(self.price)

    def observe_step(self, seconds: float, tokens: int) -> None:
        self.slowest_step_s = max(self.slowest_step_s, seconds)
        self.step_tokens = max(self.step_tokens, tokens)

    def observe_eval(self, seconds: float) -> None:
        self.last_eval_s = seconds

    def observe_save(self, seconds: float) -> None:
        self.slowest_save_s = max(self.slowest_save_s or 0.0, seconds)

    def owed_after_training_s(self, eval_tokens: int) -> float:
        """The final eval pass (as long as the last one, or estimated from the slowest step's token rate with a
        forward pass at half a training step's cost) and saving (the slowest checkpoint write, else a step)."""
        owed = 0.0
        if eval_tokens:
            if self.last_eval_s is not None:
                owed += self.last_eval_s
            elif self.slowest_step_s:
                owed += 0.5 * eval_tokens / max(self.step_tokens, 1) * self.slowest_step_s
        owed += self.slowest_save_s if self.slowest_save_s is not None else max(self.slowest_step_s, 0.2)
        return owed

    def next_step_passes(self, eval_tokens: int) -> bool:
        rate = self.price.usd_per_hour
        if self.budget is None or not rate or not self.slowest_step_s:
            return False
        needed_s = 1.25 * (self.slowest_step_s + self.owed_after_training_s(eval_tokens))
        return self.cost_so_far() + needed_s / 3600 * rate > self.budget

    def spent_before_training(self) -> bool:
        return self.budget is not None and bool(self.price.usd_per_hour) and self.cost_so_far() >= self.budget

    def spent_message(self, step: int, fix: str) -> str:
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in self.clock.breakdown().items() if v >= 0.05)
        return (f"cost.budget_usd=${self.budget:g} was used up before training step {step + 1}: "
                f"{usd(self.cost_so_far())} billed at {self.price.describe()} ({phases}). {fix}")

    def projected_cost(self, step: int, total_steps: int, steps_this_process: int) -> float | None:
        """What is billed so far, plus the remaining steps at this process's mean step time."""
        if self.price.usd_per_hour is None:
            return None
        remaining_s = (total_steps - step) * self.clock.phases["train"] / max(steps_this_process, 1)
        return self.cost_so_far() + cost_usd(remaining_s, self.price)

    def seconds_left_for_evaluation(self) -> float | None:
        """How long the after-training evaluation may take within the budget (None: no budget); 20% of what is
        left is kept for the last writes."""
        if self.budget is None or not self.price.usd_per_hour:
            return None
        return 0.8 * (self.budget - self.cost_so_far()) / self.price.usd_per_hour * 3600
