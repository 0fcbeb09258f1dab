"""LADE: label distribution disentangling (Hong et al., CVPR 2021).

The classifier's logits ``f(x)`` are trained to carry no training prior, so that any test prior can be put back:

- LADE-CE (the authors' ``PriorCELoss``): cross-entropy on ``f(x) + log p_s(y)``, ``p_s`` the training prior.
- The LADE regulariser: for each class ``c`` a Donsker-Varadhan estimate of ``log p_u(x|c) / p(x)`` (``p_u`` the
  uniform prior) from the batch, regularised as in ReMINE, weighted by ``p_s(c)`` and maximised::

      first_c  = mean over the rows i of class c of f_c(x_i)                 (0 when c has no row in the batch)
      second_c = log( (1/N) sum_{all rows i} exp(f_c(x_i) - log p_s(c) + log (1/C)) )
      L_LADE   = - sum_c p_s(c) (first_c - second_c - lambda second_c^2)

- ``loss = LADE-CE + alpha * L_LADE``.
- At test time the logits get the test prior back: ``f(x) + log p_t(y)``, a constant for a balanced test set.

Same as hyperconnect/LADE (``loss/PriorCELoss.py``; ``loss/LADELoss.py`` lines 29-53; ``run_networks.py``
lines 268-280 join them) except:

- no ``+ 1e-9`` inside ``log(prior)`` and no ``+ 1e-8`` in the class counts' denominator: the counts are checked
  positive, and a class without rows gives ``0`` exactly as theirs does (the difference is below 1e-7 in the loss);
- under ``torch.distributed`` (``gather_distributed``) the regulariser's batch is the global batch, gathered with
  its gradient: the authors' ``nn.DataParallel`` computed it on the whole batch too.

The batch statistics make the regulariser depend on which rows share a batch; with several views it sees all of
them as one batch (rows of one image are counted once per view).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltcl.dist import gather_rows
from ltcl.losses.validation import check_class_counts, check_labels, check_logits, compute_dtype


def lade_regularizer(logits: Tensor, labels: Tensor, log_prior: Tensor, remine_lambda: float) -> Tensor:
    """``L_LADE`` of the module docstring in at least float32, without input checks (the training path).

    Args:
        logits: (N, C) the classifier's raw logits; labels: (N,) int64 in [0, C);
        log_prior: (C,) ``log p_s(c)``; remine_lambda: lambda >= 0 of the ReMINE term.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        x = logits.to(compute_dtype(logits))
        rows, num_classes = x.shape
        log_prior = log_prior.to(device=x.device, dtype=x.dtype)
        member = (labels[:, None] == torch.arange(num_classes, device=x.device)).to(x.dtype)  # (N, C), no sync
        first = (x * member).sum(0) / member.sum(0).clamp(min=1.0)
        second = torch.logsumexp(x - log_prior - math.log(num_classes), 0) - math.log(rows)
        estimate = first - second - remine_lambda * second.square()
        return -(log_prior.exp() * estimate).sum()


def _check_weights(alpha: float, remine_lambda: float) -> None:
    for name, value in (("alpha", alpha), ("remine_lambda", remine_lambda)):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < float("inf")):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")


def lade_loss(
    logits: Tensor,
    labels: Tensor,
    class_counts: Sequence[int] | Tensor,
    *,
    alpha: float = 0.1,
    remine_lambda: float = 0.1,
) -> Tensor:
    """LADE-CE plus ``alpha`` times the LADE regulariser (module docstring), validating every input.

    Args:
        logits: (N, C) float; labels: (N,) int64 in [0, C); class_counts: (C,) positive training counts;
        alpha: weight of the regulariser; remine_lambda: lambda of its ReMINE term.
    """
    counts = check_class_counts(class_counts)
    check_logits(logits, labels, counts.numel())
    _check_weights(alpha, remine_lambda)
    if logits.shape[0] == 0 or not bool(torch.isfinite(logits).all()):
        raise ValueError("logits must have at least one row and contain no NaN or inf values.")
    log_prior = (counts / counts.sum()).log()
    with torch.autocast(device_type=logits.device.type, enabled=False):
        x = logits.to(compute_dtype(logits))
        ce = F.cross_entropy(x + log_prior.to(device=x.device, dtype=x.dtype), labels)
    return ce + alpha * lade_regularizer(logits, labels, log_prior, float(remine_lambda))


class LADELoss(nn.Module):
    """LADE-CE + ``alpha`` * LADE regulariser (equations in the module docstring).

    Args:
        class_counts: (C,) training images per class (all positive).
        alpha: weight of the regulariser (the authors' ``RouteWeightLoss`` weight, ``--alpha``).
        remine_lambda: lambda of the ReMINE term (``--remine_lambda``).
        gather_distributed: under ``torch.distributed``, the regulariser's batch statistics are those of the global
            batch (every rank's rows, gathered with their gradient); the cross-entropy stays a per-row mean.

    Buffers: ``log_prior`` (C,) float64 ``log p_s``.

    ``forward(logits, labels)`` takes (N, C) raw logits and (N,) int64 labels and returns the scalar loss;
    :meth:`terms` returns (loss, LADE-CE, regulariser).
    """

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor,
        *,
        alpha: float = 0.1,
        remine_lambda: float = 0.1,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        counts = check_class_counts(class_counts)
        _check_weights(alpha, remine_lambda)
        self.num_classes = counts.numel()
        self.alpha, self.remine_lambda = float(alpha), float(remine_lambda)
        self.gather_distributed = gather_distributed
        self.register_buffer("log_prior", (counts / counts.sum()).log())

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, alpha={self.alpha}, remine_lambda={self.remine_lambda}"

    def terms(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must have shape (N, {self.num_classes}), got {getattr(logits, 'shape', logits)}.")
        check_labels(labels, logits.shape[0], self.num_classes, sync=False)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            x = logits.to(compute_dtype(logits))
            ce = F.cross_entropy(x + self.log_prior.to(x.dtype), labels)
            if self.gather_distributed:
                x, labels, _ = gather_rows(x, labels)
            regularizer = lade_regularizer(x, labels, self.log_prior, self.remine_lambda)
        return ce + self.alpha * regularizer, ce, regularizer

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return self.terms(logits, labels)[0]
