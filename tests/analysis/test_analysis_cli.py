"""ltcl analyze conflicts | tsne on real runs: files written, numbers printed, clear errors."""

import csv
import functools
import os

import numpy as np
import pytest

from ltcl.cli import main
from ltcl.config import load_config
from ltcl.data.datasets import digits_arrays
from tests.analysis.conftest import DIGITS
from tests.analysis.test_plots import assert_valid_png, copy_run
from tests.test_configs_and_cli import ldam_counts


@functools.cache
def digit_counts() -> tuple[int, ...]:
    """digits_lt's training images per class (configs/digits_lt.yaml), recomputed from scikit-learn's digits: LDAM's
    sizes at the config's imbalance factor from the smallest pool (each class less its last 50 images, the test)."""
    pool = np.bincount(digits_arrays()[1]) - 50
    return tuple(ldam_counts(int(pool.min()), load_config(DIGITS).data.imbalance_factor, len(pool)))


def classes_line(classes) -> str:
    """The line t-SNE prints for these classes: digit names are the digits, each with its training count."""
    return "classes (training images): " + ", ".join(f"{c} ({digit_counts()[c]})" for c in classes)


def group_mean_ratios(run_dir, many, few):
    """Mean conflict ratio of the last epoch per shot group, recounted from conflicts.csv."""
    with (run_dir / "conflicts.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    last = max(int(r["epoch"]) for r in rows)
    ratio = {
        int(r["class"]): (int(r["train_count"]), int(r["conflicting_pairs"]) / int(r["positive_pairs"]))
        for r in rows
        if int(r["epoch"]) == last and int(r["positive_pairs"]) > 0
    }
    means = []
    for test in (lambda n: n > many, lambda n: few <= n <= many, lambda n: n < few, lambda n: True):
        values = [v for n, v in ratio.values() if test(n)]
        means.append("n/a" if not values else f"{sum(values) / len(values):.3f}")
    return means, last


def test_conflicts_of_two_runs_on_one_figure_with_group_means(tiny_run, sweep_dir, tmp_path, capsys):
    scl = sweep_dir / "alpha=0.1_seed0"  # bs+scl, many-shot threshold 200
    out = tmp_path / "fig4a.png"
    assert main(["analyze", "conflicts", str(scl), str(tiny_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert_valid_png(out)
    for run_dir, objective, many in ((scl, "bs+scl", 200), (tiny_run, "bs+acl", 100)):
        means, last = group_mean_ratios(run_dir, many, 20)
        assert f"| {run_dir.name} ({objective}) | last epoch, {last} | {' | '.join(means)} |" in printed
    assert f"wrote {out}" in printed


def test_conflicts_default_output_is_in_the_first_run(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run")
    assert main(["analyze", "conflicts", str(run), "--all-epochs"]) == 0
    assert "epochs 1-2 pooled" in capsys.readouterr().out
    assert_valid_png(run / "analysis_conflicts_all_epochs.png")  # never the run's own conflicts.png (item 24)


def test_conflicts_errors_name_the_fix(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "unmonitored")
    (run / "conflicts.csv").unlink()
    assert main(["analyze", "conflicts", str(run)]) == 2
    assert "--set train.monitor_conflicts=true" in capsys.readouterr().err
    assert main(["analyze", "conflicts", str(tmp_path / "missing")]) == 2
    assert f"Run directory {tmp_path / 'missing'} does not exist" in capsys.readouterr().err


def test_tsne_of_many_and_few_shot_classes(tiny_run, tmp_path, capsys):
    out = tmp_path / "tsne.png"
    argv = [
        "analyze",
        "tsne",
        "--checkpoint",
        str(tiny_run / "checkpoint_last.pt"),
        "--classes",
        "many:5,few:5",
        "--max-per-class",
        "12",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert_valid_png(out, min_width=500, min_height=400)
    # Fewer than 5 classes in each group (many > 100 training images, few < 20): all of them, with notes
    many = [c for c, n in enumerate(digit_counts()) if n > 100]
    few = [c for c, n in enumerate(digit_counts()) if n < 20]
    assert 0 < len(many) < 5 and 0 < len(few) < 5
    assert f"only {len(many)} many-shot class(es) exist" in printed
    assert f"only {len(few)} few-shot class(es) exist" in printed
    assert classes_line(many + few) in printed


def test_tsne_default_output_beside_the_checkpoint_and_explicit_classes(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run", keep_checkpoints=True)
    assert (
        main(
            [
                "analyze",
                "tsne",
                "--checkpoint",
                str(run / "checkpoint_last.pt"),
                "--classes",
                "1,5,9",
                "--max-per-class",
                "8",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    assert classes_line([1, 5, 9]) in capsys.readouterr().out
    assert_valid_png(run / "tsne_test.png")


def test_tsne_works_from_any_working_directory(tiny_run, tmp_path, monkeypatch, capsys):
    run = copy_run(tiny_run, tmp_path / "elsewhere" / "run", keep_checkpoints=True)
    cwd = tmp_path / "somewhere" / "else"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    checkpoint = os.path.relpath(run / "checkpoint_last.pt", cwd)
    argv = ["analyze", "tsne", "--checkpoint", checkpoint, "--classes", "0,9", "--max-per-class", "5"]
    assert main([*argv, "--device", "cpu"]) == 0
    assert classes_line([0, 9]) in capsys.readouterr().out
    assert_valid_png(run / "tsne_test.png")
    assert not list(cwd.iterdir())  # nothing is written to the working directory


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "data.few_threshold=5", "--classes", "few:2"], "asks for few-shot classes but this run has"),
        (["--classes", "rare:2"], "names no shot group"),
        (["--split", "val"], "has no 'val' split"),
        (["--max-per-class", "-1"], "--max-per-class must be 0"),
    ],
)
def test_tsne_user_errors(tiny_run, extra, message, capsys):
    checkpoint = str(tiny_run / "checkpoint_last.pt")
    argv = ["analyze", "tsne", "--checkpoint", checkpoint, "--device", "cpu", *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_tsne_missing_checkpoint(tmp_path, capsys):
    assert main(["analyze", "tsne", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_every_analysis_command_has_guiding_help(capsys):
    for argv in (["analyze", "conflicts"], ["analyze", "tsne"], ["sweep"], ["compare"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert "usage: ltcl" in text and len(text) > 300
