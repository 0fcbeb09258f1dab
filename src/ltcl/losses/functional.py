"""The paper's losses as pure functions on tensors (no state, no distributed code).

Notation (reference.md section 1): ``z_i`` an L2-normalised projection, one row per view; ``s_ik = z_i . z_k / tau``;
``y_i`` its label; ``C`` the number of classes. Every function computes in at least float32, also when its inputs
are bf16/fp16 under autocast, and never loops over samples in Python.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# ----------------------------------------------------------------------------------------------------------
# Input checks shared by the losses


def _compute_dtype(tensor: Tensor) -> torch.dtype:
    """float32 for half precision inputs (similarities and log-sum-exp need it), else the input's dtype."""
    return torch.promote_types(tensor.dtype, torch.float32)


def _check_labels(labels: Tensor, rows: int, num_classes: int | None, name: str = "labels") -> None:
    if not isinstance(labels, Tensor) or labels.dim() != 1:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"{name} must be a 1-D tensor of class indices, got {shape}.")
    if labels.dtype.is_floating_point or labels.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise ValueError(f"{name} must hold integer class indices (int64), got dtype {labels.dtype}.")
    if labels.shape[0] != rows:
        raise ValueError(f"{name} has {labels.shape[0]} entries but there are {rows} rows of inputs.")
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"{name} must be >= 0, got {int(labels.min())}.")
    if num_classes is not None and labels.numel() and int(labels.max()) >= num_classes:
        raise ValueError(f"{name} must be < the number of classes {num_classes}, got {int(labels.max())}.")


def _check_features(features: Tensor, name: str = "features") -> None:
    if not isinstance(features, Tensor) or features.dim() != 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"{name} must be a 2-D tensor (N, D), got {shape}.")
    if not features.dtype.is_floating_point:
        raise ValueError(f"{name} must be floating point, got dtype {features.dtype}.")
    if not bool(torch.isfinite(features).all()):
        raise ValueError(f"{name} contain NaN or inf values.")


def _check_temperature(temperature: float) -> None:
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}.")


def check_class_counts(class_counts, name: str = "class_counts") -> Tensor:
    """Validates per-class training counts and returns them as a float64 (C,) tensor.

    Raises:
        ValueError: not a non-empty 1-D sequence, or a count that is zero, negative or not finite.
    """
    counts = torch.as_tensor(class_counts, dtype=torch.float64).detach().cpu()
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence (one count per class), got {tuple(counts.shape)}.")
    bad = ~torch.isfinite(counts) | (counts <= 0)
    if bool(bad.any()):
        index = int(bad.nonzero()[0])
        raise ValueError(
            f"{name} must all be positive, but class {index} has {counts[index].item():g} "
            f"(a class without training images cannot be weighted or adjusted)."
        )
    return counts


def _anchor_rows(anchors: slice | None, rows: int) -> tuple[int, int]:
    if anchors is None:
        return 0, rows
    start, stop, step = anchors.indices(rows)
    if step != 1 or stop < start:
        raise ValueError(f"anchors must be a contiguous slice of the {rows} rows, got {anchors}.")
    return start, stop


def _zero_with_graph(features: Tensor) -> Tensor:
    """A scalar 0 connected to ``features``, so that ``backward()`` works on a batch without positives."""
    return features.sum() * 0.0


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
        labels: (N,) int64 class indices.
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
    _check_features(features)
    _check_temperature(temperature)
    num_classes = None
    if centers is not None:
        _check_features(centers, "centers")
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
        if not bool(torch.isfinite(negative_weights).all()) or bool((negative_weights < 0).any()):
            raise ValueError("negative_weights must be finite and non-negative.")
        num_classes = negative_weights.shape[0]
    _check_labels(labels, features.shape[0], num_classes)
    if features.shape[0] == 0:
        return features.sum(1) * 0.0, torch.zeros(0, dtype=torch.bool, device=features.device)
    start, stop = _anchor_rows(anchors, features.shape[0])

    dtype = _compute_dtype(features)
    with torch.autocast(device_type=features.device.type, enabled=False):
        z = features.to(dtype)
        anchor_z = z[start:stop] / temperature  # scaling (A, D) is cheaper than scaling (A, N + C)
        anchor_y = labels[start:stop]
        rows = torch.arange(stop - start, device=z.device)

        # Sample columns: positives share the anchor's label (self excluded), negatives are the rest.
        sim = anchor_z @ z.T  # (A, N): s_ik
        same = anchor_y[:, None] == labels[None, :]
        positive = same.clone()
        positive[rows, rows + start] = False
        neg_sim = sim.masked_fill(same, -math.inf)
        col_weight = None if negative_weights is None else negative_weights.to(dtype)[labels]
        if centers is not None:
            center_sim = anchor_z @ centers.to(dtype).T  # (A, C)
            own_center_sim = center_sim.gather(1, anchor_y[:, None]).squeeze(1)  # (A,)
            neg_center_sim = center_sim.scatter(1, anchor_y[:, None], -math.inf)

        # log of the weighted negative sum, computed once per anchor and shared by all its positives.
        shift = neg_sim.detach().amax(dim=1)
        if centers is not None:
            shift = torch.maximum(shift, neg_center_sim.detach().amax(dim=1))
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))  # anchors without negatives
        exp_neg = torch.exp(neg_sim - shift[:, None])
        neg_sum = exp_neg.sum(1) if col_weight is None else exp_neg @ col_weight
        if centers is not None:
            exp_neg_center = torch.exp(neg_center_sim - shift[:, None])
            neg_sum = neg_sum + (
                exp_neg_center.sum(1) if negative_weights is None else exp_neg_center @ negative_weights.to(dtype)
            )
        has_negative = neg_sum > 0
        log_neg = torch.where(
            has_negative, torch.log(torch.where(has_negative, neg_sum, torch.ones_like(neg_sum))) + shift, -math.inf
        )

        # -log(e^s / (e^s + negatives)) = softplus(log(negatives) - s), one term per positive.
        pos_terms = F.softplus(log_neg[:, None] - sim) * positive
        total = pos_terms.sum(1)
        count = positive.sum(1)
        if centers is not None:
            total = total + F.softplus(log_neg - own_center_sim)
            count = count + 1
        loss = total / count.clamp(min=1)
    return loss, count > 0


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
        return _zero_with_graph(features)
    return loss.sum() / has_positive.sum().clamp(min=1)


# ----------------------------------------------------------------------------------------------------------
# Supervised contrastive loss (Eq. 1) and its gradient conflicts (Eq. 5-7)


def _scl_logits(features: Tensor, labels: Tensor, temperature: float, start: int, stop: int):
    """Shared by SCL and the conflict ratio: (A, N) logits, log-denominators and the positive mask."""
    dtype = _compute_dtype(features)
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
    """Per-anchor SCL terms (Eq. 1); see :func:`supervised_contrastive_loss`.

    Returns:
        loss: (A,) ``L_i``, 0 for an anchor without positives; has_positive: (A,) bool.
    """
    _check_features(features)
    _check_temperature(temperature)
    _check_labels(labels, features.shape[0], None)
    if features.shape[0] == 0:
        return features.sum(1) * 0.0, torch.zeros(0, dtype=torch.bool, device=features.device)
    start, stop = _anchor_rows(anchors, features.shape[0])
    if features.shape[0] < 2:  # a lone row has neither positives nor a denominator
        zero = _zero_with_graph(features).expand(stop - start)
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
        labels: (N,) int64 class indices.
        temperature: tau > 0.

    Returns:
        Scalar: mean over anchors with ``|P(i)| > 0``; 0 with a gradient graph when no anchor has a positive.
    """
    loss, has_positive = supervised_contrastive_per_anchor(features, labels, temperature=temperature)
    if features.shape[0] == 0:
        return _zero_with_graph(features)
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
    _check_features(features)
    _check_temperature(temperature)
    _check_labels(labels, features.shape[0], num_classes)
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


def _check_logits(logits: Tensor, labels: Tensor, num_classes: int) -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a 2-D tensor (N, C), got {shape}.")
    if logits.shape[1] != num_classes:
        raise ValueError(f"logits have {logits.shape[1]} classes but class_counts has {num_classes}.")
    _check_labels(labels, logits.shape[0], num_classes)


def log_prior(class_counts, device=None) -> Tensor:
    """(C,) float32 ``log(N_j / sum_k N_k)``: the log class prior used by logit adjustment."""
    counts = check_class_counts(class_counts)
    return (counts / counts.sum()).log().to(device=device, dtype=torch.float32)


def logit_adjusted_loss(logits: Tensor, labels: Tensor, class_counts, *, tau: float = 1.0) -> Tensor:
    """Logit-adjusted cross-entropy (Menon et al.): ``CE(logits + tau * log prior, y)``.

    Args:
        logits: (N, C); labels: (N,) int64; class_counts: (C,) positive training counts; tau: adjustment strength.

    Returns:
        Scalar mean over the N rows.
    """
    counts = check_class_counts(class_counts)
    _check_logits(logits, labels, counts.numel())
    with torch.autocast(device_type=logits.device.type, enabled=False):
        dtype = _compute_dtype(logits)
        adjustment = (counts / counts.sum()).log().to(device=logits.device, dtype=dtype)
        return F.cross_entropy(logits.to(dtype) + tau * adjustment, labels)


def balanced_softmax_loss(logits: Tensor, labels: Tensor, class_counts) -> Tensor:
    """Balanced Softmax (Ren et al.): cross-entropy on ``logits + log N_j``.

    Args:
        logits: (N, C); labels: (N,) int64 in [0, C); class_counts: (C,) positive training counts ``N_j``.

    Returns:
        Scalar mean over the N rows.
    """
    counts = check_class_counts(class_counts)
    _check_logits(logits, labels, counts.numel())
    with torch.autocast(device_type=logits.device.type, enabled=False):
        dtype = _compute_dtype(logits)
        return F.cross_entropy(logits.to(dtype) + counts.log().to(device=logits.device, dtype=dtype), labels)
