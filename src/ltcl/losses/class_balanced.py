"""Focal loss (Lin et al., ICCV 2017) and the class-balanced losses of Cui et al. (CVPR 2019).

One family of per-row terms, ``form`` x ``gamma``, scaled by a per-class weight and averaged over the rows::

    softmax form:  p_t = softmax(z_i)_{y_i}                 l_i = -(1 - p_t)^gamma log p_t
    sigmoid form:  p_ij = sigmoid(z_ij), one binary problem per class (Lin et al.'s own form, RetinaNet's)
                   p_t,ij = p_ij if j = y_i else 1 - p_ij   l_i = -sum_j (1 - p_t,ij)^gamma log p_t,ij
    L = sum_i w_{y_i} l_i / N

``gamma = 0`` gives softmax cross-entropy and sigmoid (binary) cross-entropy. The class weights are Cui et al.'s
inverse effective numbers ``w_j ∝ (1 - beta) / (1 - beta^N_j)``, normalised to sum to C
(:func:`ltcl.losses.ldam.effective_number_weights`); ``beta = 0`` makes them all 1 (plain focal loss, plain CE).

The normalisation follows the authors' code (richardaecn/class-balanced-loss, src/cifar_main.py): the weighted
sum is divided by the number of rows N, not by the sum of the weights. Softmax (lines 332-335):
``tf.losses.softmax_cross_entropy(..., weights=w_{y_i})`` reduces by SUM_BY_NONZERO_WEIGHTS, i.e. divides by the
number of rows with a non-zero weight, which is every row; sigmoid (336-340) and focal (226-266, 341-342) divide
by ``sum(one_hot_labels)``, again N. (``F.cross_entropy(weight=w)``, as LDAM-DRW uses, divides by
``sum_i w_{y_i}`` instead: a different scale of the gradient at every step.)

Numerics: ``log p_t`` and ``log (1 - p_t)`` are computed without forming ``1 - p_t`` (``logsigmoid`` of +-z; a
log-sum-exp over the other classes for the softmax form), so the modulating factor ``exp(gamma log(1 - p_t))``
and its gradient stay finite for any gamma >= 0, confident rows included. The authors' sigmoid focal code does the
same through ``exp(-gamma y z - gamma log1p(exp(-z)))``, which overflows in float32 for ``z < -88``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltcl.losses.ldam import effective_number_weights
from ltcl.losses.validation import check_class_counts, check_labels, check_logits, compute_dtype

Form = Literal["softmax", "sigmoid"]
FORMS = ("softmax", "sigmoid")


def _check_options(form: str, gamma: float) -> None:
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}.")
    if not (isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and 0.0 <= gamma < float("inf")):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}.")


def focal_terms(logits: Tensor, labels: Tensor, *, gamma: float, form: str) -> tuple[Tensor, Tensor]:
    """Per-row focal terms ``l_i`` (module docstring) and the true class's modulating factor ``(1 - p_t)^gamma``,
    both (N,) in at least float32; no input checks (the modules' training path).

    Args:
        logits: (N, C) raw classifier outputs; labels: (N,) int64 in [0, C); gamma >= 0; form: softmax | sigmoid.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        x = logits.to(compute_dtype(logits))
        true = labels[:, None] == torch.arange(x.shape[1], device=x.device)  # (N, C); one_hot reads the values
        if form == "sigmoid":
            signed = torch.where(true, x, -x)  # p_t = sigmoid(signed), 1 - p_t = sigmoid(-signed)
            log_pt, log_rest = F.logsigmoid(signed), F.logsigmoid(-signed)
            modulator = torch.exp(gamma * log_rest)
            rows = -(modulator * log_pt).sum(1)
            return rows, modulator.gather(1, labels[:, None]).squeeze(1)
        log_norm = torch.logsumexp(x, 1)
        log_pt = x.gather(1, labels[:, None]).squeeze(1) - log_norm
        log_rest = torch.logsumexp(x.masked_fill(true, float("-inf")), 1) - log_norm  # log sum_{j != y} p_j
        modulator = torch.exp(gamma * log_rest)
        return -modulator * log_pt, modulator


def class_balanced_loss(
    logits: Tensor,
    labels: Tensor,
    class_counts: Sequence[int] | Tensor,
    *,
    beta: float = 0.9999,
    gamma: float = 0.0,
    form: str = "softmax",
) -> Tensor:
    """Class-balanced (``beta > 0``) or plain (``beta = 0``) focal / cross-entropy loss (module docstring),
    validating every input.

    Args:
        logits: (N, C) float; labels: (N,) int64 in [0, C); class_counts: (C,) positive training counts;
        beta: effective-number parameter in [0, 1); gamma: focusing parameter >= 0 (0: cross-entropy);
        form: ``softmax`` or ``sigmoid``.

    Returns:
        Scalar ``sum_i w_{y_i} l_i / N``.
    """
    counts = check_class_counts(class_counts)
    check_logits(logits, labels, counts.numel())
    _check_options(form, gamma)
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("logits contain NaN or inf values.")
    weights = effective_number_weights(counts, beta, dtype=torch.float64)
    rows, _ = focal_terms(logits, labels, gamma=float(gamma), form=form)
    return (weights.to(device=rows.device, dtype=rows.dtype)[labels] * rows).mean()


class ClassBalancedLoss(nn.Module):
    """Focal loss or cross-entropy, softmax or sigmoid, re-weighted by class (equations in the module docstring).

    Args:
        class_counts: (C,) training images per class (all positive), C >= 2.
        beta: effective-number parameter in [0, 1); 0 gives every class the weight 1.
        gamma: focusing parameter >= 0; 0 gives cross-entropy.
        form: ``softmax`` (one C-way softmax) or ``sigmoid`` (C binary problems).

    Buffers (in ``state_dict``): ``class_weights`` (C,) float64, summing to C.

    Inputs of ``forward(logits, labels)``: logits (N, C) float, labels (N,) int64 in [0, C). Returns the scalar
    ``sum_i w_{y_i} l_i / N``; :meth:`terms` also returns the batch's mean weight and mean modulating factor.
    Shapes and the labels' dtype are always checked, the label range only on the CPU (see ``ltcl.losses``).
    """

    def __init__(
        self, class_counts: Sequence[int] | Tensor, *, beta: float = 0.9999, gamma: float = 0.0, form: str = "softmax"
    ) -> None:
        super().__init__()
        counts = check_class_counts(class_counts)
        if counts.numel() < 2:
            raise ValueError("class_counts must name at least 2 classes.")
        _check_options(form, gamma)
        self.num_classes = counts.numel()
        self.beta, self.gamma, self.form = float(beta), float(gamma), form
        self.register_buffer("class_weights", effective_number_weights(counts, beta, dtype=torch.float64))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, beta={self.beta}, gamma={self.gamma}, form={self.form}"

    def terms(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, mean class weight of the rows, mean true-class modulating factor ``(1 - p_t)^gamma``)."""
        if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must have shape (N, {self.num_classes}), got {getattr(logits, 'shape', logits)}.")
        check_labels(labels, logits.shape[0], self.num_classes, sync=False)
        rows, modulator = focal_terms(logits, labels, gamma=self.gamma, form=self.form)
        weights = self.class_weights.to(dtype=rows.dtype)[labels]
        return (weights * rows).mean(), weights.detach().mean(), modulator.detach().mean()

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return self.terms(logits, labels)[0]
