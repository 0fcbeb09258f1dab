"""Distributed primitives on the ground floor: losses, data and engine all import them (this imports no ltcl).

Every function is a no-op for a single process. Gathering with gradient (docs/conventions.md, "Engineering
rules"): a plain ``all_gather`` cuts the graph, so the other ranks' rows arrive as constants and their gradients
never go back.
:class:`_GatherWithGradient` all-gathers in the forward pass and, in the backward pass, sums every rank's gradient
for each row and hands each rank the gradient of its own rows. (The deprecated
``torch.distributed.nn.functional.all_gather`` does the same but was seen to abort processes at teardown.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def distributed_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when torch.distributed is not initialised."""
    if is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sums ``tensor`` over processes in place (no-op for a single process) and returns it."""
    if is_initialized():
        dist.all_reduce(tensor)
    return tensor


def barrier() -> None:
    if is_initialized():
        dist.barrier()


class _GatherWithGradient(torch.autograd.Function):
    """All-gathers rows of unequal counts (padded to the largest, then trimmed), keeping the gradient path."""

    @staticmethod
    def forward(ctx, tensor: Tensor, sizes: list[int]) -> Tensor:
        rank = dist.get_rank()
        largest = max(sizes)
        padded = tensor.new_zeros((largest, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        ctx.rank, ctx.sizes = rank, sizes
        return torch.cat([part[:n] for part, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss may depend on every row: sum their gradients
        begin = sum(ctx.sizes[: ctx.rank])
        return grad[begin : begin + ctx.sizes[ctx.rank]], None


def gather_rows(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, slice]:
    """All-gathers the rows of every rank, keeping the gradient path to this rank's features.

    Ranks may hold different numbers of rows (distribution-aware views select a different count on each rank).

    Args:
        features: (n_r, D) this rank's rows; labels: (n_r,) their labels.

    Returns:
        (sum_r n_r, D) features and labels of all ranks in rank order, and the slice of this rank's rows.
    """
    rank, world = distributed_world()
    if world == 1:
        return features, labels, slice(0, features.shape[0])
    counts = [torch.zeros(1, dtype=torch.int64, device=labels.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([labels.shape[0]], dtype=torch.int64, device=labels.device))
    sizes = [int(c) for c in counts]
    all_features = _GatherWithGradient.apply(features, sizes)
    largest = max(sizes)
    padded = labels.new_full((largest,), -1)
    padded[: labels.shape[0]] = labels
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    all_labels = torch.cat([part[:n] for part, n in zip(parts, sizes)])
    begin = sum(sizes[:rank])
    return all_features, all_labels, slice(begin, begin + sizes[rank])


def global_mean(per_anchor: Tensor, has_positive: Tensor) -> Tensor:
    """Mean of this rank's per-anchor losses in the global-batch sense, ready for DDP.

    Single process: the plain mean over anchors with a positive term. Under ``torch.distributed`` the returned
    value equals the global-batch loss on every rank, and its gradient is ``world_size`` times this rank's share
    ``sum_own L_i / n_global``: DDP averages parameter gradients over ranks, so after that average the parameters
    receive exactly the gradient of the global-batch loss.

    Args:
        per_anchor: (A,) this rank's per-anchor losses (0 where no positive); has_positive: (A,) bool.
    """
    rank, world = distributed_world()
    local_sum = per_anchor.sum()
    local_count = has_positive.sum()
    if world == 1:
        return local_sum / local_count.clamp(min=1)
    totals = torch.stack([local_sum.detach().to(torch.float64), local_count.to(torch.float64)])
    dist.all_reduce(totals)
    global_count = totals[1].clamp(min=1)
    share = local_sum * (world / global_count).to(local_sum.dtype)
    value = (totals[0] / global_count).to(local_sum.dtype)
    return share + (value - share).detach()


def gather_equal_rows(tensor: Tensor) -> Tensor:
    """All-gathers a tensor of the same shape on every rank, in rank order, without gradient (a queue's keys and
    labels, a method's batch statistics); returns ``tensor`` itself for a single process.

    Args:
        tensor: (n, ...) this rank's rows, the same n on every rank.

    Returns:
        (world * n, ...) the rows of all ranks.
    """
    if not is_initialized():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)
