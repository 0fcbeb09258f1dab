"""ProCo's von Mises-Fisher maths: the Bessel-function terms of the vMF normaliser (:func:`bessel_log_term`, its
derivative :func:`bessel_ratio`), the normaliser itself (:func:`vmf_log_normalizer`) and the concentration of a
class mean (:func:`vmf_concentration`). Notation as in :mod:`ltcl.losses.proco`: ``B(k) = log I_{p/2-1}(k) -
(p/2-1) log k`` and ``A_p(k) = dB/dk = I_{p/2}(k) / I_{p/2-1}(k)``.

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
from fractions import Fraction

import torch
from torch import Tensor

BESSEL_METHODS = ("exact", "authors")
DEBYE_TERMS = 10  # correction terms u_1 .. u_10 of the uniform asymptotic expansion
DEBYE_MIN_ORDER = 20  # with 10 terms the expansion is exact to float64 from this order on (measured against mpmath)


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
