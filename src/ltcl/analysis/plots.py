"""The figures of a run and of the paper's analyses, drawn with matplotlib's Agg renderer (no display needed).

Every function reads the files of a run directory (results.json, class_counts.json, metrics.csv,
conflicts.csv, config.yaml) or takes plain arrays, writes one PNG and returns its path. Figures are built
with ``matplotlib.figure.Figure`` rather than pyplot, so no global state or GUI backend is involved.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from ltcl.data.longtail import SHOT_GROUPS, shot_groups

GROUP_COLOURS = {"many": "#1f5fa8", "medium": "#e08a1e", "few": "#c8323c", "all": "#4d4d4d"}


# ----------------------------------------------------------------------------------------------------------
# Reading a run directory


def run_config(run_dir: str | Path) -> dict:
    """The run's resolved config.yaml as plain dicts (its ``run`` block of facts included)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {run_dir} is not an ltcl run directory.")
    return yaml.safe_load(path.read_text()) or {}


def thresholds(config: dict) -> tuple[int, int]:
    """(many, few) shot-group thresholds of a run's config dict (the defaults when absent)."""
    data = config.get("data", {})
    return int(data.get("many_threshold", 100)), int(data.get("few_threshold", 20))


def run_label(run_dir: str | Path) -> str:
    """``run name (objective)``, the legend entry of a run."""
    objective = run_config(run_dir).get("loss", {}).get("objective", "?")
    return f"{Path(run_dir).name} ({objective})"


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def _number(text: str | None) -> float:
    return float(text) if text not in (None, "") else math.nan


def conflict_ratios(run_dir: str | Path, *, all_epochs: bool = False) -> tuple[np.ndarray, np.ndarray, str]:
    """Per-class SCL conflict ratio (Eq. 7) from conflicts.csv: conflicting / positive pairs.

    Args:
        all_epochs: pool the pair counts of every epoch; otherwise use the last recorded epoch only.

    Returns:
        train counts (C,), ratios (C,) with NaN where a class had no positive pair, and a phrase naming the
        epochs used ("last epoch, 3" or "epochs 1-3 pooled").
    """
    path = Path(run_dir) / "conflicts.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: train the run with --set "
                                "train.monitor_conflicts=true (and an objective with a contrastive term) to "
                                "record conflict ratios.")
    rows = _read_csv(path)
    if not rows:
        raise ValueError(f"{path} holds no rows; the run recorded no epoch.")
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
    """Mean of the finite per-class ``values`` of each shot group (None when it has none), and ``all``."""
    groups = shot_groups(list(counts), many=many, few=few).numpy()
    values = np.asarray(values, dtype=np.float64)
    means: dict[str, float | None] = {}
    for g, name in enumerate(SHOT_GROUPS + ("all",)):
        chosen = values[np.isfinite(values) & ((groups == g) if name != "all" else True)]
        means[name] = float(chosen.mean()) if chosen.size else None
    return means


# ----------------------------------------------------------------------------------------------------------
# Drawing helpers


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def _count_axis(ax, counts, many: int, few: int) -> None:
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
            ax.text(x, 1.01, text, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8,
                    color="0.4")
    ax.set_xlabel("training images of the class (log scale)")


# ----------------------------------------------------------------------------------------------------------
# Fig. 4a: conflict ratio against class frequency


def plot_conflicts(run_dir: str | Path, out: str | Path | None = None, *, all_epochs: bool = False) -> Path:
    """Fig. 4a of one run: per-class conflict ratio against training count (default run_dir/conflicts.png)."""
    return plot_conflict_runs([run_dir], out or Path(run_dir) / "conflicts.png", all_epochs=all_epochs)


def plot_conflict_runs(run_dirs, out: str | Path, *, all_epochs: bool = False) -> Path:
    """Fig. 4a for several runs on one figure: one colour per run, each with a least-squares trend on
    log10(count)."""
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    all_counts, top, used = [], 0.0, set()
    many, few = thresholds(run_config(run_dirs[0]))
    for i, run_dir in enumerate(run_dirs):
        counts, ratios, phrase = conflict_ratios(run_dir, all_epochs=all_epochs)
        used.add(phrase)
        colour = f"C{i % 10}"
        ok = np.isfinite(ratios)
        ax.scatter(counts[ok], ratios[ok], s=28, color=colour, alpha=0.8, label=run_label(run_dir),
                   edgecolors="white", linewidths=0.5)
        x = np.log10(counts[ok])
        if np.unique(x).size >= 2:  # a trend needs two distinct counts
            slope, intercept = np.polyfit(x, ratios[ok], 1)
            grid = np.linspace(x.min(), x.max(), 50)
            ax.plot(10**grid, slope * grid + intercept, color=colour, linestyle="--", linewidth=1.2)
        all_counts.extend(counts.tolist())
        top = max([top, *ratios[ok].tolist()])
    _count_axis(ax, all_counts, many, few)
    ax.set_ylabel("conflict ratio (conflicting / positive pairs)")
    top = max(top, 0.05)
    ax.set_ylim(-0.02 * top, min(1.02, top * 1.25))  # small ratios stay readable; room for the legend
    ax.grid(alpha=0.3)
    ax.legend(title="run (objective); dashed: linear trend", fontsize=8, title_fontsize=8, loc="upper left")
    if len(used) != 1:
        used = {"all epochs pooled" if all_epochs else "last epoch of each run"}
    ax.set_title(f"SCL gradient-conflict ratio per class vs class frequency ({used.pop()})", fontsize=10,
                 pad=16)
    objectives = [run_config(d).get("loss", {}).get("objective", "") for d in run_dirs]
    if any(o.endswith("acl") for o in objectives):  # the ratio is a property of SCL's gradient, not ACL's
        fig.text(0.01, -0.02, "For an ACL run: the share of positive pairs that SCL's gradient would push "
                 "apart on that run's embedding; ACL's own gradient has none (Eq. 11).", fontsize=7,
                 color="0.3")
    return _save(fig, Path(out))


# ----------------------------------------------------------------------------------------------------------
# Plots of one finished run


def plot_per_class_accuracy(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Per-class test accuracy against training count, coloured by shot group, with the group means."""
    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    counts = np.asarray(results["class_counts"])
    accuracy = np.array([math.nan if a is None else a for a in results["per_class_test"]], dtype=np.float64)
    many, few = thresholds(run_config(run_dir))
    groups = shot_groups(counts.tolist(), many=many, few=few).numpy()
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    size = 30 if len(counts) <= 100 else 8
    for g, name in enumerate(SHOT_GROUPS):
        chosen = (groups == g) & np.isfinite(accuracy)
        if not chosen.any():
            continue
        mean = accuracy[chosen].mean()
        ax.scatter(counts[chosen], accuracy[chosen], s=size, color=GROUP_COLOURS[name], alpha=0.85,
                   label=f"{name}-shot ({chosen.sum()} class{'es' if chosen.sum() > 1 else ''}, "
                   f"mean {mean:.1f}%)")
        ends = counts[chosen].min() / 1.08, counts[chosen].max() * 1.08  # visible for a one-class group too
        ax.hlines(mean, *ends, color=GROUP_COLOURS[name], linewidth=2)
    _count_axis(ax, counts.tolist(), many, few)
    ax.set_ylabel("test accuracy of the class (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"{run_dir.name}: per-class test accuracy vs training images (lines: group means)",
                 fontsize=10, pad=16)
    return _save(fig, Path(out or run_dir / "per_class_accuracy.png"))


def plot_group_bars(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Many / Medium / Few / All test accuracy as bars; an empty group is a labelled gap ("n/a"), never 0."""
    run_dir = Path(run_dir)
    test = json.loads((run_dir / "results.json").read_text())["test"]
    fig = Figure(figsize=(5.5, 4.2))
    ax = fig.subplots()
    _draw_group_bars(ax, test)
    ax.set_title(f"{run_dir.name}: test accuracy by shot group (%)", fontsize=10)
    return _save(fig, Path(out or run_dir / "shot_groups.png"))


def _draw_group_bars(ax, test: dict[str, float | None]) -> None:
    names = SHOT_GROUPS + ("all",)
    for x, name in enumerate(names):
        value = test.get(name)
        if value is None:
            ax.text(x, 2, "n/a", ha="center", va="bottom", fontsize=10, color="0.35")
            continue
        ax.bar(x, value, width=0.6, color=GROUP_COLOURS[name])
        ax.text(x, value + 1.5, f"{value:.1f}", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(range(len(names)), [n.capitalize() for n in names])
    ax.set_xlim(-0.6, len(names) - 0.4)  # an n/a group has no bar, so autoscaling would drop its slot
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)


def _epoch_axis(ax) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _metric_columns(run_dir: Path) -> dict[str, np.ndarray]:
    rows = _read_csv(run_dir / "metrics.csv")
    if not rows:
        raise ValueError(f"{run_dir / 'metrics.csv'} holds no epoch rows.")
    columns = {k: np.array([_number(r.get(k)) for r in rows]) for k in rows[0] if k != "eval_split"}
    columns["eval_split"] = next((r["eval_split"] for r in rows if r.get("eval_split")), "eval")
    return columns


def plot_loss_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Training loss per epoch: total, classification and contrastive parts (from metrics.csv)."""
    run_dir = Path(run_dir)
    m = _metric_columns(run_dir)
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    parts = (("loss", "total"), ("loss_cls", "classification"), ("loss_con", "contrastive (unweighted)"))
    for key, label in parts:
        if key in m and np.isfinite(m[key]).any():
            ax.plot(m["epoch"], m[key], marker="o", markersize=3, label=label)
    _epoch_axis(ax)
    ax.set_ylabel("mean training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{run_dir.name}: training loss per epoch", fontsize=10)
    return _save(fig, Path(out or run_dir / "loss_curves.png"))


def plot_accuracy_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Training-batch accuracy per epoch and the Many / Medium / Few / All evaluations (from metrics.csv)."""
    run_dir = Path(run_dir)
    m = _metric_columns(run_dir)
    split = m["eval_split"]
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    ax.plot(m["epoch"], m["train_acc"], color="0.55", linestyle="--", label="train (first view, augmented)")
    for name in SHOT_GROUPS + ("all",):
        values = m.get(name)
        if values is not None and np.isfinite(values).any():
            ok = np.isfinite(values)
            ax.plot(m["epoch"][ok], values[ok], marker="o", markersize=4, color=GROUP_COLOURS[name],
                    linewidth=2 if name == "all" else 1.2, label=f"{split} {name}")
    _epoch_axis(ax)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(f"{run_dir.name}: accuracy per epoch (train batches and {split} shot groups)", fontsize=10)
    return _save(fig, Path(out or run_dir / "accuracy_curves.png"))


def make_run_plots(run_dir: str | Path) -> list[Path]:
    """Draws every plot the run's files allow into ``run_dir``; a failing plot is a warning, never an error.

    Returns:
        The PNG files written.
    """
    run_dir = Path(run_dir)
    jobs = []
    if (run_dir / "results.json").is_file():
        jobs += [("per-class accuracy", plot_per_class_accuracy), ("shot-group bars", plot_group_bars)]
    if (run_dir / "metrics.csv").is_file():
        jobs += [("loss curves", plot_loss_curves), ("accuracy curves", plot_accuracy_curves)]
    if (run_dir / "conflicts.csv").is_file():
        jobs.append(("conflict ratios", plot_conflicts))
    written = []
    for name, draw in jobs:
        try:
            written.append(draw(run_dir))
        except Exception as err:  # a plot must never fail a finished run
            print(f"warning: the {name} plot of {run_dir} was not drawn ({type(err).__name__}: {err})",
                  file=sys.stderr)
    return written


# ----------------------------------------------------------------------------------------------------------
# Fig. 5 (t-SNE) and the sweep figures (Fig. 4b, 4c)


def _lighten(colour, amount: float) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    return tuple(c + (1 - c) * amount for c in to_rgb(colour))


def plot_tsne(points: np.ndarray, labels: np.ndarray, classes: list[int], names: list[str], counts: list[int],
              groups: list[int], out: str | Path, title: str) -> Path:
    """Scatter of a 2-D embedding, one colour per class; many-shot classes saturated circles, medium squares,
    few-shot lighter triangles (Fig. 5).

    Args:
        points: (n, 2) coordinates; labels: (n,) class index of each point.
        classes: the k plotted class indices, in legend order; names, counts: per class of the whole run (C,).
        groups: (C,) shot group per class (0 many, 1 medium, 2 few).
    """
    fig = Figure(figsize=(8.5, 6.5))
    ax = fig.subplots()
    palette = "tab10" if len(classes) <= 10 else "tab20"
    from matplotlib import colormaps

    cmap = colormaps[palette]
    style = {0: ("o", 0.0, 26), 1: ("s", 0.25, 24), 2: ("^", 0.5, 30)}  # marker, lightening, size
    for i, c in enumerate(classes):
        marker, light, size = style[int(groups[c])]
        hue = cmap(i % cmap.N)
        chosen = labels == c
        ax.scatter(points[chosen, 0], points[chosen, 1], s=size, marker=marker, color=_lighten(hue, light),
                   edgecolors=hue[:3], linewidths=0.6, label=f"{names[c]} ({counts[c]})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(title="class (training images)\n● many  ■ medium  ▲ few", fontsize=8, title_fontsize=8,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), markerscale=1.2)
    ax.set_title(title, fontsize=10)
    return _save(fig, Path(out))


def plot_setting_bars(labels: list[str], means: list[float | None], stds: list[float | None], out: str | Path,
                      title: str) -> Path:
    """One bar per setting (Fig. 4b): mean top-1 accuracy, with a ± std error bar for several seeds."""
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
    ax.set_xticks(range(len(labels)), [label.replace(", ", "\n") for label in labels], fontsize=8,
                  rotation=30 if tilt else 0, ha="right" if tilt else "center")
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_ylabel("top-1 test accuracy, All (%)")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    return _save(fig, Path(out))


def plot_setting_lines(series: dict[str, tuple[list[float], list[float], list[float | None]]], xlabel: str,
                       out: str | Path, title: str) -> Path:
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
    return _save(fig, Path(out))
