"""GMLLoss: GML, mutual information maximisation between latent features and ground-truth labels (Suh and Seo, ICML
2023), as its authors run it (bluecdm/Long-tailed-recognition).

GML reads the classifier and a queue of past keys as two estimates of ``p(y | x)``, both corrected by the training
prior ``pi`` (logit adjustment). The contrastive one is a Gaussian-mixture likelihood: class ``c`` is the mixture of
von Mises-Fisher kernels centred on the queue's keys of class ``c``, so its log-likelihood is the log-mean-exp of the
query's similarities to those keys.

With ``q_i`` the L2-normalised query of anchor i, ``k_j`` the L2-normalised keys of the queue (labels ``l_j``),
``K_c = {j : l_j = c}``, ``T`` the learned temperature, ``l_i`` the classifier's logits (already divided by the
classifier temperature ``T_s``: a cosine classifier with scale ``1 / T_s``) and ``t_i`` the key encoder's logits::

    S_ic(T, E) = log( 1/|K_c \\ E_i| * sum_{j in K_c \\ E_i} exp(q_i . k_j / T) )      (log-mean-exp per class)
    L_sup  = CE(l_i + log pi, y_i)
    L_con  = CE(S_i(sg[T], {}) + log pi, y_i)                  gradient to the query and the keys only
    L_conT = CE(sg[S_i](T, own_i) + log pi, y_i)                gradient to the temperature only
    L_kd   = t^2 * KL(softmax(t_i / t) || softmax(l_i / t))     (t = 4)
    L      = gamma * L_sup + beta * (L_con + L_conT) + alpha * L_kd,   every term a mean over the anchors

(``sg``: stop-gradient; ``own_i``: the keys that came from anchor i's own image, its key view of this step.)

The queue (:class:`ltcl.losses.gml_queue.ClassQueue`) is split into one ring buffer per class, each class's share
following the training prior; it holds backbone features, which the key head maps to keys at every step.

Where the public code (losses.py ``GMLLoss``, moco/builder.py ``MoCo``, main.py / cifar_main.py) and this module
differ:

- Own keys. The code drops from ``L_conT`` every queue entry whose dataset index is the anchor's (the key view of
  this step and any older key of the same image still queued). No image index reaches an ltcl objective, so the
  queue labels each entry with the step's global row instead: ``L_conT`` drops the anchor's key of this step, not a
  key of the same image from an earlier epoch. ``L_conT`` trains the temperature only.
- Empty classes. A class with no key left (``|K_c \\ E_i| = 0``, only when a segment has one slot and holds the
  anchor's own key) gives 0/0 = NaN in the code; here it is left out of that anchor's softmax, and an anchor whose
  own class is empty is left out of the mean of ``L_conT``.
- Stability. The code subtracts the row maximum before ``exp``; a class whose keys all lie ~88 below it (reachable
  when the learned temperature falls under ~0.02) underflows to ``log 0``. Here each class subtracts its own maximum.
- Segments in float64 (the code: float32, whose cumulative prior can end just above 1 and push the last segment one
  slot past the queue); the last segment ends at the queue's end.
- The code's ``base_k = 0`` falls back to one FIFO queue with random initial labels, where an absent class gives
  NaN; none of the authors' scripts uses it and it is not offered (``base_k >= 1``).
- Under ``gather_distributed`` the global batch is enqueued on every process (``ltcl.dist.gather_equal_rows``) and
  each term is the global-batch mean (``ltcl.dist.global_mean``), as the code under DDP (``concat_all_gather``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltcl.dist import global_mean
from ltcl.losses.validation import check_class_counts, check_labels, check_temperature, compute_dtype

__all__ = ["GMLLoss", "class_log_mean_exp", "gml_terms"]


def class_log_mean_exp(sim: Tensor, key_labels: Tensor, num_classes: int, keep: Tensor | None = None) -> Tensor:
    """``log(mean_{j in K_c} exp(sim_ij))`` for every anchor i and class c, over the keys ``keep`` allows.

    Args:
        sim: (A, K) similarities (already divided by the temperature).
        key_labels: (K,) int64 class of each key.
        keep: (A, K) bool, the keys each anchor may use; None: all.

    Returns:
        (A, C); -inf for a class with no usable key. Each class subtracts its own maximum before ``exp``; the
        per-class sums are one matrix product with the keys' one-hot labels (deterministic on every device).
    """
    a = sim.shape[0]
    index = key_labels[None, :].expand(a, -1)
    masked = sim if keep is None else sim.masked_fill(~keep, -math.inf)
    peak = sim.new_full((a, num_classes), -math.inf).scatter_reduce(1, index, masked.detach(), "amax")
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    weights = (masked - peak.gather(1, index)).exp()  # 0 where not kept
    one_hot = F.one_hot(key_labels, num_classes).to(sim.dtype)
    sums = weights @ one_hot
    counts = one_hot.sum(0).expand(a, -1) if keep is None else keep.to(sim.dtype) @ one_hot
    present = counts > 0
    ones = torch.ones_like(sums)
    value = torch.where(present, sums, ones).log() - torch.where(present, counts, ones).log() + peak
    return torch.where(present, value, torch.full_like(value, -math.inf))


def _cross_entropy(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row ``logsumexp(scores) - scores[y]`` and whether the target is finite (rows with a -inf target: 0)."""
    own = scores.gather(1, labels[:, None]).squeeze(1)
    valid = torch.isfinite(own)
    loss = torch.logsumexp(scores, dim=1) - torch.where(valid, own, torch.zeros_like(own))
    return torch.where(valid, loss, torch.zeros_like(loss)), valid


def gml_terms(
    queries: Tensor,
    labels: Tensor,
    query_ids: Tensor,
    keys: Tensor,
    key_labels: Tensor,
    key_ids: Tensor,
    logits: Tensor,
    log_prior: Tensor,
    log_temperature: Tensor,
    teacher_logits: Tensor | None = None,
    distill_temperature: float = 4.0,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Per-anchor terms of GML (module docstring); no value checks, no host synchronisation.

    Args:
        queries: (A, D) L2-normalised query projections of the anchors.
        labels: (A,) int64.
        query_ids: (A,) the row number of each anchor's own key (``ClassQueue.enqueue``).
        keys: (K, D) L2-normalised keys; key_labels: (K,); key_ids: (K,) their row numbers.
        logits: (A, C) classifier logits, already divided by the classifier temperature.
        log_prior: (C,) ``log pi``.
        log_temperature: 0-d or (1,) ``log T``, learned.
        teacher_logits: (A, C) the key encoder's logits of the same view, or None (no ``kd`` term).

    Returns:
        ``{"sup" | "con" | "con_t" | "kd": (per-anchor loss (A,), valid (A,) bool)}``.
    """
    num_classes = logits.shape[1]
    dtype = torch.promote_types(compute_dtype(queries), compute_dtype(logits))
    with torch.autocast(device_type=queries.device.type, enabled=False):
        prior = log_prior.to(device=logits.device, dtype=dtype)
        temperature = log_temperature.to(dtype).exp().reshape(())
        dots = queries.to(dtype) @ keys.to(dtype).T  # (A, K)
        terms = {"sup": _cross_entropy(logits.to(dtype) + prior, labels)}
        mixture = class_log_mean_exp(dots / temperature.detach(), key_labels, num_classes)
        terms["con"] = _cross_entropy(mixture + prior, labels)
        not_own = query_ids[:, None] != key_ids[None, :]
        mixture_t = class_log_mean_exp(dots.detach() / temperature, key_labels, num_classes, not_own)
        terms["con_t"] = _cross_entropy(mixture_t + prior, labels)
        if teacher_logits is not None:
            t = float(distill_temperature)
            target = F.softmax(teacher_logits.detach().to(dtype) / t, dim=1)
            log_student = F.log_softmax(logits.to(dtype) / t, dim=1)
            kd = (torch.xlogy(target, target) - target * log_student).sum(1) * t**2
            terms["kd"] = (kd, torch.ones_like(labels, dtype=torch.bool))
    return terms


class GMLLoss(nn.Module):
    """GML's objective on one step (equations and code differences in the module docstring).

    Args:
        class_counts: (C,) training images per class: the prior of the logit adjustment.
        temperature: initial ``T`` of the query-key similarities (learned as ``log T``; 0.1 in cifar_main.py, 0.07
            in the ImageNet-LT script).
        gamma: weight of the logit-adjusted cross-entropy ``L_sup``.
        beta: weight of the contrastive pair ``L_con + L_conT`` (with 0 the temperature does not train).
        alpha: weight of the distillation ``L_kd`` from the key encoder's logits (0: no ``kd`` term).
        distill_temperature: softmax temperature of ``L_kd`` (4 in the code's ``DistillKL``).
        gather_distributed: under torch.distributed, each term is the mean over the global batch (the queries
            are this process's rows; the keys are the same on every process).

    ``forward(queries, labels, query_ids, keys, key_labels, key_ids, logits, teacher_logits=None)`` returns
    ``(loss, parts)``: parts ``loss_sup``, ``loss_con``, ``loss_con_t`` (and ``loss_kd`` when alpha > 0), detached.
    """

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor,
        *,
        temperature: float = 0.1,
        gamma: float = 1.0,
        beta: float = 1.0,
        alpha: float = 0.0,
        distill_temperature: float = 4.0,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        counts = check_class_counts(class_counts)
        check_temperature(temperature)
        check_temperature(distill_temperature)
        for name, value in (("gamma", gamma), ("beta", beta), ("alpha", alpha)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
        self.num_classes = counts.numel()
        self.gamma, self.beta, self.alpha = float(gamma), float(beta), float(alpha)
        self.distill_temperature = float(distill_temperature)
        self.gather_distributed = bool(gather_distributed)
        # The code keeps log T as a (1,) parameter without weight decay; it trains only through L_conT (beta > 0).
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)), requires_grad=beta > 0)
        self.register_buffer("log_prior", (counts / counts.sum()).log())

    @property
    def temperature(self) -> Tensor:
        return self.log_temperature.detach().exp()

    @property
    def part_names(self) -> tuple[str, ...]:
        return ("loss_sup", "loss_con", "loss_con_t") + (("loss_kd",) if self.alpha > 0 else ())

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, gamma={self.gamma}, beta={self.beta}, alpha={self.alpha}, "
            f"distill_temperature={self.distill_temperature}, gather_distributed={self.gather_distributed}"
        )

    def forward(
        self,
        queries: Tensor,
        labels: Tensor,
        query_ids: Tensor,
        keys: Tensor,
        key_labels: Tensor,
        key_ids: Tensor,
        logits: Tensor,
        teacher_logits: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        for name, tensor in (("queries", queries), ("keys", keys), ("logits", logits)):
            if not isinstance(tensor, Tensor) or tensor.dim() != 2:
                raise ValueError(f"{name} must be a 2-D tensor, got {getattr(tensor, 'shape', tensor)}.")
        a = queries.shape[0]
        if logits.shape != (a, self.num_classes):
            raise ValueError(f"logits must have shape ({a}, {self.num_classes}), got {tuple(logits.shape)}.")
        if keys.shape[1] != queries.shape[1]:
            raise ValueError(f"keys have {keys.shape[1]} dimensions but queries have {queries.shape[1]}.")
        if self.alpha > 0 and (teacher_logits is None or teacher_logits.shape != logits.shape):
            raise ValueError(f"alpha > 0 needs teacher_logits of shape {tuple(logits.shape)}.")
        check_labels(labels, a, self.num_classes, sync=False)
        check_labels(key_labels, keys.shape[0], self.num_classes, name="key_labels", sync=False)
        if query_ids.shape != (a,) or key_ids.shape != (keys.shape[0],):
            raise ValueError("query_ids and key_ids must have one entry per query and per key.")
        terms = gml_terms(
            queries,
            labels,
            query_ids,
            keys,
            key_labels,
            key_ids,
            logits,
            self.log_prior,
            self.log_temperature,
            teacher_logits if self.alpha > 0 else None,
            self.distill_temperature,
        )
        means = {name: self._mean(*terms[name]) for name in terms}
        loss = self.gamma * means["sup"]
        if self.beta > 0:
            loss = loss + self.beta * (means["con"] + means["con_t"])
        if self.alpha > 0:
            loss = loss + self.alpha * means["kd"]
        return loss, {f"loss_{name}": value.detach() for name, value in means.items()}

    def _mean(self, per_anchor: Tensor, valid: Tensor) -> Tensor:
        if self.gather_distributed:
            return global_mean(per_anchor, valid)
        return per_anchor.sum() / valid.sum().clamp(min=1)
