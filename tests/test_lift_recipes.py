"""configs/lift/: LIFT's recipe (Shi et al., ICML 2024, github.com/shijxcs/LIFT at 661ead9) on four datasets, with
and without ACL. Every config must load and validate, and hold LIFT's values: each expected value below names the
LIFT file it was read from. ``model.finetune: adaptformer`` and the optimiser keys ``optim.name`` /
``loss.label_smoothing`` come from other branches: until they merge, these tests fail on the unknown mode."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ltcl.config import load_config
from ltcl.methods import method_parts, resolve_config

LIFT_DIR = Path(__file__).resolve().parents[1] / "configs" / "lift"
CONFIGS = sorted(LIFT_DIR.glob("*.yaml"))  # the shared recipe lives in configs/lift/base/, not a run of its own
DATASETS = {"imagenet_lt": 1000, "places_lt": 365, "inat2018": 8142, "cifar100_lt": 100}

# LIFT's values, from configs/model/clip_vit_b16.yaml unless said otherwise.
LIFT = {
    "batch_size": 128,
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "epochs": 10,  # README.md: `num_epochs 20` for iNaturalist 2018
    "cosine_scale": 25.0,  # utils/config.py `scale`, passed to CosineClassifier
    "la_tau": 1.0,  # utils/losses.py LogitAdjustedLoss default
    "test_resize": 256,  # trainer.py transform_test: Resize(224 * 8 // 7)
}


def lift_config(path: Path):
    return resolve_config(load_config(path))


def test_every_dataset_has_a_recipe_with_and_without_acl():
    assert {p.stem for p in CONFIGS} == {name + acl for name in DATASETS for acl in ("", "_acl")}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_the_recipe_holds_lift_s_values(path):
    cfg = lift_config(path)
    dataset = path.stem.removesuffix("_acl")
    assert cfg.data.dataset == dataset and cfg.data.batch_size == LIFT["batch_size"]
    # AdaptFormer on OpenAI's CLIP ViT-B/16; the cosine head starts from the class names' text (iNaturalist's
    # classes are numbers in ltcl's lists, so its head cannot)
    assert cfg.model.backbone == "open_clip/ViT-B-16-quickgelu" and cfg.model.pretrained == "openai"
    assert cfg.model.finetune.partition(":")[0] == "adaptformer"
    assert cfg.model.zero_shot_head == (dataset != "inat2018")
    assert (cfg.model.classifier, cfg.model.cosine_scale) == ("cosine", LIFT["cosine_scale"])
    # SGD, cosine to 0 over 10 epochs (20 for iNaturalist), no warm-up
    optim = cfg.optim
    assert getattr(optim, "name", "sgd") == "sgd" and not optim.nesterov
    assert (optim.lr, optim.momentum, optim.weight_decay) == (LIFT["lr"], LIFT["momentum"], LIFT["weight_decay"])
    assert optim.epochs == (20 if dataset == "inat2018" else LIFT["epochs"])
    assert (optim.schedule, optim.warmup_epochs) == ("cosine", 0)
    # the logit-adjusted loss, tau 1, no label smoothing; fp16 autocast (LIFT's prec "amp")
    parts = [part.name for part in method_parts(cfg.loss.objective)]
    assert parts == (["la", "acl"] if path.stem.endswith("_acl") else ["la"])
    assert cfg.loss.sections["la"]["tau"] == LIFT["la_tau"] and getattr(cfg.loss, "label_smoothing", 0.0) == 0.0
    assert cfg.train.amp == "fp16"
    # the first (for LIFT: the only) training view is RandomResizedCrop + flip: RandAugment with no operation
    views = cfg.views
    assert views.presets[0] == "randaugment" and views.randaugment_n == 0
    assert (views.test_resize, views.test_size, views.normalization) == (LIFT["test_resize"], 0, "model")
    if path.stem.endswith("_acl"):
        assert views.num_views == 4 and views.contrastive_views == [2, 3, 4] and cfg.model.projection_dim > 0
        assert (cfg.loss.alpha, cfg.loss.temperature) == (0.5, 0.2)
    else:
        assert views.num_views == 1 and cfg.model.projection_dim == 0


def test_acl_changes_only_the_views_the_projection_and_the_loss():
    for dataset in DATASETS:
        plain, acl = (load_config(LIFT_DIR / f"{dataset}{suffix}.yaml") for suffix in ("", "_acl"))
        assert (acl.data, acl.optim, acl.train) == (plain.data, plain.optim, plain.train)
        assert replace(acl.model, projection_hidden=0, projection_dim=0) == replace(
            plain.model, projection_hidden=0, projection_dim=0
        )


@pytest.mark.parametrize("stem", ["imagenet_lt_acl"])  # one ViT-B/16 build: the slow part (seconds)
def test_the_network_builds_with_only_adapters_and_heads_training(stem):
    pytest.importorskip("open_clip")
    from ltcl.models import apply_finetune, build_network

    cfg = lift_config(LIFT_DIR / f"{stem}.yaml")
    # the architecture, not the weights: nothing is downloaded in a test
    model_cfg = replace(cfg.model, pretrained=False, zero_shot_head=False)
    with torch.device("cpu"):
        model = build_network(model_cfg, DATASETS[cfg.data.dataset])
    apply_finetune(model, model_cfg)
    backbone = list(model.backbone.parameters())
    trained = sum(p.numel() for p in backbone if p.requires_grad)
    assert 0 < trained < sum(p.numel() for p in backbone) / 50  # LIFT: well under 1% of ViT-B/16 trains
    assert all(p.requires_grad for p in model.classifier.parameters())
    # LIFT's bottleneck for 1000 classes over 12 blocks: 2^floor(log2(1000 / 24)) = 32 (models/peft_vit.py)
    downs = [m for name, m in model.backbone.named_modules() if name.endswith(".down")]
    assert len(downs) == 12 and {m.out_features for m in downs} == {32}
