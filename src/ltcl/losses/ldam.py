"""LDAMLoss with deferred re-weighting (Cao et al., NeurIPS 2019, "LDAM-DRW").

Label-distribution-aware margins: class j gets the margin ``m_j = C' / N_j^(1/4)``, with ``C'`` chosen so that the
rarest class gets ``max_margin``. On cosine logits ``u_ij`` (LDAM's ``NormedLinear``: normalised features times
normalised weights), the margin is subtracted from the true class only and everything is scaled by ``s``::

    L_i = -log( e^{s (u_{i,y_i} - m_{y_i})} / (e^{s (u_{i,y_i} - m_{y_i})} + sum_{j != y_i} e^{s u_ij}) )
    L   = sum_i w_{y_i} L_i / sum_i w_{y_i}        (the weighted mean of ``F.cross_entropy(weight=w)``)

Deferred re-weighting (DRW): the class weights ``w`` are all 1 until the engine calls ``set_reweighting(True)``
(epoch 160 of 200 in LDAM-DRW's CIFAR code), then the effective-number weights of Cui et al. (CVPR 2019),
``w_j ∝ (1 - beta) / (1 - beta^N_j)``, normalised to sum to C as in LDAM-DRW's ``cifar_train.py``.

Same as kaidic/LDAM-DRW (losses.py ``LDAMLoss``; cifar_train.py, ``train_rule == 'DRW'``) except that the
weights live in a buffer that travels with ``state_dict`` (a resumed run keeps its DRW state) instead of a new loss
object built each epoch, and the loss is computed in float32 under autocast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltcl.losses.validation import check_class_counts, check_labels, check_logits, compute_dtype


def _check_finite_at_least(name: str, value: float, low: float, strict: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low)
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}.")


def ldam_margins(class_counts: Sequence[int] | Tensor, max_margin: float = 0.5) -> Tensor:
    """(C,) float32 margins ``m_j = max_margin * (min_k N_k / N_j)^(1/4)``, i.e. proportional to ``N_j^(-1/4)``.

    Raises:
        ValueError: a count that is not positive, or a ``max_margin`` that is negative or not finite.
    """
    counts = check_class_counts(class_counts)
    _check_finite_at_least("max_margin", max_margin, 0.0, strict=False)
    quarter = counts.pow(-0.25)
    return (quarter * (max_margin / quarter.max())).to(torch.float32)


def effective_number_weights(
    class_counts: Sequence[int] | Tensor, beta: float = 0.9999, *, dtype: torch.dtype = torch.float32
) -> Tensor:
    """(C,) class weights ``(1 - beta) / (1 - beta^N_j)``, normalised to sum to C (LDAM-DRW's code, and Cui et
    al.'s: richardaecn/class-balanced-loss, src/cifar_main.py lines 425-430), computed in float64 and returned in
    ``dtype`` (float32 by default).

    ``beta = 0`` gives all ones (LDAM-DRW's weights before the DRW epoch); as ``beta -> 1`` they approach
    inverse frequency.

    Raises:
        ValueError: a count that is not positive, or ``beta`` outside [0, 1).
    """
    counts = check_class_counts(class_counts)
    if not (isinstance(beta, (int, float)) and not isinstance(beta, bool) and 0.0 <= beta < 1.0):
        raise ValueError(f"beta must be in [0, 1), got {beta!r}.")
    weights = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
    return (weights / weights.sum() * counts.numel()).to(dtype)


def _ldam(logits: Tensor, labels: Tensor, margins: Tensor, scale: float, class_weights: Tensor | None) -> Tensor:
    with torch.autocast(device_type=logits.device.type, enabled=False):
        dtype = compute_dtype(logits)
        x = logits.to(dtype)
        # Only the true class's logit loses its margin.
        true_margin = margins.to(device=x.device, dtype=dtype)[labels]
        x = x.scatter_add(1, labels[:, None], -true_margin[:, None])
        weight = None if class_weights is None else class_weights.to(device=x.device, dtype=dtype)
        return F.cross_entropy(scale * x, labels, weight=weight)


def ldam_loss(
    logits: Tensor,
    labels: Tensor,
    class_counts: Sequence[int] | Tensor,
    *,
    max_margin: float = 0.5,
    scale: float = 30.0,
    class_weights: Tensor | None = None,
) -> Tensor:
    """LDAM loss (module docstring), validating every input.

    Args:
        logits: (N, C) cosine logits in [-1, 1]; labels: (N,) int64 in [0, C);
        class_counts: (C,) positive training counts; max_margin: the rarest class's margin; scale: s > 0;
        class_weights: (C,) non-negative weights (DRW) or None (plain mean).

    Returns:
        Scalar weighted mean over the N rows.
    """
    counts = check_class_counts(class_counts)
    check_logits(logits, labels, counts.numel())
    _check_finite_at_least("scale", scale, 0.0, strict=True)
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("logits contain NaN or inf values.")
    if class_weights is not None:
        if class_weights.shape != (counts.numel(),):
            raise ValueError(f"class_weights must have shape ({counts.numel()},), got {tuple(class_weights.shape)}.")
        if not bool((torch.isfinite(class_weights) & (class_weights >= 0)).all()):
            raise ValueError("class_weights must be finite and non-negative.")
    return _ldam(logits, labels, ldam_margins(counts, max_margin), float(scale), class_weights)


class LDAMLoss(nn.Module):
    """LDAM loss with deferred re-weighting (equations in the module docstring).

    Args:
        class_counts: (C,) training images per class (all positive).
        max_margin: the largest margin, that of the rarest class (0.5 in LDAM-DRW).
        scale: s, multiplying the cosine logits (30 in LDAM-DRW).
        drw_beta: beta of the effective-number weights used once re-weighting is on (0.9999 in LDAM-DRW).

    Buffers (in ``state_dict``): ``margins`` (C,), ``class_weights`` (C,) in use (ones until DRW),
    ``reweighting`` (bool scalar).

    Inputs of ``forward(logits, labels)``:
        logits: (N, C) float cosine logits in [-1, 1], normalised features times normalised classifier weights
            (LDAM's ``NormedLinear``); the loss neither normalises nor checks them, and scales them by ``s``.
        labels: (N,) int64 class indices in [0, C).

    Returns a scalar, the (DRW-weighted) mean over the N rows. Shapes and the labels' dtype are always checked, the
    label range only on the CPU (no host sync on an accelerator; see ``ltcl.losses``).
    """

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor,
        *,
        max_margin: float = 0.5,
        scale: float = 30.0,
        drw_beta: float = 0.9999,
    ) -> None:
        super().__init__()
        counts = check_class_counts(class_counts)
        _check_finite_at_least("scale", scale, 0.0, strict=True)
        if not (isinstance(drw_beta, (int, float)) and not isinstance(drw_beta, bool) and 0.0 <= drw_beta < 1.0):
            raise ValueError(f"drw_beta must be in [0, 1), got {drw_beta!r}.")
        self.num_classes = counts.numel()
        self.max_margin = float(max_margin)
        self.scale = float(scale)
        self.drw_beta = float(drw_beta)
        self.register_buffer("margins", ldam_margins(counts, max_margin))
        self.register_buffer("drw_weights", effective_number_weights(counts, drw_beta))
        self.register_buffer("class_weights", torch.ones(self.num_classes))
        self.register_buffer("reweighting", torch.tensor(False))

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, max_margin={self.max_margin}, scale={self.scale}, "
            f"drw_beta={self.drw_beta}"
        )

    @torch.no_grad()
    def set_reweighting(self, enabled: bool) -> None:
        """Switches DRW on (effective-number weights) or off (all ones); call it from the epoch loop, not per step."""
        if not isinstance(enabled, bool):
            raise ValueError(f"enabled must be a bool, got {enabled!r}.")
        self.class_weights.copy_(self.drw_weights if enabled else torch.ones_like(self.class_weights))
        self.reweighting.fill_(enabled)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must have shape (N, {self.num_classes}), got {getattr(logits, 'shape', logits)}.")
        check_labels(labels, logits.shape[0], self.num_classes, sync=False)
        # Weights of all ones give the plain mean: one code path, no host-side branch on the DRW state.
        return _ldam(logits, labels, self.margins, self.scale, self.class_weights)
