"""The report's figures: the confusion matrix, the reliability diagram and the shifted-prior sweep.

Drawn like :mod:`ltcl.analysis.plots` (matplotlib's ``Figure``, no pyplot state). The confusion matrix orders the
classes by training count (most images first) and always shows the matrix aggregated by shot group (the share of
each group's images predicted into each group); up to :data:`MAX_CLASSES_DRAWN` classes it also draws the
per-class matrix, beyond which one cell per class would be unreadable (the counts are in confusion.csv).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ltcl.analysis.plots import GROUP_COLOURS, save_figure
from ltcl.data.longtail import SHOT_GROUPS, shot_groups

MAX_CLASSES_DRAWN = 50  # per-class confusion matrix up to this many classes
MAX_NAMED_CLASSES = 30  # tick labels with class names up to this many


def _row_shares(matrix: np.ndarray) -> np.ndarray:
    totals = matrix.sum(1, keepdims=True)
    return np.divide(100.0 * matrix, totals, out=np.full(matrix.shape, np.nan), where=totals > 0)


def group_confusion(confusion: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(3, 3) image counts: row = shot group of the true class, column = shot group of the predicted class."""
    out = np.zeros((len(SHOT_GROUPS), len(SHOT_GROUPS)), dtype=np.int64)
    for g in range(len(SHOT_GROUPS)):
        for h in range(len(SHOT_GROUPS)):
            out[g, h] = confusion[np.ix_(groups == g, groups == h)].sum()
    return out


def plot_confusion(confusion, train_counts: Sequence[int], class_names: Sequence[str], out, *, many, few) -> Path:
    """confusion.png: rows normalised to % of the true class's (group's) images."""
    confusion = np.asarray(confusion, dtype=np.int64)
    counts = np.asarray(train_counts)
    order = np.argsort(-counts, kind="stable")
    groups = shot_groups(counts.tolist(), many=many, few=few).numpy()
    per_class = len(counts) <= MAX_CLASSES_DRAWN
    fig = Figure(figsize=(12.5, 5.8) if per_class else (5.6, 5), layout="constrained")
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1]}) if per_class else [fig.subplots()]
    if per_class:
        ax = axes[0]
        shares = _row_shares(confusion[np.ix_(order, order)])
        image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=100, interpolation="nearest")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of the true class's images")
        labels = [f"{class_names[j]} ({counts[j]})" for j in order]
        if len(order) <= MAX_NAMED_CLASSES:
            ax.set_xticks(range(len(order)), labels, rotation=90, fontsize=7)
            ax.set_yticks(range(len(order)), labels, fontsize=7)
        for boundary in np.flatnonzero(np.diff(groups[order])) + 0.5:  # shot-group boundaries
            ax.axhline(boundary, color="0.3", linewidth=0.8)
            ax.axvline(boundary, color="0.3", linewidth=0.8)
        ax.set_xlabel("predicted class (training images)")
        ax.set_ylabel("true class, most training images first")
        ax.set_title("per class", fontsize=10)
    ax = axes[-1]
    aggregated = group_confusion(confusion, groups)
    shares = _row_shares(aggregated)
    ax.imshow(np.nan_to_num(shares), cmap="Blues", vmin=0, vmax=100)
    for g in range(3):
        for h in range(3):
            text = "n/a" if np.isnan(shares[g, h]) else f"{shares[g, h]:.1f}%\n({aggregated[g, h]:,})"
            dark = not np.isnan(shares[g, h]) and shares[g, h] > 60
            ax.text(h, g, text, ha="center", va="center", fontsize=9, color="white" if dark else "black")
    sizes = [int((groups == g).sum()) for g in range(len(SHOT_GROUPS))]
    names = [f"{name}\n({n} class{'' if n == 1 else 'es'})" for name, n in zip(SHOT_GROUPS, sizes)]
    ax.set_xticks(range(3), names, fontsize=8)
    ax.set_yticks(range(3), names, fontsize=8)
    ax.set_xlabel("predicted class's shot group")
    ax.set_ylabel("true class's shot group")
    suffix = "" if per_class else f" ({len(counts):,} classes: per-class counts in confusion.csv)"
    ax.set_title(f"by shot group{suffix}", fontsize=10)
    fig.suptitle("Confusion matrix (rows: % of the true class's images)", fontsize=11)
    return save_figure(fig, out)


def _bin_points(bins):
    used = [b for b in bins if b["images"]]
    return np.array([b["confidence"] for b in used]), np.array([b["accuracy"] for b in used])


def plot_reliability(report: dict, out) -> Path:
    """reliability.png: accuracy per confidence bin against the diagonal, overall (bars) and per shot group
    (lines), with the share of images per bin below."""
    bins = report["reliability"]
    width = 1.0 / len(bins)
    lefts = np.array([b["lower"] for b in bins])
    accuracy = np.array([np.nan if b["accuracy"] is None else b["accuracy"] for b in bins])
    confidence = np.array([np.nan if b["confidence"] is None else b["confidence"] for b in bins])
    fig = Figure(figsize=(6, 6.4))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(lefts, np.nan_to_num(accuracy), width=width, align="edge", color="#9ab8da", edgecolor="#1f5fa8",
            label=f"all (ECE {report['ece']:.2f}%)")  # fmt: skip
    gap = np.nan_to_num(confidence - accuracy)
    top.bar(lefts, gap, bottom=np.nan_to_num(accuracy), width=width, align="edge", color="none", edgecolor="#c8323c",
            hatch="//", linewidth=0.6, label="gap to the mean confidence")  # fmt: skip
    for name, group_bins in report.get("reliability_groups", {}).items():
        x, y = _bin_points(group_bins)
        ece = report["ece_groups"].get(name)
        label = f"{name}-shot classes (ECE {ece:.2f}%)" if ece is not None else name
        top.plot(x, y, marker="o", markersize=3, linewidth=1.2, color=GROUP_COLOURS[name], label=label)
    top.plot([0, 1], [0, 1], color="0.4", linestyle="--", linewidth=1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(fontsize=8, loc="upper left")
    calibrated = " after temperature scaling" if "calibration" in report else ""
    top.set_title(f"Reliability on {report['split']}{calibrated} ({len(bins)} equal-width bins)", fontsize=10)
    images = np.array([b["images"] for b in bins], dtype=np.float64)
    bottom.bar(lefts, images / max(images.sum(), 1), width=width, align="edge", color="0.6")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (highest probability)")
    bottom.set_ylabel("share of images")
    return save_figure(fig, out)


def plot_prior_sweep(rows: Sequence[dict], out) -> Path:
    """prior_sweep.png: All (%) under each shifted test prior, as evaluated and told the test prior."""
    names = [row["prior"] for row in rows]
    x = np.arange(len(rows))
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.subplots()
    for key, label, colour in (("as_evaluated", "as evaluated", "#4d4d4d"), ("told_prior", "told the test prior",
                                                                            "#1f5fa8")):  # fmt: skip
        ax.plot(x, [row[key]["all"] for row in rows], marker="o", color=colour, label=label)
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("top-1 accuracy, All (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Shifted test priors (SADE's protocol): forward = training order, backward = reversed", fontsize=10)
    return save_figure(fig, out)
