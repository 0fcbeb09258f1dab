"""Every paper config parses and builds its model; the config system and the CLI reject mistakes clearly."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ltcl.cli import main
from ltcl.config import ConfigError, load_config
from ltcl.data.datasets import digits_arrays
from ltcl.methods import method_parts, resolve_config
from ltcl.models import apply_finetune, backbone_family, build_network

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml"))
NUM_CLASSES = {
    "cifar10_lt": 10,
    "cifar100_lt": 100,
    "imagenet_lt": 1000,
    "places_lt": 365,
    "inat2018": 8142,
    "digits_lt": 10,
}


def test_there_is_a_config_for_every_paper_setting():
    names = {p.stem for p in CONFIGS}
    for i in (100, 50, 10):
        assert f"cifar10_lt_if{i}_acl" in names and f"cifar100_lt_if{i}_acl" in names
    assert {
        "imagenet_lt_r50_acl",
        "imagenet_lt_x50_acl",
        "imagenet_lt_x101_acl",
        "inat2018_r50_acl",
        "places_lt_r152_acl",
        "digits_lt",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_paper_config_parses_and_its_model_builds(path):
    cfg = resolve_config(load_config(path))
    assert [part.name for part in method_parts(cfg.loss.objective)] == ["bs", "acl"]
    # The paper's recipes (docs/conventions.md, "Recipes").
    if cfg.data.dataset.startswith("cifar"):
        assert (cfg.optim.lr, cfg.optim.epochs, cfg.loss.alpha, cfg.loss.temperature) == (0.07, 200, 0.1, 0.05)
        assert cfg.model.backbone == "resnet32" and cfg.optim.milestones == [160, 180]
    # timm and OpenCLIP backbones: our short fine-tuning recipe, not the paper's
    foundation = backbone_family(cfg.model.backbone).name in ("timm", "open_clip")
    if cfg.data.dataset == "imagenet_lt" and not foundation:
        assert (cfg.optim.lr, cfg.optim.epochs, cfg.optim.weight_decay, cfg.loss.alpha) == (0.05, 90, 1e-3, 0.5)
        assert cfg.model.classifier == "cosine" and cfg.data.val_list and cfg.data.test_list
    # Pretrained weights are the user's file (Places-LT) or a download (foundation backbones; the zero-shot head
    # needs them too); the architecture is what is checked here.
    model_cfg = replace(cfg.model, weights="", pretrained=False, zero_shot_head=False)
    # No memory for the big ResNets; OpenCLIP moves its model between devices itself, which meta tensors refuse.
    with torch.device("cpu" if foundation else "meta"):
        model = build_network(model_cfg, NUM_CLASSES[cfg.data.dataset])
    assert model.num_classes == NUM_CLASSES[cfg.data.dataset]
    assert model.projection is not None
    counts = apply_finetune(model, model_cfg)
    if foundation:  # LoRA: of the backbone, only the adapters train (the heads, 8,142 classes for iNat, all train)
        backbone = list(model.backbone.parameters())
        backbone_trainable = sum(p.numel() for p in backbone if p.requires_grad)
        assert cfg.model.finetune.startswith("lora") and 0 < backbone_trainable < sum(p.numel() for p in backbone) / 20
    elif cfg.data.dataset == "places_lt":  # GPaCo: only the last block of layer4 (plus heads) trains
        assert cfg.model.weights and counts.trainable < counts.total / 4


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.lrr=0.1"], "Unknown config key 'optim.lrr'"),
        (["optim.lr=fast"], "'optim.lr' expects a number, got 'fast'"),
        (["optim.epochs=2.5"], "'optim.epochs' expects an integer"),
        (["train.deterministic=maybe"], "'train.deterministic' expects true or false"),
        (["views.sizes=32,big"], r"'views.sizes\[1\]' expects an integer"),
        (["optim"], "must have the form key=value"),
        (["optim=3"], "'optim' is a section"),
        (["optim.lr.x=3"], "'optim.lr' is a value, not a section"),
    ],
)
def test_bad_overrides_name_the_key_and_the_expected_type(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "configs" / "digits_lt.yaml", overrides)


def test_yaml_values_are_checked_and_bases_merge(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "data:\n  dataset: digits_lt\noptim:\n  lr: 0.5\n  epochs: 7\n  warmup_epochs: 1\n"
    )
    (tmp_path / "top.yaml").write_text("base: base.yaml\noptim:\n  lr: 1e-3\n")
    cfg = load_config(tmp_path / "top.yaml")
    assert (cfg.optim.lr, cfg.optim.epochs, cfg.name) == (1e-3, 7, "top")
    (tmp_path / "bad.yaml").write_text("data:\n  dataset: digits_lt\nmodel:\n  backbone: [resnet32]\n")
    with pytest.raises(ConfigError, match="'model.backbone' expects a string"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "loop.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "-c", "configs/none.yaml"], "does not exist"),
        (["train", "-c", "configs/digits_lt.yaml", "--set", "loss.objective=bs+xy"], "loss.objective 'bs+xy' is not"),
        (["train", "-c", "configs/digits_lt.yaml", "--set", "train.amp=fp8"], "'train.amp' expects one of auto, none"),
        (["train", "-c", "configs/digits_lt.yaml", "--set", "data.augment_on=gpu"], "'data.augment_on' expects one of"),
        (
            ["train", "-c", "configs/digits_lt.yaml", "--set", "model.finetune=lora"],
            "model.finetune lora:R takes a rank",
        ),
        (["train"], "Give a config with -c CONFIG.yaml, or continue a run with --resume"),
        (["data", "-c", "configs/cifar10_lt_if100_acl.yaml", "--set", "data.root=/nowhere/cifar"], "/nowhere/cifar"),
        (["data", "-c", "configs/digits_lt.yaml", "--set", "data.dataset=mnist"], "'data.dataset' expects one of"),
        (["eval", "--checkpoint", "/nowhere/checkpoint.pt"], "/nowhere/checkpoint.pt does not exist"),
        (["train", "-c", "configs/digits_lt.yaml", "--resume", "/nowhere/last.pt"], "/nowhere/last.pt does not exist"),
    ],
)
def test_cli_mistakes_exit_2_with_one_sentence(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_console_script_help_guides():
    script = Path(sys.executable).parent / "ltcl"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "ltcl.cli"]
    out = subprocess.run([*command, "--help"], capture_output=True, text=True, check=True).stdout
    for word in ("train", "eval", "predict", "data", "examples:"):
        assert word in out
    train_help = subprocess.run([*command, "train", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--resume" in train_help and "--set" in train_help


def ldam_counts(max_count: int, imbalance_factor: float, num_classes: int = 10) -> list[int]:
    """LDAM-DRW's long-tailed sizes, written out here: n_i = int(n_max * (1/IF) ** (i / (C - 1)))."""
    return [int(max_count * (1.0 / imbalance_factor) ** (i / (num_classes - 1.0))) for i in range(num_classes)]


def group_sizes(counts: list[int], many: int = 100, few: int = 20) -> dict[str, int]:
    """Classes per shot group: many > 100 training images, few < 20, medium in between (both ends included)."""
    return {
        "many": sum(n > many for n in counts),
        "medium": sum(few <= n <= many for n in counts),
        "few": sum(n < few for n in counts),
    }


def test_data_command_reports_the_cifar10_lt_if100_set(cifar10_npz, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    config = "configs/cifar10_lt_if100_acl.yaml"
    assert main(["data", "-c", config, "--set", f"data.root={cifar10_npz}", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    # Counted from the file: 10 classes of 5,000 training images, all test images kept; LDAM's sizes at IF 100
    # (12,406 images, as its paper reports).
    data = np.load(cifar10_npz)
    per_class = np.bincount(data["y_train"])
    counts = ldam_counts(int(per_class.max()), 100, len(per_class))
    assert info["num_classes"] == len(per_class) and info["class_counts"] == counts
    assert info["train_size"] == sum(counts) and info["test_size"] == len(data["y_test"])
    groups = group_sizes(counts)
    assert info["groups"] == groups
    # The config's views per shot group (many, medium, few), none for a group without classes.
    per_group = load_config(REPO / config).views.contrastive_views
    expected = {g: v if groups[g] else None for g, v in zip(("many", "medium", "few"), per_group)}
    assert info["contrastive_views_per_group"] == expected


def test_data_command_prints_a_readable_summary(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    # The sizes recomputed from scikit-learn's digits: the last 50 images of each class are the test set, the rest
    # the pool; the long-tailed quotas start from the smallest pool, and validation takes up to val_per_class of
    # each class's unused pool images.
    cfg = load_config(REPO / "configs" / "digits_lt.yaml").data
    labels = digits_arrays()[1]
    test_per_class = 50
    pool = np.bincount(labels) - test_per_class
    counts = ldam_counts(int(pool.min()), cfg.imbalance_factor, len(pool))
    val = sum(min(cfg.val_per_class, int(p) - n) for p, n in zip(pool, counts))
    groups = group_sizes(counts)
    assert main(["data", "-c", "configs/digits_lt.yaml", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["class_counts"] == counts
    assert main(["data", "-c", "configs/digits_lt.yaml"]) == 0
    out = capsys.readouterr().out
    assert f"train / val / test {sum(counts)} / {val} / {test_per_class * len(pool)}" in out
    assert f"many {groups['many']} / medium {groups['medium']} / few {groups['few']} classes" in out
