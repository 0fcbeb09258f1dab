"""What GPaCo's queue start changes: the authors' random keys and labels against an empty, masked queue.

The authors' builder (GPaCo/LT/moco/builder.py) fills the queue with random unit-column keys and random labels, and
real keys replace them first in, first out: after ``K / B`` steps (K keys, B keys pushed per step, the global
batch) none is left. Until then every anchor meets random keys in its denominator and, for random labels equal to
its own, as positives. This script measures the first step, where the whole queue is random, at the authors'
sizes, on the same inputs for both starts:

- the loss value under each start, and its relative difference;
- the mean own-centre weight ``beta / (beta + alpha |P(i)|)`` under each start;
- the cosine between the two gradients with respect to the projections (1: the same direction).

The projections are drawn, not trained: isotropic unit vectors ("random", a network at its start) and unit vectors
around a direction per class ("clustered", within-class cosine about 0.5). Labels follow the long-tailed training
counts (``longtail_counts``, imbalance 100), logits are small random numbers. The paired 20-epoch CIFAR-10-LT runs
(``gpaco`` and ``gpaco_empty`` in ``cifar10_ablation.py``) measure what the start changes at the end of training.

    python benchmarks/gpaco_queue_start.py
    python benchmarks/gpaco_queue_start.py --trials 3 --sizes CIFAR-100-LT
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from ltcl.data.longtail import longtail_counts
from ltcl.losses.gpaco import GPaCoLoss

# name -> (classes C, queue K, key length D, batch B (keys pushed per step), alpha, temperature); the authors'
# scripts: CIFAR100_train.sh (--moco-k 1024, --moco-dim 32, alpha 0.01, --moco-t 0.05, batch 128) and
# paco_lt.py's defaults for ImageNet-LT X50 (--moco-k 8192, --moco-dim 128, alpha 0.05, --moco-t 0.2, batch 128)
SIZES = {
    "CIFAR-100-LT": (100, 1024, 32, 128, 0.01, 0.05),
    "ImageNet-LT": (1000, 8192, 128, 128, 0.05, 0.2),
}


def projections(labels: torch.Tensor, dim: int, regime: str, generator: torch.Generator) -> torch.Tensor:
    """(2B, D) unit projections of two views per image, isotropic or clustered around a direction per class."""
    noise = torch.randn(labels.numel(), dim, generator=generator, dtype=torch.float64)
    if regime == "random":
        return F.normalize(noise, dim=1)
    centres = F.normalize(torch.randn(int(labels.max()) + 1, dim, generator=generator, dtype=torch.float64), dim=1)
    return F.normalize(centres[labels] + noise / dim**0.5, dim=1)  # within-class cosine about 0.5


def first_step(size: str, regime: str, seed: int) -> dict[str, float]:
    """Loss, own-centre weight and projection gradient of the first step under both starts, on one draw."""
    classes, queue, dim, batch, alpha, temperature = SIZES[size]
    counts = torch.tensor(longtail_counts(classes, 500, 100.0), dtype=torch.float64)  # CIFAR-100-LT's IF 100 profile
    generator = torch.Generator().manual_seed(seed)
    images = torch.multinomial(counts / counts.sum(), batch, replacement=True, generator=generator)
    labels = torch.cat([images, images])  # two views per image, both anchors
    z = projections(labels, dim, regime, generator)
    logits = 0.01 * torch.randn(labels.numel(), classes, generator=generator, dtype=torch.float64)
    out, grads = {}, []
    for start in ("random", "empty"):
        loss_fn = GPaCoLoss(counts, alpha=alpha, temperature=temperature, queue_size=queue, key_dim=dim,
                            queue_start=start, seed=seed).double()  # fmt: skip
        leaf = z.clone().requires_grad_(True)
        loss = loss_fn(leaf, labels, logits)
        grads.append(torch.autograd.grad(loss, leaf)[0].flatten())
        out[f"loss_{start}"], out[f"weight_{start}"] = loss.item(), loss_fn.last_centre_weight.item()
    out["cosine"] = F.cosine_similarity(*grads, dim=0).item()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10, help="draws per size and regime (default 10)")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    args = parser.parse_args()
    print(f"GPaCo's first step, the authors' random queue start against an empty one; mean over {args.trials} draws")
    print()
    print("| size | projections | steps until no random key | loss, random start | loss, empty start | "
          "relative difference | own-centre weight, random / empty | gradient cosine |")  # fmt: skip
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for size in args.sizes:
        _, queue, _, batch, _, _ = SIZES[size]
        for regime in ("random", "clustered"):
            draws = [first_step(size, regime, seed) for seed in range(args.trials)]
            mean = {key: statistics.fmean(d[key] for d in draws) for key in draws[0]}
            relative = statistics.fmean((d["loss_random"] - d["loss_empty"]) / d["loss_empty"] for d in draws)
            print(f"| {size} | {regime} | {queue // batch} | {mean['loss_random']:.4f} | {mean['loss_empty']:.4f} | "
                  f"{100 * relative:+.1f}% | {mean['weight_random']:.3f} / {mean['weight_empty']:.3f} | "
                  f"{mean['cosine']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
