"""The aligned contrastive loss (Eq. 9) per anchor, as an autograd function with its closed-form gradient.

No input checks here: :func:`ltcl.losses.functional.aligned_contrastive_per_anchor` validates its inputs and
``AlignedContrastiveLoss`` checks shapes, dtypes and (on the CPU) the label range, so that the training step never
waits for the device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ltcl.losses.validation import compute_dtype

_EXCLUDED = 1e30  # subtracted from excluded logits: exp() of the result is exactly 0 in float32 and float64


def _softplus(x: Tensor) -> Tensor:
    """``log(1 + e^x)`` as ``max(x, 0) + log(1 + e^-|x|)``: about twice as fast as F.softplus on CPUs, exact to
    within the float epsilon (terms below e^-17 round to 0 in float32)."""
    return x.abs().neg_().exp_().add_(1.0).log_().add_(x.clamp(min=0))


def _softplus_threshold(dtype: torch.dtype) -> float:
    """Where softplus(x) may be replaced by x: e^-x must vanish against x at the dtype's precision (e^-20 does in
    float32, as F.softplus assumes; float64 needs about e^-40)."""
    return 40.0 if dtype == torch.float64 else 20.0


class AlignedContrastiveFunction(torch.autograd.Function):
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
        dtype = compute_dtype(features)
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
                loss = loss + F.softplus(log_neg - own, threshold=_softplus_threshold(dtype))
                pull_c = torch.sigmoid(log_neg - own)
                count = count + 1
            loss = loss / count.clamp(min=1)

        ctx.temperature, ctx.start, ctx.stop = temperature, start, stop
        ctx.centers_need_grad = centers is not None and ctx.needs_input_grad[1]
        ctx.save_for_backward(
            z,
            c,
            anchor_y,
            prob.div_(total[:, None]),
            pull,
            count,
            None if c is None else prob_c.div_(total[:, None]),
            pull_c,
        )
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


def aligned_contrastive_terms(
    features: Tensor,
    labels: Tensor,
    temperature: float,
    centers: Tensor | None,
    negative_weights: Tensor | None,
    anchors: slice,
) -> tuple[Tensor, Tensor]:
    """Per-anchor ACL terms without any input check (the caller has validated shapes and values).

    Args:
        features: (N, D) L2-normalised projections; labels: (N,) int64; centers: (C, D) or None;
        negative_weights: (C,) non-negative or None; anchors: contiguous rows of ``features`` acting as anchors.

    Returns:
        (A,) loss of each anchor (0 without a positive term) and (A,) bool: whether it has a positive term.
    """
    if features.shape[0] == 0:
        return features.sum(1) * 0.0, torch.zeros(0, dtype=torch.bool, device=features.device)
    log_weights = None if negative_weights is None else negative_weights.log()  # log 0 = -inf removes a class
    loss, count = AlignedContrastiveFunction.apply(
        features, centers, labels, log_weights, temperature, anchors.start, anchors.stop
    )
    return loss, count > 0
