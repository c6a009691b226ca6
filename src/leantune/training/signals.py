"""Preemption: a spot instance gets SIGTERM (and a person presses Ctrl-C). We note the signal and let the
loop finish the step it is in, write a checkpoint and stop; a second Ctrl-C stops at once."""

from __future__ import annotations

import signal
import threading


class TrainingStopped(Exception):
    """Training stopped on purpose at a step boundary, after writing a checkpoint it can resume from."""

    exit_code = 3

    def __init__(self, message: str, checkpoint: str, resume_command: str):
        self.checkpoint = checkpoint
        self.resume_command = resume_command
        super().__init__(f"{message} Saved {checkpoint}. Resume with: {resume_command}")


class Preempted(TrainingStopped):
    """Stopped by SIGTERM/SIGINT (a spot-instance preemption, Ctrl-C); exits 128 + the signal number."""

    def __init__(self, signum: int, checkpoint: str, resume_command: str):
        self.signum = signum
        super().__init__(f"Stopped by {signal.Signals(signum).name}.", checkpoint, resume_command)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class BudgetReached(TrainingStopped):
    """The next step would have taken the run's cost past cost.budget_usd."""


class StopOnSignal:
    """Context manager: `self.signum` becomes set when SIGTERM or SIGINT arrives."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: the user does not want to wait for the step
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False
