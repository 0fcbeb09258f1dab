"""Generalized re-weighting (Zhang et al., "Distribution Alignment" (DisAlign), CVPR 2021, Sec. 3.3, Eq. 6): the
cross-entropy of class j weighted by ``(1 / r_j) ** rho``, with ``r_j = N_j / N`` the class's share of the training
set; ``rho = 0`` is the plain cross-entropy, ``rho = 1`` re-weights by inverse frequency.

As in the authors' code (Megvii-BaseDetection/cvpods, ``cvpods/modeling/losses/grw_loss.py``) the weights are scaled
to sum to C and the batch loss is their weighted mean, ``sum_i w_{y_i} CE_i / sum_i w_{y_i}`` (PyTorch's
``cross_entropy(weight=...)``), so the weights' overall scale cancels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ltcl.losses.validation import check_class_counts, check_labels, compute_dtype


def generalized_reweighting_weights(class_counts: Sequence[int] | Tensor, exponent: float) -> Tensor:
    """(C,) float64 weights ``(N / N_j) ** exponent``, scaled to sum to C.

    Raises:
        ValueError: a count that is not positive, or a negative exponent.
    """
    counts = check_class_counts(class_counts)
    if not exponent >= 0:
        raise ValueError(f"The re-weighting exponent must be >= 0, got {exponent}.")
    weights = (counts.sum() / counts) ** exponent
    return weights / weights.sum() * counts.numel()


def generalized_reweighted_cross_entropy(logits: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """``sum_i w_{y_i} CE_i / sum_i w_{y_i}`` over the N rows; logits (N, C), labels (N,) int64, weights (C,)."""
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[1] != weights.numel():
        raise ValueError(f"logits must have shape (N, {weights.numel()}), got {getattr(logits, 'shape', logits)}.")
    check_labels(labels, logits.shape[0], weights.numel(), sync=False)
    logits = logits.to(compute_dtype(logits))
    return F.cross_entropy(logits, labels, weight=weights.to(logits.dtype))


class GeneralizedReweightedCE(nn.Module):
    """:func:`generalized_reweighted_cross_entropy` with the weights of the training counts stored (float64).

    Args:
        class_counts: (C,) training images per class; exponent: rho (1.2 in the authors' ImageNet-LT config).
    """

    def __init__(self, class_counts: Sequence[int] | Tensor, exponent: float) -> None:
        super().__init__()
        self.register_buffer("weights", generalized_reweighting_weights(class_counts, exponent))

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return generalized_reweighted_cross_entropy(logits, labels, self.weights)
