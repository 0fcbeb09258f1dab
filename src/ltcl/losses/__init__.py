"""Losses for long-tailed recognition: ACL (Eq. 9), SCL (Eq. 1), Balanced Softmax, logit adjustment, and the
paper's rivals in the same pipeline: GPaCo, BCL and LDAM-DRW."""

from ltcl.losses import functional
from ltcl.losses.aligned import AlignedContrastiveLoss, inverse_frequency_weights
from ltcl.losses.balanced_softmax import BalancedSoftmaxLoss, LogitAdjustedLoss
from ltcl.losses.bcl import BalancedContrastiveLoss, BCLPrototypeHead, balanced_contrastive_loss
from ltcl.losses.gpaco import GPaCoLoss, gpaco_loss
from ltcl.losses.ldam import LDAMLoss, effective_number_weights, ldam_loss, ldam_margins
from ltcl.losses.supcon import SupConLoss

__all__ = [
    "AlignedContrastiveLoss",
    "BCLPrototypeHead",
    "BalancedContrastiveLoss",
    "BalancedSoftmaxLoss",
    "GPaCoLoss",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "SupConLoss",
    "balanced_contrastive_loss",
    "effective_number_weights",
    "functional",
    "gpaco_loss",
    "inverse_frequency_weights",
    "ldam_loss",
    "ldam_margins",
]
