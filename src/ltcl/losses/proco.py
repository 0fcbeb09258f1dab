"""ProCoLoss: probabilistic contrastive learning (Du et al., TPAMI 2024), with its Bessel functions.

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

The Bessel functions (``bessel``, ``"exact"`` by default):

- ``"exact"``: ``B`` and ``A_p`` to float64 precision for every dimension p >= 2 and every ``k >= 0`` (``k = 0``
  included): Debye's uniform asymptotic expansion of ``I_nu(nu z)`` with 10 correction terms at an order
  ``nu >= 20`` (error below 1e-15 against mpmath there), written so that nothing cancels (``B`` without the
  ``log k`` term, the ratio from the difference of two expansions taken term by term); for ``p/2 - 1 < 20`` the
  order is raised by whole steps and brought back down by the recurrence ``I_{k-1} = I_{k+1} + (2k/x) I_k``,
  which is stable downwards. Against mpmath for p = 2 .. 1024 and k = 0 .. 1e5: ``B`` within 2e-14 of
  ``max(1, |B|)``, ``A_p`` within 1e-14 relative. Float32 inputs are computed in float64 and rounded once. The
  derivative ``A_p`` is below 1 by construction; it is clipped at 1 in the backward pass all the same, as the code
  does.
- ``"authors"``: the code's routine (``miller_recurrence``): the recurrence run down from the trial values
  ``I_{p-2} = 1, I_{p-1} = 0`` (twice the order, whatever k), normalised by ``I_0`` (``i0e``); the ratio it gives
  is clipped at 1 in the backward pass. It is written here in ratio form (the code rescales the unnormalised
  values whenever they overflow): the same numbers up to rounding. Defined for even p >= 4, as in the code.
  Starting at order ``p - 2`` is accurate while ``k`` stays well below that order and departs from the exact
  values above it. Measured at p = 128 (tests/methods/test_proco.py): ``B`` and ``A_p`` agree with the exact ones
  to 1e-13 up to k = 300; at k = 1e3 the routine's ratio is 0.938495 (exact 0.938484), at 2e3 0.973347 (exact
  0.968746), at 3e3 1.0144 (exact 0.979054), at 1e4 1.836 (exact 0.993670), at 1e5 16.47 (exact 0.999365); its
  ``B`` is off by -0.53 at 1e4 and -2.78 at 1e5, but slowly enough in k that the contrastive logits
  ``B(k~) - B(k)`` (``|k~ - k| <= 1/tau``) stay within 7.8e-4 of the exact ones at tau = 0.1 (1.1e-3 at
  tau = 0.07). With the clip at 1, the code's derivative of a logit is too large by up to 2.4% (at k~ = 2.7e3; 0.5%
  at 2e3, 0.6% at 1e4, 0.06% at 1e5). At p = 1024 (ImageNet-LT) the two agree to
  1e-11 up to k = 3e4; at 1e5 the ratio is 0.995675 against 0.994898 (logits within 5e-7).
  ltcl's default follows the exact value (the paper's equations); ``bessel: authors`` reproduces the code: against
  the code itself, run on the CPU in float64 with the same inputs and estimates, the whole objective and its
  gradients agree to 5e-14 (the exact default: 1e-7 in the loss, 1e-5 in the projections' gradients).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltcl.dist import gather_equal_rows, global_mean
from ltcl.losses.validation import check_class_counts, check_labels, check_temperature

BESSEL_METHODS = ("exact", "authors")
DEBYE_TERMS = 10  # correction terms u_1 .. u_10 of the uniform asymptotic expansion
DEBYE_MIN_ORDER = 20  # with 10 terms the expansion is exact to float64 from this order on (measured against mpmath)
INITIAL_LENGTH = 0.9  # length of the initial mean of a class not yet seen (the code's ``* 0.9``)
_INITIAL_SEED = 20240  # the initial means are drawn from (this + epoch): identical on every process and on resume


def _debye_polynomials(terms: int) -> list[list[float]]:
    """Debye's polynomials ``u_k(t) = t^k P_k(t^2)``: the coefficients of ``P_k`` (ascending powers of ``t^2``).

    From ``u_0 = 1`` and ``u_{k+1}(t) = t^2 (1 - t^2) u_k'(t) / 2 + int_0^t (1 - 5 s^2) u_k(s) ds / 8``
    (DLMF 10.41.9), in exact rational arithmetic.
    """
    polys = [[Fraction(1)]]  # u_k as coefficients of ascending powers of t
    for _ in range(terms):
        u = polys[-1]
        nxt = [Fraction(0)] * (len(u) + 3)
        for power, c in enumerate(u):
            if power:  # t^2 (1 - t^2) / 2 * power * c * t^(power - 1)
                nxt[power + 1] += c * power / 2
                nxt[power + 3] -= c * power / 2
            nxt[power + 1] += c / (8 * (power + 1))  # the integral of (1 - 5 s^2) c s^power / 8
            nxt[power + 3] -= 5 * c / (8 * (power + 3))
        polys.append(nxt)
    # u_k has the powers t^k, t^(k+2), ..., t^(3k): keep those, as a polynomial in t^2.
    return [[float(u[k + 2 * j]) for j in range(k + 1)] for k, u in enumerate(polys)]


_DEBYE = _debye_polynomials(DEBYE_TERMS)


def _poly(coefficients: list[float], y: Tensor) -> Tensor:
    out = torch.full_like(y, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        out = out * y + c
    return out


def _debye_sum(order: float, t: Tensor) -> Tensor:
    """``sum_k u_k(t) / order^k``, Horner in ``t / order``."""
    y, w = t * t, t / order
    out = _poly(_DEBYE[-1], y)
    for coefficients in reversed(_DEBYE[:-1]):
        out = _poly(coefficients, y) + w * out
    return out


def _debye_log_term(order: float, x: Tensor) -> Tensor:
    """``log I_a(x) - a log x`` for ``a >= DEBYE_MIN_ORDER`` and ``x >= 0`` (float64), without the ``log x`` terms:
    with ``q = sqrt(a^2 + x^2)``, ``q - a log(a + q) - log(q) / 2 - log(2 pi) / 2 + log(sum_k u_k(a / q) / a^k)``."""
    q = torch.sqrt(order * order + x * x)
    return (
        q
        - order * torch.log(order + q)
        - 0.5 * torch.log(q)
        - 0.5 * math.log(2 * math.pi)
        + torch.log(_debye_sum(order, order / q))
    )


def _debye_ratio(order: float, x: Tensor) -> Tensor:
    """``I_{a+1}(x) / I_a(x)`` from the two expansions, their difference taken term by term (nothing cancels)."""
    q0 = torch.sqrt(order * order + x * x)
    q1 = torch.sqrt((order + 1) ** 2 + x * x)
    dq = (2 * order + 1) / (q0 + q1)  # q1 - q0
    log_rest = (
        dq
        - order * torch.log1p((1 + dq) / (order + q0))
        - 0.5 * torch.log1p(dq / q0)
        + torch.log(_debye_sum(order + 1, (order + 1) / q1))
        - torch.log(_debye_sum(order, order / q0))
    )
    return x / (order + 1 + q1) * torch.exp(log_rest)


def _exact(order: float, x: Tensor) -> tuple[Tensor, Tensor]:
    """(``log I_order(x) - order log x``, ``I_{order+1}(x) / I_order(x)``) in float64 for ``order >= 0``, ``x >= 0``."""
    shift = max(0, math.ceil(DEBYE_MIN_ORDER - order))
    top = order + shift
    value, ratio = _debye_log_term(top, x), _debye_ratio(top, x)
    for step in range(shift):  # from (B_k, r_k) to (B_{k-1}, r_{k-1}), k = top .. order + 1
        k = top - step
        d = 2 * k + x * ratio
        value = value + torch.log(d)
        ratio = x / d
    return value, ratio


def _authors(order: float, x: Tensor) -> tuple[Tensor, Tensor]:
    """The public code's Miller recurrence (module docstring), in ratio form: ``s_i`` stands for ``I_{i+1} / I_i``,
    0 at order ``2 n``; ``log I_n - n log x = log i0e(x) + x - sum_{i=1}^{n} log(2i + x s_i)``."""
    n = int(order)
    s = torch.zeros_like(x)
    log_sum = torch.zeros_like(x)
    ratio = s
    for i in range(2 * n, 0, -1):
        d = 2 * i + x * s
        if i <= n:
            log_sum = log_sum + torch.log(d)
        s = x / d
        if i - 1 == n:
            ratio = s
    return torch.log(torch.special.i0e(x)) + x - log_sum, ratio


def _order(dim: int, method: str) -> float:
    if method not in BESSEL_METHODS:
        raise ValueError(f"bessel must be one of {', '.join(BESSEL_METHODS)}, got {method!r}.")
    if not isinstance(dim, int) or dim < 2:
        raise ValueError(f"The vMF dimension p must be an integer >= 2, got {dim!r}.")
    if method == "authors" and (dim % 2 or dim < 4):
        raise ValueError(f"bessel 'authors' (the code's Miller recurrence) needs an even dimension p >= 4, got {dim}.")
    return dim / 2 - 1


def _evaluate(kappa: Tensor, dim: int, method: str) -> tuple[Tensor, Tensor]:
    order = _order(dim, method)
    with torch.autocast(device_type=kappa.device.type, enabled=False):
        return (_exact if method == "exact" else _authors)(order, kappa.detach().to(torch.float64))


class _BesselLogTerm(torch.autograd.Function):
    """``B(k)`` forward, ``min(A_p(k), 1)`` as its derivative (the code's clip)."""

    @staticmethod
    def forward(ctx, kappa: Tensor, dim: int, method: str) -> Tensor:
        value, ratio = _evaluate(kappa, dim, method)
        ctx.save_for_backward(ratio.clamp(max=1.0))
        return value.to(kappa.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (ratio,) = ctx.saved_tensors
        return grad * ratio.to(grad.dtype), None, None


def bessel_log_term(kappa: Tensor, dim: int, method: str = "exact") -> Tensor:
    """``B(k) = log I_{p/2-1}(k) - (p/2-1) log k``, the part of ``-log C_p(k)`` that depends on ``k``.

    Args:
        kappa: (...) concentrations ``k >= 0`` (float32 or float64; computed in float64, returned in its dtype).
        dim: p, the dimension of the space holding the unit sphere (the projection size).
        method: ``"exact"`` or ``"authors"`` (module docstring).

    Differentiable: ``dB/dk = A_p(k)``, clipped at 1.
    """
    return _BesselLogTerm.apply(kappa, dim, method)


def bessel_ratio(kappa: Tensor, dim: int, method: str = "exact") -> Tensor:
    """``A_p(k) = I_{p/2}(k) / I_{p/2-1}(k)`` (unclipped; no gradient), in ``kappa``'s dtype."""
    return _evaluate(kappa, dim, method)[1].to(kappa.dtype)


def vmf_log_normalizer(kappa: Tensor, dim: int, method: str = "exact") -> Tensor:
    """``log C_p(k) = (p/2-1) log k - (p/2) log(2 pi) - log I_{p/2-1}(k)`` of the vMF density on ``S^{p-1}``."""
    return -bessel_log_term(kappa, dim, method) - 0.5 * dim * math.log(2 * math.pi)


def vmf_concentration(length: Tensor, dim: int, max_kappa: float) -> Tensor:
    """The code's ``kappa = p R / (1 - R^2)`` from the mean's length R, clipped to ``max_kappa`` (and ``max_kappa``
    for ``R >= 1``, where the formula gives inf or a negative number)."""
    kappa = dim * length / (1 - length * length)
    return torch.where((kappa > max_kappa) | (kappa < 0) | kappa.isnan(), torch.full_like(kappa, max_kappa), kappa)


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
