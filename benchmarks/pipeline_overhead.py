"""Overhead of ltcl's training pipeline over the bare model forward/backward, on CIFAR-10-LT (IF100, ResNet-32).

Both measurements train the same network with the same optimiser on the same batch shapes (B images x 4 views
at 32 px), in the same process, one after the other:

- full: the real training step of ``ltcl train`` — DataLoader workers decode nothing (images are in memory) but
  augment 4 views per image (AutoAugment + Cutout, SimCLR), the distribution-aware collate, then the trainer's
  own ``multiview_objective`` (forward per view size, Balanced Softmax + ACL with centres and weights), backward,
  SGD step and one loss read-back per step;
- bare: forward, cross-entropy, backward and SGD step on tensors that are already batched in memory.

Overhead = bare images/s / full images/s - 1. Prints a Markdown table.

    python benchmarks/pipeline_overhead.py --data ../shared/data/cifar10_jpeg.npz --steps 30
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import torch.nn.functional as F

from ltcl.config import load_config
from ltcl.data.build import build_data
from ltcl.data.views import MultiViewBatch
from ltcl.engine.distributed import DistributedContext
from ltcl.engine.objective import Objective
from ltcl.engine.runtime import keep_freed_memory
from ltcl.engine.trainer import MultiViewForward, build_model, make_loaders, multiview_objective

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def full_pipeline(cfg, data, steps, warmup):
    ctx = DistributedContext(0, 1, 0, torch.device("cpu"))
    sampler, loader, _, _ = make_loaders(cfg, data, ctx)
    model = build_model(cfg, data.num_classes, ctx)
    forward = MultiViewForward(model)
    objective = Objective(cfg.loss, data.train_counts, cfg.model.projection_dim)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    sampler.set_epoch(0)
    batches = iter(loader)
    images, start, kept = 0, None, []
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        batch: MultiViewBatch = next(batches)
        if step < 2:
            kept.append(batch)
        loss = multiview_objective(forward, objective, batch, True)[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # the trainer syncs for its running metrics too
        if step >= warmup:
            images += batch.batch_size
    return images / (time.perf_counter() - start), kept


def bare_model(cfg, data, batches, steps, warmup):
    ctx = DistributedContext(0, 1, 0, torch.device("cpu"))
    model = build_model(cfg, data.num_classes, ctx)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images, start = 0, None
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        batch = batches[step % len(batches)]
        loss = 0.0
        for group in batch.groups:
            out = model(group, with_projection=True)
            loss = loss + F.cross_entropy(out.logits, batch.labels.repeat(group.shape[0] // batch.batch_size))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
        if step >= warmup:
            images += batch.batch_size
    return images / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data", "cifar10_jpeg.npz"))
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "cifar10_lt_if100_acl.yaml"))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    cfg = load_config(args.config, [f"data.root={args.data}", f"data.batch_size={args.batch_size}",
                                    f"data.num_workers={args.workers}", "train.progress=false"])
    data = build_data(cfg, splits=("train",))
    keep_freed_memory()  # as `ltcl train` does on the CPU
    torch.manual_seed(0)
    full, kept = full_pipeline(cfg, data, args.steps, args.warmup)
    bare = bare_model(cfg, data, kept, args.steps, args.warmup)
    print(f"torch {torch.__version__}, {platform.processor() or 'CPU'}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} threads, {args.workers} loader worker(s), batch {args.batch_size} x 4 views, "
          f"{args.steps} timed steps\n")
    print("| pipeline | images/s | views/s | overhead |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| bare model forward/backward/step | {bare:.1f} | {4 * bare:.0f} | |")
    print(f"| full ltcl training step | {full:.1f} | {4 * full:.0f} | {100 * (bare / full - 1):.1f}% |")


if __name__ == "__main__":
    main()
