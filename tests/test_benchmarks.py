"""The benchmark scripts the README quotes still run, on tiny settings, and print their tables.

Only the shape of the output is checked (rows present, every timing a positive number): timings are for the
benchmarks to report, never for tests to assert.
"""

import re
import subprocess
import sys
from pathlib import Path

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


def positive(cell):
    assert NUMBER.match(cell), cell
    return float(cell.rstrip("%").replace(",", "")) > 0


def test_loss_speed_prints_every_loss_with_its_ratios():
    out = run_benchmark("loss_speed.py", "--device", "cpu", "--repeats", "2", "--shapes", "CIFAR-100-LT")
    rows = table_rows(out, "CIFAR-100-LT")
    assert [r[4] for r in rows] == [
        "ACL (ours, centres + weights)",
        "SupCon (ours)",
        "SupCon (SupContrast-style)",
        "matmul floor",
    ]
    for row in rows:
        assert all(positive(cell) for cell in row[5:])
    assert table_rows(out, "CIFAR-100-LT")[2][7] == "1.00"  # the baseline's ratio to itself


def test_pipeline_overhead_compares_the_full_step_with_the_bare_model(cifar10_npz):
    out = run_benchmark(
        "pipeline_overhead.py", "--data", str(cifar10_npz), "--set", "data.batch_size=8", "--steps", "1",
        "--rounds", "2", "--warmup", "1",
    )  # fmt: skip
    (bare,) = table_rows(out, "bare ResNet-32 forward/backward/SGD, bf16 autocast, channels_last")
    (full,) = table_rows(out, "full ltcl training step, the config as it is")
    assert positive(bare[1]) and positive(full[1]) and bare[2] == "1.00"
    assert re.fullmatch(r"\d+\.\d\d", full[2]), full[2]


def test_data_speed_times_the_presets_and_the_four_view_recipes(cifar10_npz):
    out = run_benchmark(
        "data_speed.py", "--npz", str(cifar10_npz), "--images", "8", "--repeats", "1", "--presets", "none", "digits"
    )
    for preset in ("none", "digits"):
        (row,) = table_rows(out, preset)
        assert positive(row[1]) and positive(row[2])
    assert "| 4-view recipe |" in out
