"""PaCoLoss against a float64 loop over the paper's equation: values and gradients on several label patterns and
queue fillings, and the edge cases (a class alone in the batch, a query without a positive term). The 2-process
run (queries gathered with gradient, one queue on every process) is in tests/methods/test_paco.py."""

import math

import pytest
import torch
import torch.nn.functional as F

from ltcl.losses import functional as LF
from ltcl.losses.paco import PaCoLoss, PaCoWeights

COUNTS = [40, 15, 6, 3, 1]
D = 6
PATTERNS = {  # query labels; the keys have the same labels (they are the second view of the same images)
    "mixed": [0, 0, 1, 1, 1, 2, 3, 0, 2, 4],
    "class_alone": [0, 1, 1, 4],  # classes 0 and 4 have one image: their only batch positive is their own key
    "one_class": [2, 2, 2, 2],
}
QUEUE_LABELS = [0, 1, 1, 2, 0, 3, 3, 1]
FILLINGS = {"empty": 0, "partial": 3, "full": len(QUEUE_LABELS)}
SETTINGS = [  # (alpha, beta, gamma, tau): the published CIFAR default, then every weight away from 1
    (0.01, 1.0, 1.0, 0.05),
    (0.4, 0.7, 1.8, 0.3),
    (1.0, 0.0, 1.0, 0.2),  # beta 0: the own key is every query's positive
    (0.5, 1.0, 0.0, 0.2),  # gamma 0: no sample term in the denominator
]


def paco_reference(q, y, logits, keys, queue, queue_y, filled, counts, *, alpha, beta, gamma, tau):
    """PaCo (Cui et al., ICCV 2021, Eq. 4 with the code's beta and gamma): for query i, the contrast rows are the
    other queries, every key and the filled queue slots; the centre terms are the logits plus the log prior. One
    softmax over centres and samples (gamma weighting the sample terms of the denominator); the own-class centre is
    a positive weighted beta, each same-class contrast row alpha; divided by the sum of the weights. Mean over
    queries whose weights sum to > 0."""
    labels = [int(v) for v in y]
    rows = [("q", k, q[k], labels[k]) for k in range(q.shape[0])]
    rows += [("k", k, keys[k], labels[k]) for k in range(keys.shape[0])]
    rows += [("m", k, queue[k], int(queue_y[k])) for k in range(filled)]
    total_count = sum(counts)
    total, used = q.sum() * 0.0, 0
    for i in range(q.shape[0]):
        centre = [logits[i, j] + math.log(counts[j] / total_count) for j in range(logits.shape[1])]
        contrast = [(torch.dot(q[i], r) / tau, label) for kind, k, r, label in rows if not (kind == "q" and k == i)]
        denominator = sum(torch.exp(a) for a in centre) + gamma * sum(torch.exp(s) for s, _ in contrast)
        positives = [s for s, label in contrast if label == labels[i]]
        weight_sum = beta + alpha * len(positives)
        if weight_sum == 0:
            continue
        log_likelihood = beta * torch.log(torch.exp(centre[labels[i]]) / denominator)
        for s in positives:
            log_likelihood = log_likelihood + alpha * torch.log(torch.exp(s) / denominator)
        total = total - log_likelihood / weight_sum
        used += 1
    return total / max(used, 1)


def inputs(labels, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    q = F.normalize(torch.randn(n, D, generator=g, dtype=dtype), dim=1).requires_grad_()
    logits = (2 * torch.randn(n, len(COUNTS), generator=g, dtype=dtype)).requires_grad_()
    keys = F.normalize(torch.randn(n, D, generator=g, dtype=dtype), dim=1)
    queue = F.normalize(torch.randn(len(QUEUE_LABELS), D, generator=g, dtype=dtype), dim=1)
    return q, torch.tensor(labels), logits, keys, queue, torch.tensor(QUEUE_LABELS)


def memory_of(y, keys, queue, queue_y, filled):
    mask = torch.cat([torch.ones(len(y), dtype=torch.bool), torch.arange(queue.shape[0]) < filled])
    return torch.cat([keys, queue]), torch.cat([y, queue_y]), mask


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("filling", FILLINGS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_values_and_gradients_match_the_equation(pattern, filling, setting):
    alpha, beta, gamma, tau = setting
    q, y, logits, keys, queue, queue_y = inputs(PATTERNS[pattern])
    filled = FILLINGS[filling]
    loss_fn = PaCoLoss(COUNTS, alpha=alpha, beta=beta, gamma=gamma, temperature=tau)
    got = loss_fn(q, y, logits, *memory_of(y, keys, queue, queue_y, filled))
    got_q, got_l = torch.autograd.grad(got.loss, (q, logits))
    want = paco_reference(q, y, logits, keys, queue, queue_y, filled, COUNTS, alpha=alpha, beta=beta, gamma=gamma,
                          tau=tau)  # fmt: skip
    want_q, want_l = torch.autograd.grad(want, (q, logits))
    assert got.loss.item() == pytest.approx(want.item(), rel=1e-10)
    torch.testing.assert_close(got_q, want_q, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(got_l, want_l, rtol=1e-9, atol=1e-11)
    # Positives: other queries and keys of the class (the own key included) and the filled queue slots of it.
    labels = PATTERNS[pattern]
    want_positives = [2 * labels.count(c) - 1 + QUEUE_LABELS[:filled].count(c) for c in labels]
    assert got.positives.tolist() == want_positives


def test_a_class_alone_in_the_batch_has_its_own_key_as_only_positive():
    q, y, logits, keys, queue, queue_y = inputs(PATTERNS["class_alone"])
    terms = PaCoLoss(COUNTS, alpha=1.0, beta=0.0, temperature=0.2)(q, y, logits, *memory_of(y, keys, queue, queue_y, 0))
    assert terms.positives[[0, 3]].tolist() == [1, 1]
    # With beta = 0 and a single positive, the loss of query 0 is -log(e^{s_own key} / D_0).
    loss_0 = PaCoLoss(COUNTS, alpha=1.0, beta=0.0, temperature=0.2)(
        q[:1], y[:1], logits[:1], keys[:1], y[:1], None
    ).loss  # one query, its own key only
    s = torch.dot(q[0], keys[0]) / 0.2
    log_prior = torch.log(torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS))
    want = -(s - torch.logsumexp(torch.cat([logits[0] + log_prior, s.reshape(1)]), 0))
    assert loss_0.item() == pytest.approx(want.item(), rel=1e-12)
    assert torch.isfinite(terms.loss)


def test_a_query_without_any_positive_term_is_left_out():
    # beta = 0 and a memory without the query's key (the objective always passes the keys): no positive term, no
    # NaN; the other queries' loss is unchanged.
    q, y, logits, keys, queue, queue_y = inputs([0, 0, 3])
    loss_fn = PaCoLoss(COUNTS, alpha=1.0, beta=0.0, temperature=0.2)
    memory, memory_y = queue[:2], torch.tensor([0, 1])
    terms = loss_fn(q, y, logits, memory, memory_y)
    want = paco_reference(q, y, logits, keys[:0], memory, memory_y, 2, COUNTS, alpha=1.0, beta=0.0, gamma=1.0,
                          tau=0.2)  # fmt: skip
    assert terms.positives.tolist() == [2, 2, 0]
    assert terms.loss.item() == pytest.approx(want.item(), rel=1e-10)
    terms.loss.backward()
    assert torch.isfinite(q.grad).all() and q.grad[2].abs().sum() > 0  # still a negative of the other two


def test_masked_queue_slots_are_the_same_as_no_slots():
    q, y, logits, keys, queue, queue_y = inputs(PATTERNS["mixed"])
    loss_fn = PaCoLoss(COUNTS, alpha=0.3, temperature=0.1)
    masked = loss_fn(q, y, logits, *memory_of(y, keys, queue, queue_y, 3)).loss
    garbage = queue.clone()
    garbage[3:] = 100.0  # what an unfilled slot holds does not matter
    masked_garbage = loss_fn(q, y, logits, *memory_of(y, keys, garbage, queue_y, 3)).loss
    cut = loss_fn(q, y, logits, torch.cat([keys, queue[:3]]), torch.cat([y, queue_y[:3]])).loss
    assert masked.item() == pytest.approx(cut.item(), rel=1e-13)
    assert masked_garbage.item() == pytest.approx(cut.item(), rel=1e-13)


def test_without_sample_terms_it_is_balanced_softmax():
    q, y, logits, keys, queue, queue_y = inputs(PATTERNS["mixed"])
    got = PaCoLoss(COUNTS, alpha=0.0, gamma=0.0)(q, y, logits, *memory_of(y, keys, queue, queue_y, 8)).loss
    assert got.item() == pytest.approx(LF.balanced_softmax_loss(logits, y, COUNTS).item(), rel=1e-10)


def test_half_precision_inputs_are_computed_in_float32():
    q, y, logits, keys, queue, queue_y = inputs(PATTERNS["mixed"], dtype=torch.float32)
    loss_fn = PaCoLoss(COUNTS, temperature=0.05)
    full = loss_fn(q, y, logits, *memory_of(y, keys, queue, queue_y, 8)).loss
    half = loss_fn(q.bfloat16(), y, logits.bfloat16(), *memory_of(y, keys.bfloat16(), queue.bfloat16(), queue_y, 8))
    assert half.loss.dtype == torch.float32
    assert half.loss.item() == pytest.approx(full.item(), rel=0.05)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(alpha=0.0, beta=0.0), "alpha and beta"),
        (dict(gamma=-1.0), "gamma"),
        (dict(temperature=0.0), "temperature"),
    ],
)
def test_bad_weights_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        PaCoLoss(COUNTS, **change)
    with pytest.raises(ValueError, match=message):
        PaCoWeights(**{**dict(alpha=0.01, beta=1.0, gamma=1.0, temperature=0.05), **change})


def test_bad_inputs_are_refused_in_one_sentence():
    q, y, logits, keys, queue, queue_y = inputs(PATTERNS["mixed"])
    loss_fn = PaCoLoss(COUNTS)
    memory, memory_y, mask = memory_of(y, keys, queue, queue_y, 8)
    with pytest.raises(ValueError, match="memory rows have 5 dimensions"):
        loss_fn(q, y, logits, memory[:, :5], memory_y)
    with pytest.raises(ValueError, match="memory_labels must have shape"):
        loss_fn(q, y, logits, memory, memory_y[:-1])
    with pytest.raises(ValueError, match="memory_labels must be < the number of classes"):
        loss_fn(q, y, logits, memory, memory_y + 5)
    with pytest.raises(ValueError, match="memory_mask must be"):
        loss_fn(q, y, logits, memory, memory_y, mask.long())
    with pytest.raises(ValueError, match="logits must have shape"):
        loss_fn(q, y, logits[:, :3], memory, memory_y)
    with pytest.raises(ValueError, match="labels must hold integer"):
        loss_fn(q, y.int(), logits, memory, memory_y)
