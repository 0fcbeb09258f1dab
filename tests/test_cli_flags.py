"""Flags a user expects of the command line: --version, train --device, eval --logit-adjust; --help stays fast."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import ltcl
from ltcl.cli import main

REPO = Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "configs" / "digits_lt.yaml")
TINY = [
    "model.backbone=resnet8",
    "data.batch_size=32",
    "data.num_workers=0",
    "train.progress=false",
    "train.tensorboard=false",
    "optim.warmup_epochs=0",
    "optim.epochs=1",
    "train.max_steps_per_epoch=2",
    "data.val_per_class=0",
]


def sets(values):
    return [arg for value in values for arg in ("--set", value)]


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory) -> Path:
    """One short digits run trained with ``ltcl train --device cpu`` (a few seconds)."""
    out = tmp_path_factory.mktemp("flags")
    argv = ["train", "-c", DIGITS, "--device", "cpu", *sets(TINY + [f"train.output_dir={out}", "train.run_name=r"])]
    assert main(argv) == 0
    return out / "r"


def test_version_prints_the_package_version(capsys):
    # Item 17: today `ltcl --version` is an argparse error ("the following arguments are required: COMMAND").
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"ltcl {ltcl.__version__}"


def test_help_stays_under_a_second_and_imports_no_torch():
    code = (
        "import sys; from ltcl.cli import build_parser; build_parser().format_help(); "
        "print(sorted(m for m in ('torch', 'numpy', 'matplotlib', 'sklearn') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
    seconds = []
    for _ in range(3):  # the best of three: a busy machine slows one start, not the command
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ltcl.cli", "--help"], capture_output=True, check=True)
        seconds.append(time.perf_counter() - start)
    assert min(seconds) < 1.0, seconds


def test_train_device_is_the_config_key(cpu_run):
    # Item 17: today `ltcl train --device cpu` is "unrecognized arguments: --device cpu".
    assert yaml.safe_load((cpu_run / "config.yaml").read_text())["train"]["device"] == "cpu"


def test_train_device_and_a_different_set_value_are_refused(capsys):
    argv = ["train", "-c", DIGITS, "--device", "cuda", "--set", "train.device=cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--device cuda" in err and "train.device=cpu" in err and len(err.strip().splitlines()) == 1


def test_eval_logit_adjust_subtracts_tau_times_the_log_prior(cpu_run, capsys):
    # Item 17: today `ltcl eval --logit-adjust TAU` is "unrecognized arguments".
    from ltcl.engine.inference import evaluation_split, load_trained_model

    checkpoint = str(cpu_run / "checkpoint_last.pt")
    assert main(["eval", "--checkpoint", checkpoint, "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["eval", "--checkpoint", checkpoint, "--json", "--logit-adjust", "0"]) == 0
    assert json.loads(capsys.readouterr().out) == plain | {"logit_adjust_tau": 0.0}

    # With a huge TAU every logit is dominated by -TAU * log(prior): every image is predicted as the rarest class.
    assert main(["eval", "--checkpoint", checkpoint, "--json", "--logit-adjust", "1000"]) == 0
    adjusted = json.loads(capsys.readouterr().out)
    trained = load_trained_model(checkpoint, device="cpu")
    targets = evaluation_split(trained, "test").targets.tolist()
    counts = trained.class_counts
    rarest = counts.index(min(counts))
    few = [j for j, n in enumerate(counts) if n < trained.cfg.data.few_threshold]
    assert adjusted["logit_adjust_tau"] == 1000.0 and adjusted["images"] == len(targets)
    assert adjusted["all"] == pytest.approx(100.0 * targets.count(rarest) / len(targets))
    assert adjusted["few"] == pytest.approx(100.0 / len(few)) and adjusted["many"] == 0.0

    assert main(["eval", "--checkpoint", checkpoint, "--logit-adjust", "1000"]) == 0
    assert "logit adjustment applied: logits - 1000 * log(training prior)" in capsys.readouterr().out


def test_eval_auto_and_temperature_refuse_a_run_without_validation_split(cpu_run, capsys):
    checkpoint = str(cpu_run / "checkpoint_last.pt")
    for option in (["--logit-adjust", "auto"], ["--calibrate", "temperature"]):
        assert main(["eval", "--checkpoint", checkpoint, *option]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "validation split" in err and "never on the test" in err
