"""Gradient-conflict ratio (Eq. 7): against a pair-by-pair loop and against the sign of SCL's real gradient."""

import math

import torch
import torch.nn.functional as F

from ltcl.analysis import gradient_conflict_counts, gradient_conflict_ratio
from ltcl.losses import functional as LF
from tests.losses.reference import conflict_reference


def test_counts_match_a_pair_by_pair_loop():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3, 3, 3, 0, 1])
    z = F.normalize(torch.randn(len(labels), 4, dtype=torch.float64, generator=g), dim=1)
    for tau in (0.05, 0.3, 1.0):
        conflicts, pairs = gradient_conflict_counts(z, labels, temperature=tau, num_classes=5)
        want_conflicts, want_pairs = conflict_reference(z, labels, tau, 5)
        assert conflicts.tolist() == want_conflicts and pairs.tolist() == want_pairs


def test_a_conflict_is_exactly_a_repulsive_scl_gradient():
    """An easy positive (close to the anchor) is pushed away by SCL: dL_i/dz_k . z_i > 0 iff counted."""
    anchor = torch.tensor([1.0, 0.0, 0.0])
    easy = F.normalize(torch.tensor([1.0, 0.05, 0.0]), dim=0)
    hard = F.normalize(torch.tensor([0.0, 1.0, 0.2]), dim=0)
    negative = torch.tensor([0.0, 0.0, -1.0])
    z = torch.stack([anchor, easy, hard, negative]).double().requires_grad_()
    labels = torch.tensor([0, 0, 0, 1])
    tau = 0.1

    per_anchor, _ = LF.supervised_contrastive_per_anchor(z, labels, temperature=tau)
    (grad,) = torch.autograd.grad(per_anchor[0], z, retain_graph=True)
    repulsive = [bool(grad[k].detach() @ z[0].detach() > 0) for k in (1, 2)]
    assert repulsive == [True, False]  # the constructed batch does conflict

    # Anchor 0's two pairs: exactly one conflicts, matching the gradient's sign.
    conflicts, pairs = gradient_conflict_counts(z.detach(), labels, temperature=tau, num_classes=2)
    ref_conflicts, ref_pairs = conflict_reference(z.detach(), labels, tau, 2)
    assert conflicts.tolist() == ref_conflicts and pairs.tolist() == ref_pairs
    per_pair_sign = []
    for i in range(3):
        (g_i,) = torch.autograd.grad(per_anchor[i], z, retain_graph=True)
        per_pair_sign += [bool(g_i[k] @ z[i].detach() > 0) for k in range(3) if k != i]
    assert int(conflicts[0]) == sum(per_pair_sign)


def test_acl_positives_never_conflict_on_the_same_batch():
    anchor = torch.tensor([1.0, 0.0, 0.0])
    easy = F.normalize(torch.tensor([1.0, 0.05, 0.0]), dim=0)
    hard = F.normalize(torch.tensor([0.0, 1.0, 0.2]), dim=0)
    z = torch.stack([anchor, easy, hard, torch.tensor([0.0, 0.0, -1.0])]).double().requires_grad_()
    labels = torch.tensor([0, 0, 0, 1])
    per_anchor, _ = LF.aligned_contrastive_per_anchor(z, labels, temperature=0.1)
    for i in range(3):
        (g_i,) = torch.autograd.grad(per_anchor[i], z, retain_graph=True)
        assert all(float(g_i[k] @ z[i].detach()) < 0 for k in range(3) if k != i)


def test_spread_out_positives_have_no_conflicts_and_absent_classes_are_nan():
    # Each class's positives are mutually far apart, negatives close: q_ik stays below 1/|P(i)|.
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]).double()
    labels = torch.tensor([0, 0, 1, 1])
    ratio = gradient_conflict_ratio(z, labels, temperature=0.5, num_classes=3)
    assert ratio[:2].tolist() == [0.0, 0.0]
    assert math.isnan(ratio[2].item())


def test_ratio_is_conflicts_over_pairs():
    g = torch.Generator().manual_seed(3)
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    z = F.normalize(torch.randn(6, 3, generator=g), dim=1)
    conflicts, pairs = gradient_conflict_counts(z, labels, temperature=0.2, num_classes=3)
    ratio = gradient_conflict_ratio(z, labels, temperature=0.2, num_classes=3)
    for j in range(2):
        assert ratio[j].item() == conflicts[j].item() / pairs[j].item()
    assert math.isnan(ratio[2].item())  # a singleton class has no positive pair
