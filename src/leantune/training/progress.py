"""What a person watching the run sees: a rich progress bar on a terminal, plain periodic lines otherwise
(CI logs, `nohup`), so nobody stares at a silent screen."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainingProgress:
    def __init__(self, total_steps: int, start_step: int, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.total = total_steps
        self.interactive = self.console.is_terminal
        self._last_print = 0.0
        self._bar = None
        if self.interactive:
            self._bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._task = self._bar.add_task("train", total=total_steps, completed=start_step, stats="")

    def __enter__(self):
        if self._bar:
            self._bar.start()
        return self

    def __exit__(self, *exc):
        if self._bar:
            self._bar.stop()
        return False

    def update(self, record: dict) -> None:
        stats = f"loss {record['loss']:.4f}  {record['tokens_per_s']:.0f} tok/s"
        if record.get("cost_usd"):
            stats += f"  ${record['cost_usd']:.4f} of ~${record['projected_cost_usd']:.4f}"
        if self._bar:
            self._bar.update(self._task, completed=record["step"], stats=stats)
            return
        now = time.monotonic()
        if now - self._last_print >= 10 or record["step"] in (1, self.total):
            self._last_print = now
            self.console.print(f"step {record['step']}/{self.total}  {stats}  elapsed {record['elapsed_s']:.0f}s", highlight=False)

    def note(self, message: str) -> None:
        self.console.print(message, highlight=False)
