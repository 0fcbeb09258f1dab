"""BalancedContrastiveLoss, its functional form and BCLPrototypeHead: a float64 loop over the equation, edge cases,
the two BCL ideas checked one by one, and a real 2-process gloo run."""

import math

import pytest
import torch
import torch.nn.functional as F

from ltcl.losses.bcl import (
    BalancedContrastiveLoss,
    BCLPrototypeHead,
    balanced_contrastive_loss,
    balanced_contrastive_per_anchor,
)
from tests.losses.rivals_reference import bcl_reference, check_two_processes_equal_one

NUM_CLASSES = 5
PATTERNS = {
    "mixed": [0, 0, 1, 1, 1, 2, 3, 0, 2, 0, 0],  # class 4 is absent: only its prototype takes part
    "singletons": [0, 1, 2, 3, 4],
    "one_class": [2, 2, 2, 2],
    "single_row": [3],
}


def inputs(labels, seed=0, d=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(len(labels), d, generator=g, dtype=dtype), dim=1).requires_grad_()
    prototypes = F.normalize(torch.randn(NUM_CLASSES, d, generator=g, dtype=dtype), dim=1).requires_grad_()
    return z, torch.tensor(labels, dtype=torch.int64), prototypes


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_values_and_gradients_match_the_equation(pattern, tau):
    z, y, prototypes = inputs(PATTERNS[pattern])
    got = BalancedContrastiveLoss(NUM_CLASSES, tau)(z, y, prototypes)
    got_z, got_p = torch.autograd.grad(got, (z, prototypes))
    want = bcl_reference(z, y, prototypes, tau)
    want_z, want_p = torch.autograd.grad(want, (z, prototypes))
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    torch.testing.assert_close(got_z, want_z, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(got_p, want_p, rtol=1e-9, atol=1e-10)
    assert torch.isfinite(got) and got_z.abs().sum() > 0 and got_p.abs().sum() > 0
    assert balanced_contrastive_loss(z, y, prototypes, temperature=tau).item() == pytest.approx(got.item(), rel=1e-12)


def test_class_averaging_makes_a_class_count_once_however_many_rows_it_has():
    # Class 1's row equals its prototype, so class 1's mean denominator term does not depend on how many copies of
    # that row the batch holds: the losses of the class-0 anchors must not change when it is repeated.
    z, y, prototypes = inputs([0, 0, 1, 2])
    z = torch.cat([z[:2], prototypes[1:2], z[3:]]).detach()
    repeated_z, repeated_y = torch.cat([z, z[2:3].repeat(5, 1)]), torch.cat([y, y[2:3].repeat(5)])
    torch.testing.assert_close(
        _per_anchor(repeated_z, repeated_y, prototypes)[:2], _per_anchor(z, y, prototypes)[:2], rtol=1e-12, atol=0
    )

    # Without averaging (SCL over the same rows and prototypes) the repeats do change anchor 0's loss.
    def unaveraged_anchor0(z, y):
        rows, row_y = torch.cat([z, prototypes]), torch.cat([y, torch.arange(NUM_CLASSES)])
        s = (rows[1:] @ z[0]) / 0.2
        return -(s[row_y[1:] == y[0]] - torch.logsumexp(s, 0)).mean().item()

    assert not math.isclose(unaveraged_anchor0(z, y), unaveraged_anchor0(repeated_z, repeated_y), rel_tol=1e-3)


def _per_anchor(z, y, prototypes):
    loss, has_positive = balanced_contrastive_per_anchor(z, y, prototypes, temperature=0.2)
    assert has_positive.all()
    return loss


def test_class_complement_gives_every_anchor_a_positive_and_every_class_a_negative():
    # A single row: its prototype is its positive, the four other prototypes its negatives.
    z, y, prototypes = inputs([3])
    loss = BalancedContrastiveLoss(NUM_CLASSES, 0.5)(z, y, prototypes)
    logits = (prototypes @ z[0]) / 0.5
    want = -(logits[3] - torch.logsumexp(logits, 0))  # each class has one term: averaging is the identity
    assert loss.item() == pytest.approx(want.item(), rel=1e-12)


def test_bf16_autocast_stays_within_two_percent_of_float32():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(66, 16, generator=g), torch.tensor(PATTERNS["mixed"] * 6)
    proj, weight = torch.nn.Linear(16, 16), torch.randn(NUM_CLASSES, 16, generator=g)
    head = BCLPrototypeHead(16, 16, 16)
    loss_fn = BalancedContrastiveLoss(NUM_CLASSES, 0.1)
    full = loss_fn(F.normalize(proj(x), dim=1), y, head(weight))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, prototypes = F.normalize(proj(x), dim=1), head(weight)
        assert z.dtype == prototypes.dtype == torch.bfloat16
        half = loss_fn(z, y, prototypes)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(full.item(), rel=0.02)


def test_forward_never_synchronises_with_the_host(monkeypatch):
    z, y, prototypes = inputs(PATTERNS["mixed"])
    loss_fn = BalancedContrastiveLoss(NUM_CLASSES, 0.1)

    def refuse(*args, **kwargs):
        raise AssertionError("host synchronisation in forward")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    monkeypatch.setattr(torch, "bincount", refuse)
    loss = loss_fn(z, y, prototypes)
    monkeypatch.undo()
    assert torch.isfinite(loss)


def test_prototype_head_has_bcl_shape_normalises_and_passes_gradients_to_the_classifier():
    head = BCLPrototypeHead(8, 8, 3)
    layers = list(head.mlp)
    assert [type(m).__name__ for m in layers] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert (layers[0].in_features, layers[0].out_features, layers[3].out_features) == (8, 8, 3)
    weight = torch.randn(NUM_CLASSES, 8, requires_grad=True)
    prototypes = head(weight)
    assert prototypes.shape == (NUM_CLASSES, 3)
    torch.testing.assert_close(prototypes.norm(dim=1), torch.ones(NUM_CLASSES))
    z, y, _ = inputs(PATTERNS["mixed"], d=3, dtype=torch.float32)
    BalancedContrastiveLoss(NUM_CLASSES, 0.1)(z, y, prototypes).backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "make, word",
    [
        (lambda: BalancedContrastiveLoss(0), "num_classes"),
        (lambda: BalancedContrastiveLoss(2.5), "num_classes"),
        (lambda: BalancedContrastiveLoss(5, 0.0), "temperature"),
        (lambda: BalancedContrastiveLoss(5, float("inf")), "temperature"),
        (lambda: BCLPrototypeHead(0, 4, 4), "in_dim"),
        (lambda: BCLPrototypeHead(4, -1, 4), "hidden_dim"),
        (lambda: BCLPrototypeHead(4, 4, 2.0), "out_dim"),
    ],
)
def test_bad_constructor_arguments_raise_a_value_error_naming_them(make, word):
    with pytest.raises(ValueError, match=word):
        make()


def test_inputs_are_validated():
    z, y, prototypes = inputs(PATTERNS["mixed"])
    with pytest.raises(ValueError, match="labels"):
        balanced_contrastive_loss(z, y.clone().fill_(5), prototypes, temperature=0.1)
    with pytest.raises(ValueError, match="dimension"):
        balanced_contrastive_loss(z, y, prototypes[:, :4], temperature=0.1)
    with pytest.raises(ValueError, match="prototypes"):
        balanced_contrastive_loss(z, y, prototypes.detach().index_fill(0, torch.tensor([0]), math.nan), temperature=1)
    with pytest.raises(ValueError, match="temperature"):
        balanced_contrastive_loss(z, y, prototypes, temperature=-1.0)
    with pytest.raises(ValueError, match="prototypes"):
        BalancedContrastiveLoss(NUM_CLASSES)(z, y, prototypes[:4])
    with pytest.raises(ValueError, match="labels"):
        BalancedContrastiveLoss(NUM_CLASSES)(z, y[:-1], prototypes)


def test_an_empty_batch_gives_zero_with_a_graph():
    z, y, prototypes = inputs([])
    loss = balanced_contrastive_loss(z, y, prototypes, temperature=0.1)
    loss.backward()
    assert loss.item() == 0.0


def test_two_processes_with_gather_equal_one_process_on_the_global_batch(tmp_path):
    check_two_processes_equal_one("bcl", tmp_path)
