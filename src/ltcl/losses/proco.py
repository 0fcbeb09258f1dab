"""ProCoLoss: probabilistic contrastive learning (Du et al., TPAMI 2024).

ProCo models the L2-normalised projections of class ``j`` as a von Mises-Fisher distribution on the unit sphere
``S^{p-1}``, with mean direction ``mu_j`` and concentration ``kappa_j``, estimated online from the first moment of
the features: the running mean ``m_j`` of class j's projections gives ``mu_j = m_j / |m_j|`` and, with
``R_j = |m_j|``, ``kappa_j = p R_j / (1 - R_j^2)``. Contrasting an anchor ``z`` against infinitely many samples of
every class has a closed form: ``E_{x ~ vMF(mu_j, kappa_j)} exp(z . x / tau) = C_p(kappa_j) / C_p(kappa~_ij)``
with ``kappa~_ij = |kappa_j mu_j + z_i / tau|`` and the vMF normaliser ``C_p(k) = k^{p/2-1} / ((2 pi)^{p/2}
I_{p/2-1}(k))``. The contrastive logit of anchor i for class j is its log::

    g_ij = log C_p(kappa_j) - log C_p(kappa~_ij) = B(kappa~_ij) - B(kappa_j),   B(k) = log I_{p/2-1}(k) - (p/2-1) log k

and the loss is the logit-adjusted cross-entropy on them, ``L_i = CE(g_i + tau_la * log prior, y_i)``: the
prior-weighted expectation over the classes of the paper, as the authors' code computes it (``LogitAdjust`` applied
to the contrastive logits). ``dB/dk = A_p(k) = I_{p/2}(k) / I_{p/2-1}(k)``, the Bessel-function ratio.

The estimates (public code: LeapLabTHU/ProCo, ``ProCo_cifar/loss/proco.py``, commit af9e78e, ``EstimatorCV`` and
``ProCoLoss``; the ImageNet copy in ``ProCo/loss/proco.py`` is the same file):

- Two estimates are kept, each a per-class running mean of the projections with its count. The one the loss reads
  (``mean``, the code's ``estimator_old``) and this epoch's (``epoch_mean``, the code's ``estimator``) are both
  updated with every batch; at the start of each epoch the first takes over the second's values and the second
  starts afresh (``_hook_before_epoch``). So the loss reads the mean over the previous epoch and this epoch so far.
- The batch update of a class with ``n_c`` rows of batch mean ``b_c`` and running count ``N_c`` is
  ``m_c <- (1 - w) m_c + w b_c`` with ``w = n_c / (n_c + N_c)``: the exact mean of all the rows seen; a class
  never seen keeps its initial mean, a random direction of length 0.9 (``kappa = 90 p / 19``).
- The update comes before the logits of the same rows, and the two contrastive views are taken one after the
  other (update with view 2, logits of view 2, update with view 3, logits of view 3), as the code calls the loss
  once per view.
- ``kappa`` is clipped to ``max_kappa`` (1e5 in the code), and a mean of length >= 1 (rounding) gets ``max_kappa``.
  The code uses ``p R / (1 - R^2)``; Banerjee et al.'s approximation ``(p R - R^3) / (1 - R^2)`` is smaller by the
  factor ``1 - R^2 / p`` (under 1% for p >= 128). The code's form is followed.
- Under ``torch.distributed`` the estimates are updated with the GLOBAL batch (an all-gather without gradient, as
  the code's ``dist.all_gather``), so they stay identical on every process; the logits are those of the local rows,
  and the mean over rows is the global-batch mean (``ltcl.dist.global_mean``).

The Bessel functions and the vMF normaliser are in :mod:`ltcl.losses.proco_bessel`, with how they are computed
(``bessel``: ``"exact"`` by default, or the authors' ``"authors"``) and how far the two differ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltcl.dist import gather_equal_rows, global_mean
from ltcl.losses.proco_bessel import _order, bessel_log_term, vmf_concentration
from ltcl.losses.validation import check_class_counts, check_labels, check_temperature

INITIAL_LENGTH = 0.9  # length of the initial mean of a class not yet seen (the code's ``* 0.9``)
_INITIAL_SEED = 20240  # the initial means are drawn from (this + epoch): identical on every process and on resume


def proco_logits(
    features: Tensor, directions: Tensor, kappa: Tensor, temperature: float, method: str = "exact"
) -> Tensor:
    """Contrastive logits ``g_ij = B(kappa~_ij) - B(kappa_j)`` (module docstring), in float64.

    Args:
        features: (N, p) L2-normalised projections (any float dtype; the gradient flows to them).
        directions: (C, p) unit mean directions ``mu_j`` (no gradient).
        kappa: (C,) concentrations (no gradient).
        temperature: tau > 0.

    ``kappa~_ij^2 = kappa_j^2 + 2 kappa_j (mu_j . z_i) / tau + |z_i|^2 / tau^2``, the code's
    ``|kappa_j mu_j + z_i / tau|`` without the (N, C, p) tensor.
    """
    dim = features.shape[1]
    with torch.autocast(device_type=features.device.type, enabled=False):
        z = features.to(torch.float64)
        mu = directions.detach().to(torch.float64)
        k = kappa.detach().to(torch.float64)
        squared = k * k + (2.0 / temperature) * k * (z @ mu.T) + (z * z).sum(1, keepdim=True) / temperature**2
        tilde = squared.clamp(min=0.0).sqrt()
        return bessel_log_term(tilde, dim, method) - bessel_log_term(k, dim, method)


class ProCoLoss(nn.Module):
    """ProCo's contrastive loss with its per-class vMF estimates (module docstring).

    Args:
        class_counts: (C,) training images per class (the prior of the logit adjustment).
        dim: p, the projection size.
        temperature: tau of ``z / tau``.
        logit_adjust_tau: strength of the logit adjustment of the contrastive logits (1 in the code).
        max_kappa: the concentrations' ceiling (1e5 in the code).
        bessel: ``"exact"`` or ``"authors"``.
        gather_distributed: update the estimates with the global batch under torch.distributed.

    ``forward(features, labels)`` updates the estimates with the rows (no gradient), then returns the mean over the
    rows of ``CE(g_i + tau_la log prior, y_i)``. Buffers: ``mean``/``count`` (read by the loss), ``epoch_mean``/
    ``epoch_count`` (this epoch's), ``epoch`` (the last epoch begun), all in float64 (``epoch`` int64).
    """

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor,
        dim: int,
        temperature: float,
        *,
        logit_adjust_tau: float = 1.0,
        max_kappa: float = 1e5,
        bessel: str = "exact",
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        counts = check_class_counts(class_counts)
        check_temperature(temperature)
        _order(dim, bessel)
        if not (math.isfinite(max_kappa) and max_kappa > 0):
            raise ValueError(f"max_kappa must be a positive finite number, got {max_kappa!r}.")
        self.num_classes, self.dim = counts.numel(), dim
        self.temperature, self.max_kappa, self.bessel = float(temperature), float(max_kappa), bessel
        self.gather_distributed = gather_distributed
        self.register_buffer("adjustment", float(logit_adjust_tau) * (counts / counts.sum()).log())
        self.register_buffer("mean", self.initial_means(0))
        self.register_buffer("count", torch.zeros(self.num_classes, dtype=torch.float64))
        self.register_buffer("epoch_mean", self.initial_means(0))
        self.register_buffer("epoch_count", torch.zeros(self.num_classes, dtype=torch.float64))
        self.register_buffer("epoch", torch.tensor(-1, dtype=torch.int64))

    def initial_means(self, epoch: int) -> Tensor:
        """(C, p) random directions of length 0.9, the same for a given epoch on every process and every run."""
        g = torch.Generator().manual_seed(_INITIAL_SEED + epoch)
        return INITIAL_LENGTH * F.normalize(torch.randn(self.num_classes, self.dim, generator=g, dtype=torch.float64))

    @torch.no_grad()
    def begin_epoch(self, epoch: int) -> None:
        """The code's ``_hook_before_epoch``: the loss's estimate takes this epoch's, which starts afresh. Once per
        epoch: calling it again for the same epoch (a resumed run) changes nothing."""
        if epoch <= int(self.epoch):
            return
        self.mean.copy_(self.epoch_mean)
        self.count.copy_(self.epoch_count)
        self.epoch_mean.copy_(self.initial_means(epoch + 1))
        self.epoch_count.zero_()
        self.epoch.fill_(epoch)

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor) -> None:
        """Adds the rows (the global batch's under ``gather_distributed``) to both running means."""
        z = features.detach().to(torch.float64)
        if self.gather_distributed:
            z, labels = gather_equal_rows(z), gather_equal_rows(labels)
        sums = torch.zeros_like(self.mean).index_add_(0, labels, z)
        rows = torch.zeros_like(self.count).index_add_(0, labels, torch.ones_like(z[:, 0]))
        batch_mean = sums / rows.clamp(min=1.0)[:, None]
        for mean, count in ((self.mean, self.count), (self.epoch_mean, self.epoch_count)):
            weight = (rows / (rows + count).clamp(min=1.0))[:, None]  # 0 for a class not in the batch
            mean.mul_(1.0 - weight).add_(weight * batch_mean)
            count.add_(rows)

    def estimates(self) -> tuple[Tensor, Tensor]:
        """(C, p) mean directions and (C,) concentrations of the estimate the loss reads."""
        return F.normalize(self.mean, dim=1), vmf_concentration(self.mean.norm(dim=1), self.dim, self.max_kappa)

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        if not isinstance(features, Tensor) or features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must have shape (N, {self.dim}), got {getattr(features, 'shape', features)}.")
        check_labels(labels, features.shape[0], self.num_classes, sync=False)
        self.update(features, labels)
        directions, kappa = self.estimates()
        logits = proco_logits(features, directions, kappa, self.temperature, self.bessel)
        with torch.autocast(device_type=features.device.type, enabled=False):
            per_row = F.cross_entropy(logits + self.adjustment, labels, reduction="none")
        loss = global_mean(per_row, torch.ones_like(labels, dtype=torch.bool))
        return loss.to(torch.promote_types(features.dtype, torch.float32))
