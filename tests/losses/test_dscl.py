"""DSCL and PBSD (ltcl.losses.dscl) against float64 loops over the equations: values, gradients, edge cases, the
queue, and two gloo processes against one."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from ltcl.losses.dscl import DSCLLoss, dscl_loss, pbsd_loss

C, D, K = 5, 6, 8
PATTERNS = {  # batch labels, queue labels
    "mixed": ([0, 0, 1, 2, 1, 3], [0, 1, 1, 4, 2, 0, 3, 1]),
    "a_class_alone": ([0, 0, 4, 1], [0, 1, 1, 2, 2, 3, 0, 1]),  # class 4: no other image, none in the queue
    "no_class_positive": ([0, 1, 2, 3], [4, 4, 4, 4, 4, 4, 4, 4]),  # every anchor has its own key only
    "one_class": ([2, 2, 2, 2], [2, 0, 2, 1, 2, 3, 2, 4]),
}


def unit(n, g, dtype=torch.float64):
    return F.normalize(torch.randn(n, D, generator=g, dtype=dtype), dim=1)


def inputs(pattern, seed=0):
    labels, queue_labels = PATTERNS[pattern]
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    q = unit(n, g).requires_grad_()
    return q, unit(n, g), torch.tensor(labels), unit(K, g), torch.tensor(queue_labels)


# ------------------------------------------------------------------------------------------------------------
# References, one loop per sum


def dscl_reference(q, k, y, queue, queue_y, *, beta, tau):
    """Anchor i (a query) against every other query, every key and the queue; the other view of the image weighs
    1 / (1 + beta) of the positive weight and the other rows of its class share beta / (1 + beta); an anchor without
    such rows keeps its view alone. Returns the means of the two terms."""
    n = q.shape[0]
    rows = [q[j] for j in range(n)] + [k[j] for j in range(n)] + [queue[m] for m in range(queue.shape[0])]
    row_labels = [int(v) for v in y] * 2 + [int(v) for v in queue_y]
    view_total, class_total = q.sum() * 0.0, q.sum() * 0.0
    for i in range(n):
        others = [a for a in range(len(rows)) if a != i]
        denominator = sum(torch.exp(torch.dot(q[i], rows[a]) / tau) for a in others)

        def log_p(a, i=i, denominator=denominator):
            return torch.log(torch.exp(torch.dot(q[i], rows[a]) / tau) / denominator)

        positives = [a for a in others if row_labels[a] == row_labels[i] and a != n + i]
        w = 1.0 / (1.0 + beta) if positives else 1.0
        view_total = view_total - w * log_p(n + i)
        if positives:
            class_total = class_total - (1.0 - w) * sum(log_p(p) for p in positives) / len(positives)
    return view_total / n, class_total / n


def pbsd_reference(students, teachers, k, queue, *, tau):
    """Per patch: the teacher's softmax over (own key, queue) at tau, detached, against the student's log-softmax
    over the same candidates; the mean over images and patches."""
    candidates = lambda i: [k[i]] + [queue[m] for m in range(queue.shape[0])]  # noqa: E731
    total, terms = students[0].sum() * 0.0, 0
    for s, t in zip(students, teachers):
        t = t.detach()
        for i in range(k.shape[0]):
            t_logits = [torch.dot(t[i], c) / tau for c in candidates(i)]
            s_logits = [torch.dot(s[i], c) / tau for c in candidates(i)]
            t_den = sum(torch.exp(v) for v in t_logits)
            s_den = sum(torch.exp(v) for v in s_logits)
            pairs = zip(t_logits, s_logits)
            total = total - sum(torch.exp(a) / t_den * torch.log(torch.exp(b) / s_den) for a, b in pairs)
            terms += 1
    return total / terms


# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize(("beta", "tau"), [(8.0, 0.07), (0.0, 0.2), (2.5, 0.5)])
def test_dscl_values_and_gradients_match_the_equation(pattern, beta, tau):
    q, k, y, queue, queue_y = inputs(pattern)
    module = DSCLLoss(C, D, K, beta=beta, temperature=tau).double()
    module.queue.copy_(queue)
    module.queue_labels.copy_(queue_y)
    got = module(q, k, y)
    want = dscl_reference(q, k, y, queue, queue_y, beta=beta, tau=tau)
    for g, w in zip(got, want):
        assert g.item() == pytest.approx(w.item(), rel=1e-10, abs=1e-13)
    got_grad = torch.autograd.grad(got.view + got.klass, q)[0]
    want_grad = torch.autograd.grad(want[0] + want[1], q)[0]
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-9, atol=1e-11)
    functional = dscl_loss(q, k, y, queue, queue_y, beta=beta, temperature=tau)
    assert (functional.view + functional.klass).item() == pytest.approx((got.view + got.klass).item(), rel=1e-12)
    # The class term is 0 exactly when no anchor has a class positive (or beta = 0).
    assert (got.klass.item() == 0) == (pattern == "no_class_positive" or beta == 0)


def test_without_class_positives_dscl_is_infonce_over_the_batch_and_queue():
    q, k, y, queue, queue_y = inputs("no_class_positive")
    got = dscl_loss(q, k, y, queue, queue_y, beta=8.0, temperature=0.2)
    contrast = torch.cat([q, k, queue])
    sim = q @ contrast.T / 0.2
    sim.fill_diagonal_(-math.inf)
    want = F.cross_entropy(sim, torch.arange(q.shape[0]) + q.shape[0])
    assert got.view.item() == pytest.approx(want.item(), rel=1e-12) and got.klass.item() == 0


def test_the_view_keeps_its_share_however_many_class_positives():
    # SCL would give the view 1 / (|P| + 1) of the weight; DSCL keeps 1 / (1 + beta): the view term's gradient on
    # the anchor does not shrink as the queue fills with images of the anchor's class.
    g = torch.Generator().manual_seed(3)
    q, k = unit(1, g), unit(1, g)
    few, many = torch.tensor([0, 1, 1, 1, 1, 1, 1, 1]), torch.zeros(K, dtype=torch.int64)
    queue = unit(K, g)
    view_few = dscl_loss(q, k, torch.tensor([0]), queue, few, beta=4.0).view
    view_many = dscl_loss(q, k, torch.tensor([0]), queue, many, beta=4.0).view
    assert view_few.item() == pytest.approx(view_many.item(), rel=1e-12)


@pytest.mark.parametrize("tau", [0.07, 0.3])
def test_pbsd_values_and_gradients_match_the_equation(tau):
    g = torch.Generator().manual_seed(1)
    n, b = 3, 4
    students = [unit(b, g).requires_grad_() for _ in range(n)]
    teachers = [unit(b, g).requires_grad_() for _ in range(n)]
    k, queue = unit(b, g), unit(K, g)
    module = DSCLLoss(C, D, K, temperature=tau).double()
    module.queue.copy_(queue)
    got = module.distillation(students, teachers, k)
    want = pbsd_reference(students, teachers, k, queue, tau=tau)
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    got_grads = torch.autograd.grad(got, students + teachers, allow_unused=True)
    want_grads = torch.autograd.grad(want, students + teachers, allow_unused=True)
    for gg, wg in zip(got_grads[:n], want_grads[:n]):
        torch.testing.assert_close(gg, wg, rtol=1e-9, atol=1e-11)
    assert all(t is None for t in got_grads[n:])  # the teachers are targets: no gradient
    assert pbsd_loss(students, teachers, k, queue, temperature=tau).item() == pytest.approx(got.item(), rel=1e-12)
    # A student equal to its teacher is at the minimum: the loss is the teacher distribution's entropy.
    same = module.distillation([t.detach() for t in teachers], teachers, k)
    assert same.item() <= got.item()


def test_the_queue_replaces_its_oldest_keys_and_counts_its_fill():
    module = DSCLLoss(C, D, 6)
    start = module.queue.clone()
    assert module.fill().item() == 0.0
    keys, labels = F.normalize(torch.randn(4, D), dim=1), torch.tensor([1, 2, 3, 4])
    module.enqueue(keys, labels)
    torch.testing.assert_close(module.queue[:4], keys)
    torch.testing.assert_close(module.queue[4:], start[4:])
    assert module.queue_labels[:4].tolist() == [1, 2, 3, 4] and int(module.queue_ptr) == 4
    module.enqueue(keys.flip(0), labels.flip(0))  # wraps around: rows 4, 5, 0, 1
    assert module.queue_labels.tolist() == [2, 1, 3, 4, 4, 3] and int(module.queue_ptr) == 2
    assert module.fill().item() == 1.0
    with pytest.raises(ValueError, match="does not fit a queue of 6"):
        module.enqueue(torch.randn(7, D), torch.zeros(7, dtype=torch.int64))


def test_bad_inputs_are_one_sentence():
    q, k, y, queue, queue_y = inputs("mixed")
    module = DSCLLoss(C, D, K)
    with pytest.raises(ValueError, match="keys must have the queries' shape"):
        module(q, k[:3], y)
    with pytest.raises(ValueError, match="labels must be < the number of classes 5"):
        module(q.float(), k.float(), y + 3)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        DSCLLoss(C, D, K, beta=-1.0)
    with pytest.raises(ValueError, match="temperature must be a positive"):
        dscl_loss(q, k, y, queue, queue_y, temperature=0.0)


# ------------------------------------------------------------------------------------------------------------
# Two gloo processes, each with half of the global batch. As in the authors' code, each process contrasts its own
# batch and the queue, and the queue receives the global batch's keys: every process must hold the same queue, and
# the result must equal one process that computes each half's loss against the same queue and averages them.

WORLD, PER_RANK, IN_DIM = 2, 4, 5


def _batches():
    g = torch.Generator().manual_seed(11)
    out = []
    for _ in range(2):
        x = torch.randn(WORLD * PER_RANK, IN_DIM, generator=g, dtype=torch.float64)
        patches = torch.randn(2, WORLD * PER_RANK, IN_DIM, generator=g, dtype=torch.float64)
        keys = unit(WORLD * PER_RANK, g)
        teachers = [unit(WORLD * PER_RANK, g) for _ in patches]
        y = torch.tensor([0, 1, 1, 2, 3, 0, 4, 1])
        out.append((x, patches, teachers, keys, y))
    return out


def _make(gather):
    torch.manual_seed(5)
    model = nn.Linear(IN_DIM, D).double()
    loss_fn = DSCLLoss(C, D, 16, beta=3.0, temperature=0.2, gather_distributed=gather).double()
    return model, loss_fn


def _half_loss(model, loss_fn, batch, rows):
    """One process's loss: its queries (through the DDP-wrapped model, as the engine does) and patches (through the
    plain network, as the objective does) against its keys and the queue."""
    x, patches, teachers, keys, y = batch
    plain = getattr(model, "module", model)
    q = F.normalize(model(x[rows]), dim=1)
    q.retain_grad()
    students = [F.normalize(plain(p[rows]), dim=1) for p in patches]
    view, klass = loss_fn(q, keys[rows], y[rows])
    return view + klass + 1.5 * loss_fn.distillation(students, [t[rows] for t in teachers], keys[rows]), q


def _record(model, loss_fn, loss, q_grads):
    loss.backward()
    grads = {name.removeprefix("module."): p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    return {"loss": loss.item(), "q_grad": q_grads(), "params": grads}


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model, loss_fn = _make(gather=True)
        model = nn.parallel.DistributedDataParallel(model)
        records = []
        for batch in _batches():
            rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
            loss, q = _half_loss(model, loss_fn, batch, rows)
            records.append(_record(model, loss_fn, loss, lambda q=q: q.grad.clone()))
            loss_fn.enqueue(batch[3][rows], batch[4][rows])
            records[-1]["queue"] = (loss_fn.queue.clone(), loss_fn.queue_labels.clone(), int(loss_fn.queue_ptr))
        torch.save(records, os.path.join(out_dir, f"rank{rank}.pt"))
        del model
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _single_process():
    model, loss_fn = _make(gather=False)
    records = []
    for batch in _batches():
        halves = [_half_loss(model, loss_fn, batch, slice(r * PER_RANK, (r + 1) * PER_RANK)) for r in range(WORLD)]
        loss = sum(h[0] for h in halves) / WORLD  # DDP averages the processes' gradients
        records.append(_record(model, loss_fn, loss, lambda halves=halves: [WORLD * h[1].grad for h in halves]))
        loss_fn.enqueue(batch[3], batch[4])
        records[-1]["queue"] = (loss_fn.queue.clone(), loss_fn.queue_labels.clone(), int(loss_fn.queue_ptr))
    return records


def test_two_processes_contrast_their_own_batch_and_share_one_queue(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for step, want in enumerate(_single_process()):
        for rank, records in enumerate(ranks):
            got = records[step]
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-10)  # the mean over every process's anchors
            torch.testing.assert_close(got["q_grad"], want["q_grad"][rank], rtol=1e-9, atol=1e-12)
            for name, grad in want["params"].items():  # after DDP's average
                torch.testing.assert_close(got["params"][name], grad, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(got["queue"][0], want["queue"][0], rtol=0, atol=0)
            assert torch.equal(got["queue"][1], want["queue"][1]) and got["queue"][2] == want["queue"][2]
