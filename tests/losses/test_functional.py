"""The functional losses against the slow float64 references of tests/losses/reference.py: values and gradients."""

import math
import zlib

import pytest
import torch
import torch.nn.functional as F

from ltcl.losses import functional as LF
from tests.losses.reference import (
    acl_reference,
    balanced_softmax_reference,
    logit_adjusted_reference,
    scl_reference,
)

# Label patterns: singletons, absent classes (class 5 never appears), repeated labels, one big class.
LABEL_PATTERNS = {
    "mixed": [0, 0, 1, 1, 1, 2, 3, 3, 0, 2, 4, 6],
    "singletons": [0, 1, 2, 3, 4, 6],
    "one_class": [2, 2, 2, 2, 2],
    "pairs_and_singleton": [1, 1, 3, 3, 6, 0, 0],
}
NUM_CLASSES = 7


def unit_rows(n, d, generator):
    return F.normalize(torch.randn(n, d, dtype=torch.float64, generator=generator), dim=1)


def make_inputs(pattern, seed=0, d=8):
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(LABEL_PATTERNS[pattern])
    z = unit_rows(len(labels), d, g).requires_grad_()
    centers = unit_rows(NUM_CLASSES, d, g).requires_grad_()
    weights = (torch.rand(NUM_CLASSES, dtype=torch.float64, generator=g) * 3 + 0.1).requires_grad_(False)
    return z, labels, centers, weights


def assert_close_rel(actual, expected, rtol=1e-6):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=1e-9)


@pytest.mark.parametrize("pattern", sorted(LABEL_PATTERNS))
@pytest.mark.parametrize("use_centers", [False, True])
@pytest.mark.parametrize("use_weights", [False, True])
@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_acl_matches_equation_9(pattern, use_centers, use_weights, tau):
    # A seed that is the same in every process (hash() of a str changes with PYTHONHASHSEED).
    seed = zlib.crc32(f"{pattern}-{use_centers}-{use_weights}".encode()) % 1000
    z, labels, centers, weights = make_inputs(pattern, seed=seed)
    c = centers if use_centers else None
    w = weights if use_weights else None

    got = LF.aligned_contrastive_loss(z, labels, temperature=tau, centers=c, negative_weights=w)
    got_grads = torch.autograd.grad(got, [z] + ([c] if use_centers else []), allow_unused=True)
    want = acl_reference(z, labels, tau, centers=c, weights=w)
    want_grads = torch.autograd.grad(want, [z] + ([c] if use_centers else []), allow_unused=True)

    assert_close_rel(got, want)
    for g_got, g_want in zip(got_grads, want_grads):
        assert_close_rel(g_got, g_want)


@pytest.mark.parametrize("pattern", sorted(LABEL_PATTERNS))
@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_scl_matches_equation_1(pattern, tau):
    z, labels, _, _ = make_inputs(pattern, seed=7)
    got = LF.supervised_contrastive_loss(z, labels, temperature=tau)
    want = scl_reference(z, labels, tau)
    assert_close_rel(got, want)
    if want.requires_grad:
        assert_close_rel(torch.autograd.grad(got, z)[0], torch.autograd.grad(want, z)[0])


def test_acl_with_weights_equal_one_is_the_unweighted_loss():
    z, labels, centers, _ = make_inputs("mixed")
    ones = torch.ones(NUM_CLASSES, dtype=torch.float64)
    a = LF.aligned_contrastive_loss(z, labels, temperature=0.1, centers=centers, negative_weights=ones)
    b = LF.aligned_contrastive_loss(z, labels, temperature=0.1, centers=centers)
    assert_close_rel(a, b)


def test_acl_zero_weight_removes_a_class_from_the_negatives():
    z, labels, centers, weights = make_inputs("mixed")
    weights = weights.clone()
    weights[5] = 0.0  # class 5 has no samples: only its centre is affected
    got = LF.aligned_contrastive_loss(z, labels, temperature=0.1, centers=centers, negative_weights=weights)
    keep = [j for j in range(NUM_CLASSES) if j != 5]
    remap = torch.tensor([keep.index(int(v)) for v in labels])
    want = acl_reference(z, remap, 0.1, centers=centers[keep], weights=weights[keep])
    assert_close_rel(got, want)


@pytest.mark.parametrize("use_centers", [False, True])
def test_acl_anchor_slice_equals_those_rows_of_the_full_loss(use_centers):
    z, labels, centers, weights = make_inputs("mixed")
    c = centers if use_centers else None
    full, _ = LF.aligned_contrastive_per_anchor(z, labels, temperature=0.2, centers=c, negative_weights=weights)
    part, _ = LF.aligned_contrastive_per_anchor(
        z, labels, temperature=0.2, centers=c, negative_weights=weights, anchors=slice(4, 9)
    )
    assert_close_rel(part, full[4:9])


def test_scl_anchor_slice_equals_those_rows_of_the_full_loss():
    z, labels, _, _ = make_inputs("mixed")
    full, _ = LF.supervised_contrastive_per_anchor(z, labels, temperature=0.2)
    part, _ = LF.supervised_contrastive_per_anchor(z, labels, temperature=0.2, anchors=slice(3, 11))
    assert_close_rel(part, full[3:11])


def test_acl_gradient_on_every_positive_is_attractive():
    """Eq. 11: dL_i/dz_p = -(1 - q_ip) / (tau (|P(i)| + 1)) z_i for each positive p, sample or centre."""
    z, labels, centers, weights = make_inputs("mixed", seed=3)
    tau = 0.1
    per_anchor, _ = LF.aligned_contrastive_per_anchor(
        z, labels, temperature=tau, centers=centers, negative_weights=weights
    )
    for i in range(len(labels)):
        gz, gc = torch.autograd.grad(per_anchor[i], [z, centers], retain_graph=True)
        positives = [p for p in range(len(labels)) if p != i and labels[p] == labels[i]]
        neg = sum(
            weights[labels[k]] * torch.exp(z[i] @ z[k] / tau) for k in range(len(labels)) if labels[k] != labels[i]
        ) + sum(weights[j] * torch.exp(z[i] @ centers[j] / tau) for j in range(NUM_CLASSES) if j != labels[i])
        for vector, grad in [(z[p], gz[p]) for p in positives] + [(centers[labels[i]], gc[labels[i]])]:
            e = torch.exp(z[i] @ vector / tau)
            q = e / (e + neg)
            expected = -(1 - q) / (tau * (len(positives) + 1)) * z[i]
            assert_close_rel(grad, expected.detach())
            assert float(grad.detach() @ z[i].detach()) < 0  # descent moves the positive towards the anchor


def test_no_positive_pair_gives_zero_with_a_graph():
    z = F.normalize(torch.randn(4, 5), dim=1).requires_grad_()
    labels = torch.tensor([0, 1, 2, 3])
    for loss in (
        LF.aligned_contrastive_loss(z, labels, temperature=0.1),
        LF.supervised_contrastive_loss(z, labels, temperature=0.1),
    ):
        assert loss.item() == 0.0
        (grad,) = torch.autograd.grad(loss, z)
        assert torch.equal(grad, torch.zeros_like(z))


def test_single_row_and_empty_batch_give_zero_with_a_graph():
    for n in (0, 1):
        z = F.normalize(torch.randn(n, 5), dim=1).requires_grad_()
        labels = torch.zeros(n, dtype=torch.int64)
        for fn in (LF.aligned_contrastive_loss, LF.supervised_contrastive_loss):
            loss = fn(z, labels, temperature=0.1)
            loss.backward()
            assert loss.item() == 0.0 and torch.isfinite(z.grad).all()


def test_anchor_without_positives_never_makes_nan():
    # Rows 4 and 5 are singletons; also a row with positives but no negatives (a batch of one class).
    for labels in ([0, 0, 1, 1, 2, 3], [4, 4, 4]):
        z = F.normalize(torch.randn(len(labels), 6), dim=1).requires_grad_()
        y = torch.tensor(labels)
        for fn in (LF.aligned_contrastive_loss, LF.supervised_contrastive_loss):
            loss = fn(z, y, temperature=0.05)
            (grad,) = torch.autograd.grad(loss, z)
            assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_acl_is_stable_at_small_temperature_with_far_negatives():
    # Positives identical, negatives opposite: terms span 2/tau = 40 nats at tau = 0.05.
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]]).requires_grad_()
    y = torch.tensor([0, 0, 1, 1])
    loss = LF.aligned_contrastive_loss(z, y, temperature=0.05)
    (grad,) = torch.autograd.grad(loss, z)
    want = acl_reference(z.detach().double(), y, 0.05)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_autocast_inputs_give_finite_losses_close_to_float32(dtype):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 32)
    x = torch.randn(64, 16)
    labels = torch.randint(0, 5, (64,))
    centers = F.normalize(torch.randn(5, 32), dim=1)
    weights = torch.rand(5) + 0.5
    with torch.autocast("cpu", dtype=dtype):
        z_half = F.normalize(head(x), dim=1)
        assert z_half.dtype == dtype
        losses_half = [
            LF.aligned_contrastive_loss(z_half, labels, temperature=0.05, centers=centers, negative_weights=weights),
            LF.supervised_contrastive_loss(z_half, labels, temperature=0.05),
        ]
    z_full = F.normalize(head(x), dim=1)
    losses_full = [
        LF.aligned_contrastive_loss(z_full, labels, temperature=0.05, centers=centers, negative_weights=weights),
        LF.supervised_contrastive_loss(z_full, labels, temperature=0.05),
    ]
    for half, full in zip(losses_half, losses_full):
        assert half.dtype == torch.float32 and torch.isfinite(half)
        torch.testing.assert_close(half, full, rtol=2e-2, atol=0)
        grads = torch.autograd.grad(half, head.weight, retain_graph=True)
        assert torch.isfinite(grads[0]).all()


def test_balanced_softmax_matches_the_definition():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(9, 4, dtype=torch.float64, generator=g).requires_grad_()
    labels = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0, 0])
    counts = [500, 50, 12, 3]
    got = LF.balanced_softmax_loss(logits, labels, counts)
    want = balanced_softmax_reference(logits, labels, counts)
    assert_close_rel(got, want)
    assert_close_rel(torch.autograd.grad(got, logits)[0], torch.autograd.grad(want, logits)[0])


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 2.0])
def test_logit_adjusted_matches_the_definition(tau):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(7, 3, dtype=torch.float64, generator=g).requires_grad_()
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 0])
    counts = [100, 10, 1]
    got = LF.logit_adjusted_loss(logits, labels, counts, tau=tau)
    want = logit_adjusted_reference(logits, labels, counts, tau)
    assert_close_rel(got, want)
    assert_close_rel(torch.autograd.grad(got, logits)[0], torch.autograd.grad(want, logits)[0])


def test_log_prior_sums_to_one():
    prior = LF.log_prior([3, 1]).exp()
    assert math.isclose(float(prior.sum()), 1.0, rel_tol=1e-6) and math.isclose(float(prior[0]), 0.75, rel_tol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Bad input: one clear ValueError naming the problem


def _good():
    return F.normalize(torch.randn(6, 4), dim=1), torch.tensor([0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda z, y, kw: (z[0], y, kw), "2-D tensor"),
        (lambda z, y, kw: (z[None], y, kw), "2-D tensor"),
        (lambda z, y, kw: (z, y[:5], kw), "5 entries but there are 6 rows"),
        (lambda z, y, kw: (z, y.float(), kw), "integer class indices"),
        (lambda z, y, kw: (z, y[:, None], kw), "1-D tensor of class indices"),
        (lambda z, y, kw: (z, y - 1, kw), "must be >= 0"),
        (lambda z, y, kw: (z.index_fill(0, torch.tensor([1]), float("nan")), y, kw), "NaN or inf"),
        (lambda z, y, kw: (z.index_fill(0, torch.tensor([2]), float("inf")), y, kw), "NaN or inf"),
        (lambda z, y, kw: (z, y, {**kw, "temperature": 0.0}), "temperature must be a positive"),
        (lambda z, y, kw: (z, y, {**kw, "temperature": -1.0}), "temperature must be a positive"),
        (lambda z, y, kw: (z.long(), y, kw), "floating point"),
    ],
)
@pytest.mark.parametrize("fn", [LF.aligned_contrastive_loss, LF.supervised_contrastive_loss])
def test_bad_inputs_raise_clear_errors(fn, mutate, message):
    z, y = _good()
    z, y, kw = mutate(z, y, {"temperature": 0.1})
    with pytest.raises(ValueError, match=message):
        fn(z, y, **kw)


def test_acl_rejects_bad_centres_and_weights():
    z, y = _good()
    with pytest.raises(ValueError, match="centers have dimension 5 but features have dimension 4"):
        LF.aligned_contrastive_loss(z, y, temperature=0.1, centers=torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"labels must be < the number of classes 2, got 2"):
        LF.aligned_contrastive_loss(z, y, temperature=0.1, centers=F.normalize(torch.randn(2, 4), dim=1))
    with pytest.raises(ValueError, match="negative_weights has 4 entries but there are 3 centres"):
        LF.aligned_contrastive_loss(
            z, y, temperature=0.1, centers=F.normalize(torch.randn(3, 4), dim=1), negative_weights=torch.ones(4)
        )
    with pytest.raises(ValueError, match="finite and non-negative"):
        LF.aligned_contrastive_loss(z, y, temperature=0.1, negative_weights=torch.tensor([1.0, -1.0, 1.0]))


@pytest.mark.parametrize(
    "counts, message",
    [([10, 0, 3], "class 1 has 0"), ([10, 5, -2], "class 2 has -2"), ([], "non-empty"), ([[1, 2]], "1-D")],
)
def test_classification_losses_reject_bad_class_counts(counts, message):
    logits = torch.randn(2, 3)
    with pytest.raises(ValueError, match=message):
        LF.balanced_softmax_loss(logits, torch.tensor([0, 1]), counts)


def test_classification_losses_reject_mismatched_logits_and_labels():
    with pytest.raises(ValueError, match="logits have 4 classes but class_counts has 3"):
        LF.balanced_softmax_loss(torch.randn(2, 4), torch.tensor([0, 1]), [3, 2, 1])
    with pytest.raises(ValueError, match="must be < the number of classes 3"):
        LF.logit_adjusted_loss(torch.randn(2, 3), torch.tensor([0, 3]), [3, 2, 1])
