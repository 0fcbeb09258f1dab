"""The VS loss (``vs``): value and logit gradient against a float64 loop over the rows written from the paper's
equation, the authors' form of the scaling, its config, and training on the digits with an interrupt and a resume
that ends on the straight run's weights."""

import math
import signal

import numpy as np
import pytest
import torch

from ltcl.config import load_config
from ltcl.engine.interrupts import TEST_SIGNAL_AT_STEP, Interrupted
from ltcl.engine.resume import plan_resume
from ltcl.engine.trainer import train
from ltcl.methods import ObjectiveSetup, StepRecord, build_objective, resolve_config
from ltcl.methods.vector_scaling import VectorScaling, VectorScalingSection
from tests.engine.test_training import DIGITS, REPO, TINY

COUNTS = (50, 20, 8, 3)
GAMMA, TAU = 0.3, 1.5


def reference(logits, labels):
    """Mean loss and d loss / d logits, one row and one class at a time, in float64."""
    n_max, total = max(COUNTS), sum(COUNTS)
    scale = [(n / n_max) ** GAMMA for n in COUNTS]
    shift = [TAU * math.log(n / total) for n in COUNTS]
    rows, classes = logits.shape
    loss, grad = 0.0, torch.zeros(rows, classes, dtype=torch.float64)
    for i in range(rows):
        a = [scale[j] * float(logits[i, j]) + shift[j] for j in range(classes)]
        top = max(a)
        norm = sum(math.exp(v - top) for v in a)
        y = int(labels[i])
        loss += (top + math.log(norm) - a[y]) / rows
        for j in range(classes):
            p = math.exp(a[j] - top) / norm
            grad[i, j] = scale[j] * (p - (j == y)) / rows
    return loss, grad


def objective():
    setup = ObjectiveSetup(class_counts=COUNTS, section=VectorScalingSection(gamma=GAMMA, tau=TAU))
    return VectorScaling(setup)


@pytest.mark.parametrize("labels", [[0, 1, 2, 3, 3, 0], [3, 3, 3, 3, 3, 3], [0, 0, 1, 0, 0, 0]])
def test_value_and_gradient_match_the_float64_loop(labels):
    g = torch.Generator().manual_seed(len(set(labels)))
    logits = (torch.randn(len(labels), len(COUNTS), generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    labels = torch.tensor(labels)
    rows = len(labels)
    step = StepRecord(logits, labels, None, torch.zeros(rows, dtype=torch.bool), 1, rows, torch.nn.Identity())
    loss = objective()(step).loss
    loss.backward()
    want, want_grad = reference(logits.detach(), labels)
    assert loss.item() == pytest.approx(want, rel=1e-12)
    torch.testing.assert_close(logits.grad, want_grad, rtol=1e-10, atol=1e-14)


def test_the_authors_division_form_is_the_same_map():
    # orparask/VS-Loss, class_imbalance/losses.py: x / Delta' + iota, Delta' = (1/n)^gamma / min((1/n)^gamma)
    counts = np.array(COUNTS, dtype=np.float64)
    delta = (1.0 / counts) ** GAMMA
    delta = delta / delta.min()
    iota = TAU * np.log(counts / counts.sum())
    x = np.random.default_rng(0).normal(size=(5, len(COUNTS)))
    vs = objective()
    ours = torch.from_numpy(x) * vs.scale + vs.shift
    np.testing.assert_allclose(ours.numpy(), x / delta + iota, rtol=1e-13)


def test_the_rival_config_has_the_authors_values():
    cfg = resolve_config(load_config(REPO / "configs" / "rivals" / "cifar10_lt_if100_vs.yaml"))
    section = build_objective(cfg, (5000, 50), feature_dim=64).classification.section
    assert (section.gamma, section.tau) == (0.2, 1.2)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.epochs, cfg.views.num_views) == (0.1, 2e-4, 200, 1)


def digits_run(out):
    overrides = [*TINY, "loss.objective=vs", "data.batch_size=8", "optim.epochs=2", "train.max_steps_per_epoch=2",
                 "train.deterministic=true", "train.amp=none", "train.loggers=[csv]",
                 f"train.output_dir={out}"]  # fmt: skip
    return load_config(DIGITS, overrides)


def test_trains_on_the_digits_and_resumes_to_the_same_weights(tmp_path, monkeypatch):
    straight = train(digits_run(tmp_path / "straight"))
    assert [h["epoch"] for h in straight.history] == [1, 2] and all(math.isfinite(h["loss"]) for h in straight.history)
    monkeypatch.setenv(TEST_SIGNAL_AT_STEP, "3:TERM")
    with pytest.raises(Interrupted) as stopped:
        train(digits_run(tmp_path / "stopped"))
    assert stopped.value.signum == signal.SIGTERM
    monkeypatch.delenv(TEST_SIGNAL_AT_STEP)
    plan = plan_resume(tmp_path / "stopped" / "digits_lt" / "checkpoint_last.pt")
    train(plan.cfg, resume=plan)
    want = torch.load(straight.run_dir / "checkpoint_last.pt", weights_only=True)["model"]
    got = torch.load(tmp_path / "stopped" / "digits_lt" / "checkpoint_last.pt", weights_only=True)["model"]
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
