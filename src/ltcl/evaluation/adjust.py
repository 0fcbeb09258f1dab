"""Post-hoc logit adjustment (Menon et al., ICLR 2021): ``logits - tau * log prior`` with the training prior, and
``auto``: tau chosen on the validation split, never on the test split.

``auto`` scores each tau of :data:`TAU_GRID` by the validation split's balanced accuracy (the mean of the
per-class accuracies of the classes the split holds: logit adjustment targets the balanced error, and a validation
split may lack a class, as CIFAR-LT's head class) and keeps the first best (the smallest tau among ties).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ltcl.errors import UserError
from ltcl.losses.functional import log_prior

TAU_GRID = tuple(round(0.1 * i, 1) for i in range(21))  # 0.0, 0.1, ..., 2.0


def parse_logit_adjust(text: str | float | None) -> float | str | None:
    """``--logit-adjust``: a number or ``auto`` (None: not given)."""
    if text is None or isinstance(text, float):
        return text
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise UserError(f"--logit-adjust takes a number TAU or auto, got '{text}'.") from None


def adjust_logits(logits: Tensor, train_counts: Sequence[int], tau: float) -> Tensor:
    """``logits - tau * log(training prior)`` in float32 (the logits themselves for tau 0)."""
    if not tau:
        return logits.float()
    return logits.float() - tau * log_prior(train_counts, device=logits.device)


def balanced_accuracy(predicted: Tensor, labels: Tensor, num_classes: int) -> float:
    """Mean per-class accuracy (fraction) over the classes present in ``labels``."""
    seen = torch.bincount(labels, minlength=num_classes).double()
    correct = torch.bincount(labels[predicted == labels], minlength=num_classes).double()
    present = seen > 0
    return float((correct[present] / seen[present]).mean())


@dataclass
class TauChoice:
    """The chosen tau and the balanced accuracy (%) of every tau of the grid on the split it was chosen on."""

    tau: float
    scores: dict[float, float]


def choose_tau(
    logits: Tensor, labels: Tensor, train_counts: Sequence[int], grid: Sequence[float] = TAU_GRID
) -> TauChoice:
    """The tau of ``grid`` with the best balanced accuracy of ``logits`` (validation outputs only)."""
    labels = labels.long()
    scores = {
        tau: 100.0 * balanced_accuracy(adjust_logits(logits, train_counts, tau).argmax(1), labels, len(train_counts))
        for tau in grid
    }
    best = max(scores.values())
    return TauChoice(next(tau for tau in grid if scores[tau] == best), scores)
