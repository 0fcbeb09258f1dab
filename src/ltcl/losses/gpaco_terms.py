"""GPaCo's per-anchor maths (:func:`gpaco_per_anchor`, equations in :mod:`ltcl.losses.gpaco`): its weights
(:class:`GPaCoWeights`, with their checks) and the per-anchor terms it returns (:class:`GPaCoTerms`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ltcl.losses.validation import anchor_rows, compute_dtype


def _check_weights(alpha: float, beta: float, gamma: float, temperature: float, smooth: float = 0.0) -> None:
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    if alpha == 0 and beta == 0:
        raise ValueError("alpha and beta must not both be 0 (no anchor would have a positive term).")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}.")
    if not (isinstance(smooth, (int, float)) and 0 <= smooth < 1):
        raise ValueError(f"smooth must be a number in [0, 1), got {smooth!r}.")


@dataclass(frozen=True)
class GPaCoWeights:
    """GPaCo's weights: ``alpha`` of the sample positives, ``beta`` of the own-centre positive, ``gamma`` of the
    sample terms in the denominator, the temperature of the sample similarities and the label smoothing of the
    centre positive. The defaults are the authors' CIFAR-100-LT values."""

    alpha: float = 0.01
    beta: float = 1.0
    gamma: float = 1.0
    temperature: float = 0.05
    smooth: float = 0.0


class GPaCoTerms(NamedTuple):
    """Per-anchor results of :func:`gpaco_per_anchor`, each (A,).

    Attributes:
        loss: ``L_i``, 0 where the positive weights sum to 0.
        has_positive: bool, the anchors that count in the mean.
        centre_weight: ``beta / (beta + alpha |P(i)|)``, the share of the own-centre positive (0 without positives).
    """

    loss: Tensor
    has_positive: Tensor
    centre_weight: Tensor


def gpaco_per_anchor(
    features: Tensor,
    labels: Tensor,
    logits: Tensor,
    log_prior: Tensor,
    weights: GPaCoWeights,
    anchors: slice | None = None,
    queue: Tensor | None = None,
    queue_labels: Tensor | None = None,
) -> GPaCoTerms:
    """Per-anchor GPaCo terms ``L_i`` (:mod:`ltcl.losses.gpaco`); no value checks, no host synchronisation.

    Args:
        features: (N, D) L2-normalised projections of the batch; the batch's contrast rows (all ranks' rows under
            DDP).
        labels: (N,) int64 labels of ``features``.
        logits: (A, C) classifier logits of the anchors, the rows ``anchors`` of ``features``.
        log_prior: (C,) ``log(N_j / sum_k N_k)``.
        weights: alpha, beta, gamma, temperature and smoothing (:class:`GPaCoWeights`).
        anchors: contiguous rows of ``features`` that are anchors (all when None).
        queue: (K, D) keys of past batches, extra contrast rows that are never anchors (no gradient flows to them
            unless they require one), or None.
        queue_labels: (K,) int64 labels of ``queue``; ``EMPTY`` (-1) marks a slot without a key (left out).

    Returns:
        :class:`GPaCoTerms`.
    """
    start, stop = anchor_rows(anchors, features.shape[0])
    alpha, beta, gamma = weights.alpha, weights.beta, weights.gamma
    dtype = torch.promote_types(compute_dtype(features), compute_dtype(logits))
    with torch.autocast(device_type=features.device.type, enabled=False):
        z = features.to(dtype)
        contrast, contrast_labels = z, labels
        if queue is not None:
            contrast = torch.cat([z, queue.to(device=z.device, dtype=dtype)])
            contrast_labels = torch.cat([labels, queue_labels.to(labels.device)])
        anchor_y = labels[start:stop]
        centre = logits.to(dtype) + log_prior.to(device=logits.device, dtype=dtype)  # (A, C)
        sim = (z[start:stop] / weights.temperature) @ contrast.T  # (A, N + K)
        rows = torch.arange(stop - start, device=z.device)
        positive = anchor_y[:, None] == contrast_labels[None, :]  # empty slots (-1) match no anchor
        positive[rows, rows + start] = False

        # gamma scales the sample terms of the denominator: add log(gamma) to their logits (-inf when gamma = 0);
        # the anchor itself and the empty queue slots are out (-inf).
        log_gamma = math.log(gamma) if gamma > 0 else -math.inf
        minus_inf = torch.tensor(-math.inf, dtype=dtype, device=z.device)
        out = (contrast_labels < 0)[None, :].expand_as(sim).clone()
        out[rows, rows + start] = True
        sample_den = torch.where(out, minus_inf, sim + log_gamma)
        log_den = torch.logsumexp(torch.cat([centre, sample_den], dim=1), dim=1)  # (A,)

        # Each positive's log-probability is (its logit - log D_i); the weights are normalised to sum to 1.
        own = centre.gather(1, anchor_y[:, None]).squeeze(1)
        if weights.smooth > 0:
            eps = weights.smooth
            other = (centre.sum(1) - own) / (centre.shape[1] - 1)
            own = (1 - eps) * own + eps * other
        count = positive.sum(1).to(dtype)
        weight_sum = beta + alpha * count
        weighted_logit = beta * own + alpha * (sim * positive).sum(1)
        has_positive = weight_sum > 0
        safe_sum = weight_sum.clamp(min=torch.finfo(dtype).tiny)
        loss = log_den - weighted_logit / safe_sum
        loss = torch.where(has_positive, loss, torch.zeros_like(loss))
        centre_weight = torch.where(has_positive, beta / safe_sum, torch.zeros_like(safe_sum))
    return GPaCoTerms(loss, has_positive, centre_weight)
