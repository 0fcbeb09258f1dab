"""Fine-tuning's optimisation through the real command line, on the bundled digits: AdamW over backbone / head
groups, two micro-batches per step, clipping, label smoothing and the moving average train an epoch, resume to
the same weights and the same average, and ``ltcl eval`` scores the average."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from ltcl.engine.interrupts import TEST_SIGNAL_AT_STEP
from tests.engine.test_foundation_backbones import OFFLINE, TINY_VIT
from tests.engine.test_run_never_lies import DIGITS, REPO, ltcl, one_sentence, sets
from tests.engine.test_training import assert_same_checkpoints

FINE_TUNING = [
    "optim.name=adamw",
    "optim.lr=0.002",
    "optim.weight_decay=0.05",
    "optim.backbone_lr_scale=0.1",
    "optim.accumulate_steps=2",
    "optim.clip_grad_norm=1.0",
    "loss.label_smoothing=0.1",
    "train.ema_decay=0.5",
]
RUN = [
    "model.backbone=resnet8",
    "data.batch_size=32",
    "data.num_workers=0",
    "train.progress=false",
    "optim.epochs=2",
    "optim.warmup_epochs=1",
    "train.max_steps_per_epoch=3",
    "train.eval_every=1",
    "train.deterministic=true",
    "train.amp=none",
    *FINE_TUNING,
]


def checkpoint(run) -> dict:
    return torch.load(run / "checkpoint_last.pt", weights_only=True)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    proc = ltcl("train", "-c", DIGITS, *sets(*RUN, f"train.output_dir={out}"))
    assert proc.returncode == 0, proc.stderr
    return out / "digits_lt", proc.stdout


def test_the_header_names_the_optimiser_and_the_weights_it_scores(straight):
    _, stdout = straight
    line = next(line for line in stdout.splitlines() if "AdamW betas" in line)
    for part in (
        "backbone lr 0.0002 wd 0.05",
        "backbone (no decay) lr 0.0002 wd 0.0",
        "head lr 0.002 wd 0.05",
        "head (no decay) lr 0.002 wd 0.0",
        "batch 32 in 2 micro-batches of 16",
        "clip grad norm 1.0",
        "EMA 0.5",
    ):
        assert part in line, part
    assert "every score is of the moving average of the weights (train.ema_decay 0.5)" in stdout


def test_an_interrupted_run_resumes_to_the_same_weights_and_moving_average(tmp_path, straight):
    run, _ = straight
    stopped = tmp_path / "stopped"
    proc = ltcl("train", "-c", DIGITS, *sets(*RUN, f"train.output_dir={stopped}"), env={TEST_SIGNAL_AT_STEP: "4:INT"})
    assert proc.returncode == 130, proc.stderr
    saved = checkpoint(stopped / "digits_lt")
    assert (saved["epoch"], saved["batch"]) == (1, 1) and saved["ema"]["decay"] == 0.5
    assert ltcl("train", "--resume", str(stopped / "digits_lt" / "checkpoint_last.pt")).returncode == 0
    want, got = checkpoint(run), checkpoint(stopped / "digits_lt")
    assert_same_checkpoints(want, got)
    assert want["ema"]["averages"].keys() == got["ema"]["averages"].keys()
    for key, value in want["ema"]["averages"].items():
        assert torch.equal(value, got["ema"]["averages"][key]), key
    # the optimiser's groups, with their scales, are saved and restored
    assert [g["lr_scale"] for g in got["optimizer"]["param_groups"]] == [0.1, 0.1, 1, 1]
    rows = list(csv.DictReader((stopped / "digits_lt" / "metrics.csv").open()))
    straight_rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["loss"] for r in rows] == [r["loss"] for r in straight_rows]
    assert [r["all"] for r in rows] == [r["all"] for r in straight_rows]


def test_the_run_and_ltcl_eval_score_the_moving_average(straight):
    run, _ = straight
    saved = checkpoint(run)
    averaged = [k for k in saved["ema"]["averages"] if not torch.equal(saved["ema"]["averages"][k], saved["model"][k])]
    assert averaged  # the average is not the trained weights, so scoring the wrong one would show
    from ltcl.engine.inference import load_trained_model

    model = load_trained_model(run / "checkpoint_last.pt", ["data.num_workers=0"], device="cpu").model
    state = model.state_dict()
    for key in averaged:
        assert torch.equal(state[key], saved["ema"]["averages"][key]), key
    results = json.loads((run / "results.json").read_text())
    proc = ltcl("eval", "--checkpoint", str(run / "checkpoint_last.pt"), "--json")
    assert json.loads(proc.stdout)["all"] == pytest.approx(results["test"]["all"], rel=1e-9)


def test_a_tiny_vit_fine_tunes_with_adamw(tmp_path):
    proc = ltcl(
        "train",
        "-c",
        DIGITS,
        *sets(
            *TINY_VIT,
            *FINE_TUNING,
            "views.sizes=[32]",
            "optim.epochs=1",
            "optim.warmup_epochs=0",
            "train.max_steps_per_epoch=2",
            "data.num_workers=0",
            "data.batch_size=16",
            "train.progress=false",
            f"train.output_dir={tmp_path}",
        ),
        env=OFFLINE,
    )
    assert proc.returncode == 0, proc.stderr
    assert "backbone (no decay) lr 0.0002 wd 0.0" in proc.stdout
    saved = checkpoint(tmp_path / "digits_lt")
    assert "backbone.pos_embed" in saved["ema"]["averages"]


@pytest.mark.parametrize(
    "override, phrase",
    [
        ("optim.accumulate_steps=5", "optim.accumulate_steps 5 must divide data.batch_size 32"),
        ("train.ema_decay=1", "'train.ema_decay' expects a number in [0, 1)"),
        ("optim.name=adam", "'optim.name' expects one of sgd, adamw"),
    ],
)
def test_bad_settings_stop_with_one_sentence(tmp_path, override, phrase):
    proc = ltcl("train", "-c", DIGITS, *sets(*RUN, override, f"train.output_dir={tmp_path}"))
    assert proc.returncode == 2 and phrase in one_sentence(proc.stderr)


def test_two_processes_accumulating_equal_one_process(tmp_path):
    # Each process splits its half of the batch into micro-batches and DDP averages the gradients once, at the
    # last: with a per-image loss (bs) and frozen BatchNorm (a frozen backbone keeps its statistics) the run equals
    # one process with the same global batch; clipping and the EMA then act on identical averaged gradients.
    common = [
        *RUN,
        "optim.epochs=1",
        "optim.warmup_epochs=0",
        "data.batch_size=16",
        "loss.objective=bs",
        "model.trainable=classifier",
        "data.val_per_class=0",
    ]
    ltcl("train", "-c", DIGITS, *sets(*common, f"train.output_dir={tmp_path / 'one'}"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "ltcl.cli",
         "train", "-c", DIGITS, *sets(*common, f"train.output_dir={tmp_path / 'two'}")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one, two = checkpoint(tmp_path / "one" / "digits_lt"), checkpoint(tmp_path / "two" / "digits_lt")
    for key in one["model"]:
        torch.testing.assert_close(two["model"][key], one["model"][key], rtol=1e-4, atol=1e-6, msg=key)
    for key, value in one["ema"]["averages"].items():
        torch.testing.assert_close(two["ema"]["averages"][key], value, rtol=1e-4, atol=1e-6, msg=key)
