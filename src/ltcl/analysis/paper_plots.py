"""The paper's figures that are not one run's own: t-SNE of embeddings (Fig. 5), accuracy per setting of a sweep
(Fig. 4b) and against one numeric setting (Fig. 4c).

Like :mod:`ltcl.analysis.plots`, every function takes plain arrays and values, writes one PNG and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from ltcl.analysis.plots import save_figure

# marker, lightening towards white, size of each shot group (0 many, 1 medium, 2 few): the tail fades
TSNE_STYLE = {0: ("o", 0.0, 26), 1: ("s", 0.25, 24), 2: ("^", 0.5, 30)}


def _lighten(colour, amount: float) -> tuple[float, float, float]:
    return tuple(c + (1 - c) * amount for c in to_rgb(colour))


def plot_tsne(
    points: np.ndarray,
    labels: np.ndarray,
    classes: list[int],
    names: list[str],
    counts: list[int],
    groups: list[int],
    out: str | Path,
    title: str,
) -> Path:
    """Scatter of a 2-D embedding, one colour per class; many-shot classes saturated circles, medium squares,
    few-shot lighter triangles (Fig. 5).

    Args:
        points: (n, 2) coordinates; labels: (n,) class index of each point.
        classes: the k chosen class indices, in legend order (a class without any point is left out of the
            legend); names, counts: per class of the whole run (C,).
        groups: (C,) shot group per class (0 many, 1 medium, 2 few).
    """
    fig = Figure(figsize=(8.5, 6.5))
    ax = fig.subplots()
    drawn = [c for c in classes if (labels == c).any()]
    cmap = colormaps["tab10" if len(drawn) <= 10 else "tab20"]
    for i, c in enumerate(drawn):
        marker, light, size = TSNE_STYLE[int(groups[c])]
        hue = cmap(i % cmap.N)
        chosen = labels == c
        ax.scatter(
            points[chosen, 0],
            points[chosen, 1],
            s=size,
            marker=marker,
            color=_lighten(hue, light),
            edgecolors=hue[:3],
            linewidths=0.6,
            label=f"{names[c]} ({counts[c]})",
        )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(
        title="class (training images)\n● many  ■ medium  ▲ few",
        fontsize=8,
        title_fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        markerscale=1.2,
    )
    ax.set_title(title, fontsize=10)
    return save_figure(fig, out)


def plot_setting_bars(
    labels: list[str], means: list[float | None], stds: list[float | None], out: str | Path, title: str
) -> Path:
    """One bar per setting (Fig. 4b): mean top-1 accuracy, with a ± std error bar for several seeds.

    Args:
        labels: (S,) setting labels (``key=value, key=value``; wrapped at the commas).
        means, stds: (S,) accuracy in %; a None mean is an "n/a" gap, a None std draws no error bar.
    """
    longest = max((len(line) for label in labels for line in label.split(", ")), default=1)
    slot = max(1.1, 0.07 * longest)  # inches per bar, so that the wrapped labels do not collide
    tilt = 1.0 + slot * len(labels) > 16
    fig = Figure(figsize=(min(16.0, max(5.0, 1.0 + slot * len(labels))), 4.6))
    ax = fig.subplots()
    for x, (mean, std) in enumerate(zip(means, stds)):
        if mean is None:
            ax.text(x, 2, "n/a", ha="center", va="bottom", color="0.35")
            continue
        ax.bar(x, mean, width=0.6, color=f"C{x % 10}", yerr=std, capsize=4 if std else 0)
        ax.text(x, mean + (std or 0) + 1.5, f"{mean:.1f}", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(
        range(len(labels)),
        [label.replace(", ", "\n") for label in labels],
        fontsize=8,
        rotation=30 if tilt else 0,
        ha="right" if tilt else "center",
    )
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_ylabel("top-1 test accuracy, All (%)")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, out)


def plot_setting_lines(
    series: dict[str, tuple[list[float], list[float], list[float | None]]], xlabel: str, out: str | Path, title: str
) -> Path:
    """Accuracy against one numeric setting (Fig. 4c), one line per combination of the other settings.

    Args:
        series: line label -> (x values, mean accuracies, stds or None), x ascending.
    """
    fig = Figure(figsize=(6.5, 4.4))
    ax = fig.subplots()
    xs_all = [x for xs, _, _ in series.values() for x in xs]
    if xs_all and min(xs_all) > 0 and max(xs_all) >= 20 * min(xs_all):  # e.g. alpha = 0.01, 0.1, 1
        ax.set_xscale("log")
    if xs_all:
        ax.set_xticks(sorted(set(xs_all)))  # tick exactly the values that were tried
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    for label, (xs, means, stds) in series.items():
        err = [s or 0.0 for s in stds]
        ax.errorbar(xs, means, yerr=err if any(err) else None, marker="o", capsize=3, label=label or None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 test accuracy, All (%)")
    ax.grid(alpha=0.3)
    if any(series):
        ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, out)
