"""Real runs shared by the analysis tests, each trained once per test session on the bundled digits data.

``tiny_run``: 2 epochs of 2 steps, bs+acl, conflicts monitored, evaluated every epoch (about 10 s).
``sweep_dir``: ``ltcl sweep`` over loss.alpha = 0.1, 0.5 times 2 seeds with bs+scl, 1 step each, and many-shot
threshold 200 so that the many-shot group is empty (n/a) (about 15 s).

``train()`` draws no plots (the command line does): ``tiny_run`` has none, a test that needs them copies the run
and calls ``make_run_plots``; the sweep draws each run's plots itself. Both train with the default train.amp
(auto: bf16 autocast on a CPU that has it).
"""

from pathlib import Path

import pytest

from ltcl.cli import main
from ltcl.config import load_config
from ltcl.engine.trainer import train

REPO_ROOT = Path(__file__).resolve().parents[2]
DIGITS = str(REPO_ROOT / "configs" / "digits_lt.yaml")

TINY = [
    "optim.epochs=2",
    "train.max_steps_per_epoch=2",
    "model.backbone=resnet8",
    "data.num_workers=0",
    "train.monitor_conflicts=true",
    "train.progress=false",
    "train.eval_every=1",
    "train.tensorboard=false",
    "data.val_per_class=0",  # no validation split: nothing is scored while training, the test split once at the end
]
TINIER = [
    "optim.epochs=1",
    "train.max_steps_per_epoch=1",
    "data.batch_size=32",
    "model.backbone=resnet8",
    "data.num_workers=0",
    "train.progress=false",
    "train.tensorboard=false",
    "optim.warmup_epochs=0",
]
SWEEP_SETS = TINIER + ["loss.objective=bs+scl", "train.monitor_conflicts=true", "data.many_threshold=200"]
SWEEP_ARGS = ["sweep", "-c", DIGITS, "--grid", "loss.alpha=0.1,0.5", "--seeds", "2"]
SWEEP_ARGS += [arg for text in SWEEP_SETS for arg in ("--set", text)]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(DIGITS, TINY + [f"train.output_dir={out}", "train.run_name=tiny"])
    return train(cfg).run_dir


@pytest.fixture(scope="session")
def sweep_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "alpha"
    assert main(SWEEP_ARGS + ["--out", str(out)]) == 0
    return out
