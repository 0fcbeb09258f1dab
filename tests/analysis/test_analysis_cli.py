"""ltcl analyze conflicts | tsne on real runs: files written, numbers printed, clear errors."""

import csv
import os

import pytest

from ltcl.cli import main
from tests.analysis.test_plots import assert_valid_png, copy_run

DIGIT_COUNTS = [124, 96, 74, 57, 44, 34, 26, 20, 16, 12]  # digits_lt at imbalance 10 (configs/digits_lt.yaml)


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
    # digits_lt has one many-shot class (124 images) and two few-shot ones (16, 12): all taken, with notes
    assert "only 1 many-shot class(es) exist" in printed and "only 2 few-shot class(es) exist" in printed
    assert "classes (training images): 0 (124), 8 (16), 9 (12)" in printed


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
    counts = ", ".join(f"{c} ({DIGIT_COUNTS[c]})" for c in (1, 5, 9))
    assert f"classes (training images): {counts}" in capsys.readouterr().out
    assert_valid_png(run / "tsne_test.png")


def test_tsne_works_from_any_working_directory(tiny_run, tmp_path, monkeypatch, capsys):
    run = copy_run(tiny_run, tmp_path / "elsewhere" / "run", keep_checkpoints=True)
    cwd = tmp_path / "somewhere" / "else"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    checkpoint = os.path.relpath(run / "checkpoint_last.pt", cwd)
    argv = ["analyze", "tsne", "--checkpoint", checkpoint, "--classes", "0,9", "--max-per-class", "5"]
    assert main([*argv, "--device", "cpu"]) == 0
    assert "classes (training images): 0 (124), 9 (12)" in capsys.readouterr().out
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
