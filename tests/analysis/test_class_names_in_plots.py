"""Per-class figures name the classes a run knows by name; a t-SNE legend lists only the classes it draws."""

from pathlib import Path

import numpy as np

from ltcl.analysis import paper_plots, plots
from ltcl.analysis.run_plots import make_run_plots
from ltcl.config import Config
from ltcl.engine.rundir import RunDir

NAMES = ["airplane", "automobile", "bird", "cat", "deer"]
COUNTS = [500, 200, 80, 30, 10]


def capture_figures(monkeypatch, module):
    """Replaces ``module.save_figure``: the figures are kept (name -> Figure) instead of written."""
    figures = {}

    def keep(fig, path):
        figures[Path(path).name] = fig
        return Path(path)

    monkeypatch.setattr(module, "save_figure", keep)
    return figures


def texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_per_class_plots_show_the_class_names_of_the_run(tmp_path, monkeypatch):
    # Item 26: today the per-class accuracy and conflict figures name no class (names known from class_counts.json).
    run = RunDir(tmp_path / "named")
    run.write_config(Config(), {"seed": 0})
    run.write_class_counts(COUNTS, NAMES, [2] * len(COUNTS))
    per_class = [90.0, 70.0, 50.0, None, 10.0]  # "cat" has no test image: no point, no name
    test = {"many": 80.0, "medium": 50.0, "few": 10.0, "all": 60.0}
    run.write_results({"test": test, "per_class_test": per_class, "class_counts": COUNTS, "seed": 0})
    run.append_conflicts(1, [1, 2, 3, 4, 5], [10, 10, 10, 10, 10], COUNTS)

    figures = capture_figures(monkeypatch, plots)
    make_run_plots(run.path)
    accuracy = texts(figures["per_class_accuracy.png"])
    assert {"airplane", "automobile", "bird", "deer"} <= set(accuracy) and "cat" not in accuracy
    assert set(NAMES) <= set(texts(figures["conflicts.png"]))


def test_the_tsne_legend_leaves_out_classes_without_points(tmp_path, monkeypatch):
    # Item 26: today a chosen class with no image in the split still has a legend entry (and no point).
    figures = capture_figures(monkeypatch, paper_plots)
    points = np.random.default_rng(0).normal(size=(40, 2))
    labels = np.repeat([0, 2], 20)
    groups = [0, 0, 1, 1, 2]
    paper_plots.plot_tsne(points, labels, [0, 2, 4], NAMES, COUNTS, groups, tmp_path / "t.png", "t-SNE")
    legend = [t.get_text() for t in figures["t.png"].axes[0].get_legend().get_texts()]
    assert legend == ["airplane (500)", "bird (80)"]
