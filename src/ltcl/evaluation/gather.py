"""A split's logits and labels under torchrun, every image exactly once, in dataset order.

No padded sampler (docs/conventions.md, "Engineering rules"): process r scores the images ``r, r + W, r + 2W, ...``
(:class:`ltcl.data.sampling.ShardSampler`), shards of unequal sizes when W does not divide the split; the shards
are all-gathered (padded to the largest for the collective, then trimmed) and interleaved back, so that every
process holds the whole split in dataset order, as one process would have scored it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader

from ltcl.data.sampling import ShardSampler
from ltcl.dist import distributed_world
from ltcl.engine.evaluate import NonFiniteOutput, predict


def gather_in_dataset_order(rows: Tensor, total: int, device: torch.device) -> Tensor:
    """This process's rows of a :class:`ShardSampler` shard to the (total, ...) rows of every process, in dataset
    order (``rows`` itself for one process)."""
    rank, world = distributed_world()
    if world == 1:
        return rows
    sizes = [len(range(r, total, world)) for r in range(world)]
    if rows.shape[0] != sizes[rank]:
        raise RuntimeError(f"process {rank} scored {rows.shape[0]} images, its shard has {sizes[rank]}")
    padded = rows.new_zeros((max(sizes), *rows.shape[1:]), device=device)
    padded[: rows.shape[0]] = rows.to(device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = rows.new_empty((total, *rows.shape[1:]))
    for r, (part, n) in enumerate(zip(parts, sizes)):
        out[r::world] = part[:n].to(out.device)
    return out


def predict_dataset(
    model,
    dataset,
    device: torch.device,
    *,
    batch_size: int,
    amp: str = "none",
    channels_last: bool = False,
    loader_options: dict | None = None,
) -> tuple[Tensor, Tensor]:
    """(N, C) float32 logits and (N,) int64 labels of every image of ``dataset``, on the CPU, in dataset order.

    Raises:
        NonFiniteOutput: the logits hold NaN or inf (no report of a broken model).
    """
    rank, world = distributed_world()
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), rank, world), **(loader_options or {})
    )
    logits, labels, _ = predict(model, loader, device, amp=amp, channels_last=channels_last)
    # nccl gathers device tensors; gloo CPU ones
    gather_device = device if dist.is_initialized() and dist.get_backend() == "nccl" else torch.device("cpu")
    logits = gather_in_dataset_order(logits, len(dataset), gather_device)
    labels = gather_in_dataset_order(labels.long(), len(dataset), gather_device)
    if not bool(torch.isfinite(logits).all()):
        raise NonFiniteOutput(
            "The model's logits contain NaN or inf values, so no report is made: its weights are broken (a "
            "diverged run)."
        )
    return logits, labels
