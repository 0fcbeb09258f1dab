"""Gradient-conflict monitoring of SCL (Eq. 5-7, Fig. 4a): the ratio of one batch, and of a run's recorded rows."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ltcl.data.longtail import ACCURACY_COLUMNS, shot_groups
from ltcl.losses.functional import gradient_conflict_counts


def gradient_conflict_ratio(features: Tensor, labels: Tensor, *, temperature: float, num_classes: int) -> Tensor:
    """Per-class share of SCL positive pairs whose gradient is repulsive (Eq. 7: ``q_ik > 1/|P(i)|``).

    Args:
        features: (N, D) L2-normalised projections; labels: (N,) int64 in [0, num_classes).
        temperature: tau of the SCL loss being analysed.

    Returns:
        (C,) float32: conflicting pairs / positive pairs over anchors of each class; NaN where a class has no
        positive pair in the batch.
    """
    conflicts, pairs = gradient_conflict_counts(features, labels, temperature=temperature, num_classes=num_classes)
    ratio = conflicts.to(torch.float32) / pairs.clamp(min=1).to(torch.float32)
    return torch.where(pairs > 0, ratio, torch.full_like(ratio, float("nan")))


def conflict_ratios(rows: list[dict[str, str]], *, all_epochs: bool = False) -> tuple[np.ndarray, np.ndarray, str]:
    """Per-class SCL conflict ratio (Eq. 7) of a run: conflicting / positive pairs.

    Args:
        rows: the run's conflict rows (``RunDir.read_conflicts``): epoch, class, train_count, conflicting_pairs,
            positive_pairs, one row per class and epoch.
        all_epochs: pool the pair counts of every epoch; otherwise use the last recorded epoch only (the ratio of
            the embedding the run ended with).

    Returns:
        train counts (C,) int64, ratios (C,) float64 with NaN where a class had no positive pair, and a phrase
        naming the epochs used ("last epoch, 3" or "epochs 1-3 pooled").
    """
    epoch = np.array([int(r["epoch"]) for r in rows])
    cls = np.array([int(r["class"]) for r in rows])
    count = np.array([int(r["train_count"]) for r in rows])
    conflicting = np.array([int(r["conflicting_pairs"]) for r in rows], dtype=np.float64)
    pairs = np.array([int(r["positive_pairs"]) for r in rows], dtype=np.float64)
    keep = np.ones(len(rows), bool) if all_epochs else epoch == epoch.max()
    num_classes = int(cls.max()) + 1
    counts = np.zeros(num_classes, dtype=np.int64)
    counts[cls] = count
    c = np.bincount(cls[keep], weights=conflicting[keep], minlength=num_classes)
    p = np.bincount(cls[keep], weights=pairs[keep], minlength=num_classes)
    ratios = np.where(p > 0, c / np.maximum(p, 1), np.nan)
    used = f"epochs {epoch.min()}-{epoch.max()} pooled" if all_epochs else f"last epoch, {epoch.max()}"
    return counts, ratios, used


def group_means(values: np.ndarray, counts, many: int, few: int) -> dict[str, float | None]:
    """Mean of the finite per-class ``values`` (C,) in each shot group and over all classes.

    Returns:
        ``{name: mean or None}`` for every name of ACCURACY_COLUMNS; None for a group without a finite value.
    """
    groups = shot_groups(list(counts), many=many, few=few).numpy()
    values = np.asarray(values, dtype=np.float64)
    means: dict[str, float | None] = {}
    for g, name in enumerate(ACCURACY_COLUMNS):  # the shot-group indices 0, 1, 2, then "all"
        chosen = values[np.isfinite(values) & ((groups == g) if name != "all" else True)]
        means[name] = float(chosen.mean()) if chosen.size else None
    return means
