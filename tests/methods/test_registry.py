"""The method registry: names and composites, typed config sections, and the rules a registered method follows."""

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ltcl.config import ConfigError, load_config, migrate_renamed_keys
from ltcl.losses import AlignedContrastiveLoss, BalancedSoftmaxLoss, GPaCoLoss
from ltcl.methods import OBJECTIVES, Objective, StepRecord, build_objective, method_parts, resolve_config
from ltcl.methods.registry import register_objective
from ltcl.models import build_network

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "configs" / "digits_lt.yaml"
COUNTS = [120, 60, 30, 10]


def digits(*overrides):
    return resolve_config(load_config(DIGITS, list(overrides)))


def test_objective_names_are_single_methods_or_a_classification_loss_plus_a_contrastive_term():
    assert [c.name for c in method_parts("bs+acl")] == ["bs", "acl"]
    assert [c.name for c in method_parts("gpaco")] == ["gpaco"]
    assert [c.name for c in method_parts("la")] == ["la"]
    with pytest.raises(ConfigError, match=r"'acl' is a contrastive term; join it .* bs\+acl"):
        method_parts("acl")
    with pytest.raises(ConfigError, match="CLS\\+CON joins a classification loss"):
        method_parts("acl+bs")
    with pytest.raises(ConfigError, match="CLS\\+CON joins"):
        method_parts("gpaco+acl")
    with pytest.raises(ConfigError, match="'bs\\+acll' is not a registered method.*Did you mean 'bs\\+acl'"):
        method_parts("bs+acll")


def test_a_section_is_typed_completed_with_its_defaults_and_dropped_when_unused():
    cfg = digits("loss.acl.center_momentum=0.8")
    assert cfg.loss.sections == {
        "acl": {"use_centers": True, "center_momentum": 0.8, "negative_weighting": "inverse_frequency"}
    }
    # another objective: the acl section is checked, then left out of what the run records
    assert digits("loss.objective=bs", "loss.acl.center_momentum=0.8").loss.sections == {}
    assert digits("loss.objective=la+scl").loss.sections == {"la": {"tau": 1.0}}
    assert resolve_config(cfg) == cfg  # idempotent


@pytest.mark.parametrize(
    "override, message",
    [
        ("loss.acl.center_momentum=1.5", "'loss.acl.center_momentum' expects a number in [0, 1), got 1.5."),
        ("loss.acl.negative_weighting=square", "'loss.acl.negative_weighting' expects one of inverse_frequency, none"),
        ("loss.acl.centre_momentum=0.8", "Unknown config key 'loss.acl.centre_momentum'"),
        ("loss.gpaco.alpha=-1", "'loss.gpaco.alpha' expects a finite number >= 0, got -1.0."),
        ("loss.acls.use_centers=false", "Unknown config section 'loss.acls' (method and mixing sections: acl, "),
        ("loss.center_momentum=0.8", "'loss.center_momentum' is now 'loss.acl.center_momentum'"),
        ("loss.gpaco_alpha=0.1", "'loss.gpaco_alpha' is now 'loss.gpaco.alpha'"),
        ("loss.temperature=inf", "'loss.temperature' expects a positive finite number, got inf."),
    ],
)
def test_a_bad_section_value_is_one_sentence_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        digits(override)


def test_old_flat_keys_in_a_checkpoint_config_move_to_their_sections():
    old = {"loss": {"objective": "ldam", "center_momentum": 0.7, "drw_start_epoch": 3, "gpaco_alpha": 0.2}}
    moved = migrate_renamed_keys(old)
    assert moved["loss"] == {"objective": "ldam", "acl": {"center_momentum": 0.7},
                             "ldam": {"drw_start_epoch": 3}, "gpaco": {"alpha": 0.2}}  # fmt: skip
    assert migrate_renamed_keys({"loss": {"objective": "la+bcl"}})["loss"]["bcl"] == {"views": "all"}
    assert "center_momentum" in old["loss"]  # the input is left alone


def test_register_objective_refuses_what_would_break_the_registry():
    class NotAnObjective:
        name = "x"

    with pytest.raises(ValueError, match="subclass of ltcl.methods.Objective"):
        register_objective(NotAnObjective)
    for attrs, message in (
        ({"name": "a+b", "role": "classification"}, "must not contain '\\+'"),
        ({"name": "x1", "role": "regression"}, "role must be one of"),
        ({"name": "x2", "role": "classification", "Section": dict}, "Section must be a dataclass"),
        ({"name": "acl", "role": "contrastive"}, "name 'acl' is taken"),
        ({"name": "x3", "role": "contrastive", "section_name": "acl",
          "Section": dataclasses.make_dataclass("S", [("a", int, 1)])}, "'loss.acl' of 'x3' belongs to 'acl'"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            register_objective(type("Bad", (Objective,), attrs))
    assert "x1" not in OBJECTIVES and "x3" not in OBJECTIVES


def step_record(num_views=2, batch=6, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    cfg = load_config(DIGITS, ["model.backbone=resnet8", "model.projection_dim=8"])
    model = build_network(cfg.model, len(COUNTS))
    labels = torch.randint(0, len(COUNTS), (batch,), generator=generator).repeat(num_views)
    logits = torch.randn(num_views * batch, len(COUNTS), generator=generator, requires_grad=True)
    projections = F.normalize(torch.randn(num_views * batch, dim, generator=generator), dim=1).requires_grad_()
    mask = torch.rand(num_views * batch, generator=generator) < 0.7
    return StepRecord(logits, labels, projections, mask, num_views, batch, model), cfg


def test_the_composite_is_cls_weight_times_classification_plus_alpha_times_contrastive():
    step, cfg = step_record()
    cfg = resolve_config(
        load_config(DIGITS, ["loss.cls_weight=2.0", "loss.alpha=0.3", "loss.acl.center_momentum=0.5",
                             "model.projection_dim=8"])
    )  # fmt: skip
    objective = build_objective(cfg, COUNTS, feature_dim=64)
    out = objective(step)
    rows = step.contrastive_mask.nonzero().squeeze(1)
    acl = AlignedContrastiveLoss(COUNTS, 8, temperature=cfg.loss.temperature, center_momentum=0.5)
    want_con = acl(step.projections[rows], step.labels[rows])
    want_cls = BalancedSoftmaxLoss(COUNTS)(step.logits, step.labels)
    torch.testing.assert_close(out.loss, 2.0 * want_cls + 0.3 * want_con)
    assert objective.stat_names == ("loss_cls", "loss_con") and set(out.parts) == {"loss_cls", "loss_con"}
    torch.testing.assert_close(out.parts["loss_con"], want_con.detach())
    torch.testing.assert_close(objective.contrastive.loss.centers, acl.centers)  # the same centre update


def test_gpaco_is_the_whole_objective_on_its_two_views_with_its_head_and_queue():
    step, _ = step_record(num_views=3)
    step.features = torch.randn(3 * step.batch_size, 64, generator=torch.Generator().manual_seed(1))
    cfg = digits("loss.objective=gpaco", "loss.gpaco.alpha=0.05", "loss.gpaco.queue_size=8", "loss.gpaco.dim=16")
    objective = build_objective(cfg, COUNTS, feature_dim=64)
    assert not objective.needs_projections and objective.needs_features
    assert [m.out_features for m in objective.head if isinstance(m, torch.nn.Linear)] == [64, 64, 16]
    queue_before = objective.loss.queue.keys.clone(), objective.loss.queue.labels.clone()
    out = objective(step)
    b = step.batch_size
    z = F.normalize(objective.head(step.features[: 2 * b]), dim=1)  # views 1 and 2 only
    want = GPaCoLoss(COUNTS, alpha=0.05, temperature=cfg.loss.temperature, queue_size=8, key_dim=16)
    want.queue.keys.copy_(queue_before[0])
    want.queue.labels.copy_(queue_before[1])
    torch.testing.assert_close(out.loss, want(z, step.labels[: 2 * b], step.logits[: 2 * b]))
    assert set(out.parts) == set(objective.stat_names) == {"queue_fill", "centre_weight"}
    assert out.parts["queue_fill"].item() == 0.0
    objective.after_step(step)  # the second view's keys enter the queue, after the loss used it
    torch.testing.assert_close(objective.loss.queue.keys[:b], z[b : 2 * b].detach())
    assert torch.equal(objective.loss.queue.labels[:b], step.labels[b : 2 * b])
    assert objective.loss.queue.fill().item() == b / 8
    with pytest.raises(ConfigError, match="gpaco contrasts two views of every image: set views.num_views"):
        digits("loss.objective=gpaco", "views.num_views=1", "views.sizes=[32]", "views.presets=[digits]",
               "views.contrastive_views=[1,1,1]")  # fmt: skip


@pytest.mark.parametrize("name, dim, queue, tau", [("cifar10_lt_if100", 32, 1024, 0.05),
                                                    ("cifar100_lt_if100", 32, 1024, 0.05),
                                                    ("imagenet_lt_x50", 128, 8192, 0.2)])  # fmt: skip
def test_the_gpaco_rival_configs_are_the_authors_settings(name, dim, queue, tau):
    cfg = resolve_config(load_config(REPO / "configs" / "rivals" / f"{name}_gpaco.yaml"))
    section = cfg.loss.sections["gpaco"]
    assert (section["dim"], section["queue_size"], section["queue_start"], cfg.loss.temperature) == (
        dim, queue, "random", tau)  # fmt: skip
    assert cfg.views.num_views == 2 and cfg.model.classifier == "linear" and cfg.data.batch_size == 128
    text = (REPO / "configs" / "rivals" / f"{name}_gpaco.yaml").read_text()
    lines = text.splitlines()
    for before, line in zip(lines, lines[1:]):  # every value has its source, on its line or in the comment above
        if ":" in line and not line.lstrip().startswith("#") and not line.rstrip().endswith(":"):
            assert "#" in line or before.lstrip().startswith("#"), line


def test_no_engine_file_names_a_method():
    names = set(OBJECTIVES)
    for path in (REPO / "src" / "ltcl" / "engine").glob("*.py"):
        tree = ast.parse(path.read_text())
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert not names & strings, (path.name, names & strings)
        imports = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not {m for m in imports if m and m.startswith("ltcl.methods.")}, path.name  # the package only
        assert not {m for m in imports if m and m.startswith("ltcl.losses")} - {"ltcl.losses.functional"}, path.name
