"""Classification losses that correct for the training prior: Balanced Softmax and logit adjustment."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ltcl.losses import functional as LF


class BalancedSoftmaxLoss(nn.Module):
    """Balanced Softmax (Ren et al. 2020): cross-entropy on ``logits + log N_j``.

    Args:
        class_counts: (C,) training images per class (all positive).

    Shapes:
        forward(logits (N, C), labels (N,) int64) -> scalar mean over rows.
    """

    def __init__(self, class_counts: Sequence[int] | Tensor) -> None:
        super().__init__()
        counts = LF.check_class_counts(class_counts)
        self.register_buffer("log_counts", counts.log().to(torch.float32))

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return LF.balanced_softmax_loss(logits, labels, self.log_counts.exp())


class LogitAdjustedLoss(nn.Module):
    """Logit-adjusted cross-entropy (Menon et al. 2021): ``CE(logits + tau * log prior_j)``.

    With ``tau = 1`` it equals Balanced Softmax (the two adjustments differ by a constant).

    Args:
        class_counts: (C,) training images per class (all positive).
        tau: strength of the adjustment.
    """

    def __init__(self, class_counts: Sequence[int] | Tensor, tau: float = 1.0) -> None:
        super().__init__()
        counts = LF.check_class_counts(class_counts)
        self.register_buffer("counts", counts.to(torch.float32))
        self.tau = float(tau)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return LF.logit_adjusted_loss(logits, labels, self.counts, tau=self.tau)
