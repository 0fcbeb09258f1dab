"""The causal model's classifier and its counterfactual test (Tang et al., NeurIPS 2020, "Long-Tailed
Classification by Keeping the Good and Removing the Bad Momentum Causal Effect", Sec. 4, Eqs. 5-7 and 9).

The F features and the classifier's rows are cut into K heads of F / K dimensions (the paper's multi-head
normalisation); head k of a feature ``x`` is ``x^k``, of class j's weight ``w_j^k``::

    training (Eq. 5, "De-confounded training"):
        z_j = (tau / K) sum_k  <x^k / ||x^k||,  w_j^k / (||w_j^k|| + gamma)>

    moving-average feature (Sec. 4, the mean feature of the training run, updated every step):
        c <- mu c + mean_i x_i                   (not (1 - mu) mean_i x_i: only the direction of c is used)

    test (Eq. 9, "Total Direct Effect"), with  xh^k = x^k / ||x^k||,  ch^k = c^k / ||c^k||:
        z_j = (tau / K) sum_k  < xh^k - alpha cos(x^k, c^k) ch^k,  w_j^k / (||w_j^k|| + gamma) >

The counterfactual subtracts, head by head, alpha times the part of the normalised feature that points along the
moving-average direction, where the head classes (which dominate the SGD momentum) pull the features.

As the authors' code (KaihuaTang/Long-Tailed-Recognition.pytorch, classification/models/CausalNormClassifier.py
lines 25-47, 74-77; run_networks.py line 215 for the moving average), except that a zero-length head (an all-zero
ReLU feature, or the direction before any training step) is left at zero instead of becoming NaN (0 / 0).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

EPS = 1e-12  # F.normalize's: a zero-length head stays zero


def _check(features: Tensor, num_heads: int, name: str = "features") -> None:
    if features.dim() != 2 or not features.dtype.is_floating_point:
        raise ValueError(f"{name} must be a 2-D floating-point tensor (N, F), got {tuple(features.shape)}.")
    if not isinstance(num_heads, int) or num_heads < 1 or features.shape[1] % num_heads != 0:
        raise ValueError(f"num_heads must be an integer >= 1 dividing F = {features.shape[1]}, got {num_heads!r}.")


def head_normalize(x: Tensor, num_heads: int) -> Tensor:
    """(N, F) -> (N, F): each of the K consecutive F / K blocks of every row scaled to unit length."""
    _check(x, num_heads)
    n, f = x.shape
    return F.normalize(x.view(n, num_heads, f // num_heads), dim=2, eps=EPS).view(n, f)


def causal_norm_weight(weight: Tensor, num_heads: int, gamma: float | Tensor) -> Tensor:
    """(C, F) -> (C, F): each head of every class row divided by its length plus ``gamma`` (the paper's
    ``||w|| + gamma``, CausalNormClassifier.py ``causal_norm``)."""
    _check(weight, num_heads, "weight")
    c, f = weight.shape
    heads = weight.view(c, num_heads, f // num_heads)
    return (heads / (heads.norm(dim=2, keepdim=True) + gamma)).view(c, f)


def causal_norm_logits(
    features: Tensor, weight: Tensor, num_heads: int, tau: float | Tensor, gamma: float | Tensor
) -> Tensor:
    """Eq. 5, the training logits: (N, F) features, (C, F) weight -> (N, C)."""
    _check(features, num_heads)
    if weight.dim() != 2 or weight.shape[1] != features.shape[1]:
        raise ValueError(f"weight must be (C, {features.shape[1]}), got {tuple(weight.shape)}.")
    scale = tau / num_heads
    return (head_normalize(features, num_heads) * scale) @ causal_norm_weight(weight, num_heads, gamma).t()


def tde_logits(
    features: Tensor,
    weight: Tensor,
    direction: Tensor,
    num_heads: int,
    tau: float | Tensor,
    gamma: float | Tensor,
    alpha: float | Tensor,
) -> Tensor:
    """Eq. 9, the counterfactual (TDE) logits at test: (N, F) features, (C, F) weight, (F,) moving-average
    feature -> (N, C)."""
    _check(features, num_heads)
    if direction.shape != (features.shape[1],):
        raise ValueError(f"direction must be ({features.shape[1]},), got {tuple(direction.shape)}.")
    n, f = features.shape
    x = head_normalize(features, num_heads).view(n, num_heads, f // num_heads)
    c = head_normalize(direction.to(features.dtype).view(1, f), num_heads).view(1, num_heads, f // num_heads)
    cos = (x * c).sum(dim=2, keepdim=True)  # both unit length per head
    counterfactual = (x - alpha * cos * c).view(n, f)
    return (counterfactual * (tau / num_heads)) @ causal_norm_weight(weight, num_heads, gamma).t()


def head_cosines(features: Tensor, direction: Tensor, num_heads: int) -> Tensor:
    """(N, K) cosine between each head of every feature and the same head of the moving-average feature (the
    authors' README picks alpha so that ``alpha * cos`` is about 1 on average)."""
    _check(features, num_heads)
    n, f = features.shape
    x = head_normalize(features, num_heads).view(n, num_heads, f // num_heads)
    c = head_normalize(direction.to(features.dtype).view(1, f), num_heads).view(1, num_heads, f // num_heads)
    return (x * c).sum(dim=2)


def moving_average_update(average: Tensor, batch_mean: Tensor, momentum: float | Tensor) -> Tensor:
    """``mu c + mean`` (run_networks.py line 215), returned as a new tensor."""
    if average.shape != batch_mean.shape:
        raise ValueError(f"batch_mean must have the average's shape {tuple(average.shape)}, got "
                         f"{tuple(batch_mean.shape)}.")  # fmt: skip
    return momentum * average + batch_mean


def epoch_momentum(momentum: float, learning_rate: float, lr_scale: float) -> float:
    """The moving average's momentum for an epoch trained at ``learning_rate``: ``1 - (1 - mu) min(lr s, 1)``
    (run_networks.py lines 305-309, on every dataset but CIFAR, with s = 50); ``lr_scale`` 0 keeps ``mu``."""
    if lr_scale == 0:
        return momentum
    return 1.0 - (1.0 - momentum) * min(learning_rate * lr_scale, 1.0)


__all__ = [
    "causal_norm_logits",
    "causal_norm_weight",
    "epoch_momentum",
    "head_cosines",
    "head_normalize",
    "moving_average_update",
    "tde_logits",
]
