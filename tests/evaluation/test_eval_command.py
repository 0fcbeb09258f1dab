"""``ltcl eval`` on a real checkpoint (the bs+acl digits fixture, which has a validation split): the table, the
report beside the checkpoint, the summary keys of --json against the training's own evaluation, tau and the
temperature fitted on val, the prior sweep, and torchrun's 2 processes reporting what one process reports."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from ltcl.cli import main
from ltcl.engine.evaluate import evaluate
from ltcl.engine.inference import evaluation_split, load_trained_model

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "format2_bs_acl_resnet8.pt"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    shutil.copy(FIXTURE, run / "checkpoint_best.pt")
    return run / "checkpoint_best.pt"


def eval_json(capsys, *args) -> dict:
    assert main(["eval", "--json", "--device", "cpu", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_prints_the_table_and_writes_the_report_beside_the_checkpoint(checkpoint, capsys):
    assert main(["eval", "--checkpoint", str(checkpoint), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "| | Many | Medium | Few | All | Top-5 | NLL | ECE |" in out and "| test |" in out
    assert "by shot group of the true class: many" in out and "precision" in out
    folder = checkpoint.parent / "eval_test_best"
    assert f"full report: {folder}" in out
    for name in ("report.json", "per_class.csv", "confusion.csv", "confusion.png", "reliability.png"):
        assert (folder / name).stat().st_size > 0, name


def test_the_json_summary_equals_the_training_s_evaluation(checkpoint, capsys):
    report = eval_json(capsys, "--checkpoint", str(checkpoint), "--out", str(checkpoint.parent / "plain"))
    trained = load_trained_model(checkpoint, device="cpu")
    loader = DataLoader(evaluation_split(trained, "test"), batch_size=100)
    want = evaluate(trained.model, loader, trained.class_counts, trained.device, amp=trained.amp)
    assert report["split"] == "test" and report["epoch"] == trained.epoch and report["images"] == 500
    for key in ("many", "medium", "few", "all"):
        assert report[key] == pytest.approx(getattr(want, key)), key
    assert [row["accuracy"] for row in report["per_class"]] == pytest.approx(want.per_class)
    assert report["top1"] <= report["top5"] <= 100 and report["nll"] > 0 and 0 <= report["ece"] <= 100


def test_auto_tau_and_temperature_are_fitted_on_val_and_the_sweep_is_drawn(checkpoint, capsys):
    out = checkpoint.parent / "fitted"
    report = eval_json(capsys, "--checkpoint", str(checkpoint), "--logit-adjust", "auto", "--calibrate",
                       "temperature", "--test-prior", "sweep", "--out", str(out))  # fmt: skip
    auto = report["logit_adjust_auto"]
    assert auto["chosen_on"] == "val" and auto["images"] == 184  # 20 per class, less what the tail lacks
    assert report["logit_adjust_tau"] == auto["tau"] and auto["grid"][f"{auto['tau']:g}"] == max(auto["grid"].values())
    calibration = report["calibration"]
    assert calibration["fitted_on"] == "val" and calibration["val_nll_after"] <= calibration["val_nll_before"]
    assert report["ece"] == calibration["ece_after"]
    assert [row["prior"] for row in report["test_priors"]][::5] == ["forward50", "uniform", "backward50"]
    uniform = report["test_priors"][5]
    assert uniform["images"] == 500 and uniform["as_evaluated"]["all"] == pytest.approx(report["all"])
    assert (out / "prior_sweep.png").exists()

    assert main(["eval", "--checkpoint", str(checkpoint), "--test-prior", "forward:50", "--device", "cpu",
                 "--logit-adjust", "auto", "--out", str(out)]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert f"logits - {auto['tau']:g} * log(training prior), tau chosen on val (184 images" in text
    assert "| forward50 |" in text


def test_a_mistyped_option_is_one_sentence(checkpoint, capsys):
    for args in (["--logit-adjust", "best"], ["--test-prior", "forward"]):
        assert main(["eval", "--checkpoint", str(checkpoint), *args]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and args[0] in err


def test_two_torchrun_processes_report_what_one_process_reports(checkpoint, capsys, tmp_path):
    one = eval_json(capsys, "--checkpoint", str(checkpoint), "--test-prior", "backward:10", "--out", str(tmp_path))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "ltcl.cli",
         "eval", "--checkpoint", str(checkpoint), "--json", "--device", "cpu", "--test-prior", "backward:10",
         "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # process 0 alone prints
    two = json.loads(lines[0])
    assert two["images"] == 500 and two["confusion"] == one["confusion"]
    assert two["per_class"] == one["per_class"] and two["test_priors"] == one["test_priors"]
    torch.testing.assert_close(torch.tensor(two["nll"]), torch.tensor(one["nll"]), rtol=1e-5, atol=1e-6)
