"""GPaCoLoss: Generalized Parametric Contrastive Learning (Cui et al., TPAMI 2023), the paper's strongest rival.

The "parametric class centres" of PaCo/GPaCo are the rows of the linear classifier: the centre term of anchor i for
class j is its classifier logit, shifted by the log prior as in Balanced Softmax. The C centre logits are placed in
front of the N sample similarities, and one softmax over all of them both classifies and contrasts, so this loss is
the whole training objective (no separate cross-entropy).

With ``a_ij = (l_ij + log pi_j) / t_c`` (logits ``l``, training prior ``pi_j = N_j / sum_k N_k``, ``t_c`` the code's
``supt``), ``s_ik = z_i . z_k / tau`` and ``P(i)`` the other rows with label ``y_i``::

    D_i = sum_j exp(a_ij) + gamma * sum_{k != i} exp(s_ik)
    L_i = -( beta * log(exp(a_{i,y_i}) / D_i) + alpha * sum_{p in P(i)} log(exp(s_ip) / D_i) ) / (beta + alpha |P(i)|)
    L   = mean of L_i over the anchors (every anchor when beta > 0)

Where the public code (dvlab-research/Parametric-Contrastive-Learning, GPaCo/LT/losses.py, ``PaCoLoss``) and the
papers differ, and what is followed here:

- Weights. The PaCo paper weights each sample positive by alpha and the centre by 1; the code adds beta (centre)
  and gamma (sample terms of the denominator), which the authors say are 1.0 in all their experiments, alpha being
  the only meaningful one (repository issue #12). Code followed; beta = gamma = 1 gives the paper's loss.
- Normalisation. The code divides the weighted sum by the sum of the weights, ``beta + alpha |P(i)|``
  (``mask.sum(1)``), the ``1 + alpha K_y`` of the paper's Remark 2 (issue #23). Followed.
- Centre rebalance. The log prior on the centre logits is in the code, not in PaCo's loss equation; the authors
  point to logit adjustment / Balanced Softmax for it (issue #26). Followed.
- Queue. GPaCo is PaCo without the momentum encoder (issue #18): both views go through the same encoder and both
  are anchors. Its code still keeps a MoCo queue of K detached past features (1024 on CIFAR, 8192 on ImageNet-LT)
  as extra contrast rows. No queue here: the contrast set is the batch, or the global batch with ``gather_distributed``
  (with gradient, which the code's no-gradient ``concat_all_gather`` of the queue never had).
- ``temperature / base_temperature`` rescaling: ``base_temperature`` defaults to ``temperature`` and no script sets
  it, so the factor is 1 and is left out. ``supt``, which divides the centre logits, is 1.0 in every script and is
  left out too.
- ``log(pi_j + 1e-9)`` in the code; the exact ``log pi_j`` here (counts are validated positive).
- Label smoothing of the centre positive (``smooth``, 0 by default, set by no script): not implemented.
- An anchor whose positive weights sum to 0 (beta = 0 and no sample positive) gives 0/0 = NaN in the code; here it
  is left out of the mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ltcl.dist import gather_rows, global_mean
from ltcl.losses.validation import (
    anchor_rows,
    check_class_counts,
    check_features,
    check_labels,
    check_logits,
    compute_dtype,
    zero_with_graph,
)


def _check_weights(alpha: float, beta: float, gamma: float, temperature: float) -> None:
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    if alpha == 0 and beta == 0:
        raise ValueError("alpha and beta must not both be 0 (no anchor would have a positive term).")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}.")


@dataclass(frozen=True)
class GPaCoWeights:
    """GPaCo's weights: ``alpha`` of the sample positives, ``beta`` of the own-centre positive, ``gamma`` of the
    sample terms in the denominator and the temperature of the sample similarities. The defaults are the authors'
    CIFAR-100-LT values."""

    alpha: float = 0.01
    beta: float = 1.0
    gamma: float = 1.0
    temperature: float = 0.05


def gpaco_per_anchor(
    features: Tensor,
    labels: Tensor,
    logits: Tensor,
    log_prior: Tensor,
    weights: GPaCoWeights,
    anchors: slice | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-anchor GPaCo terms ``L_i`` (module docstring); no value checks, no host synchronisation.

    Args:
        features: (N, D) L2-normalised projections; the contrast set (all ranks' rows under DDP).
        labels: (N,) int64 labels of ``features``.
        logits: (A, C) classifier logits of the anchors, the rows ``anchors`` of ``features``.
        log_prior: (C,) ``log(N_j / sum_k N_k)``.
        weights: alpha, beta, gamma and the two temperatures (:class:`GPaCoWeights`).
        anchors: contiguous rows of ``features`` that are anchors (all when None).

    Returns:
        loss: (A,) ``L_i``, 0 where the positive weights sum to 0; has_positive: (A,) bool.
    """
    start, stop = anchor_rows(anchors, features.shape[0])
    alpha, beta, gamma = weights.alpha, weights.beta, weights.gamma
    temperature = weights.temperature
    dtype = torch.promote_types(compute_dtype(features), compute_dtype(logits))
    with torch.autocast(device_type=features.device.type, enabled=False):
        z = features.to(dtype)
        anchor_y = labels[start:stop]
        centre = logits.to(dtype) + log_prior.to(device=logits.device, dtype=dtype)  # (A, C)
        sim = (z[start:stop] / temperature) @ z.T  # (A, N)
        rows = torch.arange(stop - start, device=z.device)
        positive = anchor_y[:, None] == labels[None, :]
        positive[rows, rows + start] = False

        # gamma scales the sample terms of the denominator: add log(gamma) to their logits (-inf when gamma = 0).
        log_gamma = math.log(gamma) if gamma > 0 else -math.inf
        sample_den = sim + log_gamma
        sample_den = sample_den.index_put((rows, rows + start), torch.tensor(-math.inf, dtype=dtype, device=z.device))
        log_den = torch.logsumexp(torch.cat([centre, sample_den], dim=1), dim=1)  # (A,)

        # Each positive's log-probability is (its logit - log D_i); the weights are normalised to sum to 1.
        own = centre.gather(1, anchor_y[:, None]).squeeze(1)
        count = positive.sum(1).to(dtype)
        weight_sum = beta + alpha * count
        weighted_logit = beta * own + alpha * (sim * positive).sum(1)
        has_positive = weight_sum > 0
        loss = log_den - weighted_logit / weight_sum.clamp(min=torch.finfo(dtype).tiny)
        loss = torch.where(has_positive, loss, torch.zeros_like(loss))
    return loss, has_positive


def gpaco_loss(
    features: Tensor,
    labels: Tensor,
    logits: Tensor,
    class_counts: Sequence[int] | Tensor,
    weights: GPaCoWeights = GPaCoWeights(),
) -> Tensor:
    """GPaCo loss (module docstring), validating every input (shapes, dtypes, label range, finiteness, weights).

    Args:
        features: (N, D) L2-normalised projections, one row per view.
        labels: (N,) int64 in [0, C).
        logits: (N, C) classifier logits of the same rows.
        class_counts: (C,) positive training counts ``N_j`` (the log prior of the centre logits).
        weights: alpha, beta, gamma and the two temperatures (:class:`GPaCoWeights`).

    Returns:
        Scalar mean of ``L_i`` over anchors with a positive term; a zero with a gradient graph when there is none.
    """
    counts = check_class_counts(class_counts)
    _check_weights(weights.alpha, weights.beta, weights.gamma, weights.temperature)
    check_features(features)
    check_logits(logits, labels, counts.numel())
    if logits.shape[0] != features.shape[0]:
        raise ValueError(f"logits have {logits.shape[0]} rows but features have {features.shape[0]}.")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("logits contain NaN or inf values.")
    if features.shape[0] == 0:
        return zero_with_graph(features) + zero_with_graph(logits)
    log_prior = (counts / counts.sum()).log()
    loss, has_positive = gpaco_per_anchor(features, labels, logits, log_prior, weights)
    return loss.sum() / has_positive.sum().clamp(min=1)


class GPaCoLoss(nn.Module):
    """Generalized Parametric Contrastive loss (equations and code differences in the module docstring).

    Args:
        class_counts: (C,) training images per class; their log prior shifts the centre logits.
        alpha: weight of the sample positives (0.01 in the authors' CIFAR-100-LT scripts, 0.05 for ImageNet-LT X50).
        beta: weight of the own-class centre positive (1.0 in every script).
        gamma: weight of the sample terms in the denominator (1.0 in every script).
        temperature: tau of the sample similarities (0.05 on CIFAR-LT, 0.2 on ImageNet-LT).
        gather_distributed: under torch.distributed, contrast against the global batch (gathered with gradient);
            the anchors, and the ``logits`` passed in, are this rank's rows. The value is the global-batch loss and
            its gradient is scaled for DDP's average (``ltcl.dist.global_mean``).

    Inputs of ``forward(features, labels, logits)``:
        features: (N, D) float projections, L2-normalised (the loss does not normalise them), all views as rows.
        labels: (N,) int64 class indices in [0, C).
        logits: (N, C) float raw classifier logits of the same rows (the loss adds the log prior). Pass every view
            of every image, with its logits (GPaCo's code uses both views as anchors).

    Returns a scalar, the mean over anchors with a positive term. Shapes and the labels' dtype are always checked,
    the label range only on the CPU (no host sync on an accelerator; see ``ltcl.losses``).
    """

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor,
        *,
        alpha: float = 0.01,
        beta: float = 1.0,
        gamma: float = 1.0,
        temperature: float = 0.05,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        counts = check_class_counts(class_counts)
        _check_weights(alpha, beta, gamma, temperature)
        self.num_classes = counts.numel()
        self.weights = GPaCoWeights(float(alpha), float(beta), float(gamma), float(temperature))
        self.gather_distributed = bool(gather_distributed)
        # float64: exact for float64 inputs; cast per forward to the compute dtype (C numbers).
        self.register_buffer("log_prior", (counts / counts.sum()).log())

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, {self.weights}, gather_distributed={self.gather_distributed}"

    def forward(self, features: Tensor, labels: Tensor, logits: Tensor) -> Tensor:
        if not isinstance(features, Tensor) or features.dim() != 2:
            raise ValueError(f"features must be a 2-D tensor (N, D), got {getattr(features, 'shape', features)}.")
        if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must have shape (N, {self.num_classes}), got {getattr(logits, 'shape', logits)}.")
        if logits.shape[0] != features.shape[0]:
            raise ValueError(f"logits have {logits.shape[0]} rows but features have {features.shape[0]}.")
        check_labels(labels, features.shape[0], self.num_classes, sync=False)
        anchors = None
        if self.gather_distributed:
            features, labels, anchors = gather_rows(features, labels)
        per_anchor, has_positive = gpaco_per_anchor(features, labels, logits, self.log_prior, self.weights, anchors)
        return global_mean(per_anchor, has_positive)
