"""Forward+backward time and peak memory of the contrastive losses at the paper's shapes.

Compared in the same run, on the same inputs:
- ACL (ours, centres and inverse-frequency weights on),
- SupCon (ours),
- a plain SupContrast-style SupCon written here (full N x N logits, max subtraction, masks, mean log-probability
  over positives; the shape of the best-known public implementation),
- the floor: the bare matmul ``z @ [z; centres]^T`` forward and backward.

Prints a Markdown table with ratios against SupContrast-style SupCon and against the floor.

    python benchmarks/loss_speed.py            # CPU here, CUDA when present
    python benchmarks/loss_speed.py --device cpu --repeats 50
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from ltcl.losses import functional as LF

SHAPES = [  # (name, N views in the loss, D, C)
    ("CIFAR-100-LT", 384, 32, 100),
    ("ImageNet-LT", 384, 1024, 1000),
    ("iNaturalist", 512, 1024, 8142),
    ("N=2048", 2048, 128, 1000),
]


def supcontrast_style(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon as the widely copied reference writes it (single-view layout, 'all' contrast mode)."""
    mask = torch.eq(labels[:, None], labels[None, :]).float()
    logits = features @ features.T / temperature
    logits_max, _ = torch.max(logits, dim=1, keepdim=True)
    logits = logits - logits_max.detach()
    n = features.shape[0]
    logits_mask = torch.scatter(torch.ones_like(mask), 1, torch.arange(n, device=features.device)[:, None], 0)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    positives = mask.sum(1)
    mean_log_prob_pos = (mask * log_prob).sum(1) / positives.clamp(min=1)
    return -(mean_log_prob_pos[positives > 0]).mean()


def make_inputs(n, d, c, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Long-tailed labels: class j drawn with probability ~ 1/(j+1), so batches hold singletons and big classes.
    probs = 1.0 / torch.arange(1, c + 1, dtype=torch.float64)
    labels = torch.multinomial(probs / probs.sum(), n, replacement=True, generator=g)
    features = F.normalize(torch.randn(n, d, generator=g), dim=1)
    centers = F.normalize(torch.randn(c, d, generator=g), dim=1)
    counts = torch.randint(2, 1000, (c,), generator=g).double()
    weights = ((counts.sum() / c) / counts).float()
    return features.to(device), labels.to(device), centers.to(device), weights.to(device)


def methods(labels, centers, weights, tau):
    return {
        "ACL (ours, centres + weights)": lambda z: LF.aligned_contrastive_loss(
            z, labels, temperature=tau, centers=centers, negative_weights=weights
        ),
        "SupCon (ours)": lambda z: LF.supervised_contrastive_loss(z, labels, temperature=tau),
        "SupCon (SupContrast-style)": lambda z: supcontrast_style(z, labels, tau),
        "matmul floor": lambda z: (z @ torch.cat([z, centers]).T).sum(),
    }


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_all(table, base, device, repeats, warmup=3):
    """Median forward+backward seconds of each method; the methods take turns, so that a slow phase of the
    machine affects all of them alike."""

    def step(fn):
        z = base.clone().requires_grad_()
        fn(z).backward()

    for fn in table.values():
        for _ in range(warmup):
            step(fn)
    times = {name: [] for name in table}
    for _ in range(repeats):
        for name, fn in table.items():
            sync(device)
            start = time.perf_counter()
            step(fn)
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def peak_memory_mb(fn, base, device):
    """Peak bytes allocated during one forward+backward, beyond what existed before."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        z = base.clone().requires_grad_()
        fn(z).backward()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - start) / 2**20
    # CPU: replay the profiler's allocation and free events in time order.
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        z = base.clone().requires_grad_()
        fn(z).backward()
    # Each event's self allocations (frees show up as negative "[memory]" events), replayed in start order.
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.profiler.function_events)
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--shapes", nargs="*", default=[s[0] for s in SHAPES], help="subset of shape names")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_grad_enabled(True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    print(
        f"torch {torch.__version__}, device {device} ({name}), threads {torch.get_num_threads()}, "
        f"median of {args.repeats}, tau {args.temperature}\n"
    )
    print("| shape | N | D | C | loss | fwd+bwd ms | peak MiB | x SupContrast-style | x matmul floor |")
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for shape, n, d, c in SHAPES:
        if shape not in args.shapes:
            continue
        base, labels, centers, weights = make_inputs(n, d, c, device)
        table = methods(labels, centers, weights, args.temperature)
        seconds = time_all(table, base, device, args.repeats)
        results = {k: (seconds[k], peak_memory_mb(fn, base, device)) for k, fn in table.items()}
        reference = results["SupCon (SupContrast-style)"][0]
        floor = results["matmul floor"][0]
        for method, (seconds, mib) in results.items():
            print(
                f"| {shape} | {n} | {d} | {c} | {method} | {seconds * 1e3:.2f} | {mib:.1f} | "
                f"{seconds / reference:.2f} | {seconds / floor:.2f} |"
            )


if __name__ == "__main__":
    main()
