"""DSCL: the decoupled supervised contrastive loss and the patch-based self-distillation (PBSD) of Xuan and Zhang,
"Decoupled Contrastive Learning for Long-Tailed Recognition", AAAI 2024.

DSCL is MoCo-shaped: the anchors are the queries ``q_i`` (the first view through the trained network, L2-normalised
projections), their keys ``k_i`` are a second view through a momentum copy of the network (no gradient), and a
memory queue holds the keys of earlier batches with their labels. Anchor i contrasts against every other query, every
key and every queue entry; ``s_ia = q_i . a / tau``; ``P_i`` are the contrast rows of class ``y_i`` other than
``k_i`` (other queries, other keys, queue entries); ``log p_i(a) = s_ia - log sum_{a' != q_i} exp(s_ia')``::

    L_i    = - w_i log p_i(k_i) - (1 - w_i) / |P_i| * sum_{p in P_i} log p_i(p)
    w_i    = 1 / (1 + beta) if |P_i| > 0, else 1
    L_dscl = mean_i L_i

The two positives are decoupled: the other view of the image always keeps the share ``1 / (1 + beta)`` of the positive
weight, however many images of its class the batch and queue hold (SCL gives it ``1 / (|P_i| + 1)``, vanishing for
head classes), and the class positives share the rest. ``view`` and ``class`` below are the two terms.

PBSD. ``n`` patches are cut from each query image. For patch j of image i, the teacher ``t_ij`` is the patch's box
pooled (RoIAlign) from the query's last feature map, projected and normalised, without gradient; the student ``p_ij``
is the patch image itself through the network. Over the candidates ``c`` in ``{k_i} + queue``::

    L_pbsd = mean_i mean_j ( - sum_c softmax_c(t_ij . c / tau) * log_softmax_c(p_ij . c / tau) )

so the patch learns to rank the key and the queue (other images, other classes) as its region of the whole image
does: the similarity relations are what is distilled, at the contrastive temperature.

Sources: SY-Xuan/DSCL, commit 72c823bacabc7e09a3656e9047403681eb0ef5c2: ``dscl/DSCL.py`` (``DSCLLoss`` lines
208-261, ``PBSDLoss`` lines 264-302, the queue lines 42-97). The paper's text was not at hand offline: the equations
above are the code's, written out.

Where ltcl departs from that code:

- Arithmetic. The code builds the positive mask, and so the weights ``beta / |P_i|``, in float32 (``.float()``)
  whatever the features' dtype, and adds 1e-12 inside the log of the denominator and to ``|P_i|``. Here the weights
  are in the compute dtype and the log-sum-exp is exact. In float64 the published code differs from this module by
  about 1e-8 relative (the float32 weights); with those two edits to its source, by 1e-13.
- ``base_temperature`` defaults to the temperature in the code (``T / base_T = 1``): left out.
- None under torch.distributed: as in the code, each process contrasts its own queries with its own batch (its
  queries and keys) and the queue, and the queue receives the keys of the global batch (gathered from every
  process, in rank order), so that every process holds the same queue. The reported value is the mean over every
  process's anchors (``ltcl.dist.global_mean``, whose gradient is the local mean's when the processes hold equal
  batches, as DDP then averages it).
- The queue is stored row-wise (K, D) instead of (D, K); its initial contents are random unit vectors with random
  labels, as in the code (lines 43-47), replaced batch by batch (the authors' "TODO: maybe should fill the queue").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltcl.dist import gather_equal_rows, global_mean
from ltcl.losses.validation import anchor_rows, check_features, check_labels, check_temperature, compute_dtype


class DSCLTerms(NamedTuple):
    """The two weighted terms of ``L_dscl`` (scalars, or (A,) per anchor): ``view`` the other view of the image,
    ``klass`` the other images of its class; ``L_dscl = view + klass``."""

    view: Tensor
    klass: Tensor


def _check_beta(beta: float) -> None:
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}.")


def dscl_per_anchor(
    queries: Tensor,
    keys: Tensor,
    labels: Tensor,
    queue: Tensor,
    queue_labels: Tensor,
    *,
    beta: float,
    temperature: float,
    anchors: slice | None = None,
) -> DSCLTerms:
    """Per-anchor DSCL terms (module docstring); no value checks, no host synchronisation.

    Args:
        queries: (N, D) L2-normalised query projections (all ranks' rows under DDP), with gradient.
        keys: (N, D) L2-normalised keys of the same images, row for row.
        labels: (N,) int64 labels of the images.
        queue: (K, D) L2-normalised earlier keys; queue_labels: (K,) their labels.
        beta: the class positives weigh ``beta`` times the other view (before normalising the weights to 1).
        temperature: tau.
        anchors: contiguous rows of ``queries`` that are anchors (all when None).

    Returns:
        :class:`DSCLTerms` of shape (A,) each.
    """
    n = queries.shape[0]
    start, stop = anchor_rows(anchors, n)
    dtype = torch.promote_types(compute_dtype(queries), compute_dtype(keys))
    with torch.autocast(device_type=queries.device.type, enabled=False):
        q, k, u = queries.to(dtype), keys.to(dtype), queue.to(device=queries.device, dtype=dtype)
        contrast = torch.cat([q, k, u])  # (2N + K, D)
        sim = (q[start:stop] / temperature) @ contrast.T  # (A, 2N + K)
        rows = torch.arange(stop - start, device=q.device)
        own_query, own_key = rows + start, rows + start + n
        contrast_labels = torch.cat([labels, labels, queue_labels.to(labels.device)])
        others = labels[start:stop, None] == contrast_labels[None, :]
        others[rows, own_query] = False
        others[rows, own_key] = False
        # The anchor itself is left out of the denominator only; log p is finite everywhere (and used where positive).
        log_den = torch.logsumexp(sim.index_put((rows, own_query), sim.new_tensor(-math.inf)), dim=1)
        log_p = sim - log_den[:, None]
        count = others.sum(1)
        view_nll = -log_p[rows, own_key]
        class_nll = -(log_p * others).sum(1) / count.clamp(min=1)
        w = torch.where(count > 0, torch.full_like(view_nll, 1.0 / (1.0 + beta)), torch.ones_like(view_nll))
    return DSCLTerms(w * view_nll, (1.0 - w) * class_nll)


def pbsd_per_anchor(
    students: Tensor | Sequence[Tensor], teachers: Tensor | Sequence[Tensor], keys: Tensor, queue: Tensor, *,
    temperature: float,
) -> Tensor:  # fmt: skip
    """Per-anchor PBSD loss (module docstring), the mean over the patches; no value checks.

    Args:
        students: n tensors (A, D), patch j of every anchor image through the network (normalised), with gradient.
        teachers: n tensors (A, D), the same patches' RoI features from the query's map (normalised); detached here.
        keys: (A, D) the anchors' own keys; queue: (K, D).
        temperature: tau of both distributions.

    Returns:
        (A,) ``mean_j -sum_c T_ij(c) log S_ij(c)``.
    """
    dtype = torch.promote_types(compute_dtype(keys), compute_dtype(students[0]))
    with torch.autocast(device_type=keys.device.type, enabled=False):
        k, u = keys.to(dtype), queue.to(device=keys.device, dtype=dtype)
        total = None
        for student, teacher in zip(students, teachers):
            with torch.no_grad():
                t = teacher.to(dtype)
                target = torch.cat([(t * k).sum(1, keepdim=True), t @ u.T], dim=1).div(temperature).softmax(1)
            s = student.to(dtype)
            log_prob = torch.cat([(s * k).sum(1, keepdim=True), s @ u.T], dim=1).div(temperature).log_softmax(1)
            term = -(target * log_prob).sum(1)
            total = term if total is None else total + term
    return total / len(students)


def dscl_loss(
    queries: Tensor,
    keys: Tensor,
    labels: Tensor,
    queue: Tensor,
    queue_labels: Tensor,
    *,
    beta: float = 8.0,
    temperature: float = 0.07,
) -> DSCLTerms:
    """DSCL (module docstring) on one process, validating every input; returns the means of the two terms."""
    _check_beta(beta)
    check_temperature(temperature)
    for name, tensor in (("queries", queries), ("keys", keys), ("queue", queue)):
        check_features(tensor, name)
    if keys.shape != queries.shape or queue.shape[1] != queries.shape[1]:
        raise ValueError(
            f"keys must have the queries' shape {tuple(queries.shape)} and queue D={queries.shape[1]} columns, got "
            f"{tuple(keys.shape)} and {tuple(queue.shape)}."
        )
    check_labels(labels, queries.shape[0], None)
    check_labels(queue_labels, queue.shape[0], None, "queue_labels")
    terms = dscl_per_anchor(queries, keys, labels, queue, queue_labels, beta=beta, temperature=temperature)
    return DSCLTerms(terms.view.mean(), terms.klass.mean())


def pbsd_loss(
    students: Sequence[Tensor], teachers: Sequence[Tensor], keys: Tensor, queue: Tensor, *, temperature: float = 0.07
) -> Tensor:
    """PBSD (module docstring) on one process, validating every input; the mean over anchors."""
    check_temperature(temperature)
    if len(students) == 0 or len(students) != len(teachers):
        raise ValueError(f"students and teachers must be equally many (>= 1), got {len(students)} and {len(teachers)}.")
    for tensor in (*students, *teachers):
        check_features(tensor, "patch features")
        if tensor.shape != keys.shape:
            raise ValueError(
                f"patch features must have the keys' shape {tuple(keys.shape)}, got {tuple(tensor.shape)}."
            )
    check_features(queue, "queue")
    return pbsd_per_anchor(students, teachers, keys, queue, temperature=temperature).mean()


class DSCLLoss(nn.Module):
    """DSCL and PBSD with their memory queue (equations and code differences in the module docstring).

    Args:
        num_classes: C (the random labels of the initial queue).
        dim: D, the projection size.
        queue_size: K keys kept (65536 in the authors' ImageNet-LT script).
        beta: weight of the class positives relative to the other view (8.0 in the authors' script).
        temperature: tau of DSCL and PBSD (0.07).
        gather_distributed: under torch.distributed, fill the queue with the global batch's keys (the same queue on
            every process); the contrast set stays this process's batch and the queue, as in the authors' code.

    ``forward(queries, keys, labels)`` returns the two DSCL terms (global means); ``distillation(students, teachers,
    keys)`` PBSD; :meth:`enqueue` adds the step's keys after the optimiser step. Inputs as in
    :func:`dscl_per_anchor`. Buffers: ``queue`` (K, D), ``queue_labels`` (K,), ``queue_ptr`` (next row written),
    ``queue_filled`` (rows holding real keys).
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        queue_size: int,
        *,
        beta: float = 8.0,
        temperature: float = 0.07,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        _check_beta(beta)
        check_temperature(temperature)
        if num_classes < 1 or dim < 1 or queue_size < 1:
            raise ValueError(f"num_classes, dim and queue_size must be >= 1, got {num_classes}, {dim}, {queue_size}.")
        self.num_classes, self.beta, self.temperature = num_classes, float(beta), float(temperature)
        self.gather_distributed = bool(gather_distributed)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_labels", torch.randint(0, num_classes, (queue_size,)))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.int64))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.int64))

    def extra_repr(self) -> str:
        k, d = self.queue.shape
        return f"num_classes={self.num_classes}, dim={d}, queue_size={k}, beta={self.beta}, tau={self.temperature}"

    def _check(self, features: Tensor, name: str) -> None:
        if not isinstance(features, Tensor) or features.dim() != 2 or features.shape[1] != self.queue.shape[1]:
            raise ValueError(
                f"{name} must be a 2-D tensor (N, {self.queue.shape[1]}), got {getattr(features, 'shape', features)}."
            )

    def forward(self, queries: Tensor, keys: Tensor, labels: Tensor) -> DSCLTerms:
        self._check(queries, "queries")
        self._check(keys, "keys")
        if keys.shape != queries.shape:
            raise ValueError(f"keys must have the queries' shape {tuple(queries.shape)}, got {tuple(keys.shape)}.")
        check_labels(labels, queries.shape[0], self.num_classes, sync=False)
        terms = dscl_per_anchor(
            queries, keys.detach(), labels, self.queue, self.queue_labels, beta=self.beta, temperature=self.temperature
        )
        every = torch.ones_like(terms.view, dtype=torch.bool)
        return DSCLTerms(global_mean(terms.view, every), global_mean(terms.klass, every))

    def distillation(self, students: Sequence[Tensor], teachers: Sequence[Tensor], keys: Tensor) -> Tensor:
        """PBSD against this process's keys and the queue; the global mean over anchors under DDP."""
        for tensor in (*students, *teachers):
            self._check(tensor, "patch features")
        per_anchor = pbsd_per_anchor(students, teachers, keys.detach(), self.queue, temperature=self.temperature)
        return global_mean(per_anchor, torch.ones_like(per_anchor, dtype=torch.bool))

    @torch.no_grad()
    def enqueue(self, keys: Tensor, labels: Tensor) -> None:
        """Writes the step's keys (the global batch's under DDP) over the oldest rows of the queue."""
        keys, labels = keys.detach(), labels.detach()
        if self.gather_distributed:
            keys, labels = gather_equal_rows(keys), gather_equal_rows(labels)
        size = self.queue.shape[0]
        if keys.shape[0] > size:
            raise ValueError(f"A batch of {keys.shape[0]} keys does not fit a queue of {size}.")
        rows = (self.queue_ptr + torch.arange(keys.shape[0], device=self.queue.device)) % size
        self.queue.index_copy_(0, rows, keys.to(self.queue.dtype))
        self.queue_labels.index_copy_(0, rows, labels.to(self.queue_labels.device))
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)
        self.queue_filled.copy_(torch.clamp(self.queue_filled + keys.shape[0], max=size))

    def fill(self) -> Tensor:
        """The fraction of the queue holding real keys (the rest is the random start)."""
        return self.queue_filled.to(torch.float64) / self.queue.shape[0]
