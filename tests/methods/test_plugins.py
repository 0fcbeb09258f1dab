"""Plugins: a user's own method and backbone, from their own files, through the command line and from Python.

A plugin run trains, records its plugins, resumes to the same weights as an uninterrupted run, and is evaluated by
``ltcl eval`` from another directory; the README's example runs exactly as printed.
"""

import csv
import importlib.util
import json
import re
import signal
import sys
from pathlib import Path

import torch
import yaml

from ltcl.engine.interrupts import TEST_SIGNAL_AT_STEP
from tests.engine.test_training import DIGITS, TINY, assert_same_checkpoints, sets
from tests.run_ltcl import run_ltcl

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def ltcl(*args, **kwargs):
    """Every call in a fresh process: a plugin must be found again from the run's record, never from a registry
    that an earlier call in this process filled."""
    return run_ltcl(*args, fresh_process=True, **kwargs)


# A method with everything the interface offers: a parameter of its own, a buffer, both hooks and a statistic.
COUNTING_METHOD = """
import torch
import torch.nn.functional as F
from torch import nn

import ltcl
from ltcl.methods import LossOutput, Objective


@ltcl.register_objective
class TemperedCE(Objective):
    name = "tempered_ce"
    role = "objective"
    paper = "a test method"

    def __init__(self, setup):
        super().__init__(setup)
        self.log_temperature = nn.Parameter(torch.zeros(()))  # trains with the network
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.float64))
        self.register_buffer("epochs_started", torch.zeros((), dtype=torch.float64))
        self.stat_names = ("steps_seen", "temperature")

    def set_epoch(self, epoch):
        self.epochs_started.fill_(epoch + 1)

    def after_step(self, step):
        self.steps_seen += 1

    def forward(self, step):
        temperature = self.log_temperature.exp()
        loss = F.cross_entropy(step.logits.float() / temperature, step.labels)
        return LossOutput(loss, {"steps_seen": self.steps_seen.clone(), "temperature": temperature.detach()})
"""

TINY_BACKBONE = """
from torch import nn

import ltcl


@ltcl.register_backbone("tiny_cnn", paper="a test backbone")
def build(request):
    width = int(request.kwargs.get("width", 8))
    net = nn.Sequential(nn.Conv2d(3, width, 3, stride=2), nn.BatchNorm2d(width), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return net, width
"""

PLUGIN_RUN = [*TINY, "model.backbone=tiny_cnn", "model.backbone_kwargs={width: 6}", "loss.objective=tempered_ce",
              "optim.epochs=2", "train.max_steps_per_epoch=3", "train.deterministic=true",
              "train.amp=none"]  # fmt: skip


def write_plugins(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tempered.py").write_text(COUNTING_METHOD)
    (folder / "tiny_cnn.py").write_text(TINY_BACKBONE)


def test_a_plugin_method_and_backbone_train_resume_exactly_and_evaluate(tmp_path):
    write_plugins(tmp_path / "plugins_here")
    # plugins: in a config, relative to the config file
    (tmp_path / "run.yaml").write_text(
        f"base: {DIGITS}\nplugins: [plugins_here/tempered.py, plugins_here/tiny_cnn.py]\n"
    )
    config = str(tmp_path / "run.yaml")
    straight = ltcl("train", "-c", config, *sets(*PLUGIN_RUN, f"train.output_dir={tmp_path / 'straight'}"))
    assert "loss   tempered_ce; 4 view(s)" in straight.stdout and "contrastive views" not in straight.stdout
    assert re.search(r"epoch 2/2 \| loss [0-9.]+ \| steps_seen 4\.0000 \| temperature [0-9.]+ \|", straight.stdout)
    stopped = ltcl("train", "-c", config, *sets(*PLUGIN_RUN, f"train.output_dir={tmp_path / 'stopped'}"),
                   env={TEST_SIGNAL_AT_STEP: "4:TERM"}, check=False)  # fmt: skip
    assert stopped.returncode == 128 + signal.SIGTERM
    run = tmp_path / "stopped" / "run"
    ltcl("train", "--resume", str(run / "checkpoint_last.pt"))
    want = torch.load(tmp_path / "straight" / "run" / "checkpoint_last.pt", weights_only=True)
    got = torch.load(run / "checkpoint_last.pt", weights_only=True)
    assert_same_checkpoints(want, got)
    assert float(got["objective"]["steps_seen"]) == 6 and float(got["objective"]["epochs_started"]) == 2
    assert float(got["objective"]["log_temperature"]) != 0  # the method's own parameter trained
    with (run / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [float(r["steps_seen"]) for r in rows] == [
        1.0,
        4.0,
    ]  # the mean over each epoch's steps (0, 1, 2 then 3, 4, 5)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["plugins"] == [str(tmp_path / "plugins_here" / n) for n in ("tempered.py", "tiny_cnn.py")]
    assert sorted(p.name for p in (run / "plugins").iterdir()) == ["tempered.py", "tiny_cnn.py"]
    # ltcl eval from another directory loads the recorded plugins
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = ltcl("eval", "--checkpoint", str(run / "checkpoint_last.pt"), "--json", cwd=elsewhere)
    assert json.loads(proc.stdout)["images"] == 500
    # a plugin file that moved: one sentence naming it and the fix
    (tmp_path / "plugins_here" / "tiny_cnn.py").rename(tmp_path / "tiny_cnn_moved.py")
    proc = ltcl("eval", "--checkpoint", str(run / "checkpoint_last.pt"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert f"Plugin file {tmp_path / 'plugins_here' / 'tiny_cnn.py'} does not exist" in proc.stderr
    proc = ltcl(
        "eval",
        "--checkpoint",
        str(run / "checkpoint_last.pt"),
        "--json",
        *sets(f"plugins=[{tmp_path / 'plugins_here' / 'tempered.py'}, {tmp_path / 'tiny_cnn_moved.py'}]"),
    )
    assert json.loads(proc.stdout)["images"] == 500  # fmt: skip


def test_a_method_imported_in_python_is_recorded_so_the_command_line_can_evaluate_it(tmp_path, monkeypatch):
    from ltcl.config import load_config
    from ltcl.engine.trainer import train

    write_plugins(tmp_path)
    for name in ("tempered", "tiny_cnn"):  # imported as a user's own code would be, not through --plugin
        spec = importlib.util.spec_from_file_location(f"user_{name}", tmp_path / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
    overrides = [*PLUGIN_RUN, "optim.epochs=1", "train.tensorboard=false", f"train.output_dir={tmp_path / 'runs'}"]
    result = train(load_config(DIGITS, overrides))
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert saved["plugins"] == [str(tmp_path / "tempered.py"), str(tmp_path / "tiny_cnn.py")]
    proc = ltcl("eval", "--checkpoint", str(result.run_dir / "checkpoint_last.pt"), "--json")
    assert json.loads(proc.stdout)["all"] == result.test.all


def test_the_readme_example_runs_exactly_as_printed(tmp_path):
    section = README[README.index("## Add your own method") :]
    source = re.search(r"```python\n(# my_focal.py\n.*?)```", section, re.S).group(1)
    assert len(source.strip().splitlines()) < 30
    (tmp_path / "my_focal.py").write_text(source)
    (tmp_path / "configs").symlink_to(REPO / "configs")
    bash = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    lines = [" ".join(line.split()) for line in bash.splitlines() if line.strip()]
    assert lines[0].startswith("ltcl train") and lines[1] == "ltcl methods --plugin my_focal.py"
    trained = ltcl(*lines[0].split()[1:], cwd=tmp_path)
    assert "epoch 1/1 | loss" in trained.stdout and "my_focal+acl, alpha 0.1, my_focal (gamma 2.0)" in trained.stdout
    assert (tmp_path / "runs" / "focal" / "plugins" / "my_focal.py").read_text() == source
    listed = ltcl(*lines[1].split()[1:], cwd=tmp_path).stdout
    assert re.search(r"my_focal +classification +Lin et al\..*\n +loss\.my_focal: gamma=2\.0", listed)
    assert "gpaco" in listed and "timm/<name>" in listed and "lora:R" in listed
