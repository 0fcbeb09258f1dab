"""The 2-process gloo run of ProCo's estimates, apart from tests/methods/test_proco.py so that the spawned processes
import only torch and the loss (the test module imports the engine)."""

import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ltcl.losses.proco import ProCoLoss

COUNTS = [40, 15, 6, 3, 2, 1]

WORLD, PER_RANK, IN_DIM, DIM = 2, 5, 6, 8


def global_batches():
    g = torch.Generator().manual_seed(3)
    out = []
    for epoch, labels in [(0, [0, 1, 1, 2, 0, 3, 1, 4, 0, 0]), (0, [2, 2, 1, 0, 0, 4, 4, 3, 1, 0]),
                          (1, [1, 1, 1, 1, 1, 0, 0, 2, 3, 3])]:  # fmt: skip
        out.append((epoch, torch.randn(2, WORLD * PER_RANK, IN_DIM, generator=g, dtype=torch.float64),
                    torch.tensor(labels)))  # fmt: skip
    return out


def run_steps(model, loss_fn, rows):
    records = []
    for epoch, x, y in global_batches():
        loss_fn.begin_epoch(epoch)
        z = F.normalize(model(x[:, rows].reshape(-1, IN_DIM)), dim=1)
        z.retain_grad()
        n = z.shape[0] // 2
        loss = (loss_fn(z[:n], y[rows]) + loss_fn(z[n:], y[rows])) / 2
        loss.backward()
        params = {k.removeprefix("module."): p.grad.clone() for k, p in model.named_parameters()}
        state = {k: v.clone() for k, v in loss_fn.state_dict().items()}
        records.append({"loss": loss.item(), "z_grad": z.grad.clone(), "params": params, "state": state})
        model.zero_grad()
    return records


def make_model():
    torch.manual_seed(5)
    return nn.Linear(IN_DIM, DIM).double()


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = nn.parallel.DistributedDataParallel(make_model())
        loss_fn = ProCoLoss(COUNTS, DIM, 0.2, gather_distributed=True)
        records = run_steps(model, loss_fn, slice(rank * PER_RANK, (rank + 1) * PER_RANK))
        torch.save(records, os.path.join(out_dir, f"rank{rank}.pt"))
        del model
        dist.barrier()
    finally:
        dist.destroy_process_group()
