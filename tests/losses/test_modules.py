"""Loss modules: centres (initialisation, EMA, unit norm, state_dict), weights, and the paper's Eq. 10 pieces."""

import pytest
import torch
import torch.nn.functional as F

from ltcl.losses import (
    AlignedContrastiveLoss,
    BalancedSoftmaxLoss,
    LogitAdjustedLoss,
    SupConLoss,
    inverse_frequency_weights,
)
from ltcl.losses import functional as LF
from tests.losses.reference import acl_reference, balanced_softmax_reference, scl_reference

COUNTS = [100, 40, 10, 5, 2]


def batch(labels, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(len(labels), d, generator=g), dim=1), torch.tensor(labels)


def test_inverse_frequency_weights_follow_the_reference_convention():
    w = inverse_frequency_weights(COUNTS)
    mean_count = sum(COUNTS) / len(COUNTS)
    for j, n in enumerate(COUNTS):
        assert w[j].item() == pytest.approx(mean_count / n, rel=1e-6)
    # Weighted by the number of training images of each class, the weights average to 1.
    assert float((w * torch.tensor(COUNTS, dtype=torch.float32)).sum() / sum(COUNTS)) == pytest.approx(1.0)


def test_first_batch_initialises_centres_from_the_class_mean_and_leaves_absent_classes_alone():
    loss_fn = AlignedContrastiveLoss(COUNTS, 6, temperature=0.1, center_momentum=0.9)
    z, y = batch([0, 0, 1, 3, 3, 3])
    loss = loss_fn(z, y)

    # The first batch's loss already uses its class means as centres; unset centres (2, 4) take no part.
    present = [0, 1, 3]
    means = torch.stack([F.normalize(z[y == j].mean(0), dim=0) for j in present])
    remap = torch.tensor([present.index(int(v)) for v in y])
    weights = inverse_frequency_weights(COUNTS)[present]
    want = acl_reference(z.double(), remap, 0.1, centers=means.double(), weights=weights.double())
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)

    for j in present:
        torch.testing.assert_close(loss_fn.centers[j], F.normalize(z[y == j].mean(0), dim=0))
    assert loss_fn.centers_initialized.tolist() == [True, True, False, True, False]
    assert torch.equal(loss_fn.centers[[2, 4]], torch.zeros(2, 6))


def test_centres_follow_the_ema_rule_and_stay_unit_norm():
    m = 0.8
    loss_fn = AlignedContrastiveLoss(COUNTS, 6, temperature=0.1, center_momentum=m)
    z1, y1 = batch([0, 0, 1, 2], seed=1)
    loss_fn(z1, y1)
    before = loss_fn.centers.clone()
    z2, y2 = batch([0, 2, 2, 4], seed=2)
    loss_fn(z2, y2)
    after = loss_fn.centers

    for j in (0, 2):  # seen before: EMA of the old centre and this batch's mean, renormalised
        expected = F.normalize(m * before[j] + (1 - m) * z2[y2 == j].mean(0), dim=0)
        torch.testing.assert_close(after[j], expected)
    torch.testing.assert_close(after[4], F.normalize(z2[y2 == 4].mean(0), dim=0))  # first time
    torch.testing.assert_close(after[1], before[1])  # absent: unchanged
    initialised = loss_fn.centers_initialized
    torch.testing.assert_close(after[initialised].norm(dim=1), torch.ones(int(initialised.sum())))


def test_eval_mode_does_not_move_centres_and_centres_carry_no_gradient():
    loss_fn = AlignedContrastiveLoss(COUNTS, 6)
    z, y = batch([0, 1, 1, 2])
    loss_fn(z, y)
    saved = loss_fn.centers.clone()
    loss_fn.eval()
    loss_fn(*batch([0, 0, 2, 4], seed=5))
    assert torch.equal(loss_fn.centers, saved)
    assert not loss_fn.centers.requires_grad


def test_state_dict_round_trip_restores_centres_and_gives_the_same_loss():
    a = AlignedContrastiveLoss(COUNTS, 6, temperature=0.2)
    for seed in range(3):
        a(*batch([0, 1, 1, 2, 3, 3], seed=seed))
    b = AlignedContrastiveLoss(COUNTS, 6, temperature=0.2)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.centers, b.centers) and torch.equal(a.centers_initialized, b.centers_initialized)
    z, y = batch([0, 0, 1, 4], seed=9)
    assert a(z, y).item() == b(z, y).item()


def test_module_matches_the_functional_loss_once_centres_are_set():
    loss_fn = AlignedContrastiveLoss(COUNTS, 6, temperature=0.1, negative_weighting="none")
    loss_fn(*batch([0, 1, 2, 3, 4]))  # sets every centre
    z, y = batch([0, 0, 2, 2, 3], seed=4)
    centers = loss_fn.centers.clone()
    got = loss_fn(z, y)
    want = LF.aligned_contrastive_loss(z, y, temperature=0.1, centers=centers)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_module_without_centres_is_the_weighted_functional_loss():
    loss_fn = AlignedContrastiveLoss(COUNTS, 6, temperature=0.1, use_centers=False)
    z, y = batch([0, 0, 2, 2, 3, 1, 1])
    want = acl_reference(z.double(), y, 0.1, weights=inverse_frequency_weights(COUNTS).double())
    assert loss_fn(z, y).item() == pytest.approx(want.item(), rel=1e-5)


def test_supcon_module_matches_equation_1():
    z, y = batch([0, 0, 2, 2, 3, 1, 1, 1])
    assert SupConLoss(0.1)(z, y).item() == pytest.approx(scl_reference(z.double(), y, 0.1).item(), rel=1e-5)


def test_balanced_softmax_and_logit_adjusted_modules():
    logits = torch.randn(6, 5)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    bs = BalancedSoftmaxLoss(COUNTS)(logits, y)
    assert bs.item() == pytest.approx(balanced_softmax_reference(logits.double(), y, COUNTS).item(), rel=1e-5)
    la = LogitAdjustedLoss(COUNTS, tau=1.0)(logits, y)
    assert la.item() == pytest.approx(bs.item(), rel=1e-5)  # tau = 1: same as Balanced Softmax


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"class_counts": [10, 0, 3]}, "class 1 has 0"),
        ({"class_counts": [10, -1]}, "class 1 has -1"),
        ({"feature_dim": 0}, "feature_dim must be a positive integer"),
        ({"temperature": 0.0}, "temperature must be a positive"),
        ({"center_momentum": 1.0}, r"center_momentum must be in \[0, 1\)"),
        ({"negative_weighting": "sqrt"}, "negative_weighting must be one of inverse_frequency, none"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, message):
    args = {"class_counts": COUNTS, "feature_dim": 6, **kwargs}
    counts, dim = args.pop("class_counts"), args.pop("feature_dim")
    with pytest.raises(ValueError, match=message):
        AlignedContrastiveLoss(counts, dim, **args)


def test_forward_rejects_features_of_another_dimension_and_labels_out_of_range():
    loss_fn = AlignedContrastiveLoss(COUNTS, 6)
    with pytest.raises(ValueError, match=r"features must have shape \(N, 6\), got \(4, 5\)"):
        loss_fn(torch.randn(4, 5), torch.tensor([0, 1, 2, 3]))
    # Label values: on an accelerator the module leaves them to the datasets and the functional API (no host sync);
    # tests/losses/test_inputs.py covers the module's dtype check and its range check on the CPU.
    features, labels = batch([0, 1, 2, 7])
    with pytest.raises(ValueError, match="labels must be < the number of classes 5, got 7"):
        LF.aligned_contrastive_loss(features, labels, temperature=0.1, centers=loss_fn.centers)
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        loss_fn(features, labels[:3])
    with pytest.raises(ValueError, match="class 2 has 0"):
        BalancedSoftmaxLoss([3, 2, 0])
    with pytest.raises(ValueError, match="temperature must be a positive"):
        SupConLoss(temperature=-0.1)
