"""The plots of run directories: read a run through :class:`~ltcl.engine.rundir.RunDir`, draw it with
:mod:`ltcl.analysis.plots`.

``ltcl train`` and ``ltcl sweep`` call :func:`make_run_plots` after each run and link what it drew from report.md;
``ltcl analyze conflicts`` draws several runs on one figure with :func:`plot_conflict_runs`.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ltcl.analysis.conflicts import conflict_ratios
from ltcl.analysis.plots import (
    ConflictSeries,
    plot_accuracy_curves,
    plot_conflicts,
    plot_group_bars,
    plot_loss_curves,
    plot_per_class_accuracy,
)
from ltcl.engine.rundir import RunDir

CONFLICT_PLOT = "conflicts.png"  # the run's own figure; ltcl analyze conflicts never writes over it


def metric_columns(rows: list[dict[str, str]]) -> tuple[dict[str, np.ndarray], str]:
    """The numeric columns of a run's metrics rows, each (E,) float with NaN for an empty cell, and the name of
    the evaluated split ("eval" when no epoch was evaluated).

    Raises:
        ValueError: a cell that is not a number.
    """
    columns = {k: np.array([_number(r.get(k)) for r in rows]) for k in rows[0] if k != "eval_split"}
    split = next((r["eval_split"] for r in rows if r.get("eval_split")), "eval")
    return columns, split


def _number(text: str | None) -> float:
    return float(text) if text not in (None, "") else math.nan


def class_names(run: RunDir) -> list[str] | None:
    """The run's class names (its class-counts file), or None for a run that does not record them."""
    path = run / RunDir.CLASS_COUNTS
    if not path.is_file():
        return None
    names = json.loads(path.read_text()).get("class_names")
    return [str(n) for n in names] if names else None


def conflict_series(run_dir: str | Path, *, all_epochs: bool = False) -> ConflictSeries:
    """A run's per-class conflict ratios (see :func:`~ltcl.analysis.conflicts.conflict_ratios`) with its legend.

    Raises:
        FileNotFoundError: the run recorded no conflicts (the message says how to record them).
    """
    run = RunDir(run_dir)
    counts, ratios, used = conflict_ratios(run.read_conflicts(), all_epochs=all_epochs)
    objective = run.read_config().get("loss", {}).get("objective", "?")
    return ConflictSeries(run.label(), objective, counts, ratios, used, class_names(run))


def plot_conflict_runs(run_dirs: Sequence[str | Path], out: str | Path, all_epochs: bool = False) -> Path:
    """Fig. 4a of one or more runs on one figure; the count axis marks the first run's shot-group thresholds."""
    runs = [conflict_series(d, all_epochs=all_epochs) for d in run_dirs]
    many, few = RunDir(run_dirs[0]).thresholds()
    return plot_conflicts(runs, out, many=many, few=few, all_epochs=all_epochs)


# ----------------------------------------------------------------------------------------------------------
# The plots of one run: each returns the PNG it wrote, or None when the run has nothing to draw there


def _per_class_accuracy(run: RunDir) -> Path | None:
    results = run.read_results()
    if results["per_class_test"] is None:  # no test split
        return None
    many, few = run.thresholds()
    out = run / "per_class_accuracy.png"
    return plot_per_class_accuracy(
        results["class_counts"],
        results["per_class_test"],
        out,
        many=many,
        few=few,
        name=run.path.name,
        class_names=class_names(run),
    )


def _group_bars(run: RunDir) -> Path | None:
    test = run.read_results()["test"]
    return None if test is None else plot_group_bars(test, run / "shot_groups.png", name=run.path.name)


def _loss_curves(run: RunDir) -> Path:
    columns, _ = metric_columns(run.read_metrics())
    return plot_loss_curves(columns, run / "loss_curves.png", name=run.path.name)


def _accuracy_curves(run: RunDir) -> Path:
    columns, split = metric_columns(run.read_metrics())
    return plot_accuracy_curves(columns, split, run / "accuracy_curves.png", name=run.path.name)


def _conflicts(run: RunDir) -> Path:
    return plot_conflict_runs([run.path], run / CONFLICT_PLOT)


def make_run_plots(run_dir: str | Path) -> list[Path]:
    """Draws every plot the run's files allow into ``run_dir``; a failing plot is a warning on stderr, never an
    error (a finished run must not fail over a figure).

    Returns:
        The PNG files written, in a fixed order.
    """
    run = RunDir(run_dir)
    jobs: list[tuple[str, Callable[[RunDir], Path | None]]] = []
    if run.is_finished():
        jobs += [("per-class accuracy", _per_class_accuracy), ("shot-group bars", _group_bars)]
    if (run / RunDir.METRICS).is_file():
        jobs += [("loss curves", _loss_curves), ("accuracy curves", _accuracy_curves)]
    if (run / RunDir.CONFLICTS).is_file():
        jobs.append(("conflict ratios", _conflicts))
    written = []
    for name, draw in jobs:
        try:
            path = draw(run)
        except Exception as err:  # any failure of one figure, whatever its cause, leaves the others to draw
            print(f"warning: the {name} plot of {run} was not drawn ({type(err).__name__}: {err})", file=sys.stderr)
            continue
        if path is not None:
            written.append(path)
    return written
