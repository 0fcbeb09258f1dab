"""The 2-process gloo run of LADE's regulariser, apart from tests/methods/test_rebalancing.py so that the spawned
processes import only torch and the loss (the test module imports the engine)."""

import os

import torch
import torch.distributed as dist
from torch import nn

from ltcl.losses.lade import LADELoss

COUNTS = (50, 20, 8, 3)
WORLD, PER_RANK, IN_DIM = 2, 6, 5


def make_model():
    torch.manual_seed(3)
    return nn.Linear(IN_DIM, len(COUNTS)).double()


def make_loss(gather):
    return LADELoss(COUNTS, alpha=0.5, remine_lambda=0.2, gather_distributed=gather)


def worker(rank, rendezvous, out_dir, batches):
    """Each rank trains on its rows of every global batch and saves its parameter gradients after DDP's mean."""
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    try:
        model, loss_fn = make_model(), make_loss(gather=True)
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        records = []
        for x, y in batches:
            model.zero_grad()
            loss_fn(model(x[rows]), y[rows]).backward()
            for p in model.parameters():  # what DDP does: the mean of the ranks' gradients
                dist.all_reduce(p.grad)
                p.grad /= WORLD
            records.append({k: p.grad.clone() for k, p in model.named_parameters()})
        torch.save(records, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
