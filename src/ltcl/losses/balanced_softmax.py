"""Classification losses that correct for the training prior: Balanced Softmax and logit adjustment.

The counts are validated once, in the constructor; the forward pass only adds a stored float64 offset (exact
``log N_j``, cast to the logits' compute dtype) and never waits for the host.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ltcl.losses import functional as LF
from ltcl.losses.validation import check_labels


def _check_inputs(logits: Tensor, labels: Tensor, num_classes: int) -> None:
    """Shapes and dtypes, and the label range on the CPU: nothing that waits for the device."""
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"logits must have shape (N, {num_classes}), got {getattr(logits, 'shape', logits)}.")
    check_labels(labels, logits.shape[0], num_classes, sync=False)


def _smoothing(value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {value}.")
    return float(value)


class BalancedSoftmaxLoss(nn.Module):
    """Balanced Softmax (Ren et al. 2020): cross-entropy on ``logits + log N_j``.

    Args:
        class_counts: (C,) training images per class (all positive).
        label_smoothing: eps of the smoothed target, on the adjusted logits (0: the plain loss).

    Inputs of ``forward(logits, labels)``:
        logits: (N, C) float, the classifier's raw outputs (the loss adds ``log N_j``).
        labels: (N,) int64 class indices in [0, C).

    Returns the scalar mean over the N rows. Shapes and the labels' dtype are always checked, the label range only
    on the CPU (no host sync on an accelerator; see ``ltcl.losses``).
    """

    def __init__(self, class_counts: Sequence[int] | Tensor, label_smoothing: float = 0.0) -> None:
        super().__init__()
        counts = LF.check_class_counts(class_counts)
        self.label_smoothing = _smoothing(label_smoothing)
        self.register_buffer("log_counts", counts.log())  # float64: 4999 stays 4999 (float32 gave 4999.002)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        _check_inputs(logits, labels, self.log_counts.numel())
        return LF.prior_adjusted_cross_entropy(logits, labels, self.log_counts, self.label_smoothing)


class LogitAdjustedLoss(nn.Module):
    """Logit-adjusted cross-entropy (Menon et al. 2021): ``CE(logits + tau * log prior_j)``.

    With ``tau = 1`` it equals Balanced Softmax (the two adjustments differ by a constant).

    Args:
        class_counts: (C,) training images per class (all positive).
        tau: strength of the adjustment.
        label_smoothing: eps of the smoothed target, on the adjusted logits (0: the plain loss).

    Inputs of ``forward(logits, labels)``:
        logits: (N, C) float, the classifier's raw outputs (the loss adds ``tau * log prior_j``).
        labels: (N,) int64 class indices in [0, C).

    Returns the scalar mean over the N rows. Shapes and the labels' dtype are always checked, the label range only
    on the CPU (no host sync on an accelerator; see ``ltcl.losses``).
    """

    def __init__(self, class_counts: Sequence[int] | Tensor, tau: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        counts = LF.check_class_counts(class_counts)
        self.label_smoothing = _smoothing(label_smoothing)
        self.tau = float(tau)
        self.register_buffer("adjustment", self.tau * (counts / counts.sum()).log())  # float64

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        _check_inputs(logits, labels, self.adjustment.numel())
        return LF.prior_adjusted_cross_entropy(logits, labels, self.adjustment, self.label_smoothing)
