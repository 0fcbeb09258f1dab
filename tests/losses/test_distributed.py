"""A real 2-process torch.distributed (gloo) run of the contrastive losses with gather_distributed=True.

Each rank holds half of a global batch. Against one process on the concatenated batch:
- the loss value is the same on every rank;
- the gradient w.r.t. a rank's own features is world_size times the single-process one (DDP then averages);
- ranks may contribute different numbers of rows;
- after DDP's averaging, the parameters' gradients equal the single-process gradients exactly;
- ACL's centres are identical on both ranks and equal to the single-process centres.
"""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from ltcl.losses import AlignedContrastiveLoss, SupConLoss

WORLD = 2
COUNTS = [50, 20, 8, 3]
IN_DIM, OUT_DIM, PER_RANK = 5, 4, 6


def global_batches(steps=2):
    g = torch.Generator().manual_seed(123)
    batches = []
    for _ in range(steps):
        x = torch.randn(WORLD * PER_RANK, IN_DIM, generator=g, dtype=torch.float64)
        y = torch.randint(0, len(COUNTS), (WORLD * PER_RANK,), generator=g)
        y[-1] = 3  # a class with a single row in the global batch
        # Rows that enter the loss differ in number between ranks (as with distribution-aware views).
        keep = torch.ones(WORLD * PER_RANK, dtype=torch.bool)
        keep[[1, 4, PER_RANK + 2]] = False
        batches.append((x, y, keep))
    return batches


def make_model():
    torch.manual_seed(7)
    return nn.Linear(IN_DIM, OUT_DIM).double()  # float64: the comparison is not blurred by summation order


def make_loss(name, gather):
    if name == "acl":
        return AlignedContrastiveLoss(COUNTS, OUT_DIM, temperature=0.2, gather_distributed=gather)
    return SupConLoss(0.2, gather_distributed=gather)


def run_steps(model, loss_fn, batches, rows):
    """Runs the steps on rows ``rows`` of each batch; returns per-step loss, feature grad, parameter grads."""
    records = []
    for x, y, keep in batches:
        z = F.normalize(model(x[rows]), dim=1)
        z.retain_grad()
        loss = loss_fn(z[keep[rows]], y[rows][keep[rows]])
        loss.backward()
        params = {k: p.grad.clone() for k, p in model.named_parameters()}
        records.append({"loss": loss.item(), "z_grad": z.grad.clone(), "params": params})
        model.zero_grad()
    return records


def _worker(rank, name, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = nn.parallel.DistributedDataParallel(make_model())
        loss_fn = make_loss(name, gather=True)
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        records = run_steps(model, loss_fn, global_batches(), rows)
        for r in records:
            r["params"] = {k.removeprefix("module."): v for k, v in r["params"].items()}
        state = {k: v.clone() for k, v in loss_fn.state_dict().items()}
        torch.save({"records": records, "state": state}, os.path.join(out_dir, f"rank{rank}.pt"))
        # Tear down together: a rank that closes its gloo connections while the other still uses them can make
        # the other abort ("terminate called without an active exception"). DDP holds the group, so drop it first.
        del model
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", ["acl", "scl"])
def test_two_process_gather_equals_one_process_on_the_global_batch(name, tmp_path):
    mp.spawn(_worker, args=(name, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    single_loss = make_loss(name, gather=False)
    single = run_steps(make_model(), single_loss, global_batches(), slice(None))

    for step, want in enumerate(single):
        for rank, result in enumerate(ranks):
            got = result["records"][step]
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-9)
            rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
            torch.testing.assert_close(got["z_grad"], WORLD * want["z_grad"][rows], rtol=1e-9, atol=1e-12)
            for key, grad in want["params"].items():
                torch.testing.assert_close(got["params"][key], grad, rtol=1e-9, atol=1e-12)

    if name == "acl":
        for result in ranks:
            assert torch.equal(result["state"]["centers"], ranks[0]["state"]["centers"])  # identical on ranks
            torch.testing.assert_close(result["state"]["centers"], single_loss.centers, rtol=1e-9, atol=1e-12)
            assert torch.equal(result["state"]["centers_initialized"], single_loss.centers_initialized)
