"""Calibration: expected calibration error over 15 equal-width confidence bins (Guo et al., ICML 2017), overall
and per shot group, the reliability diagram's bins, and temperature scaling fitted on the validation split.

The confidence of an image is its highest probability; bin b holds the confidences in ``(b/15, (b+1)/15]``;
ECE = sum over bins of (share of images in the bin) * |accuracy - mean confidence| of the bin, in %. A shot
group's ECE is computed over the images whose true class is in the group (docs/conventions.md, "Evaluation
report").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ltcl.data.longtail import SHOT_GROUPS, shot_groups
from ltcl.evaluation.metrics import negative_log_likelihood

ECE_BINS = 15


def reliability_bins(probabilities: Tensor, labels: Tensor, bins: int = ECE_BINS) -> list[dict]:
    """One entry per bin: ``lower``, ``upper``, ``images``, mean ``confidence`` and ``accuracy`` (fractions;
    None for an empty bin)."""
    probabilities = probabilities.double()
    confidence, predicted = probabilities.max(1)
    correct = (predicted == labels.to(predicted.device)).double()
    uppers = torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:]
    uppers[-1] = 1.0
    index = torch.bucketize(confidence, uppers, right=False).clamp(max=bins - 1)  # (lower, upper]
    images = torch.bincount(index, minlength=bins).double()
    confidence_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, confidence)
    correct_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct)
    out = []
    for b in range(bins):
        n = int(images[b])
        out.append(
            {
                "lower": b / bins,
                "upper": (b + 1) / bins,
                "images": n,
                "confidence": float(confidence_sum[b] / n) if n else None,
                "accuracy": float(correct_sum[b] / n) if n else None,
            }
        )
    return out


def ece_from_bins(bins: Sequence[dict]) -> float | None:
    """ECE in % from :func:`reliability_bins`; None for no image."""
    total = sum(b["images"] for b in bins)
    if not total:
        return None
    gap = sum(b["images"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["images"])
    return 100.0 * gap / total


def expected_calibration_error(probabilities: Tensor, labels: Tensor, bins: int = ECE_BINS) -> float | None:
    """ECE in % over ``bins`` equal-width confidence bins; None for no image."""
    return ece_from_bins(reliability_bins(probabilities, labels, bins))


def group_masks(labels: Tensor, train_counts: Sequence[int], many: int, few: int) -> dict[str, Tensor]:
    """Per shot group, the (n,) mask of the images whose true class is in the group."""
    groups = shot_groups(train_counts, many=many, few=few)[labels.long().cpu()]
    return {name: groups == g for g, name in enumerate(SHOT_GROUPS)}


def group_calibration_errors(
    probabilities: Tensor, labels: Tensor, train_counts: Sequence[int], *, many: int, few: int, bins: int = ECE_BINS
) -> dict[str, float | None]:
    """ECE in % of each shot group's images (by their true class); None for a group without images."""
    return {
        name: expected_calibration_error(probabilities[mask], labels[mask], bins) if mask.any() else None
        for name, mask in group_masks(labels, train_counts, many, few).items()
    }


def fit_temperature(logits: Tensor, labels: Tensor, low: float = 1e-2, high: float = 1e2) -> float:
    """The temperature T > 0 that minimises the NLL of ``softmax(logits / T)`` (temperature scaling).

    The NLL is convex in 1/T, hence unimodal in log T: a golden-section search over log T in [log low, log high]
    in float64 finds the minimum to machine precision, deterministically (no optimiser state, no learning rate).
    """
    logits, labels = logits.double(), labels.long()

    def nll(log_t: float) -> float:
        return negative_log_likelihood(logits / math.exp(log_t), labels)

    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(60):  # the bracket shrinks to 0.618^60 of its width, 3e-12 in log T
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(d)
    return math.exp((a + b) / 2)
