"""The dscl objective: what one step feeds its losses (queries, keys from the key encoder, patches and their RoI
teachers, the detached classifier), its state between steps (queue, momentum encoder), its config checks, and one
digits run from the command line that resumes to the same weights."""

import copy
import csv
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

import ltcl.methods.dscl as dscl_module
from ltcl.config import ConfigError, load_config
from ltcl.losses.dscl import dscl_loss, pbsd_loss
from ltcl.methods import StepRecord, build_objective, resolve_config
from ltcl.models import build_network
from ltcl.models.network import LongTailNetwork
from tests.engine.test_training import DIGITS, TINY, assert_reported, evaluated_again, straight_and_resumed

B, QUEUE, PATCH, COUNTS = 8, 32, 8, [40, 20, 10, 5]


def config(*overrides):
    base = ["loss.objective=dscl", "model.backbone=resnet8", f"data.batch_size={B}", f"loss.dscl.queue_size={QUEUE}",
            f"loss.dscl.patch_size={PATCH}", "loss.dscl.num_patches=2", "loss.dscl.patch_flip=false"]  # fmt: skip
    return resolve_config(load_config(DIGITS, [*base, *overrides]))


def setup(*overrides, seed=0):
    """Network and bound objective of the digits config, and a 4-view batch in two size groups (32 and 24 px)."""
    cfg = config(*overrides)
    torch.manual_seed(seed)
    model = build_network(cfg.model, len(COUNTS))
    objective = build_objective(cfg, COUNTS, feature_dim=model.feature_dim)
    objective.bind(model)
    model.train()
    objective.train()
    g = torch.Generator().manual_seed(1)
    groups = [torch.randn(2 * B, 3, 32, 32, generator=g), torch.randn(2 * B, 3, 24, 24, generator=g)]
    labels = torch.tensor([0, 0, 1, 1, 2, 3, 0, 3])
    return model, objective, groups, labels


def engine_step(model, groups, labels):
    """What the engine hands the objective: one forward per view group, outputs stacked view-major."""
    outs = [model(g, with_projection=True) for g in groups]
    stack = lambda name: torch.cat([getattr(o, name).view(2, B, -1) for o in outs]).flatten(0, 1)  # noqa: E731
    return StepRecord(
        logits=stack("logits"), labels=labels.repeat(4), projections=stack("projections"),
        contrastive_mask=torch.ones(4 * B, dtype=torch.bool), num_views=4, batch_size=B, model=model,
        features=stack("features"), images=groups, group_views=[[0, 1], [2, 3]],
    )  # fmt: skip


@pytest.fixture
def fixed_boxes(monkeypatch):
    g = torch.Generator().manual_seed(2)
    corner = torch.rand(2, B, 2, generator=g) * 14
    boxes = torch.cat([corner, corner + 6 + torch.rand(2, B, 2, generator=g) * 12], dim=-1)
    monkeypatch.setattr(dscl_module, "sample_patch_boxes", lambda *args, **kwargs: boxes)
    return boxes


def test_one_step_feeds_the_losses_what_the_method_defines(fixed_boxes):
    model, objective, groups, labels = setup()
    key_encoder = copy.deepcopy(objective.key_encoder)
    queue, queue_labels = objective.loss.queue.clone(), objective.loss.queue_labels.clone()
    step = engine_step(model, groups, labels)
    out = objective(step)
    assert objective.stat_names == ("loss_view", "loss_class", "loss_pbsd", "loss_cls", "queue_fill")
    assert set(out.parts) == set(objective.stat_names) and out.parts["queue_fill"].item() == 0.0

    # DSCL: view 1's projections are the queries, view 2 through the key encoder (BatchNorm on its batch) the keys.
    with torch.no_grad():
        keys = key_encoder(groups[0][B:], with_projection=True).projections
    want = dscl_loss(step.projections[:B], keys, labels, queue, queue_labels, beta=8.0, temperature=0.1)
    torch.testing.assert_close(out.parts["loss_view"], want.view)
    torch.testing.assert_close(out.parts["loss_class"], want.klass)

    # PBSD: the patches cut from view 1 go through the network; the teachers are their boxes pooled from view 1's
    # last feature map (ResNet's last stage, before global pooling) at its stride, through the projection head.
    trunk = model.backbone
    with torch.no_grad():
        x = F.relu(trunk.bn1(trunk.conv1(groups[0])))
        feature_map = trunk.layer3(trunk.layer2(trunk.layer1(x)))[:B]
    rois = torch.cat([torch.arange(B).repeat(2)[:, None].float(), fixed_boxes.reshape(-1, 4)], dim=1)
    pooled = roi_align(feature_map, rois, 2, spatial_scale=feature_map.shape[-1] / 32, aligned=False)
    teachers = F.normalize(model.projection(pooled.mean(dim=(2, 3))), dim=1).split(B)
    patches = roi_align(groups[0][:B], rois, PATCH, spatial_scale=1.0, aligned=True).split(B)
    students = [model(p).projections for p in patches]
    want_pbsd = pbsd_loss(students, teachers, keys, queue, temperature=0.1)
    torch.testing.assert_close(out.parts["loss_pbsd"], want_pbsd)

    # The classifier: view 1's features, class-balanced weights N / (C N_y).
    weights = torch.tensor([sum(COUNTS) / (len(COUNTS) * n) for n in COUNTS])
    ce = F.cross_entropy(step.logits[:B], labels, reduction="none")
    torch.testing.assert_close(out.parts["loss_cls"], (weights[labels] * ce).mean())
    total = want.view + want.klass + 1.5 * want_pbsd + out.parts["loss_cls"]
    torch.testing.assert_close(out.loss.detach(), total)


def test_the_classifier_trains_on_detached_features(fixed_boxes):
    grads = {}
    for weight in (0.0, 1.0):
        model, objective, groups, labels = setup(f"loss.cls_weight={weight}")
        objective(engine_step(model, groups, labels)).loss.backward()
        grads[weight] = {name: p.grad.clone() for name, p in model.named_parameters()}
    for name, grad in grads[0.0].items():
        if name.startswith("classifier."):
            assert grad.abs().sum() == 0 and grads[1.0][name].abs().sum() > 0
        else:  # the backbone and the projection head learn from DSCL and PBSD only
            torch.testing.assert_close(grads[1.0][name], grad, rtol=0, atol=0)


def test_after_a_step_the_queue_holds_the_keys_and_the_key_encoder_moves(fixed_boxes):
    model, objective, groups, labels = setup()
    assert all(not p.requires_grad for p in objective.key_encoder.parameters())
    assert not [p for p in objective.parameters() if p.requires_grad]  # nothing of the method joins the optimiser
    batch_norms = [m for m in objective.key_encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert batch_norms and all(m.training for m in batch_norms)  # MoCo's key encoder: batch statistics
    with torch.no_grad():
        keys = objective.key_encoder(groups[0][B:], with_projection=True).projections
    step = engine_step(model, groups, labels)
    objective(step).loss.backward()
    before = [p.clone() for p in objective.key_encoder.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.5 * p.grad
    objective.after_step(step)
    torch.testing.assert_close(objective.loss.queue[:B], keys)
    assert torch.equal(objective.loss.queue_labels[:B], labels) and int(objective.loss.queue_ptr) == B
    for old, new, query in zip(before, objective.key_encoder.parameters(), model.parameters()):
        torch.testing.assert_close(new, 0.999 * old + 0.001 * query)
    assert objective(engine_step(model, groups, labels)).parts["queue_fill"].item() == B / QUEUE


def test_config_refuses_what_dscl_cannot_train_with():
    with pytest.raises(ConfigError, match="needs two views .* views.num_views >= 2"):
        config("views.num_views=1", "views.sizes=[32]", "views.presets=[digits]")
    with pytest.raises(ConfigError, match=r"loss.dscl.queue_size \(36\) must be a multiple of data.batch_size \(8\)"):
        config("loss.dscl.queue_size=36")
    with pytest.raises(ConfigError, match="'loss.dscl.patch_scale' expects two numbers 0 < low <= high <= 1"):
        config("loss.dscl.patch_scale=[0.5,1.5]")
    cfg = config()
    model = LongTailNetwork(nn.Sequential(nn.Flatten(), nn.LazyLinear(8)), 8, len(COUNTS), nn.Linear(8, 4),
                            nn.Linear(8, len(COUNTS)))  # fmt: skip
    objective = build_objective(cfg, COUNTS, feature_dim=8)
    with pytest.raises(ConfigError, match="needs a convolutional backbone ending in global average pooling"):
        objective.bind(model)


def test_dscl_trains_from_the_command_line_and_resumes_to_the_same_weights(tmp_path):
    common = [*TINY, "loss.objective=dscl", "loss.dscl.queue_size=64", "loss.dscl.patch_size=8", "optim.epochs=2",
              "train.max_steps_per_epoch=2", "train.deterministic=true", "train.amp=none"]  # fmt: skip
    straight, want, run = straight_and_resumed(tmp_path, common, stop_at=3)
    assert "loss   dscl (tau 0.1, beta 8: view weight 0.111, class weight 0.889; queue 64" in straight.stdout
    assert "| view " in straight.stdout and "| pbsd " in straight.stdout and "| queue_fill " in straight.stdout
    assert {"loss.queue", "loss.queue_labels", "loss.queue_ptr"} <= set(want["objective"])
    assert any(k.startswith("key_encoder.backbone.") for k in want["objective"])
    assert int(want["objective"]["loss.queue_filled"]) == 64  # full after 2 of the 4 steps of batch 32
    assert int(want["objective"]["patch_draws"]) == 4  # the patches' generator, seeded per step, resumes too
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["queue_fill"]) for r in rows] == [0.25, 1.0]  # the mean over each epoch's steps: 0, 1/2; 1, 1
    assert all(float(r["loss_pbsd"]) > 0 and float(r["loss_class"]) > 0 for r in rows)
    # the reported accuracy is the saved model's own
    results = json.loads((run / "results.json").read_text())
    assert_reported(results["test"], evaluated_again(run / "checkpoint_last.pt"))


SHARED_PROTOCOL = [  # configs/cifar10_lt_if100_acl.yaml -> DSCL's CIFAR-10-LT row of the 20-epoch protocol
    "loss.objective=dscl", "views.num_views=2", "views.presets=[simclr,simclr]", "views.contrastive_mode=uniform",
    "model.projection_hidden=64", "model.projection_dim=128", "loss.temperature=0.07", "loss.dscl.queue_size=7040",
    "loss.dscl.patch_size=8", "optim.lr=0.05", "optim.epochs=20", "optim.warmup_epochs=1", "optim.schedule=cosine",
]  # fmt: skip


@pytest.mark.parametrize("name", ["cifar10_lt_if100_dscl", "cifar100_lt_if100_dscl", "imagenet_lt_x50_dscl"])
def test_the_rival_configs_resolve(name):
    cfg = resolve_config(load_config(DIGITS.replace("digits_lt.yaml", f"rivals/{name}.yaml")))
    assert cfg.loss.objective == "dscl" and cfg.views.num_views == 2 and cfg.model.classifier == "linear"
    assert set(cfg.loss.sections) == {"dscl"} and cfg.loss.temperature == 0.07


def test_the_shared_protocol_overrides_resolve():
    cfg = resolve_config(load_config(DIGITS.replace("digits_lt.yaml", "cifar10_lt_if100_acl.yaml"), SHARED_PROTOCOL))
    assert cfg.model.backbone == "resnet32" and cfg.data.batch_size == 128 and cfg.optim.epochs == 20
    assert cfg.loss.sections["dscl"]["queue_size"] % cfg.data.batch_size == 0


def test_the_patches_normalise_with_their_own_statistics_and_leave_the_running_ones_to_the_images(fixed_boxes):
    """PBSD's patches and RoI rows use batch statistics in the forward (train mode) but do not enter BatchNorm's
    running averages: after a step these hold the engine's forward of the views alone."""
    model, objective, groups, labels = setup("model.projection_bn=true")
    step = engine_step(model, groups, labels)  # the views' forward: the running statistics move here
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    assert any(isinstance(m, nn.BatchNorm1d) for m in bns)  # the projection head's, which the teachers go through
    after_views = [(m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked)) for m in bns]
    out = objective(step)
    for m, (mean, var, count) in zip(bns, after_views):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
        assert int(m.num_batches_tracked) == count
    # (test_one_step_feeds_the_losses_what_the_method_defines checks that the students still normalise with their
    # own batch's statistics: its reference PBSD runs the patches through the network in train mode.)
    assert out.parts["loss_pbsd"].item() > 0
    probe = copy.deepcopy(model)
    before = [m.running_mean.clone() for m in probe.modules() if isinstance(m, nn.BatchNorm2d)]
    probe(groups[0][:B])  # the check above can fail: an unguarded forward in train mode does move them
    moved = [m.running_mean for m in probe.modules() if isinstance(m, nn.BatchNorm2d)]
    assert any(not torch.equal(a, b) for a, b in zip(before, moved))
