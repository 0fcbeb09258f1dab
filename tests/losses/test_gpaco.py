"""GPaCoLoss and gpaco_loss against a float64 loop over the equation (batch rows as anchors, queue keys as extra
contrast rows that are never anchors): values, gradients, edge cases, the queue, DDP."""

import math

import pytest
import torch
import torch.nn.functional as F

from ltcl.losses import functional as LF
from ltcl.losses.gpaco import GPaCoLoss, gpaco_loss
from ltcl.losses.gpaco_queue import EMPTY, GPaCoQueue, initial_queue
from ltcl.losses.gpaco_terms import GPaCoWeights
from tests.losses.rivals_reference import check_two_processes_equal_one, gpaco_reference

COUNTS = [40, 15, 6, 3, 1]
PATTERNS = {
    "mixed": [0, 0, 1, 1, 1, 2, 3, 0, 2, 4],
    "singletons": [0, 1, 2, 3, 4],
    "one_class": [2, 2, 2, 2],
}
SETTINGS = [  # (alpha, beta, gamma, tau, smooth): the published default, every weight away from 1, smoothing
    (0.01, 1.0, 1.0, 0.05, 0.0),
    (0.4, 0.7, 1.8, 0.3, 0.0),
    (1.0, 1.0, 0.0, 0.2, 0.0),
    (0.3, 1.0, 1.0, 0.2, 0.1),
]
QUEUES = ["none", "random", "partly_empty"]


def inputs(labels, seed=0, d=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(len(labels), d, generator=g, dtype=dtype), dim=1).requires_grad_()
    logits = (2 * torch.randn(len(labels), len(COUNTS), generator=g, dtype=dtype)).requires_grad_()
    return z, torch.tensor(labels, dtype=torch.int64), logits


def queue_contents(kind, d=6, size=7):
    """(K, D) float64 keys and (K,) labels: the authors' random start, or real keys with two empty slots."""
    if kind == "none":
        return None, None
    if kind == "random":
        keys, labels = initial_queue(size, d, len(COUNTS), "random", seed=11)
        return keys.double(), labels
    g = torch.Generator().manual_seed(12)
    keys = F.normalize(torch.randn(size, d, generator=g, dtype=torch.float64), dim=1)
    return keys, torch.tensor([4, EMPTY, 0, 1, EMPTY, 4, 2])  # class 4: alone in some batches, in the queue here


def loss_with_queue(kind, **kwargs):
    keys, labels = queue_contents(kind)
    loss_fn = GPaCoLoss(COUNTS, queue_size=0 if keys is None else keys.shape[0], key_dim=6, **kwargs).double()
    if keys is not None:
        loss_fn.queue.keys.copy_(keys)
        loss_fn.queue.labels.copy_(labels)
    return loss_fn, keys, labels


@pytest.mark.parametrize("queue", QUEUES)
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_values_and_gradients_match_the_equation(pattern, setting, queue):
    alpha, beta, gamma, tau, smooth = setting
    z, y, logits = inputs(PATTERNS[pattern])
    kwargs = dict(alpha=alpha, beta=beta, gamma=gamma, temperature=tau, smooth=smooth)
    loss_fn, keys, key_labels = loss_with_queue(queue, **kwargs)
    got = loss_fn(z, y, logits)
    got_z, got_l = torch.autograd.grad(got, (z, logits))
    want = gpaco_reference(z, y, logits, COUNTS, alpha=alpha, beta=beta, gamma=gamma, tau=tau, smooth=smooth,
                           queue=keys, queue_labels=key_labels)  # fmt: skip
    want_z, want_l = torch.autograd.grad(want, (z, logits))
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    torch.testing.assert_close(got_z, want_z, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(got_l, want_l, rtol=1e-9, atol=1e-10)
    assert got_l.abs().sum() > 0
    # Features enter through the sample terms: only gamma = 0 without any sample positive leaves them out.
    assert (got_z.abs().sum() > 0) == (gamma > 0 or pattern != "singletons" or queue != "none")
    functional = gpaco_loss(z, y, logits, COUNTS, GPaCoWeights(**kwargs), keys, key_labels)
    assert functional.item() == pytest.approx(got.item(), rel=1e-12)


def test_a_class_alone_in_the_batch_finds_its_positives_in_the_queue():
    # Class 4 has one row in the batch: without a queue its only positive is its centre; the queue holds two keys
    # of class 4, which become its sample positives (and the centre's weight drops from 1 to 1 / (1 + 2 alpha)).
    z, y, logits = inputs(PATTERNS["mixed"])
    loss_fn, keys, key_labels = loss_with_queue("partly_empty", alpha=0.5, temperature=0.2)
    anchor = 9  # the row of class 4
    loss_fn(z, y, logits)
    plain = GPaCoLoss(COUNTS, alpha=0.5, temperature=0.2)
    plain(z, y, logits)
    counts = torch.tensor([2, 2, 2, 2, 2, 1, 0, 2, 1, 0], dtype=torch.float64)  # sample positives in the batch
    in_queue = torch.tensor([int((key_labels == c).sum()) for c in y], dtype=torch.float64)
    assert in_queue[anchor] == 2
    want = (1.0 / (1.0 + 0.5 * (counts + in_queue))).mean()
    assert loss_fn.last_centre_weight.item() == pytest.approx(want.item(), rel=1e-12)
    assert plain.last_centre_weight.item() == pytest.approx((1.0 / (1.0 + 0.5 * counts)).mean().item(), rel=1e-12)


def test_empty_slots_are_left_out_and_queue_keys_are_never_anchors():
    z, y, logits = inputs(PATTERNS["mixed"])
    empty = GPaCoLoss(COUNTS, alpha=0.3, queue_size=5, key_dim=6, queue_start="empty").double()
    assert (empty.queue.labels == EMPTY).all() and empty.queue.fill().item() == 0.0
    plain = GPaCoLoss(COUNTS, alpha=0.3)
    assert empty(z, y, logits).item() == plain(z, y, logits).item()  # an empty queue is no queue, to the bit
    # A key equal to an anchor's own row is a positive of that anchor, not the anchor itself: it changes the loss.
    empty.queue.keys[0] = z[0].detach()
    empty.queue.labels[0] = y[0]
    assert empty(z, y, logits).item() != plain(z, y, logits).item()
    # The loss averages over the batch rows only, however many keys there are.
    z1, y1, l1 = inputs([3])
    single = GPaCoLoss(COUNTS, alpha=0.3, queue_size=5, key_dim=6).double()
    want = gpaco_reference(z1, y1, l1, COUNTS, alpha=0.3, beta=1.0, gamma=1.0, tau=0.05,
                           queue=single.queue.keys, queue_labels=single.queue.labels)  # fmt: skip
    assert single(z1, y1, l1).item() == pytest.approx(want.item(), rel=1e-10)


def test_the_random_start_is_the_authors_builder():
    # moco/builder.py: queue = normalize(randn(K, dim), dim=0); queue_l = randint(0, num_classes, (K,)).
    keys, labels = initial_queue(64, 8, 10, "random", seed=3)
    torch.manual_seed(3)
    want_keys = F.normalize(torch.randn(64, 8), dim=0)
    want_labels = torch.randint(0, 10, (64,))
    assert torch.equal(keys, want_keys) and torch.equal(labels, want_labels)
    torch.testing.assert_close(keys.norm(dim=0), torch.ones(8))  # unit columns; rows of norm ~ sqrt(8 / 64)
    assert keys.norm(dim=1).mean() < 0.5


def test_the_queue_is_first_in_first_out_and_wraps():
    queue = GPaCoQueue(5, 2, 3, start="empty")
    for step in range(3):  # 3 keys per step: 0 1 2 | 3 4 (5 wraps to slot 0) ...
        base = 3 * step
        keys = torch.arange(base, base + 3, dtype=torch.float32)[:, None].expand(3, 2)
        queue.push(keys, torch.arange(base, base + 3) % 3)
    assert queue.keys[:, 0].tolist() == [5.0, 6.0, 7.0, 8.0, 4.0]
    assert queue.labels.tolist() == [2, 0, 1, 2, 1]
    assert int(queue.pointer) == 4 and queue.fill().item() == 1.0
    # More keys than slots: as if written one by one from slot 4 on (slots 4 0 1 2 3 4 0), the last 5 stay.
    queue.push(torch.arange(7.0)[:, None].expand(7, 2), torch.zeros(7, dtype=torch.int64))
    assert queue.keys[:, 0].tolist() == [6.0, 2.0, 3.0, 4.0, 5.0] and int(queue.pointer) == (4 + 7) % 5
    half = GPaCoQueue(8, 2, 3, start="random")
    half.push(torch.zeros(3, 2), torch.zeros(3, dtype=torch.int64))
    assert half.fill().item() == 3 / 8  # the random keys do not count as filled
    with pytest.raises(ValueError, match="push expects"):
        half.push(torch.zeros(3, 4), torch.zeros(3, dtype=torch.int64))


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
    loss_fn = GPaCoLoss(COUNTS, queue_size=8, key_dim=6).double()

    def refuse(*args, **kwargs):
        raise AssertionError("host synchronisation in forward")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    monkeypatch.setattr(torch, "bincount", refuse)
    loss = loss_fn(z, y, logits)
    loss_fn.enqueue(z.detach(), y)
    loss_fn.queue.fill()
    monkeypatch.undo()
    assert torch.isfinite(loss) and loss_fn.queue.fill().item() == 1.0


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(alpha=-0.1), "alpha"),
        (dict(beta=float("nan")), "beta"),
        (dict(gamma=-1.0), "gamma"),
        (dict(alpha=0.0, beta=0.0), "alpha and beta"),
        (dict(temperature=0.0), "temperature"),
        (dict(smooth=1.0), "smooth"),
        (dict(queue_size=-1), "queue_size"),
        (dict(queue_size=4, key_dim=0), "queue"),
        (dict(queue_size=4, key_dim=3, queue_start="zeros"), "queue_start"),
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
    keys, key_labels = queue_contents("partly_empty")
    with pytest.raises(ValueError, match="queue_labels"):
        gpaco_loss(z, y, logits, COUNTS, queue=keys, queue_labels=key_labels.clamp(min=-2) - 1)
    with pytest.raises(ValueError, match="both or neither"):
        gpaco_loss(z, y, logits, COUNTS, queue=keys)
    with pytest.raises(ValueError, match="length"):
        GPaCoLoss(COUNTS, queue_size=3, key_dim=4)(z, y, logits)


def test_an_empty_batch_gives_zero_with_a_graph():
    z, y, logits = inputs([])
    loss = gpaco_loss(z, y, logits, COUNTS)
    loss.backward()
    assert loss.item() == 0.0


def test_two_processes_with_gather_equal_one_process_on_the_global_batch(tmp_path):
    check_two_processes_equal_one("gpaco", tmp_path)
