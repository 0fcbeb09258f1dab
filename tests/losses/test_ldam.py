"""LDAMLoss with deferred re-weighting: margins, effective-number weights, the forward against a loop over the paper's
equation and against LDAM-DRW's one-hot formula, the DRW switch and its state_dict."""

import math

import pytest
import torch
import torch.nn.functional as F

from ltcl.losses.ldam import LDAMLoss, effective_number_weights, ldam_loss, ldam_margins
from tests.losses.rivals_reference import drw_weight_reference, ldam_margin_reference, ldam_reference

COUNTS = [500, 120, 37, 9, 5]


def cosine_logits(n=12, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    u = torch.empty(n, len(COUNTS), dtype=dtype).uniform_(-1, 1, generator=g).requires_grad_()
    y = torch.randint(0, len(COUNTS), (n,), generator=g)
    y[: len(COUNTS)] = torch.arange(len(COUNTS))  # every class present
    return u, y


def test_margins_are_proportional_to_n_to_the_minus_quarter_with_the_rarest_at_max_margin():
    m = ldam_margins(COUNTS, 0.5)
    want = ldam_margin_reference(COUNTS, 0.5)
    torch.testing.assert_close(m, torch.tensor(want, dtype=torch.float32))
    assert m[-1].item() == pytest.approx(0.5) and m[0].item() == pytest.approx(0.5 * (5 / 500) ** 0.25)
    for j in range(len(COUNTS)):
        assert m[j].item() * COUNTS[j] ** 0.25 == pytest.approx(m[0].item() * COUNTS[0] ** 0.25, rel=1e-6)


def test_effective_number_weights_follow_the_loop_and_sum_to_the_number_of_classes():
    for beta in (0.9999, 0.99, 0.5):
        w = effective_number_weights(COUNTS, beta)
        torch.testing.assert_close(w, torch.tensor(drw_weight_reference(COUNTS, beta), dtype=torch.float32))
        assert w.sum().item() == pytest.approx(len(COUNTS), rel=1e-6)
        assert all(a < b for a, b in zip(w, w[1:])) or beta == 0.5  # rarer classes weigh more (0.5: 1 - beta^n ~ 1)
    torch.testing.assert_close(effective_number_weights(COUNTS, 0.0), torch.ones(len(COUNTS)))  # before DRW


@pytest.mark.parametrize("drw", [False, True])
def test_forward_matches_the_paper_loop_in_value_and_gradient(drw):
    u, y = cosine_logits()
    loss_fn = LDAMLoss(COUNTS, max_margin=0.4, scale=20.0, drw_beta=0.999)
    loss_fn.set_reweighting(drw)
    got = loss_fn(u, y)
    (got_grad,) = torch.autograd.grad(got, u)
    weights = drw_weight_reference(COUNTS, 0.999) if drw else None
    want = ldam_reference(u, y, COUNTS, max_margin=0.4, scale=20.0, weights=weights)
    (want_grad,) = torch.autograd.grad(want, u)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)  # margins are float32 buffers
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-8)
    functional = ldam_loss(u, y, COUNTS, max_margin=0.4, scale=20.0, class_weights=loss_fn.class_weights)
    assert functional.item() == pytest.approx(got.item(), rel=1e-12)


def test_forward_equals_ldam_drws_one_hot_formula():
    # losses.py of kaidic/LDAM-DRW: x_m = x - m[y] on the one-hot positions, cross_entropy(s * x_m, y, weight).
    u, y = cosine_logits(seed=4, dtype=torch.float32)
    loss_fn = LDAMLoss(COUNTS)
    loss_fn.set_reweighting(True)
    one_hot = F.one_hot(y, len(COUNTS)).bool()
    m = torch.tensor(COUNTS, dtype=torch.float64).pow(-0.25)
    m = (m * (0.5 / m.max())).float()
    x_m = torch.where(one_hot, u - m[y][:, None], u)
    beta = 0.9999
    w = (1 - beta) / (1 - torch.tensor(COUNTS, dtype=torch.float64).mul(math.log(beta)).exp())
    w = (w / w.sum() * len(COUNTS)).float()
    want = F.cross_entropy(30.0 * x_m, y, weight=w)
    assert loss_fn(u, y).item() == pytest.approx(want.item(), rel=1e-5)


def test_reweighting_switch_changes_the_loss_and_travels_with_state_dict():
    u, y = cosine_logits(n=40, seed=1)
    loss_fn = LDAMLoss(COUNTS)
    plain = loss_fn(u, y).item()
    assert plain == pytest.approx(ldam_reference(u, y, COUNTS, max_margin=0.5, scale=30.0).item(), rel=1e-6)
    loss_fn.set_reweighting(True)
    weighted = loss_fn(u, y).item()
    assert weighted != pytest.approx(plain, rel=1e-3)
    assert set(loss_fn.state_dict()) == {"margins", "drw_weights", "class_weights", "reweighting"}

    resumed = LDAMLoss(COUNTS)
    resumed.load_state_dict(loss_fn.state_dict())
    assert bool(resumed.reweighting) and resumed(u, y).item() == weighted
    resumed.set_reweighting(False)
    assert resumed(u, y).item() == plain and not bool(resumed.reweighting)


def test_bf16_autocast_stays_within_two_percent_of_float32():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(64, 16, generator=g), torch.randint(0, len(COUNTS), (64,), generator=g)
    weight = torch.randn(len(COUNTS), 16, generator=g)
    loss_fn = LDAMLoss(COUNTS)
    loss_fn.set_reweighting(True)
    full = loss_fn(F.normalize(x, dim=1) @ F.normalize(weight, dim=1).T, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        u = F.linear(F.normalize(x, dim=1), F.normalize(weight, dim=1))
        assert u.dtype == torch.bfloat16
        half = loss_fn(u, y)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(full.item(), rel=0.02)


def test_forward_never_synchronises_with_the_host(monkeypatch):
    u, y = cosine_logits()
    loss_fn = LDAMLoss(COUNTS)
    loss_fn.set_reweighting(True)

    def refuse(*args, **kwargs):
        raise AssertionError("host synchronisation in forward")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    monkeypatch.setattr(torch, "bincount", refuse)
    loss = loss_fn(u, y)
    monkeypatch.undo()
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(max_margin=-0.1), "max_margin"),
        (dict(max_margin=float("nan")), "max_margin"),
        (dict(scale=0.0), "scale"),
        (dict(scale=float("inf")), "scale"),
        (dict(drw_beta=1.0), "drw_beta"),
        (dict(drw_beta=-0.5), "drw_beta"),
        (dict(class_counts=[10, 0]), "class_counts"),
        (dict(class_counts=[[1, 2]]), "class_counts"),
    ],
)
def test_bad_constructor_arguments_raise_a_value_error_naming_them(kwargs, word):
    kwargs = {"class_counts": COUNTS, **kwargs}
    with pytest.raises(ValueError, match=word):
        LDAMLoss(**kwargs)


def test_bad_calls_raise_value_errors():
    u, y = cosine_logits()
    with pytest.raises(ValueError, match="enabled"):
        LDAMLoss(COUNTS).set_reweighting(1)
    with pytest.raises(ValueError, match="beta"):
        effective_number_weights(COUNTS, 1.5)
    with pytest.raises(ValueError, match="logits"):
        LDAMLoss(COUNTS)(u[:, :3], y)
    with pytest.raises(ValueError, match="labels"):
        ldam_loss(u, y.clone().fill_(7), COUNTS)
    with pytest.raises(ValueError, match="logits"):
        ldam_loss(u.detach().index_fill(0, torch.tensor([0]), math.nan), y, COUNTS)
    with pytest.raises(ValueError, match="class_weights"):
        ldam_loss(u, y, COUNTS, class_weights=-torch.ones(len(COUNTS)))
