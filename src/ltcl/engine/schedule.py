"""Learning rate as a pure function of the optimisation step: linear warm-up, then step or cosine decay.

Being a function of the step alone, the schedule's whole state is the step number, which the checkpoint keeps.
"""

from __future__ import annotations

import math
from typing import get_args

from ltcl.config import OptimConfig
from ltcl.config.schema import Schedule

SCHEDULES = get_args(Schedule)


def check_schedule(optim: OptimConfig) -> None:
    """Rejects a schedule that cannot run, naming the key."""
    if optim.schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule must be step or cosine, got '{optim.schedule}'.")
    if optim.epochs < 1:
        raise ValueError(f"optim.epochs must be at least 1, got {optim.epochs}.")
    if not 0 <= optim.warmup_epochs <= optim.epochs:
        raise ValueError(f"optim.warmup_epochs must be between 0 and optim.epochs, got {optim.warmup_epochs}.")
    if optim.lr <= 0:
        raise ValueError(f"optim.lr must be positive, got {optim.lr}.")
    if sorted(optim.milestones) != list(optim.milestones):
        raise ValueError(f"optim.milestones must be increasing, got {optim.milestones}.")


def learning_rate(optim: OptimConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of optimisation step ``step`` (0-based).

    Warm-up: ``lr * (step + 1) / warmup_steps`` over the first ``warmup_epochs``. Then ``step``: ``lr`` times
    ``gamma`` for every milestone epoch already reached; ``cosine``: half a cosine from ``lr`` to 0 over the
    remaining steps.
    """
    warmup_steps = optim.warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        return optim.lr * (step + 1) / warmup_steps
    epoch = step / steps_per_epoch
    if optim.schedule == "step":
        return optim.lr * optim.gamma ** sum(epoch >= m for m in optim.milestones)
    total = optim.epochs * steps_per_epoch
    progress = (step - warmup_steps) / max(1, total - warmup_steps)
    return 0.5 * optim.lr * (1.0 + math.cos(math.pi * min(1.0, progress)))
