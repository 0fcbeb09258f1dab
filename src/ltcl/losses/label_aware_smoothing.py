"""Label-aware smoothing (Zhong et al., "Improving Calibration for Long-Tailed Recognition" (MiSLAS), CVPR 2021,
Sec. 4.2, Eqs. 6-7): cross-entropy against a target smoothed by a per-class epsilon that grows with the class's
training count, so that head classes, on which the model is over-confident, are smoothed most.

For a sample of class y with smoothing ``eps_y``::

    loss = (1 - eps_y) * (-log p_y) + eps_y * mean_j (-log p_j)

and ``eps_y = f(N_y)`` interpolates from ``tail`` (the rarest class, N_K) to ``head`` (the largest, N_1) along
``t_y = (N_y - N_K) / (N_1 - N_K)``:

- ``concave``: ``tail + (head - tail) * sin(pi t / 2)`` (the paper's and the authors' default);
- ``linear``: ``tail + (head - tail) * t``;
- ``convex``: ``head + (head - tail) * sin(3 pi / 2 + pi t / 2)``;
- ``exp``: ``tail + (head - tail) * t ** power``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltcl.losses.validation import check_class_counts, check_labels, compute_dtype

SMOOTHING_SHAPES = ("concave", "linear", "convex", "exp")


def label_aware_epsilons(
    class_counts: Sequence[int] | Tensor, head: float, tail: float, shape: str = "concave", power: float = 1.0
) -> Tensor:
    """The (C,) float64 smoothing of each class, from ``tail`` at the rarest class to ``head`` at the largest.

    Raises:
        ValueError: an unknown shape, epsilons outside [0, 1], or classes that all have the same count (the
            interpolation has no head and no tail then).
    """
    counts = check_class_counts(class_counts)
    if shape not in SMOOTHING_SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SMOOTHING_SHAPES)}, got {shape!r}.")
    for name, value in (("head", head), ("tail", tail)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"The {name} smoothing must lie in [0, 1], got {value}.")
    largest, smallest = counts.max(), counts.min()
    if largest == smallest:
        raise ValueError(
            "Label-aware smoothing interpolates between the largest and the smallest class, and every class has "
            f"{int(largest)} training images: use a constant smoothing instead."
        )
    t = (counts - smallest) / (largest - smallest)
    if shape == "concave":
        return tail + (head - tail) * torch.sin(t * math.pi / 2)
    if shape == "linear":
        return tail + (head - tail) * t
    if shape == "convex":
        return head + (head - tail) * torch.sin(1.5 * math.pi + t * math.pi / 2)
    if not power > 0:
        raise ValueError(f"The exp shape needs a positive power, got {power}.")
    return tail + (head - tail) * t**power


def label_aware_smoothing_loss(logits: Tensor, labels: Tensor, epsilons: Tensor) -> Tensor:
    """The mean over the N rows of ``(1 - eps_y) (-log p_y) + eps_y mean_j (-log p_j)``.

    Args:
        logits: (N, C) float; labels: (N,) int64 in [0, C); epsilons: (C,) per-class smoothing.
    """
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[1] != epsilons.numel():
        raise ValueError(f"logits must have shape (N, {epsilons.numel()}), got {getattr(logits, 'shape', logits)}.")
    check_labels(labels, logits.shape[0], epsilons.numel(), sync=False)
    log_p = F.log_softmax(logits.to(compute_dtype(logits)), dim=1)
    eps = epsilons.to(log_p.dtype)[labels]
    nll = -log_p.gather(1, labels[:, None]).squeeze(1)
    uniform = -log_p.mean(dim=1)
    return ((1.0 - eps) * nll + eps * uniform).mean()


class LabelAwareSmoothing(nn.Module):
    """:func:`label_aware_smoothing_loss` with the epsilons of :func:`label_aware_epsilons` stored (float64).

    Args:
        class_counts: (C,) training images per class; head, tail: the smoothing of the largest and the rarest
            class; shape, power: the interpolation (see the module docstring).
    """

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor,
        head: float,
        tail: float,
        shape: str = "concave",
        power: float = 1.0,
    ) -> None:
        super().__init__()
        self.register_buffer("epsilons", label_aware_epsilons(class_counts, head, tail, shape, power))

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return label_aware_smoothing_loss(logits, labels, self.epsilons)
