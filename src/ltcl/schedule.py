"""Learning rate as a pure function of the optimisation step: linear warm-up, then step or cosine decay.

Being a function of the step alone, the schedule's whole state is the step number, which the checkpoint keeps.
"""

from __future__ import annotations

import math

from ltcl.config import OptimConfig


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
