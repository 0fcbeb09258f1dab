"""BBN's cumulative learning (Zhou et al., CVPR 2020, "BBN: Bilateral-Branch Network with Cumulative Learning",
Sec. 3.2-3.3, Eqs. 1-3).

Two branches share a trunk: the conventional-learning branch sees a batch drawn uniformly over the images
(``x_c, y_c``), the re-balancing branch a batch drawn by the reversed sampler (``x_r, y_r``); their pooled
features ``f_c`` and ``f_r`` meet in one classifier ``W = [W_c, W_r]`` (a linear layer on the concatenation)::

    alpha(T) = 1 - (T / T_max)^2                                           (Eq. 1; T the 0-based epoch)
    z        = W [2 alpha f_c ; 2 (1 - alpha) f_r] + b
             = 2 (alpha W_c f_c + (1 - alpha) W_r f_r) + b                  (Eq. 2, with the code's factor 2)
    L        = alpha CE(softmax(z), y_c) + (1 - alpha) CE(softmax(z), y_r)  (Eq. 3)

At test both branches see the same image with equal weights, ``alpha = 1/2``: ``z = W [f_c ; f_r] + b``.

As the authors' code (Megvii-Nanjing/BBN, lib/core/combiner.py ``bbn_mix``, lines 48-58): the factor 2 of the
mixed feature (so that the test-time feature is the plain concatenation), the epoch count of the schedule
(``T_max`` is the number of epochs, except 90 -> 100 and 180 -> 200, combiner.py lines 16-19), and alpha constant
within an epoch. The two cross-entropies are batch means, computed in float32 under autocast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ltcl.losses.validation import check_labels, compute_dtype


def schedule_length(epochs: int) -> int:
    """``T_max`` of BBN's schedule for a run of ``epochs`` epochs: the epochs themselves, except 90 -> 100 and
    180 -> 200 (the authors' ``div_epoch``, combiner.py lines 16-19: a 90- or 180-epoch run ends with alpha about
    0.2, not near 0)."""
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}.")
    return 100 * (epochs // 100 + 1) if epochs in (90, 180) else epochs


def cumulative_alpha(epoch: int, length: int) -> float:
    """Eq. 1: ``alpha = 1 - (epoch / length)^2`` for the 0-based ``epoch`` (the authors' ``(epoch - 1)`` of their
    1-based epochs): 1 in the first epoch, falling to ``1 - ((length - 1) / length)^2`` in the last of ``length``."""
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be an integer >= 1, got {length!r}.")
    if not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be an integer >= 0, got {epoch!r}.")
    return 1.0 - (epoch / length) ** 2


def bilateral_mix(conventional: Tensor, rebalancing: Tensor, alpha: float) -> Tensor:
    """The classifier's input: ``2 [alpha f_c ; (1 - alpha) f_r]`` (B, F_c + F_r); ``alpha = 1/2`` gives the
    test-time ``[f_c ; f_r]``.

    Args:
        conventional: (B, F_c) pooled features of the conventional-learning branch.
        rebalancing: (B, F_r) pooled features of the re-balancing branch (the same B).
        alpha: the cumulative-learning weight in [0, 1].
    """
    if conventional.dim() != 2 or rebalancing.dim() != 2 or conventional.shape[0] != rebalancing.shape[0]:
        raise ValueError(
            "conventional and rebalancing must be (B, F) features of the same B rows, got "
            f"{tuple(conventional.shape)} and {tuple(rebalancing.shape)}."
        )
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}.")
    return 2.0 * torch.cat((alpha * conventional, (1.0 - alpha) * rebalancing), dim=1)


def bilateral_loss(
    logits: Tensor, labels_conventional: Tensor, labels_rebalancing: Tensor, alpha: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Eq. 3 on the mixed logits: ``alpha CE(z, y_c) + (1 - alpha) CE(z, y_r)``, each a mean over the B rows.

    Args:
        logits: (B, C) scores of the mixed features.
        labels_conventional: (B,) int64 classes of the uniform batch; labels_rebalancing: (B,) of the reversed one.
        alpha: the cumulative-learning weight in [0, 1].

    Returns:
        The loss and its two cross-entropies (before weighting).
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, C), got {tuple(logits.shape)}.")
    rows, num_classes = logits.shape
    check_labels(labels_conventional, rows, num_classes, "labels_conventional", sync=False)
    check_labels(labels_rebalancing, rows, num_classes, "labels_rebalancing", sync=False)
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}.")
    z = logits.to(compute_dtype(logits))
    conventional = F.cross_entropy(z, labels_conventional)
    rebalancing = F.cross_entropy(z, labels_rebalancing)
    return alpha * conventional + (1.0 - alpha) * rebalancing, conventional, rebalancing
