"""KCLLoss and kcl_loss against a float64 loop over KCL's loss (Kang et al., ICLR 2021, as the authors' code
computes it): values, gradients, the choice of the k queue positives, empty slots, and the queue's ring."""

import math

import pytest
import torch
import torch.nn.functional as F

from ltcl.losses.kcl import KCLLoss, first_k_positives, kcl_loss


def kcl_reference(q, k, queue, queue_labels, labels, positives, tau):
    """One loop per sum. Query i's candidates are its own key and every filled queue slot (label >= 0); its positives
    are its own key and the first ``positives`` filled slots of its class, by slot index; ``L_i`` is minus the mean
    log-probability of its positives under the softmax over its candidates; the loss is the mean over queries."""
    total = q.sum() * 0.0
    filled = [j for j in range(queue.shape[0]) if int(queue_labels[j]) >= 0]
    for i in range(q.shape[0]):
        own = torch.dot(q[i], k[i]) / tau
        sims = {j: torch.dot(q[i], queue[j]) / tau for j in filled}
        denominator = torch.exp(own) + sum(torch.exp(s) for s in sims.values())
        chosen = [j for j in filled if int(queue_labels[j]) == int(labels[i])][:positives]
        terms = [own] + [sims[j] for j in chosen]
        total = total - sum(torch.log(torch.exp(t) / denominator) for t in terms) / len(terms)
    return total / q.shape[0]


QUEUES = {  # queue labels (-1: an empty slot) and query labels
    # class 0 has 7 queue slots (more than k), class 1 two, class 2 one, class 3 none: query 3 has only its key
    "mixed": ([0, 1, 0, 0, 2, 0, 1, 0, 0, 0, 4, 4], [0, 1, 2, 3, 0, 4]),
    "empty_slots": ([0, -1, 1, 0, -1, 0, 1, -1, 0, 0, 0, 0], [0, 1, 0, 2]),
    "all_one_class": ([2] * 10, [2, 2, 2]),
    "no_positives": ([0, 1, 0, 1, 0, 1], [2, 3, 3]),
}


def inputs(queue_labels, labels, seed=0, d=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    unit = lambda *s: F.normalize(torch.randn(*s, generator=g, dtype=dtype), dim=-1)  # noqa: E731
    q = unit(len(labels), d).requires_grad_()
    k = unit(len(labels), d)
    queue = unit(len(queue_labels), d)
    return q, k, queue, torch.tensor(queue_labels), torch.tensor(labels)


@pytest.mark.parametrize("pattern", QUEUES)
@pytest.mark.parametrize("positives", [0, 1, 6, 100])
@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_values_and_gradients_match_the_equation(pattern, positives, tau):
    q, k, queue, queue_labels, labels = inputs(*QUEUES[pattern])
    loss_fn = KCLLoss(q.shape[1], queue.shape[0], positives, tau).double()
    loss_fn.queue.copy_(queue)
    loss_fn.queue_labels.copy_(queue_labels)
    got = loss_fn(q, k, labels).loss
    (got_grad,) = torch.autograd.grad(got, q)
    want = kcl_reference(q, k, queue, queue_labels, labels, positives, tau)
    (want_grad,) = torch.autograd.grad(want, q)
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-9, atol=1e-11)
    functional = kcl_loss(q, k, labels, queue, queue_labels, positives, tau)
    assert functional.item() == pytest.approx(got.item(), rel=1e-12)


def test_the_first_k_slots_of_the_class_are_the_positives():
    queue_labels = torch.tensor([3, 1, -1, 3, 3, 1, 0, 3, 3])
    mask = first_k_positives(torch.tensor([3, 1, 2, 0]), queue_labels, 2)
    assert mask.tolist() == [
        [True, False, False, True, False, False, False, False, False],  # slots 0 and 3 of class 3's five
        [False, True, False, False, False, True, False, False, False],  # both of class 1's
        [False] * 9,  # class 2 is not queued (the empty slot's -1 is no class)
        [False] * 6 + [True, False, False],
    ]
    assert not first_k_positives(torch.tensor([3]), queue_labels, 0).any()


def test_counts_and_k_zero_is_moco():
    q, k, queue, queue_labels, labels = inputs(*QUEUES["mixed"])
    loss_fn = KCLLoss(q.shape[1], queue.shape[0], positives=6, temperature=0.2).double()
    loss_fn.queue.copy_(queue)
    loss_fn.queue_labels.copy_(queue_labels)
    # queue positives: class 0 has 7 slots (6 taken), class 1 two, class 2 one, class 3 none, class 4 two
    assert loss_fn(q, k, labels).positives.item() == pytest.approx((6 + 2 + 1 + 0 + 6 + 2) / 6)
    # k = 0: InfoNCE of the own key against the queue, MoCo's loss
    moco = KCLLoss(q.shape[1], queue.shape[0], positives=0, temperature=0.2).double()
    moco.load_state_dict(loss_fn.state_dict())
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], dim=1) / 0.2
    want = F.cross_entropy(logits, torch.zeros(len(labels), dtype=torch.int64))
    assert moco(q, k, labels).loss.item() == pytest.approx(want.item(), rel=1e-12)


def test_an_empty_queue_leaves_only_the_own_key():
    q, k, queue, _, labels = inputs(*QUEUES["mixed"])
    loss_fn = KCLLoss(q.shape[1], queue.shape[0], 6, 0.1).double()  # never written: every label -1
    out = loss_fn(q, k, labels)
    assert out.loss.item() == 0.0 and out.positives.item() == 0.0 and loss_fn.fill().item() == 0.0
    (grad,) = torch.autograd.grad(out.loss, q)
    assert torch.count_nonzero(grad) == 0


def test_the_queue_is_a_ring_of_the_latest_keys():
    loss_fn = KCLLoss(2, 5, 1, 0.1)
    keys = torch.arange(16, dtype=torch.float32).view(8, 2)
    loss_fn.enqueue(keys[:3], torch.tensor([0, 1, 2]))
    assert loss_fn.queue_labels.tolist() == [0, 1, 2, -1, -1] and loss_fn.fill().item() == pytest.approx(0.6)
    loss_fn.enqueue(keys[3:6], torch.tensor([3, 4, 5]))  # wraps: slots 3, 4, 0
    assert loss_fn.queue_labels.tolist() == [5, 1, 2, 3, 4] and int(loss_fn.queue_ptr) == 1
    torch.testing.assert_close(loss_fn.queue[0], keys[5])
    loss_fn.enqueue(keys, torch.arange(8))  # more keys than slots: as if written one by one from slot 1
    assert loss_fn.queue_labels.tolist() == [4, 5, 6, 7, 3] and int(loss_fn.queue_ptr) == 4


def test_half_precision_inputs_are_computed_in_float32():
    q, k, queue, queue_labels, labels = inputs(*QUEUES["mixed"], dtype=torch.float32)
    loss_fn = KCLLoss(q.shape[1], queue.shape[0], 6, 0.07)
    loss_fn.queue.copy_(queue)
    loss_fn.queue_labels.copy_(queue_labels)
    full = loss_fn(q, k, labels).loss
    half = loss_fn(q.detach().bfloat16().requires_grad_(), k.bfloat16(), labels).loss
    assert half.dtype == torch.float32 and math.isclose(half.item(), full.item(), rel_tol=0.05)


def test_bad_inputs_are_refused_in_one_sentence():
    q, k, queue, queue_labels, labels = inputs(*QUEUES["mixed"])
    with pytest.raises(ValueError, match="positives"):
        KCLLoss(5, 12, -1)
    with pytest.raises(ValueError, match="temperature"):
        kcl_loss(q, k, labels, queue, queue_labels, 6, 0.0)
    with pytest.raises(ValueError, match="keys"):
        kcl_loss(q, k[:2], labels, queue, queue_labels)
    with pytest.raises(ValueError, match="queue_labels"):
        kcl_loss(q, k, labels, queue, queue_labels - 2)
    with pytest.raises(ValueError, match="labels"):
        KCLLoss(5, 12)(q.float(), k.float(), labels.int())
