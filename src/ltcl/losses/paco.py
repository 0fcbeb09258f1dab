"""PaCoLoss: Parametric Contrastive Learning (Cui et al., ICCV 2021), the loss of the query view against its keys.

PaCo contrasts the query view of each image (through the network being trained) with a memory of detached rows:
the keys of the batch (the second view through a momentum copy of the network) and a MoCo queue of the keys of
earlier batches, all with their labels. The "parametric class centres" are the rows of the linear classifier on the
backbone features: the centre term of query i for class j is its classifier logit ``l_ij``, shifted by the log prior
``log pi_j`` (logit adjustment during training only; the test logits are the raw ``l_ij``). One softmax over the C
centre terms and the sample similarities both classifies and contrasts, so this loss is the whole objective.

With ``a_ij = l_ij + log pi_j``, ``s_ik = q_i . r_k / tau`` over the contrast rows ``r`` (the other queries of the
batch, every key, the filled queue slots), ``P(i)`` the contrast rows with label ``y_i`` (the query's own key is
always one)::

    D_i = sum_j exp(a_ij) + gamma * sum_k exp(s_ik)
    L_i = -( beta * log(exp(a_{i,y_i}) / D_i) + alpha * sum_{p in P(i)} log(exp(s_ip) / D_i) ) / (beta + alpha |P(i)|)
    L   = mean of L_i over the queries

Where the authors' code (dvlab-research/Parametric-Contrastive-Learning, PaCo/LT/losses.py ``PaCoLoss`` and
PaCo/LT/moco/builder.py ``MoCo._train``) and this module differ:

- Contrast set. The code contrasts a process's queries with ``cat(q, k, queue)``: its own batch's queries and keys
  and the queue. Under ``gather_distributed`` the contrast rows here are the queries of the global batch
  (gathered with gradient) and the keys of the global batch (which the caller passes in the memory), so the loss
  equals one process on the global batch whatever the number of processes; the authors' 4-GPU ImageNet-LT runs
  contrast each GPU's 32 queries with its own 32 queries and keys only (plus the shared queue). One process (their
  CIFAR runs): identical.
- The queue's empty slots. The code starts its queue from Gaussian noise (normalised along the wrong axis, so the
  rows are not unit vectors) with random labels, and contrasts against those rows until the queue has turned over
  once (8 steps on CIFAR, 64 on ImageNet-LT): noise rows weigh in every denominator and count as positives when
  their random label matches. Here a slot enters only once it holds a key (``memory_mask``).
- ``log(pi_j + 1e-9)`` and ``log(sum + 1e-12)`` in the code; the exact logarithms here (counts are checked
  positive, and the log-sum-exp never underflows). The epsilons move the loss by about 1e-6.
- ``temperature / base_temperature``: 1 in every script (``base_temperature`` defaults to ``temperature``); left out.
  ``supt``, dividing the centre terms, is 1.0 in every script and cannot be set from their command line; left out.
- Weights. The paper weights the sample positives by alpha and the centre by 1; the code adds ``beta`` (centre
  positive) and ``gamma`` (sample terms of the denominator), 1.0 in every script. Code followed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ltcl.dist import gather_rows, global_mean
from ltcl.losses.validation import (
    anchor_rows,
    check_class_counts,
    check_labels,
    check_temperature,
    compute_dtype,
)


@dataclass(frozen=True)
class PaCoWeights:
    """PaCo's weights: ``alpha`` of each sample positive, ``beta`` of the own-centre positive, ``gamma`` of the sample
    terms in the denominator, and ``temperature`` of the sample similarities. Defaults: the authors' CIFAR-100-LT
    script (PaCo/LT/sh/CIFAR100_train_imb0.01.sh: alpha 0.01, beta 1.0, gamma 1.0, moco-t 0.05)."""

    alpha: float = 0.01
    beta: float = 1.0
    gamma: float = 1.0
    temperature: float = 0.05

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "gamma"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
        if self.alpha == 0 and self.beta == 0:
            raise ValueError("alpha and beta must not both be 0 (no query would have a positive term).")
        check_temperature(self.temperature)


class PaCoTerms(NamedTuple):
    """What :class:`PaCoLoss` returns.

    Attributes:
        loss: the scalar to minimise, the mean of ``L_i`` over the queries with a positive term (all of them when
            beta > 0 or the memory holds their keys); with ``gather_distributed`` the global-batch mean, its gradient
            scaled for DDP's average.
        positives: (A,) detached, the number of sample positives ``|P(i)|`` of each of this process's queries.
    """

    loss: Tensor
    positives: Tensor


def paco_per_query(
    queries: Tensor,
    labels: Tensor,
    logits: Tensor,
    memory: Tensor,
    memory_labels: Tensor,
    memory_mask: Tensor | None,
    log_prior: Tensor,
    weights: PaCoWeights,
    anchors: slice | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-query PaCo terms ``L_i`` (module docstring); no value checks, no host synchronisation.

    Args:
        queries: (N, D) L2-normalised query projections, the queries of the contrast set (all processes' rows under
            DDP); the rows ``anchors`` are the anchors.
        labels: (N,) int64 labels of ``queries``.
        logits: (A, C) classifier logits of the anchors.
        memory: (M, D) detached L2-normalised rows: the keys and the queue.
        memory_labels: (M,) int64 labels of ``memory``.
        memory_mask: (M,) bool, the memory rows to use (None: all).
        log_prior: (C,) ``log(N_j / sum_k N_k)``.
        weights: alpha, beta, gamma, temperature.
        anchors: contiguous rows of ``queries`` that are anchors (all when None).

    Returns:
        (A,) ``L_i`` (0 for a query without a positive term), (A,) the number of sample positives of each query (in
        the compute dtype) and (A,) bool, whether the query has a positive term.
    """
    start, stop = anchor_rows(anchors, queries.shape[0])
    dtype = torch.promote_types(compute_dtype(queries), compute_dtype(logits))
    with torch.autocast(device_type=queries.device.type, enabled=False):
        q = queries.to(dtype)
        anchor = q[start:stop] / weights.temperature
        anchor_y = labels[start:stop]
        centre = logits.to(dtype) + log_prior.to(device=logits.device, dtype=dtype)  # (A, C)

        rows = torch.arange(stop - start, device=q.device)
        # Query rows: every query but the anchor itself.
        sim_q = anchor @ q.T  # (A, N)
        use_q = torch.ones_like(sim_q, dtype=torch.bool)
        use_q[rows, rows + start] = False
        # Memory rows (keys, then queue): those the mask lets in.
        sim_m = anchor @ memory.to(dtype).T  # (A, M)
        use_m = (
            torch.ones_like(sim_m, dtype=torch.bool) if memory_mask is None else memory_mask[None, :].expand_as(sim_m)
        )

        sim = torch.cat([sim_q, sim_m], dim=1)
        use = torch.cat([use_q, use_m], dim=1)
        positive = (anchor_y[:, None] == torch.cat([labels, memory_labels])[None, :]) & use

        # gamma scales the sample terms of the denominator: log(gamma) added to their logits (-inf when gamma = 0).
        log_gamma = math.log(weights.gamma) if weights.gamma > 0 else -math.inf
        sample_den = torch.where(use, sim + log_gamma, torch.tensor(-math.inf, dtype=dtype, device=q.device))
        log_den = torch.logsumexp(torch.cat([centre, sample_den], dim=1), dim=1)  # (A,)

        own = centre.gather(1, anchor_y[:, None]).squeeze(1)
        count = positive.sum(1).to(dtype)
        weight_sum = weights.beta + weights.alpha * count
        weighted_logit = weights.beta * own + weights.alpha * torch.where(positive, sim, torch.zeros_like(sim)).sum(1)
        # weight_sum > 0 whenever beta > 0 or the query's own key is in the memory; a query without any positive
        # term (beta = 0 and no sample positive) is left out of the mean instead of giving 0/0.
        has_positive = weight_sum > 0
        loss = log_den - weighted_logit / weight_sum.clamp(min=torch.finfo(dtype).tiny)
        loss = torch.where(has_positive, loss, torch.zeros_like(loss))
    return loss, count, has_positive


class PaCoLoss(nn.Module):
    """Parametric contrastive loss of the query views against a memory of keys (equations and the differences
    from the authors' code in the module docstring).

    Args:
        class_counts: (C,) training images per class; their log prior shifts the centre logits.
        alpha: weight of each sample positive (0.01 in the authors' CIFAR-100-LT script, 0.05 for ImageNet-LT).
        beta: weight of the own-class centre positive (1.0 in every script).
        gamma: weight of the sample terms in the denominator (1.0 in every script).
        temperature: tau of the sample similarities (moco-t: 0.05 on CIFAR-LT, 0.07 for ImageNet-LT X50).
        gather_distributed: under torch.distributed, the queries of every process join the contrast set (gathered
            with gradient); the anchors, and the ``logits`` passed in, are this process's rows. The caller passes
            the keys of the global batch in ``memory``. The value is the global-batch loss, its gradient scaled for
            DDP's average (``ltcl.dist.global_mean``).

    Inputs of ``forward(queries, labels, logits, memory, memory_labels, memory_mask=None)``:
        queries: (B, D) float query projections, L2-normalised (not normalised here).
        labels: (B,) int64 class indices in [0, C).
        logits: (B, C) raw classifier logits of the queries (the loss adds the log prior).
        memory: (M, D) float, L2-normalised rows without gradient: the keys (each query's own key among them, or
            a query with ``beta = 0`` has no positive), then the queue.
        memory_labels: (M,) int64 labels of ``memory``.
        memory_mask: (M,) bool, the memory rows that hold a key (the queue's filled slots), or None for all.

    Returns :class:`PaCoTerms` (loss, positives). Shapes and the labels' dtype are always checked, the label range
    only on the CPU (no host sync on an accelerator; see ``ltcl.losses``).
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
        self.num_classes = counts.numel()
        self.weights = PaCoWeights(float(alpha), float(beta), float(gamma), float(temperature))
        self.gather_distributed = bool(gather_distributed)
        # float64: exact for float64 inputs; cast per forward to the compute dtype (C numbers).
        self.register_buffer("log_prior", (counts / counts.sum()).log(), persistent=False)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, {self.weights}, gather_distributed={self.gather_distributed}"

    def forward(
        self,
        queries: Tensor,
        labels: Tensor,
        logits: Tensor,
        memory: Tensor,
        memory_labels: Tensor,
        memory_mask: Tensor | None = None,
    ) -> PaCoTerms:
        for name, tensor in (("queries", queries), ("memory", memory)):
            if not isinstance(tensor, Tensor) or tensor.dim() != 2 or not tensor.dtype.is_floating_point:
                raise ValueError(
                    f"{name} must be a 2-D float tensor (rows, D), got {getattr(tensor, 'shape', tensor)}."
                )
        if memory.shape[1] != queries.shape[1]:
            raise ValueError(f"memory rows have {memory.shape[1]} dimensions but the queries have {queries.shape[1]}.")
        rows = queries.shape[0]
        if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape != (rows, self.num_classes):
            raise ValueError(
                f"logits must have shape ({rows}, {self.num_classes}), got {getattr(logits, 'shape', logits)}."
            )
        check_labels(labels, rows, self.num_classes, sync=False)
        check_labels(memory_labels, memory.shape[0], self.num_classes, "memory_labels", sync=False)
        if memory_mask is not None and (memory_mask.dtype != torch.bool or memory_mask.shape != (memory.shape[0],)):
            raise ValueError(f"memory_mask must be a ({memory.shape[0]},) bool tensor, got {memory_mask.dtype} "
                             f"{tuple(memory_mask.shape)}.")  # fmt: skip
        memory = memory.detach()
        anchors = None
        if self.gather_distributed:
            queries, labels, anchors = gather_rows(queries, labels)
        per_query, positives, has_positive = paco_per_query(
            queries, labels, logits, memory, memory_labels, memory_mask, self.log_prior, self.weights, anchors
        )
        return PaCoTerms(global_mean(per_query, has_positive), positives.detach())
