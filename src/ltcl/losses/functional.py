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
    if labels.numel():
        low, high = (int(v) for v in torch.aminmax(labels))
        if low < 0:
            raise ValueError(f"{name} must be >= 0, got {low}.")
        if num_classes is not None and high >= num_classes:
            raise ValueError(f"{name} must be < the number of classes {num_classes}, got {high}.")


def _check_features(features: Tensor, name: str = "features", finite: bool = True) -> None:
    if not isinstance(features, Tensor) or features.dim() != 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"{name} must be a 2-D tensor (N, D), got {shape}.")
    if not features.dtype.is_floating_point:
        raise ValueError(f"{name} must be floating point, got dtype {features.dtype}.")
    if finite and not bool(torch.isfinite(features).all()):
        raise ValueError(f"{name} contain NaN or inf values.")


def _check_finite_result(loss: Tensor, features: Tensor, centers: Tensor | None,
                         negative_weights: Tensor | None) -> None:
    """Finiteness is checked on the (small) result: a NaN or inf in the inputs, or a negative weight (whose log is
    NaN), reaches every anchor's term, so only a non-finite result needs the inputs inspected to name the culprit."""
    if bool(torch.isfinite(loss).all()):
        return
    for name, tensor in (("features", features), ("centers", centers)):
        if tensor is not None and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name} contain NaN or inf values.")
    if negative_weights is not None and not bool((torch.isfinite(negative_weights) & (negative_weights >= 0)).all()):
        raise ValueError("negative_weights must be finite and non-negative.")


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
    _check_features(features, finite=False)  # finiteness: checked on the result
    _check_temperature(temperature)
    num_classes = None
    if centers is not None:
        _check_features(centers, "centers", finite=False)
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
    _check_labels(labels, features.shape[0], num_classes)
    if features.shape[0] == 0:
        return features.sum(1) * 0.0, torch.zeros(0, dtype=torch.bool, device=features.device)
    start, stop = _anchor_rows(anchors, features.shape[0])

    log_weights = None if negative_weights is None else negative_weights.log()  # log 0 = -inf removes a class
    loss, count = _AlignedContrastive.apply(features, centers, labels, log_weights, temperature, start, stop)
    _check_finite_result(loss, features, centers, negative_weights)
    return loss, count > 0


_EXCLUDED = 1e30  # subtracted from excluded logits: exp() of the result is exactly 0 in float32 and float64


def _softplus(x: Tensor) -> Tensor:
    """``log(1 + e^x)`` as ``max(x, 0) + log(1 + e^-|x|)``: about twice as fast as F.softplus on CPUs, exact to
    within the float epsilon (terms below e^-17 round to 0 in float32)."""
    return x.abs().neg_().exp_().add_(1.0).log_().add_(x.clamp(min=0))


class _AlignedContrastive(torch.autograd.Function):
    """Eq. 9 per anchor, with the closed-form gradient of Eq. 11-12 written out in ``backward``.

    Autograd through the same computation needs about three times the kernels and memory traffic; the closed
    form keeps only the (A, N + C) weighted negative probabilities and the (A, N) positive terms. The tests compare
    both values and gradients with float64 loops over the equation.

    With ``S`` the (A, N + C) scaled similarities, ``LN_i = log sum_n w_n e^{S_in}`` over negatives and
    ``q_ip = e^{S_ip} / (e^{S_ip} + e^{LN_i})`` (Eq. 12):
        L_i = 1/K_i sum_p softplus(LN_i - S_ip)                      (K_i = number of positive terms)
        dL_i/dS_ip = -(1 - q_ip) / K_i                               for each positive p (attraction, Eq. 11)
        dL_i/dS_in = pi_in / K_i * sum_p (1 - q_ip)                  for each negative n,
    where ``pi_in = w_n e^{S_in - LN_i}`` is the anchor's weighted softmax over its negatives.
    """

    @staticmethod
    def forward(ctx, features, centers, labels, log_weights, temperature, start, stop):
        dtype = _compute_dtype(features)
        with torch.autocast(device_type=features.device.type, enabled=False):
            z = features.to(dtype)
            c = None if centers is None else centers.to(dtype)
            anchor = z[start:stop] / temperature  # scaling (A, D) is cheaper than scaling (A, N + C)
            anchor_y = labels[start:stop]
            rows = torch.arange(stop - start, device=z.device)

            # Sample columns: positives share the anchor's label (self excluded); the others are negatives.
            # The same-label mask is built in floating point (1 - |y_i - y_k|, clipped at 0, is 1 exactly when the
            # integer labels agree): on CPUs, boolean masks over (A, N) cost several float passes each.
            sim = anchor @ z.T  # (A, N)
            positive = (anchor_y.to(dtype)[:, None] - labels.to(dtype)[None, :]).abs_().neg_().add_(1.0).clamp_(min=0)
            neg = sim.clone() if log_weights is None else sim + log_weights.to(dtype)[labels]
            neg.add_(positive, alpha=-_EXCLUDED)  # same label: excluded from the negatives
            positive[rows, rows + start] = 0.0
            if c is not None:
                center_sim = anchor @ c.T  # (A, C); the own centre is a positive, the others negatives
                own = center_sim.gather(1, anchor_y[:, None]).squeeze(1)
                neg_c = center_sim if log_weights is None else center_sim.add_(log_weights.to(dtype))
                neg_c.scatter_(1, anchor_y[:, None], -math.inf)

            # Weighted negative sum, once per anchor, shared by all of its positives (log-sum-exp, shifted).
            shift = neg.amax(dim=1) if c is None else torch.maximum(neg.amax(dim=1), neg_c.amax(dim=1))
            shift.clamp_(min=-_EXCLUDED / 4)  # an anchor without negatives: every exp() below is then exactly 0
            prob = neg.sub_(shift[:, None]).exp_()  # unnormalised pi over the sample negatives
            total = prob.sum(1)
            if c is not None:
                prob_c = neg_c.sub_(shift[:, None]).exp_()
                total = total + prob_c.sum(1)
            log_neg = total.log() + shift  # log 0 = -inf without negatives: every positive term is then 0
            total.clamp_(min=torch.finfo(dtype).tiny)  # the normalisation of pi below stays finite

            # -log(e^s / (e^s + negatives)) = softplus(LN - s); its derivative in s is -(1 - q) = -sigmoid(LN - s).
            gap = log_neg[:, None] - sim
            loss = _softplus(gap).mul_(positive).sum(1)
            pull = gap.sigmoid_().mul_(positive)  # 1 - q_ip on positives, 0 elsewhere
            count = positive.sum(1)
            pull_c = None
            if c is not None:
                loss = loss + F.softplus(log_neg - own)
                pull_c = torch.sigmoid(log_neg - own)
                count = count + 1
            loss = loss / count.clamp(min=1)

        ctx.temperature, ctx.start, ctx.stop = temperature, start, stop
        ctx.centers_need_grad = centers is not None and ctx.needs_input_grad[1]
        ctx.save_for_backward(z, c, anchor_y, prob.div_(total[:, None]), pull, count,
                              None if c is None else prob_c.div_(total[:, None]), pull_c)
        ctx.input_dtypes = (features.dtype, None if centers is None else centers.dtype)
        ctx.mark_non_differentiable(count)
        return loss, count

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_count):
        z, c, anchor_y, pi, pull, count, pi_c, pull_c = ctx.saved_tensors
        start, stop, tau = ctx.start, ctx.stop, ctx.temperature
        with torch.autocast(device_type=z.device.type, enabled=False):
            g = grad_loss.to(z.dtype) / count.clamp(min=1)  # (A,)
            pulled = pull.sum(1) if pull_c is None else pull.sum(1) + pull_c
            repel = g * pulled  # weight of each anchor's negatives
            grad_sim = (pi * repel[:, None]).addcmul_(pull, g[:, None], value=-1.0)  # dL/dS, sample columns
            anchor = z[start:stop] / tau
            grad_features = grad_sim.T @ anchor  # as columns
            grad_anchor = grad_sim @ (z / tau)
            grad_centers = None
            if c is not None:
                grad_center_sim = pi_c * repel[:, None]
                grad_center_sim.scatter_add_(1, anchor_y[:, None], -(g * pull_c)[:, None])
                grad_anchor = grad_anchor + grad_center_sim @ (c / tau)
                if ctx.centers_need_grad:
                    grad_centers = (grad_center_sim.T @ anchor).to(ctx.input_dtypes[1])
            grad_features[start:stop] += grad_anchor
        return grad_features.to(ctx.input_dtypes[0]), grad_centers, None, None, None, None, None


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
