"""The rough edges a new user met (wrong config files, resuming the wrong file, a missing split, file modes), each
checked where the user meets it: the sentence they read and what happens to their files.

One tiny digits run (ResNet-8, no validation split, one epoch of two steps) is trained in-process and shared.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
from pathlib import Path

import pytest
import torch

from ltcl.cli import main
from ltcl.config import ConfigError, load_config
from ltcl.engine.checkpoint import save_atomic
from ltcl.methods.registry import resolve_config

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "configs" / "digits_lt.yaml"
TINY = [
    "model.backbone=resnet8",
    "data.batch_size=32",
    "data.num_workers=0",
    "train.progress=false",
    "train.loggers=[csv]",
    "train.amp=none",
    "optim.warmup_epochs=0",
    "optim.epochs=1",
    "train.max_steps_per_epoch=2",
    "data.val_per_class=0",
]


def sets(*overrides: str) -> list[str]:
    return [word for o in overrides for word in ("--set", o)]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, str]:
    """A finished one-epoch run without a validation split, and what ``ltcl train`` printed."""
    out = tmp_path_factory.mktemp("rough")
    log = out / "stdout.txt"
    with log.open("w") as file:
        with contextlib.redirect_stdout(file):
            assert main(["train", "-c", str(DIGITS), *sets(*TINY, f"train.output_dir={out}")]) == 0
    return out / "digits_lt", log.read_text()


# ---------------------------------------------------------------------------------------------------------------
# Config files (items 1, 8, 9, 12, 17, 20)


def test_a_config_that_names_no_dataset_is_refused(tmp_path):
    for text in ("", "name: mine\n", "optim:\n  epochs: 3\n"):
        path = tmp_path / "mine.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=r"names no dataset \(data.dataset"):
            load_config(path)


def test_a_missing_base_says_where_it_was_looked_for(tmp_path):
    (tmp_path / "configs").mkdir()
    path = tmp_path / "configs" / "mine.yaml"
    path.write_text("base: digits_lt.yaml\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(tmp_path / "configs" / "digits_lt.yaml") in message
    assert "relative to the folder of the file that names it, not to the working directory" in message


def test_an_inherited_imbalance_factor_leaves_a_users_folder_as_given(tmp_path, capsys):
    (tmp_path / "base.yaml").write_text("data:\n  imbalance_factor: 100\n")
    mine = tmp_path / "mine.yaml"
    mine.write_text(f"base: base.yaml\ndata:\n  dataset: image_folder\n  root: {tmp_path}\n")
    assert load_config(mine).data.imbalance_factor == 1.0
    assert "data.imbalance_factor 100 comes from a base: file" in capsys.readouterr().err
    # asked for in the user's own file, or with --set: the subset is drawn
    mine.write_text(f"base: base.yaml\ndata:\n  dataset: image_folder\n  root: {tmp_path}\n  imbalance_factor: 10\n")
    assert load_config(mine).data.imbalance_factor == 10
    assert load_config(tmp_path / "base.yaml", ["data.dataset=image_folder"]).data.imbalance_factor == 100
    assert load_config(mine, ["data.imbalance_factor=50"]).data.imbalance_factor == 50
    # a built-in long-tailed benchmark keeps its profile
    assert load_config(DIGITS).data.imbalance_factor > 1
    assert "comes from a base" not in capsys.readouterr().err


def test_ldam_on_a_linear_classifier_is_refused_with_the_settings_it_needs():
    cfg = load_config(DIGITS, ["loss.objective=ldam"])
    with pytest.raises(ConfigError, match="set model.classifier=cosine and model.cosine_scale=1"):
        resolve_config(cfg)
    resolve_config(load_config(DIGITS, ["loss.objective=ldam", "model.classifier=cosine", "model.cosine_scale=1"]))


def test_view_lists_longer_than_the_views_are_refused():
    # (the other list shortened to one entry, which repeats, so that only the list under test is too long)
    for key, value, other in (
        ("views.sizes", "[32, 32, 32]", "views.presets=[digits]"),
        ("views.presets", "[digits, digits, digits]", "views.sizes=[32]"),
    ):
        with pytest.raises(ConfigError, match=rf"{key} has 3 entries but views.num_views is 2"):
            load_config(DIGITS, ["views.num_views=2", f"{key}={value}", other])


def test_an_unknown_top_level_key_suggests_the_near_one():
    with pytest.raises(ConfigError, match=r"Unknown config key 'optim.lrr'.*Did you mean 'lr'\?"):
        load_config(DIGITS, ["optim.lrr=0.1"])


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint files (item 18)


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_checkpoints_follow_the_umask_like_every_other_file(tmp_path, mask):
    old = os.umask(mask)
    try:
        save_atomic({"weights": torch.zeros(2)}, tmp_path / "checkpoint.pt")
        (tmp_path / "other.txt").write_text("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "checkpoint.pt").stat().st_mode)
    assert mode == 0o666 & ~mask == stat.S_IMODE((tmp_path / "other.txt").stat().st_mode)


# ---------------------------------------------------------------------------------------------------------------
# A run without a validation split: what it says, and resuming the wrong file (items 2, 6, 10, 11, 16)


def test_the_header_says_nothing_is_scored_while_training(run):
    _, stdout = run
    assert "no validation split: no checkpoint selection, nothing scored while training; test set scored once" in (
        stdout
    )


def test_wall_time_covers_the_training_time(run):
    _, stdout = run
    trained = float(re.search(r"trained 1 epoch\(s\) in ([0-9.]+) s", stdout).group(1))
    wall = float(re.search(r"([0-9.]+) s wall from start-up to this table", stdout).group(1))
    assert 0 < trained <= wall


def test_evaluating_a_split_the_run_lacks_gives_the_datasets_own_hint(run, capsys):
    run_dir, _ = run
    assert main(["eval", "--checkpoint", str(run_dir / "checkpoint_last.pt"), "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert "has no 'val' split here: set data.val_per_class to N images per class" in err


def test_only_the_runs_last_state_resumes(run, tmp_path, capsys):
    source, _ = run
    run_dir = tmp_path / "digits_lt"
    shutil.copytree(source, run_dir)
    shutil.copy(run_dir / "checkpoint_last.pt", run_dir / "checkpoint_epoch1.pt")
    assert main(["train", "--resume", str(run_dir / "checkpoint_last.pt"), "--extend-epochs", "2"]) == 0
    capsys.readouterr()
    metrics = (run_dir / "metrics.csv").read_text()

    # an older state of the run would train epoch 2 again and overwrite its records
    assert main(["train", "--resume", str(run_dir / "checkpoint_epoch1.pt")]) == 2
    err = capsys.readouterr().err
    assert "is not the run's last state" in err and f"continue with --resume {run_dir / 'checkpoint_last.pt'}" in err
    # a checkpoint copied out of its run directory has no run to continue
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(run_dir / "checkpoint_last.pt", elsewhere / "checkpoint_last.pt")
    assert main(["train", "--resume", str(elsewhere / "checkpoint_last.pt")]) == 2
    assert "is not inside its run directory (no config.yaml beside it)" in capsys.readouterr().err
    assert (run_dir / "metrics.csv").read_text() == metrics and sorted(os.listdir(elsewhere)) == ["checkpoint_last.pt"]


def test_a_new_run_clears_a_failed_attempt_but_not_the_users_files(tmp_path, capsys):
    run_dir = tmp_path / "digits_lt"
    run_dir.mkdir()
    for name in ("config.yaml", "metrics.csv", "events.out.tfevents.1.old"):
        (run_dir / name).write_text("from the attempt that crashed\n")
    (run_dir / "notes.txt").write_text("mine\n")
    assert (
        main(["train", "-c", str(DIGITS), *sets(*TINY, "train.max_steps_per_epoch=1", f"train.output_dir={tmp_path}")])
        == 0
    )
    out = capsys.readouterr()
    assert "held an earlier attempt that saved no checkpoint; its files were removed" in out.out + out.err
    assert not (run_dir / "events.out.tfevents.1.old").exists() and (run_dir / "notes.txt").read_text() == "mine\n"
    assert "from the attempt" not in (run_dir / "metrics.csv").read_text() + (run_dir / "config.yaml").read_text()
