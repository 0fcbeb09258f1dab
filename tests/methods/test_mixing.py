"""Mixing of the classification term (``loss.mixing``): mixup, CutMix and Remix against float64 loops written from
the papers' equations; the objective as ``lam * L(y_a) + (1 - lam) * L(y_b)`` on the mixed views (loss and
gradient), the contrastive term on the unmixed ones; the config; and training and resuming on the digits."""

import ast
import dataclasses
import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ltcl.config import ConfigError, load_config
from ltcl.engine.interrupts import TEST_SIGNAL_AT_STEP
from ltcl.engine.trainer import train
from ltcl.losses.mixing import (
    box_share,
    cutmix_box,
    interpolated_loss,
    mix_images,
    paste_box,
    remix_label_weights,
    remix_targets,
)
from ltcl.methods import MIXINGS, StepRecord, build_objective, resolve_config
from ltcl.models.network import NetworkOutput
from tests.engine.test_training import DIGITS, TINY, assert_same_checkpoints, ltcl, sets
from tests.losses.reference import scl_reference

COUNTS = [300, 100, 30, 10]  # ratios 3 and 10 between classes: Remix's kappa 3 bites


def digits(*overrides):
    return resolve_config(load_config(DIGITS, list(overrides)))


# ---- float64 loops of the papers' equations ----------------------------------------------------------------------


def mixup_loop(x, partner, lam):
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = lam * x[i] + (1 - lam) * x[int(partner[i])]
    return out


def cutmix_loop(x, partner, lam, centre_row, centre_col):
    """Every pixel inside the box (sides int(side * sqrt(1 - lam)), half of each on either side of the centre)
    comes from the partner; lam becomes the share of pixels left to the image."""
    height, width = x.shape[-2:]
    half_h, half_w = int(height * math.sqrt(1 - lam)) // 2, int(width * math.sqrt(1 - lam)) // 2
    out, pasted = x.clone(), 0
    for r in range(height):
        for c in range(width):
            if centre_row - half_h <= r < centre_row + half_h and centre_col - half_w <= c < centre_col + half_w:
                pasted += 1
                for i in range(x.shape[0]):
                    out[i, :, r, c] = x[int(partner[i]), :, r, c]
    return out, 1 - pasted / (height * width)


def remix_weight_loop(labels, partner_labels, lam, counts, kappa, tau):
    """Chou et al., Eq. 10: the weight of the image's own label, per pair."""
    weights = []
    for y, p in zip(labels.tolist(), partner_labels.tolist()):
        ratio = counts[y] / counts[p]
        w = lam
        if ratio >= kappa and lam < tau:
            w = 0.0
        if ratio <= 1 / kappa and 1 - lam < tau:
            w = 1.0
        weights.append(w)
    return weights


def ce_loop(logits, label):
    return torch.logsumexp(logits, 0) - logits[label]


def pairwise_loss_loop(logits, labels, partner_labels, weights, log_prior=None):
    """mean over rows of w * l(own) + (1 - w) * l(partner), l the (balanced-softmax) cross-entropy of the row."""
    total = logits.sum() * 0
    for i in range(logits.shape[0]):
        z = logits[i] if log_prior is None else logits[i] + log_prior
        total = total + weights[i] * ce_loop(z, int(labels[i])) + (1 - weights[i]) * ce_loop(z, int(partner_labels[i]))
    return total / logits.shape[0]


# ---- the equations ------------------------------------------------------------------------------------------------


def test_mixup_and_cutmix_images_equal_the_loops():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 9, 7, dtype=torch.float64, generator=g)
    partner = torch.randperm(6, generator=g)
    torch.testing.assert_close(mix_images(x, partner, 0.3), mixup_loop(x, partner, 0.3), rtol=0, atol=0)
    # boxes inside the image, cut by its edges, and lam 1 (nothing pasted) and near 0 (almost all)
    for lam, row, col in [(0.6, 4, 3), (0.2, 0, 6), (0.5, 8, 0), (1.0, 4, 4), (1e-6, 4, 3)]:
        box = cutmix_box(9, 7, lam, row, col)
        want, share = cutmix_loop(x, partner, lam, row, col)
        torch.testing.assert_close(paste_box(x, partner, box), want, rtol=0, atol=0)
        assert box_share(box, 9, 7) == pytest.approx(share, abs=1e-15)


@pytest.mark.parametrize(
    "labels, partners, lam, kappa, tau",
    [
        ([0, 1, 2, 3, 0, 3], [3, 3, 0, 0, 1, 2], 0.3, 3.0, 0.5),  # lam < tau: majority images give their label away
        ([0, 1, 2, 3, 0, 3], [3, 3, 0, 0, 1, 2], 0.8, 3.0, 0.5),  # 1 - lam < tau: minority images keep theirs
        ([0, 1, 2, 3, 0, 3], [3, 3, 0, 0, 1, 2], 0.5, 3.0, 0.5),  # neither: every pair keeps lam
        ([0, 0, 1, 1], [1, 0, 0, 1], 0.3, 3.0, 0.5),  # ratio exactly 3 counts as imbalanced (>=)
        ([0, 1, 1, 2], [1, 1, 0, 2], 0.4, 1.0, 0.7),  # kappa 1, tau 0.7: equal classes meet both rules; 1 wins
        ([2, 2, 2], [2, 2, 2], 0.1, 3.0, 0.5),  # one class alone: nothing moves
    ],
)
def test_remix_label_rule_and_loss_equal_the_loops(labels, partners, lam, kappa, tau):
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    y, yp = torch.tensor(labels), torch.tensor(partners)
    want = remix_weight_loop(y, yp, lam, COUNTS, kappa, tau)
    got = remix_label_weights(y, yp, lam, counts, kappa=kappa, tau=tau)
    assert got.tolist() == want
    a, b, moved = remix_targets(y, yp, lam, counts, kappa=kappa, tau=tau)
    assert moved.tolist() == [w in (0.0, 1.0) and w != lam for w in want]
    # The scalar interpolation of the relabelled targets is Eq. 10's per-pair loss (loss and gradient).
    logits = torch.randn(len(labels), 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    logits.requires_grad_(True)
    ce = lambda z, t: torch.nn.functional.cross_entropy(z, t)  # noqa: E731
    got_loss = interpolated_loss(ce, logits, a, b, lam)
    want_loss = pairwise_loss_loop(logits, y, yp, want)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        torch.autograd.grad(got_loss, logits)[0], torch.autograd.grad(want_loss, logits)[0], rtol=1e-12, atol=1e-12
    )


# ---- the objective ------------------------------------------------------------------------------------------------


class PoolLinear(nn.Module):
    """A float64 stand-in for the network: channel means (features) and a linear classifier."""

    def __init__(self, classes=4):
        super().__init__()
        self.classifier = nn.Linear(3, classes).double()
        self.seen: list[torch.Tensor] = []

    def forward(self, x, with_projection=True):
        self.seen.append(x.detach().clone())
        features = x.mean((2, 3)) * 3 + x.amax((2, 3))
        return NetworkOutput(self.classifier(features), features, None)


def make_step(model, b=6, seed=0, engine_forward=False):
    """Four views of b images, two of 8 px and two of 6 px (like the digits' 32/24 px views)."""
    g = torch.Generator().manual_seed(seed)
    large = torch.randn(2 * b, 3, 8, 8, dtype=torch.float64, generator=g)
    images = [large, torch.randn(2 * b, 3, 6, 6, dtype=torch.float64, generator=g)]
    labels = torch.tensor([0, 0, 1, 2, 3, 3, 1, 0][:b])
    if not engine_forward:
        mask = torch.zeros(0, dtype=torch.bool)
        return StepRecord(None, labels, None, mask, 0, b, model, images=images, group_views=[[0, 1], [2, 3]])
    projections = torch.nn.functional.normalize(torch.randn(4 * b, 5, dtype=torch.float64, generator=g), dim=1)
    logits = torch.randn(4 * b, 4, dtype=torch.float64, generator=g)
    mask = torch.ones(4 * b, dtype=torch.bool)
    return StepRecord(logits, labels.repeat(4), projections, mask, 4, b, model, images=images,
                      group_views=[[0, 1], [2, 3]])  # fmt: skip


def the_draws(mixing, b):
    """The step's draws, in the order the strategies make them (a twin of the strategy's generators)."""
    partner, rng = mixing.partners(b, torch.device("cpu"))
    return partner, rng


def reference_views(name, section, images, partner, rng):
    """The mixed view groups and, per group, lam, from the loops."""
    b = partner.shape[0]
    if name == "cutmix" and not rng.random() < section["prob"]:
        return images, [1.0] * len(images)
    lam = float(rng.beta(section["alpha"], section["alpha"]))
    mixed, lams = [], []
    for group in images:
        rows = torch.cat([partner + j * b for j in range(group.shape[0] // b)])
        if name == "cutmix":
            height, width = group.shape[-2:]
            centre_row, centre_col = int(rng.integers(height)), int(rng.integers(width))
            out, share = cutmix_loop(group, rows, lam, centre_row, centre_col)
            mixed.append(out)
            lams.append(share)
        else:
            mixed.append(mixup_loop(group, rows, lam))
            lams.append(lam)
    return mixed, lams


@pytest.mark.parametrize("name", ["mixup", "cutmix", "remix"])
def test_the_objective_is_the_interpolated_loss_on_the_mixed_views(name):
    extra = ["loss.cutmix.prob=1.0"] if name == "cutmix" else []
    cfg = digits("loss.objective=bs", f"loss.mixing={name}", *extra)
    objective = build_objective(cfg, COUNTS, feature_dim=3)
    assert objective.network_views == 0  # the engine runs no forward: the network sees mixed views only
    model = PoolLinear()
    step = make_step(model)
    objective.mixing.steps = 7
    out = objective(step)
    # the same draws, from the step's seeded generators
    partner, rng = the_draws(objective.mixing, step.batch_size)
    mixed, lams = reference_views(name, cfg.loss.sections[name], step.images, partner, rng)
    for seen, want in zip(model.seen, mixed):
        torch.testing.assert_close(seen, want, rtol=0, atol=1e-15)
    y, b = step.labels, step.batch_size
    yp = y[partner]
    log_prior = torch.log(torch.tensor(COUNTS, dtype=torch.float64))
    total, rows = 0.0, 0
    for group, lam in zip(mixed, lams):  # every row with its own group's lam (CutMix boxes differ by size)
        logits = model(group, with_projection=False).logits
        views = group.shape[0] // b
        if name == "remix":
            s = cfg.loss.sections["remix"]
            weights = remix_weight_loop(y, yp, lam, COUNTS, s["kappa"], s["tau"])
        else:
            weights = [lam] * b
        total = total + pairwise_loss_loop(logits, y.repeat(views), yp.repeat(views), weights * views, log_prior) * (
            views * b
        )
        rows += views * b
    want = total / rows
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=1e-12)
    weight = model.classifier.weight
    torch.testing.assert_close(
        torch.autograd.grad(out.loss, weight)[0], torch.autograd.grad(want, weight)[0], rtol=1e-10, atol=1e-12
    )
    assert out.parts["mix_lambda"].item() == pytest.approx(sum(lam * 2 for lam in lams) / 4)
    assert out.logits.shape == (b, 4)  # the mixed first view's logits: the train accuracy


def test_the_draws_follow_the_step_and_the_step_counter_is_checkpointed():
    cfg = digits("loss.objective=ce", "loss.mixing=mixup")
    first, second = (build_objective(cfg, COUNTS, feature_dim=3) for _ in range(2))
    first.mixing.steps = 3
    second.load_state_dict(first.state_dict())
    assert second.mixing.steps == 3
    assert torch.equal(first.mixing.partners(16, torch.device("cpu"))[0], second.mixing.partners(16, "cpu")[0])
    before = first.mixing.partners(16, torch.device("cpu"))[0]
    first.after_step(None)
    assert first.mixing.steps == 4 and not torch.equal(before, first.mixing.partners(16, torch.device("cpu"))[0])
    other_seed = build_objective(digits("loss.objective=ce", "loss.mixing=mixup", "train.seed=1"), COUNTS,
                                 feature_dim=3)  # fmt: skip
    other_seed.mixing.steps = 3
    assert not torch.equal(second.mixing.partners(16, "cpu")[0], other_seed.mixing.partners(16, "cpu")[0])


def test_a_contrastive_term_sees_the_unmixed_views_and_the_classification_term_a_second_forward():
    cfg = digits("loss.objective=bs+scl", "loss.mixing=mixup")
    objective = build_objective(cfg, COUNTS, feature_dim=3)
    alone = build_objective(digits("loss.objective=bs", "loss.mixing=mixup"), COUNTS, feature_dim=3)
    assert objective.network_views is None  # the engine forwards every view, unmixed, for the contrastive term
    model = PoolLinear()
    step = make_step(model, engine_forward=True)
    out = objective(step)
    mixed_only = alone(make_step(model))
    torch.testing.assert_close(out.parts["loss_cls"], mixed_only.loss.detach(), rtol=0, atol=0)
    contrastive = scl_reference(step.projections, step.labels, cfg.loss.temperature)
    torch.testing.assert_close(out.parts["loss_con"], contrastive.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.loss, mixed_only.loss + cfg.loss.alpha * contrastive, rtol=1e-12, atol=1e-12)
    assert "second forward of the mixed views (views 1-4); the contrastive term sees the unmixed views" in (
        objective.describe()
    )
    # A contrastive term that limits the classification term to view 1 (BCL's split): only view 1 is mixed.
    model.seen.clear()
    objective.contrastive.classification_views = 1
    objective(step)
    assert [tuple(x.shape) for x in model.seen] == [(6, 3, 8, 8)]


def test_the_mixed_views_go_through_the_engine_forward_so_ddp_averages_their_gradients():
    # Under torchrun the engine's forward is DDP's: a method's own call of step.model would bypass it and leave
    # each process with its own gradient. The mixed views must go through step.run_network, in one call.
    cfg = digits("loss.objective=ce", "loss.mixing=remix")
    objective = build_objective(cfg, COUNTS, feature_dim=3, gather_distributed=True)
    assert objective.network_views == 0
    model, calls = PoolLinear(), []

    def engine_forward(groups, with_projection):
        calls.append([tuple(g.shape) for g in groups])
        return [model(g, with_projection=with_projection) for g in groups]

    step = dataclasses.replace(make_step(model), run_network=engine_forward)
    model.seen.clear()
    objective(step)
    assert calls == [[(12, 3, 8, 8), (12, 3, 6, 6)]] and len(model.seen) == 2  # one call, every mixed view


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["loss.objective=gpaco", "loss.mixing=mixup"], "loss.mixing mixup mixes the inputs of a classification loss"),
        (["loss.mixing=mixpu"], "loss.mixing 'mixpu' is not a registered mixing strategy; known: none, .*mixup"),
        (["loss.mixing=mixup", "loss.mixup.alpha=0"], "'loss.mixup.alpha' expects a positive finite number"),
        (["loss.mixing=remix", "loss.remix.kappa=0.5"], "'loss.remix.kappa' expects a number >= 1"),
        (["loss.mixing=cutmix", "loss.cutmix.prob=2"], "'loss.cutmix.prob' expects a number in \\[0, 1\\]"),
    ],
)
def test_the_config_refuses_what_cannot_train(overrides, message):
    with pytest.raises(ConfigError, match=message):
        digits(*overrides)


def test_no_engine_file_names_a_mixing_strategy():
    names = {*MIXINGS, "mixing"}
    for path in (Path(__file__).resolve().parents[2] / "src" / "ltcl" / "engine").glob("*.py"):
        tree = ast.parse(path.read_text())
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        identifiers = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert not names & (strings | identifiers), (path.name, names & (strings | identifiers))


def test_the_strategy_section_is_typed_with_its_defaults_and_dropped_when_unused():
    assert digits("loss.objective=bs", "loss.mixing=remix").loss.sections == {
        "remix": {"alpha": 1.0, "kappa": 3.0, "tau": 0.5}
    }
    assert digits("loss.objective=bs", "loss.remix.kappa=2").loss.sections == {}
    assert digits("loss.objective=bs", "loss.mixing=mixup", "loss.mixup.alpha=0.2").loss.sections == {
        "mixup": {"alpha": 0.2}
    }


@pytest.mark.parametrize(
    "name, alpha, epochs, lr, weight_decay",
    [
        ("cifar10_lt_if100", 1.0, 200, 0.1, 2e-4),
        ("cifar100_lt_if100", 1.0, 200, 0.1, 2e-4),
        ("imagenet_lt_x50", 0.2, 180, 0.1, 5e-4),
    ],
)
def test_the_mislas_stage_1_configs_parse_and_hold_the_authors_setup(name, alpha, epochs, lr, weight_decay):
    cfg = resolve_config(load_config(DIGITS.replace("digits_lt.yaml", f"rivals/{name}_mislas_stage1.yaml")))
    assert (cfg.loss.objective, cfg.loss.mixing, cfg.loss.sections) == ("ce", "mixup", {"mixup": {"alpha": alpha}})
    assert (cfg.optim.epochs, cfg.optim.lr, cfg.optim.weight_decay) == (epochs, lr, weight_decay)
    assert cfg.views.num_views == 1 and cfg.model.classifier == "linear"


# ---- training on the digits ---------------------------------------------------------------------------------------

# Kept small: two views (one of 32 px, one of 24 px: two CutMix boxes), 16 images a step.
SHORT = [*TINY, "data.batch_size=16", "views.num_views=2", "views.sizes=[32,24]", "views.presets=[digits]",
         "optim.epochs=1", "train.deterministic=true", "train.amp=none", "train.tensorboard=false"]  # fmt: skip
# one classification loss per strategy, and the contrastive case
RUNS = {"mixup": "ce", "remix": "bs", "cutmix": "bs+scl"}


@pytest.mark.parametrize("name", ["mixup", "remix"])
def test_each_strategy_trains_on_the_digits(tmp_path, name, capsys):
    result = train(load_config(DIGITS, [*SHORT, "train.max_steps_per_epoch=1", f"loss.objective={RUNS[name]}",
                                        f"loss.mixing={name}", f"train.output_dir={tmp_path}"]))  # fmt: skip
    printed = capsys.readouterr().out
    assert f"mixing {name} (alpha 1.0" in printed and "the network runs on the mixed views only" in printed
    header = (tmp_path / "digits_lt" / "metrics.csv").read_text().splitlines()[0]
    assert "mix_lambda" in header and ("remix_moved" in header) == (name == "remix")
    assert np.isfinite(result.history[-1]["loss"])


def test_cutmix_with_a_contrastive_term_trains_and_resumes_to_the_same_weights(tmp_path, capsys):
    common = [*SHORT, "train.max_steps_per_epoch=3", f"loss.objective={RUNS['cutmix']}", "loss.mixing=cutmix",
              "loss.cutmix.prob=0.7"]  # fmt: skip
    train(load_config(DIGITS, [*common, f"train.output_dir={tmp_path / 'straight'}"]))
    assert "the contrastive term sees the unmixed views" in capsys.readouterr().out
    proc = ltcl("train", "-c", DIGITS, *sets(*common, f"train.output_dir={tmp_path / 'stopped'}"),
                env={TEST_SIGNAL_AT_STEP: "2:TERM"}, check=False)  # fmt: skip
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    ltcl("train", "--resume", str(tmp_path / "stopped" / "digits_lt" / "checkpoint_last.pt"))
    want = torch.load(tmp_path / "straight" / "digits_lt" / "checkpoint_last.pt", weights_only=True)
    got = torch.load(tmp_path / "stopped" / "digits_lt" / "checkpoint_last.pt", weights_only=True)
    assert int(want["objective"]["mixing._extra_state"]) == 3  # the step counter: 3 steps
    assert_same_checkpoints(want, got)
