"""The full training step of a config against the bare model step on the same number of views, side by side.

- full: what ``ltcl train`` runs per step with the config as it is (its precision, memory format, augmentation
  path and objective): the next batch of the training loader (augmenting 4 views per image, on the device or in
  loader workers), ``ltcl.engine.loop.training_step`` (forward per view size, objective, backward, SGD) and the
  step monitor;
- bare: ResNet-32 forward, cross-entropy, backward and SGD on one fixed tensor of as many 32-px views, under bf16
  autocast with channels_last (the fastest plain step on this CPU), nothing else.

The two are timed in alternating blocks in one process, so that a load on the machine affects both alike; each
prints its median block. Ratio = full views/s / bare views/s (1.0: the pipeline costs nothing). Prints a table.

    python benchmarks/pipeline_overhead.py --data ../shared/data/cifar10_jpeg.npz
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from ltcl.config import load_config
from ltcl.data.build import build_data
from ltcl.engine.distributed import DistributedContext
from ltcl.engine.loop import training_step
from ltcl.engine.recipe import build_train_state, model_views, train_batches
from ltcl.engine.runtime import keep_freed_memory
from ltcl.models import build_network

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FullStep:
    """The configured training step, batch after batch of epoch 0."""

    def __init__(self, cfg, data, ctx):
        self.state, _, self.amp = build_train_state(cfg, data, ctx)
        self.loader = train_batches(cfg, model_views(cfg), data, ctx)
        self.sampler = self.loader
        self.sampler.set_epoch(0)
        self.batches = iter(self.loader)
        self.views = 0

    def step(self) -> int:
        try:
            batch = next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            batch = next(self.batches)
        training_step(self.state, *batch)
        self.state.global_step += 1
        return sum(g.shape[0] for g in batch[0].groups)


class BareStep:
    """ResNet-32 forward/backward/SGD on a fixed batch, bf16 autocast, channels_last."""

    def __init__(self, cfg, num_classes: int, views: int):
        self.model = build_network(cfg.model, num_classes).to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.images = torch.randn(views, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        self.labels = torch.randint(0, num_classes, (views,))

    def step(self) -> int:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = self.model(self.images, with_projection=False).logits
            loss = F.cross_entropy(logits.float(), self.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return self.images.shape[0]


def views_per_second(step, count: int) -> float:
    start, views = time.perf_counter(), 0
    for _ in range(count):
        views += step()
    return views / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data", "cifar10_jpeg.npz"))
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "cifar10_lt_if100_acl.yaml"))
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides, e.g. --set data.augment_on=loader",
    )
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=5, help="alternating blocks of each")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    cfg = load_config(args.config, [f"data.root={args.data}", "train.progress=false", *args.overrides])
    data = build_data(cfg, splits=("train",))
    keep_freed_memory()  # as `ltcl train` does on the CPU
    torch.manual_seed(0)
    ctx = DistributedContext(0, 1, 0, torch.device("cpu"))
    full = FullStep(cfg, data, ctx)
    bare = BareStep(cfg, data.num_classes, cfg.data.batch_size * cfg.views.num_views)
    for step in (full.step, bare.step):
        views_per_second(step, args.warmup)
    full_rates, bare_rates = [], []
    for _ in range(args.rounds):
        full_rates.append(views_per_second(full.step, args.steps))
        bare_rates.append(views_per_second(bare.step, args.steps))
    full_rate, bare_rate = statistics.median(full_rates), statistics.median(bare_rates)
    print(
        f"torch {torch.__version__}, {platform.processor() or 'CPU'}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} threads; {args.config} (amp {full.amp[0]}, channels_last "
        f"{cfg.train.channels_last}, augment_on {cfg.data.augment_on}), batch {cfg.data.batch_size} x "
        f"{cfg.views.num_views} views; {args.rounds} alternating blocks of {args.steps} steps, medians\n"
    )
    print("| step | views/s | ratio to bare |")
    print("| --- | ---: | ---: |")
    print(f"| bare ResNet-32 forward/backward/SGD, bf16 autocast, channels_last | {bare_rate:.0f} | 1.00 |")
    print(f"| full ltcl training step, the config as it is | {full_rate:.0f} | {full_rate / bare_rate:.2f} |")


if __name__ == "__main__":
    main()
