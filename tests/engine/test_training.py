"""End-to-end training through the real command line, on the bundled digits and the shared CIFAR-10 file.

Covers: the run directory's contents, a run killed mid-epoch (SIGKILL) and resumed ending with the same weights
as an uninterrupted one, eval and predict on the checkpoint, and a 2-process torchrun run that equals one process.
"""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from ltcl.engine.interrupts import TEST_SIGNAL_AT_STEP
from tests.run_ltcl import run_ltcl

REPO = Path(__file__).resolve().parents[2]
DIGITS = str(REPO / "configs" / "digits_lt.yaml")
TINY = [
    "model.backbone=resnet8",
    "data.batch_size=32",
    "data.num_workers=0",
    "train.progress=false",
    "optim.warmup_epochs=0",
    "train.eval_every=1",
    "data.val_per_class=0",
]


def ltcl(*args, env=None, check=True, cwd=REPO, fresh_process=False):
    """``ltcl ARGS`` in ``cwd`` (the repository by default); see tests/run_ltcl.py for when it is a fresh process."""
    return run_ltcl(*args, env=env, check=check, cwd=cwd, fresh_process=fresh_process)


def sets(*overrides):
    return [item for o in overrides for item in ("--set", o)]


def final_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint_last.pt", weights_only=True)["model"]


def evaluated_again(checkpoint: Path, split: str = "test"):
    """The checkpoint's accuracy on ``split``, computed in this process from the saved file alone (its own config,
    weights and precision; no loader workers): what results.json must report for that model."""
    from ltcl.engine.inference import evaluate_split, load_trained_model

    return evaluate_split(load_trained_model(checkpoint, ["data.num_workers=0"], device="cpu"), split)


def group_means(per_class: list, train_counts: list[int], many: int = 100, few: int = 20) -> dict:
    """Many / Medium / Few as plain means of the per-class accuracies of their classes (docs/conventions.md: many
    > ``many`` training images, few < ``few``), recomputed here in float64 from the per-class list."""
    groups = {
        "many": [a for a, n in zip(per_class, train_counts) if n > many],
        "medium": [a for a, n in zip(per_class, train_counts) if few <= n <= many],
        "few": [a for a, n in zip(per_class, train_counts) if n < few],
    }
    return {k: sum(v) / len(v) if v else None for k, v in groups.items()}


def assert_same_accuracy(got: dict, want: dict, rel: float = 1e-9) -> None:
    """Equal groups, up to float rounding; a group without classes (None, n/a) only equals None."""
    assert got.keys() == want.keys(), (got, want)
    for key, value in want.items():
        assert (got[key] is None) == (value is None), (key, got, want)
        if value is not None:
            assert got[key] == pytest.approx(value, rel=rel, abs=1e-9), (key, got, want)


def assert_reported(reported: dict, fresh) -> None:
    """A results.json accuracy dict equals a fresh evaluation (:func:`evaluated_again`) in every group."""
    assert_same_accuracy(reported, fresh.as_dict())


def assert_same_checkpoints(want: dict, got: dict) -> None:
    """Two checkpoints hold the same model and objective tensors, bit for bit, under the same keys."""
    for part in ("model", "objective"):
        assert want[part].keys() == got[part].keys(), part
        for key in want[part]:
            assert torch.equal(want[part][key], got[part][key]), (part, key)


def straight_and_resumed(tmp_path: Path, overrides: list[str], stop_at: int):
    """Trains the digits config with ``overrides`` straight through (``tmp_path/straight``), and again in a fresh
    process that SIGTERM stops at step ``stop_at`` and that is then resumed (``tmp_path/stopped``). Asserts that the
    two last checkpoints hold bitwise equal model and objective tensors under the same keys.

    Returns:
        The straight run's completed process (its stdout has the header and epoch lines), its last checkpoint, and
        its run directory.
    """
    straight = ltcl("train", "-c", DIGITS, *sets(*overrides, f"train.output_dir={tmp_path / 'straight'}"))
    stopped = ltcl("train", "-c", DIGITS, *sets(*overrides, f"train.output_dir={tmp_path / 'stopped'}"),
                   env={TEST_SIGNAL_AT_STEP: f"{stop_at}:TERM"}, check=False)  # fmt: skip
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    ltcl("train", "--resume", str(tmp_path / "stopped" / "digits_lt" / "checkpoint_last.pt"))
    want = torch.load(tmp_path / "straight" / "digits_lt" / "checkpoint_last.pt", weights_only=True)
    got = torch.load(tmp_path / "stopped" / "digits_lt" / "checkpoint_last.pt", weights_only=True)
    assert_same_checkpoints(want, got)
    return straight, want, tmp_path / "straight" / "digits_lt"


def test_a_run_writes_its_directory(tmp_path):
    proc = ltcl(
        "train",
        "-c",
        DIGITS,
        *sets(
            *TINY,
            "optim.epochs=2",
            "train.max_steps_per_epoch=3",
            f"train.output_dir={tmp_path}",
            "train.monitor_conflicts=true",
        ),
    )
    run = tmp_path / "digits_lt"
    assert "| Many | Medium | Few | All |" in proc.stdout and "epoch 2/2" in proc.stdout

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["run"]["seed"] == 0 and config["run"]["code_revision"]
    assert config["model"]["backbone"] == "resnet8" and config["train"]["output_dir"] == str(tmp_path)
    counts = json.loads((run / "class_counts.json").read_text())
    assert counts["class_counts"] == [124, 96, 74, 57, 44, 34, 26, 20, 16, 12]
    assert counts["contrastive_views"] == [4 if n < 20 else 3 if n <= 100 else 2 for n in counts["class_counts"]]
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    # no val split: the test set is scored once, after training, never per epoch
    assert [r["epoch"] for r in rows] == ["1", "2"] and [r["eval_split"] for r in rows] == ["", ""]
    conflicts = list(csv.DictReader((run / "conflicts.csv").open()))
    assert len(conflicts) == 2 * 10 and int(conflicts[0]["positive_pairs"]) > 0
    results = json.loads((run / "results.json").read_text())
    assert results["class_counts"] == counts["class_counts"]
    # The reported numbers are the saved model's, as a fresh evaluation of the checkpoint gives them; the groups
    # are the means of the per-class accuracies (the test set is balanced, 50 digits a class: All is their mean).
    fresh = evaluated_again(run / "checkpoint_last.pt")
    assert_reported(results["test"], fresh)
    assert fresh.images == 500 and results["per_class_test"] == pytest.approx(fresh.per_class, rel=1e-9, abs=1e-9)
    per_class = results["per_class_test"]
    expected = group_means(per_class, counts["class_counts"]) | {"all": sum(per_class) / len(per_class)}
    assert_same_accuracy(results["test"], expected)
    # ... and metrics.csv holds no accuracy of any epoch (nothing to choose a checkpoint on)
    assert all(row[k] == "" for row in rows for k in expected)
    report = (run / "report.md").read_text()
    assert "| Many | Medium | Few | All |" in report and "code" in report
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())
    assert (run / "checkpoint_last.pt").exists() and not (run / "checkpoint_best.pt").exists()  # no val split

    # A second run into the same directory must not silently continue or overwrite it.
    again = ltcl("train", "-c", DIGITS, *sets(*TINY, f"train.output_dir={tmp_path}"), check=False)
    assert again.returncode == 2 and "already holds a run" in again.stderr and "--resume" in again.stderr


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """The uninterrupted run every interrupted one must end identical to."""
    out = tmp_path_factory.mktemp("straight")
    ltcl("train", "-c", DIGITS, *sets(*INTERRUPTIBLE, f"train.output_dir={out}"))
    return out / "digits_lt"


INTERRUPTIBLE = [
    *TINY,
    "optim.epochs=3",
    "train.max_steps_per_epoch=4",
    "train.deterministic=true",
    "train.checkpoint_every_steps=2",
    "optim.warmup_epochs=1",
]


@pytest.mark.parametrize(
    "how, status, saved_at, says_resume",
    [
        # no warning: the step checkpoint after batch 2 of epoch 2 is all there is, and the process says nothing
        ("KILL", -signal.SIGKILL, (1, 2, 6), False),
        ("INT", 130, (1, 3, 7), True),  # Ctrl-C: step 7 (batch 3 of epoch 2) finishes, then it is saved
        ("TERM", 143, (1, 3, 7), True),  # a cluster's pre-emption notice: the same
    ],
)
def test_a_stopped_run_resumes_to_the_same_weights_and_metrics(
    tmp_path, straight_run, how, status, saved_at, says_resume
):
    stopped = tmp_path / "stopped"
    proc = ltcl(
        "train",
        "-c",
        DIGITS,
        *sets(*INTERRUPTIBLE, f"train.output_dir={stopped}"),
        env={TEST_SIGNAL_AT_STEP: f"7:{how}"},
        check=False,
    )
    assert proc.returncode == status, proc.stderr
    assert ("--resume" in proc.stderr) == says_resume and "Traceback" not in proc.stderr
    state = torch.load(stopped / "digits_lt" / "checkpoint_last.pt", weights_only=True)
    assert (state["epoch"], state["batch"], state["global_step"]) == saved_at

    resumed = ltcl("train", "--resume", str(stopped / "digits_lt" / "checkpoint_last.pt"))
    assert "resumed from" in resumed.stdout
    want, got = final_weights(straight_run), final_weights(stopped / "digits_lt")
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    rows = list(csv.DictReader((stopped / "digits_lt" / "metrics.csv").open()))
    straight = list(csv.DictReader((straight_run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]  # the interrupted epoch is logged once
    for key in ("loss", "loss_cls", "loss_con", "train_acc", "all"):  # ... and its row covers all its batches
        assert [r[key] for r in rows] == [r[key] for r in straight], key


def test_eval_and_predict_use_the_checkpoint(tmp_path):
    trained = ltcl(
        "train",
        "-c",
        DIGITS,
        *sets(*TINY, "optim.epochs=1", "train.max_steps_per_epoch=2", f"train.output_dir={tmp_path}"),
    )
    checkpoint = tmp_path / "digits_lt" / "checkpoint_last.pt"
    # The final table points to the full report (no validation split here: the last checkpoint).
    command = f"ltcl eval --checkpoint {checkpoint} --split test"
    assert f"per class, calibration and shifted priors: {command}" in trained.stdout
    assert f"`{command}`" in (tmp_path / "digits_lt" / "report.md").read_text()
    results = json.loads((tmp_path / "digits_lt" / "results.json").read_text())

    proc = ltcl("eval", "--checkpoint", str(checkpoint), "--json")
    assert json.loads(proc.stdout)["all"] == pytest.approx(results["test"]["all"])
    assert "| test |" in ltcl("eval", "--checkpoint", str(checkpoint)).stdout

    image = tmp_path / "digit.png"
    Image.new("RGB", (32, 32), (255, 255, 255)).save(image)
    proc = ltcl("predict", "--checkpoint", str(checkpoint), str(image), "--top-k", "3", "--logit-adjust", "1.0")
    lines = proc.stdout.splitlines()
    assert lines[0] == str(image) and len(lines) == 4 and lines[1].strip().startswith("1. ")
    probabilities = [float(line.rsplit(None, 1)[-1].rstrip("%")) for line in lines[1:]]
    assert probabilities == sorted(probabilities, reverse=True)

    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    proc = ltcl("predict", "--checkpoint", str(checkpoint), str(corrupt), check=False)
    assert proc.returncode == 2 and str(corrupt) in proc.stderr and "Traceback" not in proc.stderr
    proc = ltcl("eval", "--checkpoint", str(checkpoint), "--split", "val", check=False)
    assert proc.returncode == 2 and "has no 'val' split" in proc.stderr


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    # BatchNorm statistics are per process without SyncBN (CUDA only), so the backbone is frozen: everything else
    # (sampler, views, gather with gradient, DDP averaging, unpadded evaluation) is exercised exactly.
    common = [
        *TINY,
        "optim.epochs=2",
        "train.max_steps_per_epoch=3",
        "data.batch_size=16",
        "train.deterministic=true",
        "model.trainable=projection,classifier",
        "loss.objective=bs+acl",
        "train.amp=none",  # the comparison is exact up to float32 reordering, not bf16 rounding
    ]
    ltcl("train", "-c", DIGITS, *sets(*common, f"train.output_dir={tmp_path / 'one'}"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "ltcl.cli",
            "train",
            "-c",
            DIGITS,
            *sets(*common, f"train.output_dir={tmp_path / 'two'}"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 process(es)" in proc.stdout
    one, two = final_weights(tmp_path / "one" / "digits_lt"), final_weights(tmp_path / "two" / "digits_lt")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-6, msg=key)
    r1 = json.loads((tmp_path / "one" / "digits_lt" / "results.json").read_text())
    r2 = json.loads((tmp_path / "two" / "digits_lt" / "results.json").read_text())
    assert r1["test"] == r2["test"]
    m1 = list(csv.DictReader((tmp_path / "one" / "digits_lt" / "metrics.csv").open()))
    m2 = list(csv.DictReader((tmp_path / "two" / "digits_lt" / "metrics.csv").open()))
    for a, b in zip(m1, m2):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-4)


def test_the_fast_gpu_config_runs_on_the_cpu_with_a_tiny_schedule(tmp_path, small_cifar10_npz):
    config = str(REPO / "configs" / "cifar10_lt_if100_acl_gpu.yaml")
    proc = ltcl(
        "train",
        "-c",
        config,
        *sets(
            f"data.root={small_cifar10_npz}",
            "train.device=cpu",
            "train.compile=false",
            "train.amp=none",
            "data.batch_size=16",
            "train.max_steps_per_epoch=2",
            "optim.epochs=1",
            "optim.warmup_epochs=0",
            f"train.output_dir={tmp_path}",
        ),
    )
    assert "trained 1 epoch(s) in" in proc.stdout and "| Many | Medium | Few | All |" in proc.stdout
    run = tmp_path / "cifar10_lt_if100_acl_gpu"
    results = json.loads((run / "results.json").read_text())
    assert results["timing"]["epochs_run"] == 1
    # Evaluated during the run from resident device tensors; again here through the plain test loader: the same.
    assert_reported(results["test"], evaluated_again(run / "checkpoint_last.pt"))
    best = evaluated_again(run / "checkpoint_best.pt", "val")
    assert results["best_epoch"] == 1 and results["val_best"]["all"] == pytest.approx(best.all, rel=1e-9)


def test_device_augmentation_is_reproducible_and_resumes_exactly(tmp_path):
    common = [
        *TINY,
        "data.augment_on=device",
        "optim.epochs=2",
        "train.max_steps_per_epoch=3",
        "train.deterministic=true",
    ]
    for name in ("a", "b"):
        ltcl("train", "-c", DIGITS, *sets(*common, f"train.output_dir={tmp_path / name}"))
    killed = tmp_path / "killed"
    proc = ltcl(
        "train",
        "-c",
        DIGITS,
        *sets(*common, f"train.output_dir={killed}"),
        env={TEST_SIGNAL_AT_STEP: "5:KILL"},
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL
    ltcl(
        "train",
        "-c",
        DIGITS,
        *sets(*common, f"train.output_dir={killed}"),
        "--resume",
        str(killed / "digits_lt" / "checkpoint_last.pt"),
    )
    a, b, resumed = (final_weights(tmp_path / n / "digits_lt") for n in ("a", "b", "killed"))
    for key in a:
        assert torch.equal(a[key], b[key]), key
        assert torch.equal(a[key], resumed[key]), key


def test_two_processes_stop_together_on_a_non_finite_loss(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    sets_ = sets(*TINY, "optim.lr=1e6", "loss.objective=bs", "optim.epochs=3", "train.max_steps_per_epoch=3",
                 "data.batch_size=16", "train.sync_every=1", f"train.output_dir={tmp_path}")  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "ltcl.cli",
         "train", "-c", DIGITS, *sets_],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0 and "became non-finite" in proc.stderr  # and no process waits forever for the other
    assert not (tmp_path / "digits_lt" / "results.json").exists()
