"""Run plots: drawn from a run directory, valid PNGs, linked from report.md, numbers read correctly."""

import shutil

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from ltcl.analysis import paper_plots, plots
from ltcl.analysis.conflicts import conflict_ratios, group_means
from ltcl.analysis.run_plots import conflict_series, make_run_plots, plot_conflict_runs
from ltcl.config import Config
from ltcl.engine.rundir import RunDir

RUN_PLOTS = ["per_class_accuracy.png", "shot_groups.png", "loss_curves.png", "accuracy_curves.png", "conflicts.png"]


def assert_valid_png(path, min_width=300, min_height=200):
    assert path.is_file(), f"{path} was not written"
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= min_width and image.height >= min_height
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.std() > 5, f"{path} looks blank"


def copy_run(tiny_run, run, keep_checkpoints=False):
    """A copy of the tiny run without its plots (and checkpoints), so that a test draws them itself."""
    ignore = ("*.png",) if keep_checkpoints else ("*.png", "*.pt")
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns(*ignore))
    return run


def test_a_finished_run_has_its_plots_linked_from_the_report(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    RunDir(run).link_plots(make_run_plots(run))  # what ltcl train and ltcl sweep do after a run
    report = (run / "report.md").read_text()
    for name in RUN_PLOTS:
        assert_valid_png(run / name)
        assert f"![{name}]({name})" in report


def test_make_run_plots_returns_what_it_wrote_and_skips_what_the_run_lacks(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "no_conflicts")
    (run / "conflicts.csv").unlink()
    written = make_run_plots(run)
    assert sorted(p.name for p in written) == sorted(set(RUN_PLOTS) - {"conflicts.png"})
    assert not (run / "conflicts.png").exists()


def test_a_broken_file_is_a_warning_and_the_other_plots_are_still_drawn(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "broken")
    (run / "metrics.csv").write_text("epoch,loss\n1,not-a-number\n")
    written = make_run_plots(run)
    err = capsys.readouterr().err
    assert "warning: the loss curves plot" in err and "warning: the accuracy curves plot" in err
    assert {p.name for p in written} == {"per_class_accuracy.png", "shot_groups.png", "conflicts.png"}


def _write_run(run_dir, rows, many=100, few=20, objective="bs+scl"):
    """A run dir with only config.yaml and conflicts.csv (rows: epoch, class, count, conflicts, pairs), written
    by RunDir's own writers."""
    cfg = Config()
    cfg.data.many_threshold, cfg.data.few_threshold, cfg.loss.objective = many, few, objective
    run = RunDir(run_dir)
    run.write_config(cfg, {"seed": 0})
    for epoch in sorted({r[0] for r in rows}):
        mine = sorted((r for r in rows if r[0] == epoch), key=lambda r: r[1])
        run.append_conflicts(epoch, [r[3] for r in mine], [r[4] for r in mine], [r[2] for r in mine])
    return run


def test_conflict_ratios_of_the_last_epoch_and_pooled_match_a_recount(tmp_path):
    rng = np.random.default_rng(1)
    counts = [500, 150, 101, 100, 40, 20, 19, 5]
    rows = []
    for epoch in (1, 2, 3):
        for c, n in enumerate(counts):
            pairs = int(rng.integers(0, 50)) if c != 7 else 0  # class 7 never has a positive pair
            rows.append((epoch, c, n, int(rng.integers(0, pairs + 1)), pairs))
    recorded = _write_run(tmp_path / "run", rows).read_conflicts()

    got_counts, last, used = conflict_ratios(recorded)
    assert got_counts.tolist() == counts and used == "last epoch, 3"
    _, pooled, used_all = conflict_ratios(recorded, all_epochs=True)
    assert used_all == "epochs 1-3 pooled"
    for c in range(len(counts)):
        mine = [(k, p) for e, cc, _, k, p in rows if cc == c]
        k_last, p_last = mine[-1]
        k_all, p_all = sum(k for k, _ in mine), sum(p for _, p in mine)
        assert np.isnan(last[c]) if p_last == 0 else last[c] == pytest.approx(k_last / p_last)
        assert np.isnan(pooled[c]) if p_all == 0 else pooled[c] == pytest.approx(k_all / p_all)

    means = group_means(last, counts, 100, 20)
    groups = {"many": [0, 1, 2], "medium": [3, 4, 5], "few": [6, 7]}  # boundaries 100 and 20 are medium
    for name, members in groups.items():
        finite = [last[c] for c in members if not np.isnan(last[c])]
        assert means[name] == (pytest.approx(sum(finite) / len(finite)) if finite else None)
    assert means["all"] == pytest.approx(np.nanmean(last))


def test_an_empty_group_has_no_mean_and_the_plot_still_draws(tmp_path):
    rows = [(1, 0, 50, 3, 10), (1, 1, 30, 1, 10)]  # only medium-shot classes
    run = _write_run(tmp_path / "run", rows)
    series = conflict_series(run.path)
    assert series.label == "run (bs+scl)" and series.epochs == "last epoch, 1"
    means = group_means(series.ratios, series.counts, 100, 20)
    assert means["many"] is None and means["few"] is None and means["medium"] == pytest.approx(0.2)
    assert_valid_png(plot_conflict_runs([run.path], run / "conflicts.png"))


def test_missing_conflicts_file_says_how_to_record_it(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(FileNotFoundError, match="--set train.monitor_conflicts=true"):
        conflict_series(tmp_path / "run")


def test_group_bars_leave_an_empty_group_as_a_labelled_gap_never_zero():
    fig = Figure()
    ax = fig.subplots()
    plots.draw_group_bars(ax, {"many": 71.5, "medium": 40.0, "few": None, "all": 60.25})
    heights = sorted(round(p.get_height(), 2) for p in ax.patches)
    assert heights == [40.0, 60.25, 71.5]  # three bars, none for the empty group
    texts = [t.get_text() for t in ax.texts]
    assert "n/a" in texts and "0.0" not in texts


def test_per_class_accuracy_plot_reads_the_run_files(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "edited")
    results = RunDir(run).read_results()
    results["per_class_test"][3] = None  # a class absent from the test split is skipped, not drawn at 0
    RunDir(run).write_results(results)
    assert "per_class_accuracy.png" in [p.name for p in make_run_plots(run)]
    assert_valid_png(run / "per_class_accuracy.png")
    counts, accuracy = results["class_counts"], results["per_class_test"]
    out = plots.plot_per_class_accuracy(counts, accuracy, tmp_path / "acc.png", many=100, few=20, name="edited")
    assert_valid_png(out)


def test_a_run_without_a_test_split_draws_its_curves_and_no_test_plots(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "no_test")
    results = RunDir(run).read_results()
    RunDir(run).write_results(results | {"test": None, "per_class_test": None})
    written = make_run_plots(run)
    assert {p.name for p in written} == {"loss_curves.png", "accuracy_curves.png", "conflicts.png"}
    assert "warning" not in capsys.readouterr().err  # nothing to draw is no failure


def test_tsne_and_sweep_figures_are_valid_pngs(tmp_path):
    rng = np.random.default_rng(0)
    points = rng.normal(size=(60, 2))
    labels = np.repeat([0, 4, 9], 20)
    names, counts = [f"c{j}" for j in range(10)], list(range(100, 0, -10))
    groups = [0, 0, 1, 1, 1, 1, 1, 1, 2, 2]
    path = paper_plots.plot_tsne(points, labels, [0, 4, 9], names, counts, groups, tmp_path / "t.png", "t-SNE test")
    assert_valid_png(path)
    bars = paper_plots.plot_setting_bars(
        ["a", "b", "c"], [50.0, None, 60.0], [1.0, None, None], tmp_path / "b.png", "b"
    )
    assert_valid_png(bars)
    series = {"x": ([0.1, 0.5], [50.0, 55.0], [None, 2.0])}
    assert_valid_png(paper_plots.plot_setting_lines(series, "loss.alpha", tmp_path / "lines.png", "lines"))
