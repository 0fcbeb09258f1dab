"""Batch-level mixing of a classification loss's inputs and labels: mixup, CutMix and Remix.

Each image ``i`` of a batch is mixed with its partner ``p(i)`` (a random permutation of the same batch), and the
loss on the mixed image is the interpolation of the loss on its two labels:

- **mixup** (Zhang et al., ICLR 2018): ``x~_i = lam * x_i + (1 - lam) * x_p(i)``, ``lam ~ Beta(alpha, alpha)``.
- **CutMix** (Yun et al., ICCV 2019): the box ``[top, bottom) x [left, right)`` of ``x_i`` is replaced by the
  same box of ``x_p(i)``; the box has sides ``int(side * sqrt(1 - lam))`` around a uniformly drawn centre, clipped
  to the image, and ``lam`` becomes the share of ``x_i`` that is left, ``1 - box area / image area``.
- **Remix** (Chou et al., ECCV 2020 workshops, Eq. 10): the images are mixed as by mixup, but the label weight of a
  pair moves to the minority class: ``lam_y = 0`` when ``n_i >= kappa * n_p(i)`` and ``lam < tau``; ``lam_y = 1``
  when ``kappa * n_i <= n_p(i)`` and ``1 - lam < tau``; ``lam_y = lam`` otherwise (``n`` the training images of
  the label's class).

The loss is ``lam * L(y) + (1 - lam) * L(y_p)`` with the classification loss ``L`` as it is, a batch mean (the
form of ``mixup_criterion`` in Zhang et al.'s and MiSLAS's code). Remix's weight is per pair, but takes only the
values 0, ``lam`` and 1, so for any batch-mean loss it is the same scalar interpolation of relabelled targets:
a pair whose weight is 0 gets its partner's label on both sides, a pair whose weight is 1 its own
(:func:`remix_targets`). Everything here runs on the images' device; the random draws (``lam``, the box, the
partner permutation) are made by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ltcl.losses.validation import check_labels


def _check_partner(images: Tensor, partner: Tensor) -> None:
    if partner.dim() != 1 or partner.shape[0] != images.shape[0] or partner.dtype != torch.int64:
        raise ValueError(
            f"partner must be a (B,) int64 permutation of the batch's {images.shape[0]} rows, got "
            f"{tuple(partner.shape)} {partner.dtype}."
        )


def _check_lambda(lam: float) -> None:
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"The mixing weight lam must be in [0, 1], got {lam}.")


def mix_images(images: Tensor, partner: Tensor, lam: float) -> Tensor:
    """mixup's images: ``lam * x + (1 - lam) * x[partner]``.

    Args:
        images: (B, ...) a batch (rows of several views: one row per (view, image), ``partner`` indexes rows).
        partner: (B,) int64, the row each row is mixed with.
        lam: the weight of the row itself, in [0, 1].
    """
    _check_partner(images, partner)
    _check_lambda(lam)
    return lam * images + (1.0 - lam) * images.index_select(0, partner)


def cutmix_box(height: int, width: int, lam: float, centre_row: int, centre_col: int) -> tuple[int, int, int, int]:
    """CutMix's box ``(top, bottom, left, right)``: sides ``int(side * sqrt(1 - lam))`` centred at
    ``(centre_row, centre_col)``, half of each side (rounded down) on either side of the centre, clipped to the
    image."""
    _check_lambda(lam)
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    clip = lambda v, side: min(max(v, 0), side)  # noqa: E731
    return (
        clip(centre_row - cut_h // 2, height),
        clip(centre_row + cut_h // 2, height),
        clip(centre_col - cut_w // 2, width),
        clip(centre_col + cut_w // 2, width),
    )


def box_share(box: tuple[int, int, int, int], height: int, width: int) -> float:
    """The share of the image a CutMix box leaves to the image itself: ``1 - box area / image area``."""
    top, bottom, left, right = box
    return 1.0 - (bottom - top) * (right - left) / (height * width)


def paste_box(images: Tensor, partner: Tensor, box: tuple[int, int, int, int]) -> Tensor:
    """CutMix's images: ``x`` with the box replaced by the same box of ``x[partner]``.

    Args:
        images: (B, channels, H, W).
        partner: (B,) int64, the row each row takes its box from.
        box: (top, bottom, left, right), from :func:`cutmix_box`.
    """
    _check_partner(images, partner)
    if images.dim() != 4:
        raise ValueError(f"paste_box expects images of shape (B, channels, H, W), got {tuple(images.shape)}.")
    top, bottom, left, right = box
    mixed = images.clone()
    mixed[:, :, top:bottom, left:right] = images[:, :, top:bottom, left:right].index_select(0, partner)
    return mixed


def remix_label_weights(
    labels: Tensor, partner_labels: Tensor, lam: float, class_counts: Tensor, *, kappa: float, tau: float
) -> Tensor:
    """Remix's label weight of every pair (Chou et al., Eq. 10): the weight of the image's own label.

    Args:
        labels: (B,) int64, the images' classes; partner_labels: (B,) their partners' classes.
        lam: the images' mixing weight.
        class_counts: (C,) training images per class (float).
        kappa: the count ratio from which a pair counts as imbalanced (>= 1).
        tau: the threshold below which the image's share of the mix gives its label weight to the minority class.

    Returns:
        (B,) float: 0, ``lam`` or 1. A pair that meets both conditions (possible only with ``kappa`` 1 and ``tau``
        above 0.5) gets 1, as in BagofTricks-LT, whose rule sets the second condition after the first.
    """
    _check_lambda(lam)
    check_labels(labels, labels.shape[0], class_counts.shape[0], sync=False)
    check_labels(partner_labels, labels.shape[0], class_counts.shape[0], "partner_labels", sync=False)
    to_partner, to_self = _remix_rules(labels, partner_labels, lam, class_counts, kappa, tau)
    weights = torch.full(labels.shape, lam, dtype=class_counts.dtype, device=labels.device)
    weights = torch.where(to_partner, 0.0, weights)
    return torch.where(to_self, 1.0, weights)


def _remix_rules(labels, partner_labels, lam, counts, kappa, tau) -> tuple[Tensor, Tensor]:
    """(B,) bool each: the pairs whose label weight goes wholly to the partner, and wholly to the image."""
    n_own, n_partner = counts.index_select(0, labels), counts.index_select(0, partner_labels)
    never = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    to_self = (kappa * n_own <= n_partner) if 1.0 - lam < tau else never
    to_partner = (n_own >= kappa * n_partner) & ~to_self if lam < tau else never
    return to_partner, to_self


def remix_targets(
    labels: Tensor, partner_labels: Tensor, lam: float, class_counts: Tensor, *, kappa: float, tau: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Remix's rule as two relabelled targets for the scalar interpolation ``lam * L(a) + (1 - lam) * L(b)``.

    A pair whose weight is 0 gets ``a = b = partner label``; a pair whose weight is 1 ``a = b = own label``; the
    others keep ``(own, partner)``. For a loss that is a mean over rows, ``lam * L(a) + (1 - lam) * L(b)`` then
    equals the mean over pairs of ``lam_y * l(own) + (1 - lam_y) * l(partner)`` (:func:`remix_label_weights`).

    Returns:
        ``a``, ``b`` (B,) int64, and (B,) bool: the pairs whose weight moved wholly to one class.
    """
    _check_lambda(lam)
    check_labels(labels, labels.shape[0], class_counts.shape[0], sync=False)
    check_labels(partner_labels, labels.shape[0], class_counts.shape[0], "partner_labels", sync=False)
    to_partner, to_self = _remix_rules(labels, partner_labels, lam, class_counts, kappa, tau)
    a = torch.where(to_partner, partner_labels, labels)
    b = torch.where(to_self, labels, partner_labels)
    return a, b, to_partner | to_self


def interpolated_loss(
    loss_fn: Callable[[Tensor, Tensor], Tensor], logits: Tensor, labels_a: Tensor, labels_b: Tensor, lam: float
) -> Tensor:
    """``lam * loss_fn(logits, a) + (1 - lam) * loss_fn(logits, b)``; a term of weight 0 is not computed (a loss
    that is infinite on it would otherwise give NaN)."""
    _check_lambda(lam)
    if lam == 1.0:
        return loss_fn(logits, labels_a)
    if lam == 0.0:
        return loss_fn(logits, labels_b)
    return lam * loss_fn(logits, labels_a) + (1.0 - lam) * loss_fn(logits, labels_b)
