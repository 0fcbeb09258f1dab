"""Losses for long-tailed recognition: ACL (Eq. 9), SCL (Eq. 1), Balanced Softmax, logit adjustment, and the
paper's rivals in the same pipeline: PaCo, GPaCo, BCL, KCL, LDAM-DRW, ProCo, GML, the focal and class-balanced
losses, and LADE.

What every loss expects of its inputs:

- ``features`` (the projections): (N, D) float, one row per view, L2-normalised. No loss normalises them; rows of
  another length change every similarity ``z_i . z_k / tau`` and so the loss, without any error.
- ``labels``: (N,) ``torch.int64`` class indices in [0, C), C the number of classes of the loss.
- ``logits``: (N, C) float, the classifier's raw outputs of the same rows (cosines in [-1, 1] for LDAM).

How much is checked. The functional API (``ltcl.losses.functional``, ``gpaco_loss``, ``ldam_loss``,
``balanced_contrastive_loss``) checks everything, label range and finiteness included, on any device (a host
synchronisation on an accelerator). The modules check what needs no synchronisation: shapes, the labels' dtype
(a ``ValueError`` naming ``labels``, never a ``RuntimeError`` from inside torch), and the labels' range while they
are on the CPU. On an accelerator a module does not read the labels' values, to keep the training step free of
host syncs: there the training pipeline validates labels where they enter (the datasets), and the functional API
is the place to check a batch of doubtful labels.
"""

from ltcl.losses import functional
from ltcl.losses.aligned import AlignedContrastiveLoss, inverse_frequency_weights
from ltcl.losses.balanced_softmax import BalancedSoftmaxLoss, LogitAdjustedLoss
from ltcl.losses.bcl import BalancedContrastiveLoss, BCLPrototypeHead, balanced_contrastive_loss
from ltcl.losses.class_balanced import ClassBalancedLoss, class_balanced_loss, focal_terms
from ltcl.losses.gml import GMLLoss
from ltcl.losses.gml_queue import ClassQueue
from ltcl.losses.gpaco import GPaCoLoss, gpaco_loss
from ltcl.losses.gpaco_head import GPaCoProjectionHead
from ltcl.losses.gpaco_queue import GPaCoQueue
from ltcl.losses.kcl import KCLLoss, kcl_loss
from ltcl.losses.lade import LADELoss, lade_loss, lade_regularizer
from ltcl.losses.ldam import LDAMLoss, effective_number_weights, ldam_loss, ldam_margins
from ltcl.losses.proco import ProCoLoss, proco_logits
from ltcl.losses.proco_bessel import bessel_log_term, bessel_ratio, vmf_log_normalizer
from ltcl.losses.supcon import SupConLoss

__all__ = [
    "AlignedContrastiveLoss",
    "BCLPrototypeHead",
    "BalancedContrastiveLoss",
    "BalancedSoftmaxLoss",
    "ClassBalancedLoss",
    "ClassQueue",
    "GMLLoss",
    "GPaCoLoss",
    "GPaCoProjectionHead",
    "GPaCoQueue",
    "KCLLoss",
    "LADELoss",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "ProCoLoss",
    "SupConLoss",
    "balanced_contrastive_loss",
    "bessel_log_term",
    "bessel_ratio",
    "class_balanced_loss",
    "effective_number_weights",
    "focal_terms",
    "functional",
    "gpaco_loss",
    "inverse_frequency_weights",
    "kcl_loss",
    "lade_loss",
    "lade_regularizer",
    "ldam_loss",
    "ldam_margins",
    "proco_logits",
    "vmf_log_normalizer",
]
