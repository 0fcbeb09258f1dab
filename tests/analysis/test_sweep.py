"""ltcl sweep and ltcl compare: mean ± std tables checked against results.json; skip, resume, commands."""

import csv
import json
import random
import shlex
import shutil
import statistics
import subprocess
import sys

import pytest
import yaml

from ltcl.analysis.sweep import parse_grid, plan_sweep, split_values
from ltcl.cli import main
from ltcl.config import Config, save_config
from ltcl.engine.rundir import RunDir
from tests.analysis.conftest import DIGITS, REPO_ROOT, SWEEP_ARGS
from tests.analysis.test_plots import RUN_PLOTS, assert_valid_png

ALPHAS = ("0.1", "0.5")
GROUPS = ("many", "medium", "few", "all")


def expected_cells(run_dirs):
    """Independent mean ± sample std of each group over the runs, formatted as the tables print them."""
    tests = [json.loads((d / "results.json").read_text())["test"] for d in run_dirs]
    cells = []
    for g in GROUPS:
        values = [t[g] for t in tests if t[g] is not None]
        if not values:
            cells.append("n/a")
        elif len(values) == 1:
            cells.append(f"{values[0]:.2f}")
        else:
            cells.append(f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}")
    return cells


def test_sweep_runs_every_setting_and_seed_and_tabulates_them(sweep_dir):
    names = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    assert names == [f"alpha={a}_seed{s}" for a in ALPHAS for s in (0, 1)]
    for a in ALPHAS:
        for s in (0, 1):
            saved = yaml.safe_load((sweep_dir / f"alpha={a}_seed{s}" / "config.yaml").read_text())
            assert saved["loss"]["alpha"] == float(a) and saved["train"]["seed"] == s
            assert saved["loss"]["objective"] == "bs+scl" and saved["optim"]["epochs"] == 1

    table = (sweep_dir / "sweep.md").read_text()
    with (sweep_dir / "sweep.csv").open(newline="") as file:
        rows = {r["setting"]: r for r in csv.DictReader(file)}
    for a in ALPHAS:
        cells = expected_cells([sweep_dir / f"alpha={a}_seed{s}" for s in (0, 1)])
        assert cells[0] == "n/a"  # many-shot threshold 200: no digit class has more images
        assert f"| loss.alpha={a} | {' | '.join(cells)} | 2 |" in table
        row = rows[f"loss.alpha={a}"]
        assert [row["Many"], row["Medium"], row["Few"], row["All"]] == cells
        assert row["seeds"] == "2" and row["loss.alpha"] == a


def test_sweep_plots_are_written_and_linked(sweep_dir):
    table = (sweep_dir / "sweep.md").read_text()
    for name in ("sweep_all.png", "sweep_loss.alpha.png"):  # bars per setting; All against the numeric key
        assert_valid_png(sweep_dir / name)
        assert f"![{name}]({name})" in table
    for run in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):  # every run's own plots, as ltcl train draws
        report = (run / "report.md").read_text()
        for name in RUN_PLOTS:
            assert_valid_png(run / name)
            assert f"![{name}]({name})" in report


def test_a_second_sweep_retrains_nothing_and_a_lost_result_resumes_from_its_checkpoint(sweep_dir, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(sweep_dir, out)
    files = sorted(out.glob("*/results.json")) + sorted(out.glob("*/checkpoint_last.pt"))
    before = {f: f.stat().st_mtime_ns for f in files}
    assert main(SWEEP_ARGS + ["--out", str(out)]) == 0
    assert capsys.readouterr().out.count("done already (results.json exists), skipped") == 4
    assert {f: f.stat().st_mtime_ns for f in files} == before

    lost = out / "alpha=0.5_seed1"
    (lost / "results.json").unlink()
    assert main(SWEEP_ARGS + ["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"alpha=0.5_seed1: resuming from {lost / 'checkpoint_last.pt'}" in printed
    assert printed.count("skipped") == 3
    resumes = RunDir(lost).read_resumes()
    # the record names the epoch training would continue in, 1-based: after the one epoch it finished
    assert len(resumes) == 1 and resumes[0]["epoch"] == 2 and resumes[0]["changed"] == {}
    report = (lost / "report.md").read_text()  # the final report is written again, with its plots linked
    assert all(f"![{name}]({name})" in report for name in RUN_PLOTS) and report.count("## Plots") == 1
    checkpoint = lost / "checkpoint_last.pt"
    assert checkpoint.stat().st_mtime_ns == before[checkpoint]  # no epoch was trained again
    recovered = json.loads((lost / "results.json").read_text())["test"]
    assert recovered == json.loads((sweep_dir / "alpha=0.5_seed1" / "results.json").read_text())["test"]


def test_a_sweep_does_not_reuse_runs_made_with_other_settings(sweep_dir, capsys):
    other = SWEEP_ARGS + ["--set", "loss.temperature=0.2", "--set", "data.num_workers=1", "--out", str(sweep_dir)]
    assert main(other) == 2
    err = capsys.readouterr().err
    assert "was made with other settings (loss.temperature differ)" in err  # num_workers may change


def test_print_commands_lists_one_quoted_torchrun_line_per_run_and_runs_nothing(tmp_path):
    out = tmp_path / "my sweep"
    command = [
        sys.executable,
        "-m",
        "ltcl.cli",
        *SWEEP_ARGS,
        "--out",
        str(out),
        "--print-commands",
        "--nproc-per-node",
        "2",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 4 and not out.exists()
    for line, (a, s) in zip(lines, [(a, s) for a in ALPHAS for s in (0, 1)]):
        words = shlex.split(line)
        assert words[:8] == ["torchrun", "--nproc-per-node", "2", "-m", "ltcl.cli", "train", "-c", DIGITS]
        sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
        assert sets[-4:] == [
            f"loss.alpha={a}",
            f"train.seed={s}",
            f"train.output_dir={out}",
            f"train.run_name=alpha={a}_seed{s}",
        ]
        assert "loss.objective=bs+scl" in sets


def test_print_commands_marks_finished_runs(sweep_dir, capsys):
    assert main(SWEEP_ARGS + ["--out", str(sweep_dir), "--print-commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("# done") for line in lines)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--grid", "loss.alpah=0.1,0.2"], "Unknown config key 'loss.alpah'"),
        (["--grid", "optim.epochs=1,two"], "'optim.epochs' expects an integer"),
        (["--grid", "train.seed=1,2"], "cannot vary train.seed"),
        (["--grid", "loss.objective=bs,nonsense"], "nonsense"),
        (["--grid", "loss.temperature=0.1", "--set", "loss.temperature=0.2"], "--set loss.temperature conflicts"),
        (["--nproc-per-node", "2"], "only applies with --print-commands"),
    ],
)
def test_bad_sweeps_fail_before_anything_runs(extra, message, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["sweep", "-c", DIGITS, "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_grid_values_split_outside_brackets_and_names_stay_filesystem_safe(tmp_path):
    assert split_values("[32,24],[32,32], 5") == ["[32,24]", "[32,32]", "5"]
    axes = parse_grid(["views.sizes=[32,24],[32,32]", "loss.objective=bs,bs+acl"])
    assert [a.numeric for a in axes] == [False, False]
    runs = plan_sweep(axes, 1, [], tmp_path)
    assert [r.name for r in runs] == [
        "sizes=32-24_objective=bs_seed0",
        "sizes=32-24_objective=bs+acl_seed0",
        "sizes=32-32_objective=bs_seed0",
        "sizes=32-32_objective=bs+acl_seed0",
    ]
    assert runs[1].overrides[:2] == ["views.sizes=[32,24]", "loss.objective=bs+acl"]
    with pytest.raises(ValueError, match="same run name"):
        plan_sweep(parse_grid(["model.weights=a b,a/b"]), 1, [], tmp_path)


def test_compare_groups_seeds_of_a_setting_and_labels_what_differs(sweep_dir, tmp_path, capsys):
    dirs = [sweep_dir / f"alpha={a}_seed{s}" for a in ALPHAS for s in (0, 1)]
    out = tmp_path / "tables" / "compare.md"
    assert main(["compare", *map(str, dirs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for a in ALPHAS:
        cells = expected_cells([sweep_dir / f"alpha={a}_seed{s}" for s in (0, 1)])
        row = f"| loss.alpha={a} | 0, 1 | {' | '.join(cells)} |"  # then best-on-val All and s/epoch
        assert row in printed and row in out.read_text()
    with out.with_suffix(".csv").open(newline="") as file:
        assert [r["setting"] for r in csv.DictReader(file)] == ["loss.alpha=0.1", "loss.alpha=0.5"]


def test_compare_falls_back_to_the_directory_name_and_names_a_missing_result(sweep_dir, tmp_path, capsys):
    one = sweep_dir / "alpha=0.1_seed0"
    assert main(["compare", str(one)]) == 0
    assert f"| alpha=0.1_seed0 | 0 | {' | '.join(expected_cells([one]))} |" in capsys.readouterr().out

    empty = tmp_path / "empty"  # no config.yaml: not a run (an unfinished run is listed, see test_compare_runs)
    empty.mkdir()
    assert main(["compare", str(one), str(empty)]) == 0
    assert f"skipping {empty}: not a run directory" in capsys.readouterr().err
    assert main(["compare", str(empty)]) == 2
    assert "is a run directory" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_compare_of_a_glob_skips_the_files_of_a_sweep_and_lists_an_unfinished_run(sweep_dir, tmp_path, capsys):
    matched = sorted(sweep_dir.glob("*"))  # what the shell gives for sweep_dir/*: runs, sweep.csv, sweep.md, PNGs
    files = [p for p in matched if not p.is_dir()]
    assert {"sweep.csv", "sweep.md"} <= {p.name for p in files}
    assert main(["compare", *map(str, matched)]) == 0
    captured = capsys.readouterr()
    for path in files:
        assert f"skipping {path}: not a run directory" in captured.err
    assert captured.err.count("skipping") == len(files) and "error" not in captured.err
    for a in ALPHAS:
        cells = expected_cells([sweep_dir / f"alpha={a}_seed{s}" for s in (0, 1)])
        assert f"| loss.alpha={a} | 0, 1 | {' | '.join(cells)} |" in captured.out

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(sweep_dir / "alpha=0.1_seed0" / RunDir.CONFIG, unfinished / RunDir.CONFIG)  # started, not done
    assert main(["compare", *map(str, matched), str(unfinished)]) == 0
    assert f"unfinished (no results.json yet, left out): {unfinished}" in capsys.readouterr().out
    assert main(["compare", str(sweep_dir / "sweep.csv")]) == 2
    assert "is a run directory" in capsys.readouterr().err


def _write_finished_run(run_dir, seed, objective, test):
    cfg = Config()
    cfg.loss.objective = objective
    cfg.train.seed, cfg.train.run_name, cfg.train.output_dir = seed, run_dir.name, str(run_dir.parent)
    run_dir.mkdir(parents=True)
    save_config(cfg, run_dir / "config.yaml", extra={"seed": seed})
    (run_dir / "results.json").write_text(json.dumps({"test": test, "seed": seed}))


def test_compare_computes_mean_and_sample_std_of_distinct_numbers(tmp_path, capsys):
    rng = random.Random(0)
    dirs = []
    for objective, seeds in (("bs+acl", 3), ("bs", 2)):
        for seed in range(seeds):
            test = {g: round(rng.uniform(20, 80), 3) for g in GROUPS}
            if objective == "bs":
                test["few"] = None  # an empty group stays n/a, never 0
            dirs.append(tmp_path / f"{objective}_s{seed}")
            _write_finished_run(dirs[-1], seed, objective, test)
    assert main(["compare", *map(str, dirs)]) == 0
    printed = capsys.readouterr().out
    acl_cells, bs_cells = expected_cells(dirs[:3]), expected_cells(dirs[3:])
    assert bs_cells[2] == "n/a" and " ± 0.00" not in " ".join(acl_cells + bs_cells)
    assert f"| loss.objective=bs+acl | 0, 1, 2 | {' | '.join(acl_cells)} | n/a | n/a |" in printed
    assert f"| loss.objective=bs | 0, 1 | {' | '.join(bs_cells)} | n/a | n/a |" in printed
