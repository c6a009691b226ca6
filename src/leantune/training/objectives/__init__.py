"""Objectives, one file each: what a step optimises (sft, dpo, distill), plus the terms against forgetting that
any supervised objective can carry (ewc: a penalty added to every step; replay: general rows mixed into the data).

Adding an objective: a subclass of `base.Objective` in a new file, and one line in OBJECTIVES."""

from __future__ import annotations

from ...config import RunConfig
from .base import Batches, Objective
from .distill import Distillation
from .dpo import DPO
from .sft import SFT

OBJECTIVES: dict[str, type[Objective]] = {o.name: o for o in (SFT, DPO, Distillation)}


def make_objective(config: RunConfig) -> Objective:
    return OBJECTIVES[config.objective.name](config)


__all__ = ["Batches", "OBJECTIVES", "Objective", "make_objective"]
