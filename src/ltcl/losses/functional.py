"""The paper's losses as pure functions on tensors (no state, no distributed code).

Notation (docs/conventions.md, "Notation and the losses"): ``z_i`` an L2-normalised projection, one row per view;
``s_ik = z_i . z_k / tau``; ``y_i`` its label; ``C`` the number of classes. Every function computes in at least
float32, also when its inputs are bf16/fp16 under autocast, and never loops over samples in Python.

No function normalises its inputs: pass L2-normalised ``features`` (and centres). Every function that says it
validates its inputs rejects labels that are not (N,) ``torch.int64`` in [0, C) with a ``ValueError`` naming
``labels``, on any device (reading the range is a host synchronisation on an accelerator). The helpers without
checks (:func:`supervised_contrastive_terms`, :func:`prior_adjusted_cross_entropy`) are the modules' training path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ltcl.losses.aligned_function import aligned_contrastive_terms
from ltcl.losses.validation import (
    anchor_rows,
    check_class_counts,
    check_features,
    check_finite_result,
    check_labels,
    check_logits,
    check_temperature,
    compute_dtype,
    zero_with_graph,
)

# ----------------------------------------------------------------------------------------------------------
# Aligned contrastive loss (Eq. 9)


def aligned_contrastive_per_anchor(
    features: Tensor,
    labels: Tensor,
    *,
    temperature: float,
    centers: Tensor | None = None,
    negative_weights: Tensor | None = None,
    anchors: slice | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-anchor ACL terms (Eq. 9); :func:`aligned_contrastive_loss` averages them.

    Args:
        features: (N, D) L2-normalised projections, one row per view; the contrast set.
        labels: (N,) int64 class indices in [0, C), C given by ``centers`` or ``negative_weights`` (only >= 0 when
            neither is given).
        temperature: tau > 0.
        centers: (C, D) class centres or None. ``centers[y_i]`` is one more positive of anchor i; every other centre
            is a negative. Centres are never anchors.
        negative_weights: (C,) non-negative weights or None (all ones); a negative of class j, sample or centre,
            counts ``negative_weights[j]`` times. A weight of 0 removes that class's negatives.
        anchors: the contiguous rows of ``features`` that act as anchors (all rows when None). Used under DDP,
            where ``features`` is the global batch and each rank's anchors are its own rows.

    Returns:
        loss: (A,) ``L_i`` of each anchor, 0 for an anchor without any positive term.
        has_positive: (A,) bool, whether the anchor has at least one positive term.
    """
    check_features(features, finite=False)  # finiteness: checked on the result
    check_temperature(temperature)
    num_classes = None
    if centers is not None:
        check_features(centers, "centers", finite=False)
        if centers.shape[1] != features.shape[1]:
            raise ValueError(
                f"centers have dimension {centers.shape[1]} but features have dimension {features.shape[1]}."
            )
        num_classes = centers.shape[0]
    if negative_weights is not None:
        if negative_weights.dim() != 1:
            raise ValueError(f"negative_weights must be a 1-D tensor (C,), got {tuple(negative_weights.shape)}.")
        if num_classes is not None and negative_weights.shape[0] != num_classes:
            raise ValueError(
                f"negative_weights has {negative_weights.shape[0]} entries but there are {num_classes} centres."
            )
        num_classes = negative_weights.shape[0]
    check_labels(labels, features.shape[0], num_classes)
    start, stop = anchor_rows(anchors, features.shape[0])
    loss, has_positive = aligned_contrastive_terms(
        features, labels, temperature, centers, negative_weights, slice(start, stop)
    )
    check_finite_result(loss, features, centers, negative_weights)
    return loss, has_positive


def aligned_contrastive_loss(
    features: Tensor,
    labels: Tensor,
    *,
    temperature: float,
    centers: Tensor | None = None,
    negative_weights: Tensor | None = None,
) -> Tensor:
    """Aligned contrastive loss, Eq. 9 of the paper.

    ``L_i = -1/(|P(i)|+1) * sum_{p in P(i) + {c(y_i)}} log( e^{s_ip} / (e^{s_ip} + sum_{n in N(i)} w_n e^{s_in}) )``:
    each positive has its own denominator holding only itself and the weighted negatives, so the gradient on
    every positive is attractive (Eq. 11). Without centres the centre term and ``+1`` disappear.

    Args:
        features: (N, D) L2-normalised projections; all views are rows.
        labels: (N,) int64 class indices in [0, C).
        temperature: tau > 0.
        centers: (C, D) class centres or None.
        negative_weights: (C,) weights of negatives by class or None (all ones).

    Returns:
        Scalar: mean of ``L_i`` over anchors with at least one positive term; a batch with none gives a zero that
        still carries a gradient graph.
    """
    loss, has_positive = aligned_contrastive_per_anchor(
        features, labels, temperature=temperature, centers=centers, negative_weights=negative_weights
    )
    if features.shape[0] == 0:
        return zero_with_graph(features)
    return loss.sum() / has_positive.sum().clamp(min=1)


# ----------------------------------------------------------------------------------------------------------
# Supervised contrastive loss (Eq. 1) and its gradient conflicts (Eq. 5-7)


def _scl_logits(features: Tensor, labels: Tensor, temperature: float, start: int, stop: int):
    """Shared by SCL and the conflict ratio: (A, N) logits, log-denominators and the positive mask."""
    dtype = compute_dtype(features)
    with torch.autocast(device_type=features.device.type, enabled=False):
        z = features.to(dtype)
        sim = (z[start:stop] / temperature) @ z.T  # (A, N)
        rows = torch.arange(stop - start, device=z.device)
        positive = labels[start:stop, None] == labels[None, :]
        positive[rows, rows + start] = False
        without_self = sim.index_put((rows, rows + start), torch.tensor(-math.inf, dtype=dtype, device=z.device))
        log_denominator = torch.logsumexp(without_self, dim=1)  # sum over a != i
    return sim, log_denominator, positive


def supervised_contrastive_per_anchor(
    features: Tensor, labels: Tensor, *, temperature: float, anchors: slice | None = None
) -> tuple[Tensor, Tensor]:
    """Per-anchor SCL terms (Eq. 1), validating every input; see :func:`supervised_contrastive_loss`.

    Returns:
        loss: (A,) ``L_i``, 0 for an anchor without positives; has_positive: (A,) bool.
    """
    check_features(features)
    check_temperature(temperature)
    check_labels(labels, features.shape[0], None)
    return supervised_contrastive_terms(features, labels, temperature, anchor_rows(anchors, features.shape[0]))


def supervised_contrastive_terms(
    features: Tensor, labels: Tensor, temperature: float, anchors: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Per-anchor SCL terms without input checks (SupConLoss checks shapes, dtypes and, on the CPU, the labels).

    Args:
        features: (N, D); labels: (N,) int64; anchors: (start, stop) rows acting as anchors.
    """
    start, stop = anchors
    if features.shape[0] == 0:
        return features.sum(1) * 0.0, torch.zeros(0, dtype=torch.bool, device=features.device)
    if features.shape[0] < 2:  # a lone row has neither positives nor a denominator
        zero = zero_with_graph(features).expand(stop - start)
        return zero, torch.zeros(stop - start, dtype=torch.bool, device=features.device)
    sim, log_denominator, positive = _scl_logits(features, labels, temperature, start, stop)
    count = positive.sum(1)
    mean_positive = (sim * positive).sum(1) / count.clamp(min=1)
    has_positive = count > 0
    loss = torch.where(has_positive, log_denominator - mean_positive, torch.zeros_like(mean_positive))
    return loss, has_positive


def supervised_contrastive_loss(features: Tensor, labels: Tensor, *, temperature: float) -> Tensor:
    """Supervised contrastive loss, Eq. 1 (Khosla et al.).

    ``L_i = -1/|P(i)| * sum_{p in P(i)} log( e^{s_ip} / sum_{a != i} e^{s_ia} )``, where ``P(i)`` holds the other
    rows with label ``y_i`` (other views of the same image included). No ``tau / base_tau`` rescaling.

    Args:
        features: (N, D) L2-normalised projections; all views are rows.
        labels: (N,) int64 class indices >= 0 (only compared with each other).
        temperature: tau > 0.

    Returns:
        Scalar: mean over anchors with ``|P(i)| > 0``; 0 with a gradient graph when no anchor has a positive.
    """
    loss, has_positive = supervised_contrastive_per_anchor(features, labels, temperature=temperature)
    if features.shape[0] == 0:
        return zero_with_graph(features)
    return loss.sum() / has_positive.sum().clamp(min=1)


@torch.no_grad()
def gradient_conflict_counts(
    features: Tensor, labels: Tensor, *, temperature: float, num_classes: int
) -> tuple[Tensor, Tensor]:
    """Counts SCL's conflicting positive pairs per class (Eq. 5-7).

    A positive pair (i, k) conflicts when ``q_ik > 1/|P(i)|`` with ``q_ik = e^{s_ik} / sum_{a != i} e^{s_ia}``:
    the gradient of ``L_i`` then pushes ``z_k`` away from ``z_i``.

    Args:
        features: (N, D) L2-normalised projections; labels: (N,) int64 in [0, num_classes).

    Returns:
        conflicts: (C,) int64 conflicting positive pairs over anchors of each class.
        pairs: (C,) int64 positive pairs over anchors of each class.
    """
    check_features(features)
    check_temperature(temperature)
    check_labels(labels, features.shape[0], num_classes)
    zeros = torch.zeros(num_classes, dtype=torch.int64, device=features.device)
    if features.shape[0] < 2:
        return zeros, zeros.clone()
    sim, log_denominator, positive = _scl_logits(features, labels, temperature, 0, features.shape[0])
    count = positive.sum(1)
    # q_ik > 1/|P(i)|  <=>  s_ik - log_denominator_i > -log|P(i)|
    threshold = -torch.log(count.clamp(min=1).to(sim.dtype))
    conflicting = ((sim - log_denominator[:, None]) > threshold[:, None]) & positive
    conflicts = zeros.clone().index_add_(0, labels, conflicting.sum(1))
    pairs = zeros.clone().index_add_(0, labels, count)
    return conflicts, pairs


# ----------------------------------------------------------------------------------------------------------
# Classification losses for long-tailed data


def log_prior(class_counts, device=None) -> Tensor:
    """(C,) float32 ``log(N_j / sum_k N_k)``: the log class prior used by logit adjustment."""
    counts = check_class_counts(class_counts)
    return (counts / counts.sum()).log().to(device=device, dtype=torch.float32)


def logit_adjusted_loss(logits: Tensor, labels: Tensor, class_counts, *, tau: float = 1.0) -> Tensor:
    """Logit-adjusted cross-entropy (Menon et al.): ``CE(logits + tau * log prior, y)``.

    Args:
        logits: (N, C); labels: (N,) int64 in [0, C); class_counts: (C,) positive training counts;
        tau: adjustment strength.

    Returns:
        Scalar mean over the N rows.
    """
    counts = check_class_counts(class_counts)
    check_logits(logits, labels, counts.numel())
    return prior_adjusted_cross_entropy(logits, labels, tau * (counts / counts.sum()).log())


def prior_adjusted_cross_entropy(
    logits: Tensor, labels: Tensor, adjustment: Tensor, label_smoothing: float = 0.0
) -> Tensor:
    """``CE(logits + adjustment, y)`` in at least float32, without input checks (the loss modules' training path).

    Args:
        logits: (N, C); labels: (N,) int64; adjustment: (C,) per-class offsets (``log N_j`` for Balanced Softmax,
            ``tau * log prior_j`` for logit adjustment), any float dtype.
        label_smoothing: eps of the target ``(1 - eps) one_hot(y) + eps / C``, against the softmax of the
            *adjusted* logits (the distribution the loss fits), as ``F.cross_entropy(label_smoothing=eps)``.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        dtype = compute_dtype(logits)
        adjusted = logits.to(dtype) + adjustment.to(device=logits.device, dtype=dtype)
        return F.cross_entropy(adjusted, labels, label_smoothing=label_smoothing)


def balanced_softmax_loss(logits: Tensor, labels: Tensor, class_counts) -> Tensor:
    """Balanced Softmax (Ren et al.): cross-entropy on ``logits + log N_j``.

    Args:
        logits: (N, C); labels: (N,) int64 in [0, C); class_counts: (C,) positive training counts ``N_j``.

    Returns:
        Scalar mean over the N rows.
    """
    counts = check_class_counts(class_counts)
    check_logits(logits, labels, counts.numel())
    return prior_adjusted_cross_entropy(logits, labels, counts.log())
