"""The figures of one run, drawn with matplotlib's Agg renderer (no display needed), and the axes they share.

Every function takes plain arrays and values and an output path, writes one PNG and returns its path; none reads
a file (:mod:`ltcl.analysis.run_plots` reads a run directory and calls them). Figures are built with
``matplotlib.figure.Figure`` rather than pyplot, so no global state or GUI backend is involved.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from ltcl.data.longtail import ACCURACY_COLUMNS, SHOT_GROUPS, shot_groups

GROUP_COLOURS = dict(zip(ACCURACY_COLUMNS, ("#1f5fa8", "#e08a1e", "#c8323c", "#4d4d4d")))
MAX_NAMED_CLASSES = 20  # per-class figures name their points up to this many classes; more would hide them


@dataclass
class ConflictSeries:
    """One run's per-class SCL conflict ratios, as drawn on Fig. 4a.

    Attributes:
        label: the legend entry, ``run name (objective)``.
        objective: the run's loss.objective.
        counts: (C,) training images per class.
        ratios: (C,) conflicting / positive pairs, NaN where a class had no positive pair.
        epochs: which epochs the ratios count ("last epoch, 3" or "epochs 1-3 pooled").
        names: (C,) class names, or None when the run does not record them.
    """

    label: str
    objective: str
    counts: np.ndarray
    ratios: np.ndarray
    epochs: str
    names: list[str] | None = None


# ----------------------------------------------------------------------------------------------------------
# Shared by every figure


def save_figure(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def count_axis(ax, counts, many: int, few: int) -> None:
    """Log x axis of training counts with plain-number ticks, and the shot-group boundaries marked."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    low, high = min(counts), max(counts)
    ax.set_xlim(low / 1.3, high * 1.3)
    for x, text in ((many + 0.5, f"many > {many}"), (few - 0.5, f"few < {few}")):
        if low / 1.3 < x < high * 1.3:
            ax.axvline(x, color="0.6", linestyle=":", linewidth=1)
            ax.text(
                x, 1.01, text, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8, color="0.4"
            )
    ax.set_xlabel("training images of the class (log scale)")


def name_points(ax, xs, ys, names: list[str] | None, indices, colour) -> None:
    """Writes ``names[j]`` beside each point (x, y) of class j in ``indices``, when the run has at most
    MAX_NAMED_CLASSES classes and knows their names."""
    if not names or len(names) > MAX_NAMED_CLASSES:
        return
    for x, y, j in zip(xs, ys, indices):
        ax.annotate(
            str(names[j]), (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7, color=colour, alpha=0.9
        )


def _epoch_axis(ax) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


# ----------------------------------------------------------------------------------------------------------
# One finished run


def plot_per_class_accuracy(
    counts, accuracy, out: str | Path, *, many: int, few: int, name: str, class_names: list[str] | None = None
) -> Path:
    """Per-class test accuracy against training count, coloured by shot group, with the group means.

    Args:
        counts: (C,) training images per class.
        accuracy: (C,) test accuracy in %, None or NaN for a class absent from the test split (not drawn).
        many, few: the run's shot-group thresholds.
        name: the run's name, for the title.
        class_names: (C,) names written beside the points (up to MAX_NAMED_CLASSES classes), or None.
    """
    if class_names is not None and len(class_names) != len(counts):
        class_names = None
    counts = np.asarray(counts)
    accuracy = np.array([np.nan if a is None else a for a in accuracy], dtype=np.float64)
    groups = shot_groups(counts.tolist(), many=many, few=few).numpy()
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    size = 30 if len(counts) <= 100 else 8
    for g, group in enumerate(SHOT_GROUPS):
        chosen = (groups == g) & np.isfinite(accuracy)
        if not chosen.any():
            continue
        mean = accuracy[chosen].mean()
        classes = f"{chosen.sum()} class{'es' if chosen.sum() > 1 else ''}"
        ax.scatter(
            counts[chosen],
            accuracy[chosen],
            s=size,
            color=GROUP_COLOURS[group],
            alpha=0.85,
            label=f"{group}-shot ({classes}, mean {mean:.1f}%)",
        )
        name_points(ax, counts[chosen], accuracy[chosen], class_names, np.flatnonzero(chosen), GROUP_COLOURS[group])
        ends = counts[chosen].min() / 1.08, counts[chosen].max() * 1.08  # visible for a one-class group too
        ax.hlines(mean, *ends, color=GROUP_COLOURS[group], linewidth=2)
    count_axis(ax, counts.tolist(), many, few)
    ax.set_ylabel("test accuracy of the class (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"{name}: per-class test accuracy vs training images (lines: group means)", fontsize=10, pad=16)
    return save_figure(fig, out)


def plot_group_bars(test: dict[str, float | None], out: str | Path, *, name: str) -> Path:
    """Many / Medium / Few / All test accuracy as bars (``test``: column -> % or None for an empty group)."""
    fig = Figure(figsize=(5.5, 4.2))
    ax = fig.subplots()
    draw_group_bars(ax, test)
    ax.set_title(f"{name}: test accuracy by shot group (%)", fontsize=10)
    return save_figure(fig, out)


def draw_group_bars(ax, test: dict[str, float | None]) -> None:
    """The bars of :func:`plot_group_bars` on ``ax``; an empty group is a labelled gap ("n/a"), never 0."""
    for x, column in enumerate(ACCURACY_COLUMNS):
        value = test.get(column)
        if value is None:
            ax.text(x, 2, "n/a", ha="center", va="bottom", fontsize=10, color="0.35")
            continue
        ax.bar(x, value, width=0.6, color=GROUP_COLOURS[column])
        ax.text(x, value + 1.5, f"{value:.1f}", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(range(len(ACCURACY_COLUMNS)), [c.capitalize() for c in ACCURACY_COLUMNS])
    ax.set_xlim(-0.6, len(ACCURACY_COLUMNS) - 0.4)  # an n/a group has no bar, so autoscaling would drop its slot
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)


def plot_loss_curves(columns: dict[str, np.ndarray], out: str | Path, *, name: str) -> Path:
    """Training loss per epoch: the total and every part the objective recorded (``loss_*`` columns).

    Args:
        columns: metrics columns, each (E,) float with NaN for an empty cell: ``epoch``, ``loss`` and the parts,
            e.g. ``loss_cls`` and ``loss_con``.
    """
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    labels = {"loss": "total", "loss_cls": "classification", "loss_con": "contrastive (unweighted)"}
    parts = [(key, labels.get(key, key.removeprefix("loss_"))) for key in columns if key.startswith("loss")]
    for key, label in parts:
        if key in columns and np.isfinite(columns[key]).any():
            ax.plot(columns["epoch"], columns[key], marker="o", markersize=3, label=label)
    _epoch_axis(ax)
    ax.set_ylabel("mean training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{name}: training loss per epoch", fontsize=10)
    return save_figure(fig, out)


def plot_accuracy_curves(columns: dict[str, np.ndarray], split: str, out: str | Path, *, name: str) -> Path:
    """Training-batch accuracy per epoch and the Many / Medium / Few / All evaluations.

    Args:
        columns: metrics columns, each (E,) float with NaN where an epoch was not evaluated: ``epoch``,
            ``train_acc`` and the ACCURACY_COLUMNS.
        split: the evaluated split ("val" or "test"), for the legend.
    """
    epoch = columns["epoch"]
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    ax.plot(epoch, columns["train_acc"], color="0.55", linestyle="--", label="train (first view, augmented)")
    for column in ACCURACY_COLUMNS:
        values = columns.get(column)
        if values is not None and np.isfinite(values).any():
            ok = np.isfinite(values)
            ax.plot(
                epoch[ok],
                values[ok],
                marker="o",
                markersize=4,
                color=GROUP_COLOURS[column],
                linewidth=2 if column == "all" else 1.2,
                label=f"{split} {column}",
            )
    _epoch_axis(ax)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(f"{name}: accuracy per epoch (train batches and {split} shot groups)", fontsize=10)
    return save_figure(fig, out)


# ----------------------------------------------------------------------------------------------------------
# Fig. 4a: conflict ratio against class frequency, one or several runs


def plot_conflicts(
    runs: list[ConflictSeries], out: str | Path, *, many: int, few: int, all_epochs: bool = False
) -> Path:
    """Per-class conflict ratio against training count: one colour per run, each with a least-squares trend on
    log10(count).

    Args:
        runs: the series to draw, in legend order.
        many, few: the shot-group thresholds marked on the count axis.
        all_epochs: the series pool every epoch (names the epochs in the title when the runs disagree).
    """
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    all_counts, top = [], 0.0
    for i, run in enumerate(runs):
        colour = f"C{i % 10}"
        ok = np.isfinite(run.ratios)
        counts, ratios = run.counts[ok], run.ratios[ok]
        ax.scatter(counts, ratios, s=28, color=colour, alpha=0.8, label=run.label, edgecolors="white", linewidths=0.5)
        if run.names is not None and len(run.names) == len(run.counts):
            name_points(ax, counts, ratios, run.names, np.flatnonzero(ok), colour)
        x = np.log10(counts)
        if np.unique(x).size >= 2:  # a trend needs two distinct counts
            slope, intercept = np.polyfit(x, ratios, 1)
            grid = np.linspace(x.min(), x.max(), 50)
            ax.plot(10**grid, slope * grid + intercept, color=colour, linestyle="--", linewidth=1.2)
        all_counts.extend(run.counts.tolist())
        top = max([top, *ratios.tolist()])
    count_axis(ax, all_counts, many, few)
    ax.set_ylabel("conflict ratio (conflicting / positive pairs)")
    top = max(top, 0.05)
    ax.set_ylim(-0.02 * top, min(1.02, top * 1.25))  # small ratios stay readable; room for the legend
    ax.grid(alpha=0.3)
    ax.legend(title="run (objective); dashed: linear trend", fontsize=8, title_fontsize=8, loc="upper left")
    used = {run.epochs for run in runs}
    if len(used) != 1:
        used = {"all epochs pooled" if all_epochs else "last epoch of each run"}
    ax.set_title(f"SCL gradient-conflict ratio per class vs class frequency ({used.pop()})", fontsize=10, pad=16)
    if any(run.objective.endswith("acl") for run in runs):  # the ratio is a property of SCL's gradient, not ACL's
        note = (
            "For an ACL run: the share of positive pairs that SCL's gradient would push apart on that run's "
            "embedding; ACL's own gradient has none (Eq. 11)."
        )
        fig.text(0.01, -0.02, note, fontsize=7, color="0.3")
    return save_figure(fig, out)
