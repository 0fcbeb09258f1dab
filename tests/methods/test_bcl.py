"""``la+bcl`` as BCL's authors run it: logit adjustment on view 1, BCL on views 2 and 3 (``loss.bcl.views: split``),
checked against a float64 loop over the equations (loss and gradients), the ``all`` option, the config rules and the
rival configs."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ltcl.config import ConfigError, load_config
from ltcl.methods import StepRecord, build_objective, resolve_config
from tests.losses.reference import logit_adjusted_reference
from tests.losses.rivals_reference import bcl_reference

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "configs" / "digits_lt.yaml"
COUNTS = [120, 60, 30, 10]
FEATURES, HIDDEN, DIM = 6, 8, 5
PATTERNS = {
    "mixed": [0, 1, 0, 2, 0, 1],  # class 3 absent: only its prototype takes part
    "alone": [0, 0, 0, 3],  # class 3 has one image: its two contrasted views and its prototype
    "one_class": [2, 2, 2],
    "singletons": [0, 1, 2, 3],
    "single_image": [1],
}


def objective(*overrides, views="split", mode="uniform"):
    cfg = resolve_config(
        load_config(
            DIGITS,
            [
                "loss.objective=la+bcl",
                "loss.cls_weight=2.0",
                "loss.alpha=0.6",
                "loss.temperature=0.1",
                f"loss.bcl.views={views}",
                f"views.contrastive_mode={mode}",
                f"model.projection_hidden={HIDDEN}",
                f"model.projection_dim={DIM}",
                *overrides,
            ],
        )
    )
    return build_objective(cfg, COUNTS, feature_dim=FEATURES).double()


class Classifier(torch.nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.weight = weight


class Model(torch.nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.classifier = Classifier(weight)


def step_inputs(labels, num_views=4, seed=0, mask=None):
    g = torch.Generator().manual_seed(seed)
    b = len(labels)
    logits = torch.randn(num_views * b, len(COUNTS), generator=g, dtype=torch.float64).requires_grad_()
    z = F.normalize(torch.randn(num_views * b, DIM, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    weight = torch.randn(len(COUNTS), FEATURES, generator=g, dtype=torch.float64).requires_grad_()
    y = torch.tensor(labels, dtype=torch.int64).repeat(num_views)
    mask = torch.ones(num_views * b, dtype=torch.bool) if mask is None else mask
    step = StepRecord(logits, y, z, mask, num_views, b, Model(weight))
    return step, (logits, z, weight)


def check(got, want, leaves):
    grads_got = torch.autograd.grad(got, leaves, retain_graph=True)
    grads_want = torch.autograd.grad(want, leaves)
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    for a, b in zip(grads_got, grads_want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_split_is_logit_adjustment_on_view_1_plus_bcl_on_views_2_and_3(pattern):
    obj = objective()
    labels = PATTERNS[pattern]
    b = len(labels)
    step, leaves = step_inputs(labels)
    logits, z, weight = leaves
    got = obj(step)
    prototypes = obj.contrastive.prototype_head(weight)
    y = step.labels
    want = 2.0 * logit_adjusted_reference(logits[:b], y[:b], COUNTS, 1.0) + 0.6 * bcl_reference(
        z[b : 3 * b], y[b : 3 * b], prototypes, 0.1
    )
    check(got.loss, want, leaves)
    grad_logits, grad_z, grad_weight = torch.autograd.grad(got.loss, leaves)
    assert grad_logits[b:].abs().sum() == 0 and grad_logits[:b].abs().sum() > 0  # LA sees view 1 only
    assert grad_z[:b].abs().sum() == 0 and grad_z[3 * b :].abs().sum() == 0  # BCL sees views 2-3 only
    assert grad_weight.abs().sum() > 0  # the prototypes are the classifier's weights through the head
    assert set(got.parts) == {"loss_cls", "loss_con", "bcl_proto_cos"}
    cosine = (z[b : 3 * b] * prototypes[y[b : 3 * b]]).sum(1).mean()
    assert got.parts["bcl_proto_cos"].item() == pytest.approx(cosine.item(), rel=1e-12)


def test_split_contrasts_the_rows_of_views_2_and_3_that_the_contrastive_schedule_selects():
    labels = [0, 1, 0, 2, 3]
    b = len(labels)
    mask = torch.ones(4 * b, dtype=torch.bool)
    mask[[b + 0, 2 * b + 0, 2 * b + 2]] = False  # image 0 gives neither view, image 2 only view 2
    step, leaves = step_inputs(labels, mask=mask, seed=1)
    logits, z, weight = leaves
    obj = objective(mode="distribution_aware")
    got = obj(step)
    rows = torch.arange(b, 3 * b)[mask[b : 3 * b]]
    prototypes = obj.contrastive.prototype_head(weight)
    want = 2.0 * logit_adjusted_reference(logits[:b], step.labels[:b], COUNTS, 1.0) + 0.6 * bcl_reference(
        z[rows], step.labels[rows], prototypes, 0.1
    )
    check(got.loss, want, leaves)


def test_all_puts_both_losses_on_every_view_and_differs_from_split():
    labels = [0, 1, 0, 2, 0, 1]
    mask = torch.ones(4 * len(labels), dtype=torch.bool)
    mask[3 * len(labels) :: 2] = False  # a distribution-aware mask: some view-4 rows left out
    step, leaves = step_inputs(labels, mask=mask, seed=2)
    logits, z, weight = leaves
    obj = objective(views="all", mode="distribution_aware")
    assert obj.contrastive.classification_views is None
    got = obj(step)
    prototypes = obj.contrastive.prototype_head(weight)
    want = 2.0 * logit_adjusted_reference(logits, step.labels, COUNTS, 1.0) + 0.6 * bcl_reference(
        z[mask], step.labels[mask], prototypes, 0.1
    )
    check(got.loss, want, leaves)
    split = objective(mode="distribution_aware")
    split.load_state_dict(obj.state_dict())
    assert abs(split(step).loss.item() - got.loss.item()) > 1e-3


def test_split_needs_three_views_and_the_header_says_which_views_each_loss_sees():
    two = ["loss.objective=la+bcl", "views.num_views=2", "views.presets=digits,digits_simclr", "views.sizes=32"]
    with pytest.raises(ConfigError, match=r"loss.bcl.views 'split' .* views.num_views is 2"):
        resolve_config(load_config(DIGITS, two))
    cfg = resolve_config(load_config(DIGITS, [*two, "loss.bcl.views=all"]))
    assert cfg.loss.sections["bcl"] == {"views": "all"}
    with pytest.raises(ConfigError, match="'loss.bcl.views' expects one of split, all"):
        resolve_config(load_config(DIGITS, ["loss.objective=la+bcl", "loss.bcl.views=2-3"]))
    obj = objective()
    assert obj.contrastive.classification_views == 1
    assert obj.describe() == (
        "la+bcl, classification weight 2.0, alpha 0.6, la (tau 1.0), "
        "bcl (tau 0.1, views split: classification on view 1, BCL on views 2-3)"
    )
    assert obj.stat_names == ("loss_cls", "loss_con", "bcl_proto_cos")


@pytest.mark.parametrize(
    "name, scale, hidden, dim, classifier",
    [
        ("cifar10_lt_if100_la_bcl", None, 512, 128, "linear"),
        ("cifar100_lt_if100_la_bcl", None, 512, 128, "linear"),
        ("imagenet_lt_x50_la_bcl", 30.0, 2048, 1024, "cosine"),
    ],
)
def test_the_rival_configs_parse_and_hold_the_authors_setup(name, scale, hidden, dim, classifier):
    cfg = resolve_config(load_config(REPO / "configs" / "rivals" / f"{name}.yaml"))
    assert cfg.loss.objective == "la+bcl" and cfg.loss.sections == {"la": {"tau": 1.0}, "bcl": {"views": "split"}}
    assert cfg.views.num_views == 3 and cfg.views.contrastive_mode == "uniform"
    assert (cfg.model.projection_hidden, cfg.model.projection_dim, cfg.model.projection_bn) == (hidden, dim, True)
    assert cfg.model.classifier == classifier
    if scale is not None:
        assert cfg.model.cosine_scale == scale
