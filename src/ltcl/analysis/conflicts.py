"""Gradient-conflict monitoring of SCL (Eq. 5-7, Fig. 4a)."""

from __future__ import annotations

import torch
from torch import Tensor

from ltcl.losses.functional import gradient_conflict_counts


def gradient_conflict_ratio(features: Tensor, labels: Tensor, *, temperature: float, num_classes: int) -> Tensor:
    """Per-class share of SCL positive pairs whose gradient is repulsive (Eq. 7: ``q_ik > 1/|P(i)|``).

    Args:
        features: (N, D) L2-normalised projections; labels: (N,) int64 in [0, num_classes).
        temperature: tau of the SCL loss being analysed.

    Returns:
        (C,) float32: conflicting pairs / positive pairs over anchors of each class; NaN where a class has no
        positive pair in the batch.
    """
    conflicts, pairs = gradient_conflict_counts(features, labels, temperature=temperature, num_classes=num_classes)
    ratio = conflicts.to(torch.float32) / pairs.clamp(min=1).to(torch.float32)
    return torch.where(pairs > 0, ratio, torch.full_like(ratio, float("nan")))
