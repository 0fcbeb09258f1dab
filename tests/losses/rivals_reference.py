"""Slow float64 references of the rival losses, written from the papers' equations with one Python loop per sum,
plus the 2-process gloo harness shared by the GPaCo and BCL distributed tests.

The references share nothing with ``ltcl.losses`` but the inputs; autograd through the loops gives the reference
gradients.
"""

import math
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from tests.losses.test_distributed import global_batches  # the same batches: unequal rows per rank

# ------------------------------------------------------------------------------------------------------------
# References


def gpaco_reference(z, y, logits, counts, *, alpha, beta, gamma, tau, smooth=0.0, queue=None, queue_labels=None):
    """GPaCo: centre logits ``l_ij + log prior_j`` and sample similarities share one softmax; the own-class centre
    is a positive weighted beta (spread as ``1 - smooth`` on the own class and ``smooth / (C - 1)`` on each other
    class), each sample positive alpha; the sample terms of the denominator gamma; the weighted log-likelihood is
    divided by the sum of the weights. The queue's keys are extra sample rows (positives and denominator terms) that
    are never anchors; a key labelled -1 is an empty slot and left out. Mean over anchors whose weights sum to > 0."""
    n, num_classes = z.shape[0], logits.shape[1]
    rows = [z[k] for k in range(n)]
    labels = [int(v) for v in y]
    if queue is not None:
        for key, label in zip(queue, queue_labels):
            if int(label) >= 0:
                rows.append(key)
                labels.append(int(label))
    total_count = sum(counts)
    total, anchors = z.sum() * 0.0, 0
    for i in range(n):
        centre = [logits[i, j] + math.log(counts[j] / total_count) for j in range(num_classes)]
        sample = {k: torch.dot(z[i], rows[k]) / tau for k in range(len(rows)) if k != i}
        denominator = sum(torch.exp(a) for a in centre) + gamma * sum(torch.exp(s) for s in sample.values())
        positives = [k for k in sample if labels[k] == labels[i]]
        weight_sum = beta + alpha * len(positives)
        if weight_sum == 0:
            continue
        log_likelihood = z.sum() * 0.0
        for j in range(num_classes):
            c = 1.0 - smooth if j == labels[i] else smooth / (num_classes - 1)
            log_likelihood = log_likelihood + beta * c * torch.log(torch.exp(centre[j]) / denominator)
        for p in positives:
            log_likelihood = log_likelihood + alpha * torch.log(torch.exp(sample[p]) / denominator)
        total = total - log_likelihood / weight_sum
        anchors += 1
    return total / max(anchors, 1)


def bcl_reference(z, y, prototypes, tau):
    """BCL: the contrast rows are the samples and one prototype per class; in the denominator each class's terms
    (the anchor itself excluded) are averaged over their number; positives are the other rows of the anchor's class,
    its prototype included. Mean over the sample anchors."""
    rows = [z[k] for k in range(z.shape[0])] + [prototypes[j] for j in range(prototypes.shape[0])]
    row_labels = [int(v) for v in y] + list(range(prototypes.shape[0]))
    total = z.sum() * 0.0
    for i in range(z.shape[0]):
        members = {}
        for k, label in enumerate(row_labels):
            if k != i:
                members.setdefault(label, []).append(k)
        denominator = sum(
            sum(torch.exp(torch.dot(z[i], rows[k]) / tau) for k in ks) / len(ks) for ks in members.values()
        )
        positives = members[row_labels[i]]
        term = z.sum() * 0.0
        for p in positives:
            term = term - torch.log(torch.exp(torch.dot(z[i], rows[p]) / tau) / denominator)
        total = total + term / len(positives)
    return total / z.shape[0]


def ldam_margin_reference(counts, max_margin):
    raw = [1.0 / n**0.25 for n in counts]
    return [max_margin * r / max(raw) for r in raw]


def drw_weight_reference(counts, beta):
    raw = [(1.0 - beta) / (1.0 - beta**n) for n in counts]
    return [w * len(counts) / sum(raw) for w in raw]


def ldam_reference(u, y, counts, *, max_margin, scale, weights=None):
    """LDAM (Eq. 13 of Cao et al.): the true class's cosine logit loses its margin, all logits times s, softmax
    cross-entropy; with class weights, the weighted mean ``sum w_y L / sum w_y``."""
    margins = ldam_margin_reference(counts, max_margin)
    total, weight_total = u.sum() * 0.0, 0.0
    for i in range(u.shape[0]):
        target = int(y[i])
        shifted = [scale * (u[i, j] - (margins[j] if j == target else 0.0)) for j in range(u.shape[1])]
        loss = -torch.log(torch.exp(shifted[target]) / sum(torch.exp(v) for v in shifted))
        w = 1.0 if weights is None else weights[target]
        total, weight_total = total + w * loss, weight_total + w
    return total / weight_total


# ------------------------------------------------------------------------------------------------------------
# A real 2-process gloo run: each rank holds half of the global batch (ranks keep different numbers of rows).

WORLD = 2
COUNTS = [50, 20, 8, 3]
IN_DIM, HIDDEN, OUT_DIM, PER_RANK = 5, 6, 4, 6
QUEUE = 16  # GPaCo's queue: 12 keys per step, so the pointer wraps in the second step


class TinyNet(nn.Module):
    """Encoder, projection, linear classifier and (for BCL) the prototype head, in float64."""

    def __init__(self, with_prototypes):
        super().__init__()
        from ltcl.losses.bcl import BCLPrototypeHead

        self.encoder = nn.Linear(IN_DIM, HIDDEN)
        self.projection = nn.Linear(HIDDEN, OUT_DIM)
        self.classifier = nn.Linear(HIDDEN, len(COUNTS))
        self.prototype_head = BCLPrototypeHead(HIDDEN, HIDDEN, OUT_DIM) if with_prototypes else None

    def forward(self, x):
        h = torch.tanh(self.encoder(x))
        prototypes = None if self.prototype_head is None else self.prototype_head(self.classifier.weight)
        return F.normalize(self.projection(h), dim=1), self.classifier(h), prototypes


def make_model(name):
    torch.manual_seed(7)
    return TinyNet(with_prototypes=name == "bcl").double()


def make_loss(name, gather):
    from ltcl.losses.bcl import BalancedContrastiveLoss
    from ltcl.losses.gpaco import GPaCoLoss

    if name == "gpaco":
        return GPaCoLoss(COUNTS, alpha=0.3, beta=1.0, gamma=0.7, temperature=0.2, queue_size=QUEUE, key_dim=OUT_DIM,
                         queue_start="random", seed=5, gather_distributed=gather).double()  # fmt: skip
    return BalancedContrastiveLoss(len(COUNTS), 0.2, gather_distributed=gather)


def batches_of(name):
    return global_batches(3 if name == "gpaco" else 2)


def run_steps(name, model, loss_fn, batches, rows):
    """Per step: loss, gradients of the features and logits of rows ``rows``, and the parameters' gradients; for
    GPaCo the step then enqueues every row's projection (the global batch under DDP) and records the queue."""
    records = []
    for x, y, keep in batches:
        z, logits, prototypes = model(x[rows])
        z.retain_grad()
        logits.retain_grad()
        k = keep[rows]
        if name == "gpaco":
            loss = loss_fn(z[k], y[rows][k], logits[k])
        else:
            loss = loss_fn(z[k], y[rows][k], prototypes) + 0.0 * logits.sum()  # the classifier is used either way
        loss.backward()
        params = {key.removeprefix("module."): p.grad.clone() for key, p in model.named_parameters()}
        records.append(
            {"loss": loss.item(), "z_grad": z.grad.clone(), "logit_grad": logits.grad.clone(), "params": params}
        )
        if name == "gpaco":
            loss_fn.enqueue(z.detach(), y[rows])
            records[-1]["queue"] = {k: v.clone() for k, v in loss_fn.queue.state_dict().items()}
        model.zero_grad()
    return records


def distributed_worker(rank, name, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = nn.parallel.DistributedDataParallel(make_model(name))
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        records = run_steps(name, model, make_loss(name, gather=True), batches_of(name), rows)
        torch.save({"records": records}, os.path.join(out_dir, f"rank{rank}.pt"))
        del model  # DDP holds the group: drop it, then tear down together (see tests/losses/test_distributed.py)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def check_two_processes_equal_one(name, tmp_path):
    """Spawns the gloo run and compares it with one process on the global batch: the same loss on every rank,
    feature and logit gradients ``WORLD`` times the single-process ones (``ltcl.dist.global_mean``: DDP averages),
    after DDP's average the single-process parameter gradients, and (GPaCo) bit-identical queues."""
    import pytest
    import torch.multiprocessing as mp

    mp.spawn(distributed_worker, args=(name, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    single = run_steps(name, make_model(name), make_loss(name, gather=False), batches_of(name), slice(None))
    for step, want in enumerate(single):
        for rank, result in enumerate(ranks):
            got = result["records"][step]
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-9)
            rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
            torch.testing.assert_close(got["z_grad"], WORLD * want["z_grad"][rows], rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(got["logit_grad"], WORLD * want["logit_grad"][rows], rtol=1e-9, atol=1e-12)
            assert got["params"].keys() == want["params"].keys()
            for key, grad in want["params"].items():
                torch.testing.assert_close(got["params"][key], grad, rtol=1e-9, atol=1e-12)
            for key, value in want.get("queue", {}).items():  # every rank's queue is rank 0's, and one process's
                assert torch.equal(got["queue"][key], ranks[0]["records"][step]["queue"][key]), (step, rank, key)
                torch.testing.assert_close(got["queue"][key], value, rtol=1e-12, atol=1e-15)
