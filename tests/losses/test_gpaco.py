"""GPaCoLoss and gpaco_loss against a float64 loop over the equation: values, gradients, edge cases, DDP."""

import math

import pytest
import torch
import torch.nn.functional as F

from ltcl.losses import functional as LF
from ltcl.losses.gpaco import GPaCoLoss, GPaCoWeights, gpaco_loss
from tests.losses.rivals_reference import check_two_processes_equal_one, gpaco_reference

COUNTS = [40, 15, 6, 3, 1]
PATTERNS = {
    "mixed": [0, 0, 1, 1, 1, 2, 3, 0, 2, 4],
    "singletons": [0, 1, 2, 3, 4],
    "one_class": [2, 2, 2, 2],
}
SETTINGS = [  # (alpha, beta, gamma, tau): the published default, then every weight away from 1
    (0.01, 1.0, 1.0, 0.05),
    (0.4, 0.7, 1.8, 0.3),
    (1.0, 1.0, 0.0, 0.2),
]


def inputs(labels, seed=0, d=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(len(labels), d, generator=g, dtype=dtype), dim=1).requires_grad_()
    logits = (2 * torch.randn(len(labels), len(COUNTS), generator=g, dtype=dtype)).requires_grad_()
    return z, torch.tensor(labels, dtype=torch.int64), logits


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_values_and_gradients_match_the_equation(pattern, setting):
    alpha, beta, gamma, tau = setting
    z, y, logits = inputs(PATTERNS[pattern])
    kwargs = dict(alpha=alpha, beta=beta, gamma=gamma, temperature=tau)
    got = GPaCoLoss(COUNTS, **kwargs)(z, y, logits)
    got_z, got_l = torch.autograd.grad(got, (z, logits))
    want = gpaco_reference(z, y, logits, COUNTS, alpha=alpha, beta=beta, gamma=gamma, tau=tau)
    want_z, want_l = torch.autograd.grad(want, (z, logits))
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    torch.testing.assert_close(got_z, want_z, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(got_l, want_l, rtol=1e-9, atol=1e-10)
    assert got_l.abs().sum() > 0
    # Features enter through the sample terms: only gamma = 0 without any sample positive leaves them out.
    assert (got_z.abs().sum() > 0) == (gamma > 0 or pattern != "singletons")
    functional = gpaco_loss(z, y, logits, COUNTS, GPaCoWeights(**kwargs))
    assert functional.item() == pytest.approx(got.item(), rel=1e-12)


def test_without_sample_terms_it_is_balanced_softmax():
    # alpha = gamma = 0 leaves only the prior-adjusted centre logits: cross-entropy on logits + log prior.
    z, y, logits = inputs(PATTERNS["mixed"])
    got = GPaCoLoss(COUNTS, alpha=0.0, gamma=0.0)(z, y, logits)
    assert got.item() == pytest.approx(LF.balanced_softmax_loss(logits, y, COUNTS).item(), rel=1e-10)


def test_the_log_prior_favours_rare_classes_in_the_denominator():
    # Equal logits: the prior shifts the centre softmax, so the loss of a head-class anchor is lower than that of
    # a tail-class anchor (a sign error in the adjustment would reverse this).
    z = F.normalize(torch.ones(2, 3, dtype=torch.float64), dim=1)
    logits = torch.zeros(2, len(COUNTS), dtype=torch.float64)
    loss_fn = GPaCoLoss(COUNTS, alpha=0.0, gamma=0.0)
    head = loss_fn(z[:1], torch.tensor([0]), logits[:1])
    tail = loss_fn(z[:1], torch.tensor([4]), logits[:1])
    assert head.item() == pytest.approx(-math.log(40 / 65), rel=1e-10)
    assert tail.item() == pytest.approx(-math.log(1 / 65), rel=1e-10)


def test_anchors_without_positives_are_left_out_when_beta_is_zero():
    z, y, logits = inputs([0, 0, 1, 2, 3])  # rows 2..4 have no sample positive and, with beta = 0, no positive
    loss = GPaCoLoss(COUNTS, alpha=1.0, beta=0.0, temperature=0.2)(z, y, logits)
    assert torch.isfinite(loss)
    want = gpaco_reference(z, y, logits, COUNTS, alpha=1.0, beta=0.0, gamma=1.0, tau=0.2)
    assert loss.item() == pytest.approx(want.item(), rel=1e-10)
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad[2:].abs().sum() > 0  # still negatives of the two anchors

    z, y, logits = inputs([0, 1, 2, 3])  # no positive anywhere: 0 with a graph
    loss = GPaCoLoss(COUNTS, alpha=1.0, beta=0.0)(z, y, logits)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(z.grad).all()


def test_bf16_autocast_stays_within_two_percent_of_float32():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(60, 16, generator=g), torch.tensor(PATTERNS["mixed"] * 6)
    proj, classifier = torch.nn.Linear(16, 16), torch.nn.Linear(16, len(COUNTS))
    loss_fn = GPaCoLoss(COUNTS, temperature=0.1, alpha=0.5)
    full = loss_fn(F.normalize(proj(x), dim=1), y, classifier(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, logits = F.normalize(proj(x), dim=1), classifier(x)
        assert z.dtype == logits.dtype == torch.bfloat16
        half = loss_fn(z, y, logits)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(full.item(), rel=0.02)


def test_forward_never_synchronises_with_the_host(monkeypatch):
    z, y, logits = inputs(PATTERNS["mixed"])
    loss_fn = GPaCoLoss(COUNTS)

    def refuse(*args, **kwargs):
        raise AssertionError("host synchronisation in forward")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    monkeypatch.setattr(torch, "bincount", refuse)
    loss = loss_fn(z, y, logits)
    monkeypatch.undo()
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(alpha=-0.1), "alpha"),
        (dict(beta=float("nan")), "beta"),
        (dict(gamma=-1.0), "gamma"),
        (dict(alpha=0.0, beta=0.0), "alpha and beta"),
        (dict(temperature=0.0), "temperature"),
        (dict(class_counts=[3, 0, 2]), "class_counts"),
        (dict(class_counts=[]), "class_counts"),
    ],
)
def test_bad_constructor_arguments_raise_a_value_error_naming_them(kwargs, word):
    kwargs = {"class_counts": COUNTS, **kwargs}
    with pytest.raises(ValueError, match=word):
        GPaCoLoss(**kwargs)


def test_the_functional_api_validates_its_inputs():
    z, y, logits = inputs(PATTERNS["mixed"])
    with pytest.raises(ValueError, match="labels"):
        gpaco_loss(z, torch.tensor([0] * 9 + [5]), logits, COUNTS)
    with pytest.raises(ValueError, match="labels"):
        gpaco_loss(z, y.float(), logits, COUNTS)
    with pytest.raises(ValueError, match="classes"):
        gpaco_loss(z, y, logits[:, :4], COUNTS)
    with pytest.raises(ValueError, match="rows"):
        gpaco_loss(z[:-1], y[:-1], logits, COUNTS)
    with pytest.raises(ValueError, match="features"):
        gpaco_loss(z.detach().index_fill(0, torch.tensor([1]), math.nan), y, logits, COUNTS)
    with pytest.raises(ValueError, match="logits"):
        gpaco_loss(z, y, logits.detach().index_fill(0, torch.tensor([1]), math.inf), COUNTS)
    with pytest.raises(ValueError, match="gamma"):
        gpaco_loss(z, y, logits, COUNTS, GPaCoWeights(gamma=-1.0))
    with pytest.raises(ValueError, match="logits"):
        GPaCoLoss(COUNTS)(z, y, logits[:, :3])


def test_an_empty_batch_gives_zero_with_a_graph():
    z, y, logits = inputs([])
    loss = gpaco_loss(z, y, logits, COUNTS)
    loss.backward()
    assert loss.item() == 0.0


def test_two_processes_with_gather_equal_one_process_on_the_global_batch(tmp_path):
    check_two_processes_equal_one("gpaco", tmp_path)
