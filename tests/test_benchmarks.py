"""The benchmark scripts the README quotes still run, on tiny settings, and print their tables.

Timings are for the benchmarks to report, never for tests to assert: of a timing only its form is checked (a
positive number), but every number derived from timings (a ratio) must follow from the printed timings, and
every accuracy must be the saved model's.
"""

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine.test_training import evaluated_again

REPO_ROOT = Path(__file__).resolve().parents[1]

NUMBER = re.compile(r"^[\d,]+(\.\d+)?%?$")


def run_benchmark(script, *args):
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def table_rows(stdout, first_cell):
    """The cells of every Markdown table row whose first cell is ``first_cell``."""
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")] for line in stdout.splitlines() if line.startswith("|")
    ]
    return [r for r in rows if r[0] == first_cell]


def number(cell):
    """A printed number (digits, thousands commas, optional decimals and %) as a float."""
    assert NUMBER.match(cell), cell
    return float(cell.rstrip("%").replace(",", ""))


def assert_ratio(printed, numerator, denominator, *, half_unit):
    """``printed`` (2 decimals) is numerator / denominator of the unrounded values behind two printed cells, each
    rounded to ``half_unit`` either way: the ratio must lie in the interval that rounding allows."""
    q, a, b = number(printed), number(numerator), number(denominator)
    low = (a - half_unit) / (b + half_unit)
    high = (a + half_unit) / (b - half_unit) if b > half_unit else float("inf")
    assert low - 0.005 - 1e-9 <= q <= high + 0.005 + 1e-9, (printed, numerator, denominator, low, high)


def test_loss_speed_prints_every_loss_with_its_ratios():
    out = run_benchmark("loss_speed.py", "--device", "cpu", "--repeats", "2", "--shapes", "CIFAR-100-LT")
    rows = table_rows(out, "CIFAR-100-LT")
    assert [r[4] for r in rows] == [
        "ACL (ours, centres + weights)",
        "SupCon (ours)",
        "SupCon (SupContrast-style)",
        "matmul floor",
    ]
    milliseconds = {row[4]: row[5] for row in rows}
    for row in rows:
        assert number(row[5]) > 0 and number(row[6]) >= 0  # a timing, and a peak (the floor may allocate little)
        # the ratios are this row's time over the SupContrast-style row's and over the floor's (printed in ms, 2 dp)
        assert_ratio(row[7], row[5], milliseconds["SupCon (SupContrast-style)"], half_unit=0.005)
        assert_ratio(row[8], row[5], milliseconds["matmul floor"], half_unit=0.005)


def test_pipeline_overhead_compares_the_full_step_with_the_bare_model(cifar10_npz):
    out = run_benchmark(
        "pipeline_overhead.py", "--data", str(cifar10_npz), "--set", "data.batch_size=8", "--steps", "1",
        "--rounds", "2", "--warmup", "1",
    )  # fmt: skip
    (bare,) = table_rows(out, "bare ResNet-32 forward/backward/SGD, bf16 autocast, channels_last")
    (full,) = table_rows(out, "full ltcl training step, the config as it is")
    assert number(bare[1]) > 0 and number(full[1]) > 0
    # Ratio = full views/s over bare views/s, both printed as whole numbers.
    assert_ratio(full[2], full[1], bare[1], half_unit=0.5)


def test_data_speed_times_the_presets_and_the_four_view_recipes(cifar10_npz):
    out = run_benchmark(
        "data_speed.py", "--npz", str(cifar10_npz), "--images", "8", "--repeats", "1", "--presets", "none", "digits"
    )
    for preset in ("none", "digits"):
        (row,) = table_rows(out, preset)
        assert number(row[1]) > 0 and number(row[2]) > 0
    assert "| 4-view recipe |" in out


def test_the_ablation_sweep_trains_a_row_skips_a_finished_run_and_tabulates_it(small_cifar10_npz, tmp_path):
    results = tmp_path / "ablation.csv"
    sweep = ["cifar10_ablation.py", "--data", str(small_cifar10_npz), "--out", str(tmp_path / "runs"), "--csv",
             str(results), "--epochs", "1", "--runs", "bs_acl:3", "--set", "train.max_steps_per_epoch=2"]  # fmt: skip
    assert "[run] bs_acl_seed3_e1" in run_benchmark(*sweep)
    (row,) = list(csv.DictReader(results.open()))
    assert (row["setting"], row["seed"], row["epochs"]) == ("bs_acl", "3", "1")
    # The row's accuracies are the saved models' on the test split, evaluated again here from the checkpoints: the
    # last epoch's model, and the model that was best on validation (its checkpoint_best.pt).
    run = tmp_path / "runs" / "bs_acl_seed3_e1"
    last = evaluated_again(run / "checkpoint_last.pt")
    best = evaluated_again(run / "checkpoint_best.pt")
    expected = {k: "" if v is None else f"{v:.2f}" for k, v in last.as_dict().items()}
    assert {k: row[k] for k in expected} == expected
    assert row["val_best_all"] == f"{best.all:.2f}"
    with (run / "metrics.csv").open() as file:
        (epoch,) = list(csv.DictReader(file))
    assert row["seconds_per_epoch"] == f"{float(epoch['epoch_seconds']):.1f}"
    assert re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?", row["revision"]), row["revision"]
    assert "[done] bs_acl_seed3_e1" in run_benchmark(*sweep)  # finished: not trained again
    assert row["label"] == "BS + ACL (ours)"
    (table_row,) = table_rows(run_benchmark(*sweep[:7], "--epochs", "1", "--table"), "BS + ACL (ours)")
    assert table_row[1:7] == ["3", row["many"], row["medium"], row["few"], row["all"], row["val_best_all"]]


def write_result_rows(path, accuracy, *, epochs, best_offset):
    """A hand-written results csv as older versions of the script wrote it (no label column: the script supplies
    its settings' labels): for each (setting, seed) -> All, Many = All, Medium = All - 10, no Few, and best-on-val
    All = All + best_offset."""
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["setting", "seed", "epochs", "many", "medium", "few", "all", "val_best_all", "revision",
                         "seconds_per_epoch"])  # fmt: skip
        for (setting, seed), value in accuracy.items():
            writer.writerow([setting, seed, epochs, value, value - 10, "", value, value + best_offset, "abc1234", 9])


def no_few(cell):
    """The cells of a difference row whose Many, Medium, All and best-on-val All differ alike: Few has no class."""
    return [cell, cell, "n/a", cell, cell]


def test_the_pipeline_check_pairs_its_runs_by_seed(tmp_path):
    results = tmp_path / "pipeline.csv"
    # seed 2 has no partner: it is left out of the differences
    accuracy = {("bf16_device", 0): 60.0, ("bf16_loader", 0): 58.0, ("fp32_loader", 0): 59.0,
                ("bf16_device", 1): 62.0, ("bf16_loader", 1): 61.0, ("fp32_loader", 1): 61.0,
                ("fp32_loader", 2): 70.0}  # fmt: skip
    write_result_rows(results, accuracy, epochs=5, best_offset=1.0)
    out = run_benchmark("cifar10_ablation.py", "--csv", str(results), "--epochs", "5", "--pipeline", "--table")
    # device - loader: +2 and +1 points -> mean 1.5, sample std 0.707; bf16 - fp32: -1 and 0 -> -0.5, 0.707; two
    # seeds: the 95% interval is mean ± t(0.975, 1) * std / sqrt(2) = mean ± 12.706 * 0.5
    (device,) = table_rows(out, "on-device augmentation - PIL loader (both bf16)")
    assert device[1:] == ["0, 1"] + no_few("+1.50 ± 0.71 [-4.85, +7.85]")
    (precision,) = table_rows(out, "bf16 - float32 (both PIL loader)")
    assert precision[1:] == ["0, 1"] + no_few("-0.50 ± 0.71 [-6.85, +5.85]")
    (fp32_row,) = table_rows(out, "BS + ACL, float32, PIL loader")
    assert fp32_row[1] == "0, 1, 2"


def test_the_ablation_table_pairs_each_question_by_seed(tmp_path):
    results = tmp_path / "ablation.csv"
    # bs_4views ran only seed 2, which bs_acl lacks: that question has no pair and is left out
    accuracy = {("bs_acl", 0): 62.0, ("bs_acl", 1): 60.0, ("bs_scl_aware", 0): 61.0, ("bs_scl_aware", 1): 61.0,
                ("bs_4views", 2): 65.0}  # fmt: skip
    write_result_rows(results, accuracy, epochs=20, best_offset=0.0)
    out = run_benchmark("cifar10_ablation.py", "--csv", str(results), "--table")
    # ACL - SCL: +1 and -1 points -> mean 0, sample std sqrt(2), interval ± 12.706 * sqrt(2) / sqrt(2)
    (acl_scl,) = table_rows(out, "BS + ACL - BS + SCL, distribution-aware views")
    assert acl_scl[1:] == ["0, 1"] + no_few("+0.00 ± 1.41 [-12.71, +12.71]")
    assert not table_rows(out, "BS + ACL - BS, 4 views")


def test_the_parameter_counts_follow_from_the_shapes_of_a_vit():
    out = run_benchmark("finetune_param_counts.py", "--model", "vit_tiny_patch16_224", "--classes", "100")
    d, depth = 192, 12  # ViT-Ti/16: width 192, 12 blocks, MLP 768; 100 / 24 classes per block pair: R = 4
    cells = {r[0]: r[1:] for r in (table_rows(out, m)[0] for m in ("full", "vpt_shallow:10", "vpt_deep:10", "ssf"))}
    total = int(cells["full"][0].replace(",", ""))
    assert cells["full"] == [f"{total:,}", f"{total:,}", "100.000%"]
    assert cells["vpt_shallow:10"][:2] == [f"{10 * d:,}", f"{total + 10 * d:,}"]
    assert cells["vpt_deep:10"][0] == f"{depth * 10 * d:,}"
    # two norms, qkv, proj, fc1, fc2 per block: a scale and a shift per output channel
    assert cells["ssf"][0] == f"{depth * 2 * (d + d + 3 * d + d + 4 * d + d):,}"
    (adaptformer,) = table_rows(out, "adaptformer (:4)")
    assert adaptformer[1] == f"{depth * (2 * d + (d * 4 + 4) + (4 * d + d) + 1):,}"  # LN, down, up, scale


def test_the_gpaco_queue_start_check_compares_both_starts_on_the_same_step():
    out = run_benchmark("gpaco_queue_start.py", "--trials", "1", "--sizes", "CIFAR-100-LT")
    rows = table_rows(out, "CIFAR-100-LT")
    assert [r[1] for r in rows] == ["random", "clustered"]
    for row in rows:
        assert row[2] == "8"  # 1024 keys, 128 pushed per step
        random_start, empty_start = number(row[3]), number(row[4])
        printed = float(row[5].rstrip("%"))
        # with one draw the relative difference follows from the two printed losses (4 decimals)
        assert printed == pytest.approx(100 * (random_start - empty_start) / empty_start, abs=0.06)
        weights = [float(w) for w in row[6].split(" / ")]
        # random labels add sample positives, so the own-centre weight can only fall
        assert 0 < weights[0] < weights[1] <= 1
        assert -1 <= float(row[7]) <= 1
