"""Losses for long-tailed contrastive learning: ACL (Eq. 9), SCL (Eq. 1), Balanced Softmax, logit adjustment."""

from ltcl.losses import functional
from ltcl.losses.aligned import AlignedContrastiveLoss, inverse_frequency_weights
from ltcl.losses.balanced_softmax import BalancedSoftmaxLoss, LogitAdjustedLoss
from ltcl.losses.supcon import SupConLoss

__all__ = [
    "AlignedContrastiveLoss",
    "BalancedSoftmaxLoss",
    "LogitAdjustedLoss",
    "SupConLoss",
    "functional",
    "inverse_frequency_weights",
]
