"""ltcl compare as a leaderboard: settings by seed and schedule, paired differences with a 95% confidence interval,
ECE columns from eval reports, and the committed results csv of the CIFAR-10-LT ablation.

Every run directory and csv is written by hand; nothing is trained. The expected numbers are computed here, from the
values written, with the statistics module and scipy's t distribution.
"""

import csv
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats

from ltcl.cli import main
from ltcl.config import Config, save_config
from ltcl.engine.rundir import RunDir

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_CSV = REPO_ROOT / "benchmarks" / "results" / "cifar10_lt_ablation.csv"
GROUPS = ("many", "medium", "few", "all")
CSV_COLUMNS = ["setting", "label", "seed", "epochs", "many", "medium", "few", "all", "val_best_all", "revision",
               "seconds_per_epoch"]  # fmt: skip


def table_rows(text: str, first_cell: str) -> list[list[str]]:
    """The cells after the first of every Markdown table row whose first cell is ``first_cell``."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line[:1] == "|"]
    return [r[1:] for r in rows if r[0] == first_cell]


def one_row(text: str, first_cell: str) -> list[str]:
    rows = table_rows(text, first_cell)
    assert len(rows) == 1, (first_cell, text)
    return rows[0]


def headers(text: str, first_cell: str) -> list[str]:
    """The header cells of the table whose first header is ``first_cell``."""
    return one_row(text, first_cell)


def stat_cell(values: list[float]) -> str:
    """Mean ± sample std as the tables print them; a plain value for one; n/a for none."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def paired_cell(differences: list[float]) -> str:
    """The paired t cell computed here: mean ± sample std [mean ± t(0.975, n - 1) * std / sqrt(n)]."""
    if not differences:
        return "n/a"
    mean = statistics.mean(differences)
    if len(differences) < 2:
        return f"{mean:+.2f} [n/a]"
    std = statistics.stdev(differences)
    half = stats.t.ppf(0.975, len(differences) - 1) * std / math.sqrt(len(differences))
    return f"{mean:+.2f} ± {std:.2f} [{mean - half:+.2f}, {mean + half:+.2f}]"


def write_results_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({"revision": "abc1234", "few": "", "label": "", **row})
    return path


def compare(*argv, capsys):
    status = main(["compare", *map(str, argv)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# ---------------------------------------------------------------------------------------------------------------
# Paired differences against a baseline, from a results csv


def ablation_rows(all_values: dict[tuple[str, int], float]) -> list[dict]:
    """Rows of a results csv: Many = All + 1, Medium = All - 10, best-on-val All = All - 0.5, 20 epochs."""
    return [
        {
            "setting": s,
            "seed": seed,
            "epochs": 20,
            "many": a + 1,
            "medium": a - 10,
            "all": a,
            "val_best_all": a - 0.5,
            "seconds_per_epoch": 100 + seed,
        }  # fmt: skip
        for (s, seed), a in all_values.items()
    ]


def test_paired_differences_and_their_interval_are_a_paired_t_over_the_shared_seeds(tmp_path, capsys):
    # base ran seeds 0-3 and 5, acl 0-4: they share 0-3; acl's seed 4 and base's seed 5 have no partner
    base = {0: 61.0, 1: 60.2, 2: 62.7, 3: 59.9, 5: 70.0}
    acl = {0: 62.1, 1: 60.0, 2: 64.0, 3: 61.3, 4: 50.0}
    one = {0: 63.0}  # a single shared seed: a difference without an interval
    none = {7: 55.0}  # no shared seed at all
    values = {("base", s): v for s, v in base.items()} | {("acl", s): v for s, v in acl.items()}
    values |= {("one", s): v for s, v in one.items()} | {("none", s): v for s, v in none.items()}
    path = write_results_csv(tmp_path / "results.csv", ablation_rows(values))
    status, out, err = compare("--csv", path, "--baseline", "base", capsys=capsys)
    assert status == 0, err

    shared = [0, 1, 2, 3]
    d_all = [acl[s] - base[s] for s in shared]
    row = one_row(out, "acl − base")
    assert headers(out, "difference") == ["shared seeds", "Many", "Medium", "Few", "All", "All, best-on-val checkpoint"]
    # Many, Medium and best-on-val are All shifted by a constant: the same differences
    assert row == ["0, 1, 2, 3", *[paired_cell(d_all)] * 2, "n/a", *[paired_cell(d_all)] * 2]
    assert one_row(out, "one − base") == ["0", *[paired_cell([one[0] - base[0]])] * 2, "n/a",
                                          *[paired_cell([one[0] - base[0]])] * 2]  # fmt: skip
    assert "[n/a]" in one_row(out, "one − base")[1]
    assert not table_rows(out, "none − base") and "none: no seed shared with base" in out
    assert not table_rows(out, "base − base")

    # the settings table: mean ± sample std over each setting's seeds, the seeds listed, median s/epoch
    assert headers(out, "setting") == ["seeds", "Many", "Medium", "Few", "All", "All, best-on-val checkpoint",
                                       "s/epoch"]  # fmt: skip
    acl_all = list(acl.values())
    assert one_row(out, "acl") == [
        "0, 1, 2, 3, 4", stat_cell([a + 1 for a in acl_all]), stat_cell([a - 10 for a in acl_all]), "n/a",
        stat_cell(acl_all), stat_cell([a - 0.5 for a in acl_all]), "102",
    ]  # fmt: skip

    # the numbers behind the cells, unrounded, in the CSV next to --out
    md = tmp_path / "board.md"
    assert main(["compare", "--csv", str(path), "--baseline", "base", "--out", str(md)]) == 0
    capsys.readouterr()
    assert "acl − base" in md.read_text() and "| acl |" in md.read_text()
    with md.with_name("board_differences.csv").open(newline="") as file:
        written = {r["difference"]: r for r in csv.DictReader(file)}
    mean, std = statistics.mean(d_all), statistics.stdev(d_all)
    half = stats.t.ppf(0.975, 3) * std / 2
    numbers = written["acl − base"]
    assert numbers["shared_seeds"] == "0 1 2 3" and numbers["all_n"] == "4"
    assert float(numbers["all_mean"]) == pytest.approx(mean, abs=1e-6)
    assert float(numbers["all_std"]) == pytest.approx(std, abs=1e-6)
    assert float(numbers["all_ci_low"]) == pytest.approx(mean - half, abs=1e-6)
    assert float(numbers["all_ci_high"]) == pytest.approx(mean + half, abs=1e-6)
    assert written["one − base"]["all_ci_low"] == "" and written["one − base"]["all_n"] == "1"
    with md.with_suffix(".csv").open(newline="") as file:
        settings = {r["setting"]: r for r in csv.DictReader(file)}
    assert settings["acl"]["seeds"] == "5" and float(settings["acl"]["all_mean"]) == pytest.approx(
        statistics.mean(acl_all), abs=1e-6
    )


def test_the_baseline_may_be_named_by_its_label_and_an_unknown_one_is_refused(tmp_path, capsys):
    rows = ablation_rows({("base", 0): 60.0, ("base", 1): 61.0, ("acl", 0): 62.0, ("acl", 1): 62.5})
    rows[0]["label"] = rows[1]["label"] = "The baseline"
    path = write_results_csv(tmp_path / "results.csv", rows)
    status, out, err = compare("--csv", path, "--baseline", "The baseline", capsys=capsys)
    assert status == 0, err
    assert one_row(out, "acl − The baseline")[0] == "0, 1"
    status, out, err = compare("--csv", path, "--baseline", "bass", capsys=capsys)
    assert status == 2 and "bass" in err and "base" in err and len(err.strip().splitlines()) == 1


def test_schedules_are_separate_settings_and_pair_with_the_baseline_of_their_own_length(tmp_path, capsys):
    rows = ablation_rows({("base", 0): 60.0, ("base", 1): 61.0, ("acl", 0): 62.0, ("acl", 1): 64.0})
    rows += [{**r, "epochs": 5, "all": r["all"] - 20} for r in ablation_rows({("base", 0): 60.0, ("acl", 0): 61.0})]
    path = write_results_csv(tmp_path / "results.csv", rows)
    status, out, err = compare("--csv", path, "--baseline", "base", capsys=capsys)
    assert status == 0, err
    assert one_row(out, "acl, 20 epochs − base, 20 epochs")[4] == paired_cell([2.0, 3.0])
    assert one_row(out, "acl, 5 epochs − base, 5 epochs")[4] == paired_cell([1.0])
    assert one_row(out, "acl, 5 epochs")[4] == "41.00"

    status, out, err = compare("--csv", path, "--epochs", "20", capsys=capsys)  # one schedule: plain labels
    assert status == 0, err
    assert one_row(out, "acl")[4] == stat_cell([62.0, 64.0]) and not table_rows(out, "acl, 5 epochs")
    status, out, err = compare("--csv", path, "--epochs", "40", capsys=capsys)
    assert status == 2 and "40" in err and "5, 20" in err


# ---------------------------------------------------------------------------------------------------------------
# Run directories: distinct seeds, pairing, ECE from eval reports


def write_run(run_dir: Path, *, seed: int, objective: str, test: dict | None, best_all=None, report=None, seconds=(),
              sections=None):  # fmt: skip
    """A finished run as ltcl train leaves it (config.yaml with the method's ``sections``, results.json, metrics.csv
    with ``seconds`` per epoch), and ``report`` as ltcl eval's report on its last checkpoint (eval_test_last/)."""
    cfg = Config()
    cfg.loss.objective, cfg.loss.sections = objective, sections or {}
    cfg.train.seed, cfg.train.run_name, cfg.train.output_dir = seed, run_dir.name, str(run_dir.parent)
    run_dir.mkdir(parents=True)
    save_config(cfg, run_dir / RunDir.CONFIG, extra={"seed": seed})
    run = RunDir(run_dir)
    best = None if best_all is None else {**test, "all": best_all}
    run.write_results({"test": test, "test_best_val": best, "best_epoch": 1, "seed": seed})
    for epoch, s in enumerate(seconds, 1):
        run.append_metrics({"epoch": epoch, "step": epoch, "lr": 0.1, "loss": 1.0, "epoch_seconds": s})
    if report is not None:
        (run_dir / "eval_test_last").mkdir()
        (run_dir / "eval_test_last" / "report.json").write_text(json.dumps({"split": "test", **report}))
    return run_dir


def eval_report(ece: dict) -> dict:
    """What ltcl eval writes: ECE in % overall ("ece") and per shot group ("ece_groups")."""
    return {"ece": ece["all"], "ece_groups": {g: ece[g] for g in ("many", "medium", "few")}}


def accuracies(all_value: float) -> dict:
    return {"many": all_value + 1, "medium": all_value - 1, "few": all_value - 2, "all": all_value}


def test_runs_of_one_seed_count_once_and_pair_by_their_mean(tmp_path, capsys):
    # bs+acl ran seed 0 twice (70 and 72: the seed's value is 71) and seed 1 once (74)
    dirs = [
        write_run(tmp_path / "acl_a", seed=0, objective="bs+acl", test=accuracies(70.0), seconds=[10, 30]),
        write_run(tmp_path / "acl_b", seed=0, objective="bs+acl", test=accuracies(72.0), seconds=[12]),
        write_run(tmp_path / "acl_c", seed=1, objective="bs+acl", test=accuracies(74.0), seconds=[40]),
        write_run(tmp_path / "bs_0", seed=0, objective="bs", test=accuracies(69.0), best_all=69.5),
        write_run(tmp_path / "bs_1", seed=1, objective="bs", test=accuracies(71.0), best_all=70.0),
    ]
    status, out, err = compare(*dirs, "--baseline", "loss.objective=bs", capsys=capsys)
    assert status == 0, err
    acl = one_row(out, "loss.objective=bs+acl")
    assert acl[0] == "0, 1 (3 runs)"
    assert acl[4] == stat_cell([71.0, 74.0])  # over distinct seeds, not the three runs (72.00 ± 2.00)
    assert acl[5] == "n/a" and acl[6] == "20"  # no best-on-val result; the median over runs of their median epochs
    assert one_row(out, "loss.objective=bs")[5] == stat_cell([69.5, 70.0])
    diff = one_row(out, "loss.objective=bs+acl − loss.objective=bs")
    assert diff[0] == "0, 1" and diff[4] == paired_cell([71.0 - 69.0, 74.0 - 71.0])
    assert diff[5] == "n/a"  # bs+acl has no best-on-val number to pair

    # the baseline named by one of its run directories
    status, out2, err = compare(*dirs, "--baseline", tmp_path / "bs_1", capsys=capsys)
    assert status == 0, err
    assert one_row(out2, "loss.objective=bs+acl − loss.objective=bs") == diff


def test_labels_leave_out_the_method_sections_that_the_objective_already_tells(tmp_path, capsys):
    acl = {"acl": {"use_centers": True, "negative_weighting": "inverse_frequency"}}
    no_centres = {"acl": {"use_centers": False, "negative_weighting": "inverse_frequency"}}
    dirs = [
        write_run(tmp_path / "acl", seed=0, objective="bs+acl", test=accuracies(70.0), sections=acl),
        write_run(tmp_path / "bs", seed=0, objective="bs", test=accuracies(69.0)),
    ]
    status, out, err = compare(*dirs, "--baseline", "loss.objective=bs", capsys=capsys)
    assert status == 0, err
    assert one_row(out, "loss.objective=bs+acl − loss.objective=bs")[4] == paired_cell([1.0])
    centres = write_run(tmp_path / "nc", seed=0, objective="bs+acl", test=accuracies(68.0), sections=no_centres)
    status, out, err = compare(*dirs, centres, capsys=capsys)  # the section's value tells two settings apart
    assert status == 0, err
    assert one_row(out, "loss.acl.use_centers=false, loss.objective=bs+acl")[4] == "68.00"
    assert one_row(out, "loss.acl.use_centers=(unset), loss.objective=bs")[4] == "69.00"


def test_ece_columns_come_from_the_eval_reports_and_are_n_a_without_one(tmp_path, capsys):
    ece = {"many": 2.0, "medium": 4.0, "few": 9.0, "all": 3.0}
    shifted = {k: v + 1 for k, v in ece.items()}
    # temperature-scaled: the model's own ECE is the one "before"; the calibrated one is left aside
    calibrated = eval_report({k: 0.5 for k in ece}) | {
        "calibration": {"method": "temperature", "ece_before": shifted["all"],
                        "ece_groups_before": {g: shifted[g] for g in ("many", "medium", "few")}},
    }  # fmt: skip
    dirs = [
        write_run(tmp_path / "a0", seed=0, objective="bs+acl", test=accuracies(70.0), report=eval_report(ece)),
        write_run(tmp_path / "a1", seed=1, objective="bs+acl", test=accuracies(71.0), report=calibrated),
        write_run(tmp_path / "b0", seed=0, objective="bs", test=accuracies(69.0)),  # not evaluated by ltcl eval
        write_run(tmp_path / "c0", seed=0, objective="ce", test=accuracies(50.0)),
    ]
    (dirs[3] / "eval_test").mkdir()  # a report with the overall number only, in eval_test/
    (dirs[3] / "eval_test" / "report.json").write_text(json.dumps({"ece": 6.5, "logit_adjust_tau": 1.0}))
    status, out, err = compare(*dirs, "--baseline", "loss.objective=ce", capsys=capsys)
    assert status == 0, err
    assert headers(out, "setting")[6:] == ["ECE Many", "ECE Medium", "ECE Few", "ECE All", "s/epoch"]
    assert one_row(out, "loss.objective=bs+acl")[6:10] == [stat_cell([ece[g], shifted[g]]) for g in GROUPS]
    assert one_row(out, "loss.objective=bs")[6:10] == ["n/a"] * 4
    assert one_row(out, "loss.objective=ce")[6:10] == ["n/a", "n/a", "n/a", "6.50"]
    paired_ece = one_row(out, "loss.objective=bs+acl − loss.objective=ce")[6:]
    assert paired_ece == ["n/a"] * 3 + [paired_cell([ece["all"] - 6.5])]  # ce has seed 0 only, and no group ECE
    assert "eval_test_last/report.json" in out and f"{dirs[3]} (tau 1)" in out

    status, out, err = compare(dirs[2], capsys=capsys)  # no report anywhere: no ECE columns at all
    assert status == 0, err
    assert "ECE" not in out


# ---------------------------------------------------------------------------------------------------------------
# The committed results csv and the README


def committed_rows(epochs: int) -> list[dict]:
    with RESULTS_CSV.open(newline="") as file:
        return [r for r in csv.DictReader(file) if int(r["epochs"]) == epochs]


def test_the_committed_csv_gives_the_readme_results_table(capsys):
    status, out, err = compare("--csv", RESULTS_CSV, "--epochs", "20", "--baseline", "bs_acl", capsys=capsys)
    assert status == 0, err
    rows = committed_rows(20)
    acl = [r for r in rows if r["setting"] == "bs_acl"]
    label = acl[0]["label"]
    assert label == "BS + ACL (ours)"
    cells = one_row(out, label)
    assert cells[:5] == [", ".join(r["seed"] for r in acl)] + [
        stat_cell([float(r[g]) for r in acl if r[g]]) for g in GROUPS
    ]
    scl = {r["seed"]: r for r in rows if r["setting"] == "bs_scl_aware"}
    shared = [r["seed"] for r in acl if r["seed"] in scl]
    differences = [float(scl[r["seed"]]["all"]) - float(r["all"]) for r in acl if r["seed"] in scl]
    diff = one_row(out, f"{scl['0']['label']} − {label}")
    assert diff[0] == ", ".join(shared) and diff[4] == paired_cell(differences)

    # the README's tables are this output and the ablation script's, line for line
    readme = (REPO_ROOT / "README.md").read_text()
    script = [sys.executable, str(REPO_ROOT / "benchmarks" / "cifar10_ablation.py"), "--table"]
    questions = subprocess.run(script, capture_output=True, text=True, check=True).stdout
    pipeline = subprocess.run([*script, "--pipeline", "--epochs", "5"], capture_output=True, text=True, check=True)
    printed = markdown_tables(out)
    assert len(printed) == 2 and markdown_tables(questions)[0] == printed[0]
    for table in [*printed, *markdown_tables(questions), *markdown_tables(pipeline.stdout)]:
        assert table in readme, f"regenerate the README's table with the command that prints it:\n{table}"


def markdown_tables(text: str) -> list[str]:
    """Each run of lines that start with ``|``."""
    tables, lines = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            tables.append("\n".join(lines))
            lines = []
    return tables


def test_user_mistakes_are_one_sentence(tmp_path, capsys):
    run = write_run(tmp_path / "r", seed=0, objective="bs", test=accuracies(60.0))
    csv_path = write_results_csv(tmp_path / "results.csv", ablation_rows({("base", 0): 60.0}))
    broken = tmp_path / "broken.csv"
    broken.write_text("setting,seed\nbase,0\n")
    for argv, words in (
        ([], "run directories"),
        ([run, "--csv", csv_path], "not both"),
        (["--csv", tmp_path / "none.csv"], "does not exist"),
        (["--csv", broken], "no column epochs"),
        ([run, "--epochs", "3"], "trained 200"),  # the default config's epochs
    ):
        status, out, err = compare(*argv, capsys=capsys)
        assert status == 2 and words in err and len(err.strip().splitlines()) == 1, (argv, err)
