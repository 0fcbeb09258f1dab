"""Foundation backbones through the command line: timm models by name train, evaluate and predict in every
fine-tuning mode, random-init and offline (nothing is downloaded)."""

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.engine.test_run_never_lies import DIGITS, ltcl, one_sentence, sets
from tests.engine.test_training import assert_reported, evaluated_again

ONE_EPOCH = ["optim.epochs=1", "train.max_steps_per_epoch=2", "optim.warmup_epochs=0", "data.num_workers=0",
             "data.batch_size=32", "views.sizes=[32]", "train.progress=false"]  # fmt: skip
TINY_VIT = ["model.backbone=timm/vit_tiny_patch16_224", "model.backbone_kwargs={img_size: 32, patch_size: 8, depth: 2}"]
OFFLINE = {"HF_HUB_OFFLINE": "1"}


@pytest.mark.parametrize("finetune", ["full", "bitfit", "lora:4"])
def test_a_tiny_vit_trains_one_digits_epoch_in_every_fine_tuning_mode(tmp_path, finetune, monkeypatch):
    env = {**OFFLINE, "HF_HOME": str(tmp_path / "hf")}
    proc = ltcl(
        "train",
        "-c",
        DIGITS,
        *sets(*ONE_EPOCH, *TINY_VIT, f"model.finetune={finetune}", f"train.output_dir={tmp_path}"),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "digits_lt"
    facts = yaml.safe_load((run / "config.yaml").read_text())["run"]["parameters"]
    assert f"{facts['trainable']:,} of {facts['total']:,} parameters train" in proc.stdout
    if finetune == "full":
        assert facts["trainable"] == facts["total"]
    else:  # biases and norms, or the LoRA factors, plus the heads: a small share
        assert 0 < facts["trainable"] < facts["total"] / 3
    # The reported test accuracy is the saved model's (adapters and all): evaluated again from the checkpoint here.
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reported = json.loads((run / "results.json").read_text())
    assert_reported(reported["test"], evaluated_again(run / "checkpoint_last.pt"))


def test_a_timm_resnet_checkpoint_evaluates_and_predicts(tmp_path):
    proc = ltcl(
        "train",
        "-c",
        DIGITS,
        *sets(*ONE_EPOCH, "model.backbone=timm/resnet18", "loss.objective=bs", f"train.output_dir={tmp_path}"),
        env=OFFLINE,
    )
    assert proc.returncode == 0, proc.stderr
    checkpoint = tmp_path / "digits_lt" / "checkpoint_last.pt"
    results = json.loads((tmp_path / "digits_lt" / "results.json").read_text())
    proc = ltcl("eval", "--checkpoint", str(checkpoint), "--json", env=OFFLINE)
    assert proc.returncode == 0 and json.loads(proc.stdout)["all"] == pytest.approx(results["test"]["all"])
    Image.new("RGB", (300, 200), (200, 30, 30)).save(tmp_path / "photo.jpg")
    proc = ltcl("predict", "--checkpoint", str(checkpoint), str(tmp_path / "photo.jpg"), "--top-k", "2", env=OFFLINE)
    assert proc.returncode == 0 and proc.stdout.splitlines()[1].strip().startswith("1. ")


def test_lora_on_a_conv_net_is_refused_in_one_sentence(tmp_path):
    proc = ltcl(
        "train",
        "-c",
        DIGITS,
        *sets(*ONE_EPOCH, "model.backbone=timm/resnet18", "model.finetune=lora:4", f"train.output_dir={tmp_path}"),
        env=OFFLINE,
    )
    assert proc.returncode == 2 and "lora" in one_sentence(proc.stderr).lower()


def test_pretrained_weights_offline_without_a_cached_copy_is_one_sentence(tmp_path):
    env = {**OFFLINE, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub")}
    proc = ltcl(
        "train",
        "-c",
        DIGITS,
        *sets(*ONE_EPOCH, "model.backbone=timm/resnet18", "model.pretrained=true", f"train.output_dir={tmp_path}"),
        env=env,
    )
    message = one_sentence(proc.stderr)
    assert proc.returncode == 2 and "resnet18" in message and str(Path(env["HF_HUB_CACHE"])) in message
    assert not (tmp_path / "digits_lt" / "config.yaml").exists()  # it failed before the run began
