"""GML's class-partitioned key queue (:class:`ClassQueue`) and its per-class segments (:func:`queue_segments`); the
loss that reads it is :class:`ltcl.losses.gml.GMLLoss`.

The queue (:class:`ClassQueue`) is split into one ring buffer per class: class c gets ``base_k`` slots plus its
prior's share of the others, ``end_c = ceil((c + 1) base_k + (K - C base_k) sum_{c' <= c} pi_c')``; a step writes,
for each class, the first ``|segment|`` rows of the global batch at the class's pointer. Before any real key it
holds random unit vectors, already labelled by segment, so every class has keys from the first step. The queue
holds backbone features; the key head maps the whole queue to keys at every step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltcl.losses.validation import check_class_counts, check_labels


def queue_segments(class_counts: Sequence[int] | Tensor, size: int, base_k: int) -> tuple[Tensor, Tensor]:
    """(starts, sizes) of the per-class segments of a queue of ``size`` slots (module docstring): class c gets
    ``base_k`` slots plus its prior's share of the remaining ``size - C * base_k``.

    Raises:
        ValueError: ``base_k < 1`` or a queue smaller than ``C * base_k``.
    """
    counts = check_class_counts(class_counts)
    num_classes = counts.numel()
    if not isinstance(base_k, int) or base_k < 1:
        raise ValueError(f"base_k (keys per class at least) must be an integer >= 1, got {base_k!r}.")
    if not isinstance(size, int) or size < num_classes * base_k:
        raise ValueError(
            f"The queue of {size} keys cannot give each of the {num_classes} classes {base_k} keys: it needs at "
            f"least {num_classes * base_k}."
        )
    prior = counts / counts.sum()
    position = torch.arange(1, num_classes + 1, dtype=torch.float64) * base_k
    position = position + (size - num_classes * base_k) * prior.cumsum(0)
    ends = position.ceil().long().clamp(max=size)
    ends[-1] = size
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])
    return starts, ends - starts


class ClassQueue(nn.Module):
    """The class-partitioned queue of GML's keys (module docstring): per-class ring buffers of key features.

    Args:
        class_counts: (C,) training images per class (the segments follow their prior).
        size: K, slots in all.
        base_k: slots every class gets at least.
        dim: size of the queued features.
        seed: of the random unit vectors the queue starts with (a local generator: the global one is untouched).

    Buffers (all checkpointed): ``labels`` (K,) the class of each slot (fixed), ``starts`` / ``sizes`` (C,) the
    segments, ``pointers`` (C,) each class's next slot, ``seen`` the rows enqueued so far, and ``slots`` (K + 1, D)
    and ``slot_ids`` (K + 1,), the features and the row number of every slot (-1: still random), plus one spare
    row that takes the writes of the rows a segment has no room for (so that a step never waits for the device).
    """

    def __init__(self, class_counts: Sequence[int] | Tensor, size: int, base_k: int, dim: int, seed: int = 0) -> None:
        super().__init__()
        starts, sizes = queue_segments(class_counts, size, base_k)
        if dim < 1:
            raise ValueError(f"The queued features need a positive size, got {dim}.")
        self.size, self.num_classes = size, sizes.numel()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("slots", F.normalize(torch.randn(size + 1, dim, generator=generator), dim=1))
        self.register_buffer("slot_ids", torch.full((size + 1,), -1, dtype=torch.int64))
        self.register_buffer("labels", torch.repeat_interleave(torch.arange(self.num_classes), sizes))
        self.register_buffer("starts", starts)
        self.register_buffer("sizes", sizes)
        self.register_buffer("pointers", torch.zeros(self.num_classes, dtype=torch.int64))
        self.register_buffer("seen", torch.zeros((), dtype=torch.int64))

    @property
    def features(self) -> Tensor:
        """(K, D) the queued features."""
        return self.slots[: self.size]

    @property
    def ids(self) -> Tensor:
        """(K,) the row number each slot's key came from (-1: a random initial vector)."""
        return self.slot_ids[: self.size]

    def fill(self) -> Tensor:
        """Fraction of the slots that hold a real key (0-d float)."""
        return (self.ids >= 0).to(torch.float32).mean()

    @torch.no_grad()
    def enqueue(self, features: Tensor, labels: Tensor) -> Tensor:
        """Writes a (global) batch: for each class, its first ``sizes[c]`` rows, at the class's pointer.

        Args:
            features: (N, D) key features, every process's rows in rank order under torchrun.
            labels: (N,) int64.

        Returns:
            (N,) int64 row numbers given to the rows (unique over the run; a query's own key has its row's number).
        """
        check_labels(labels, features.shape[0], self.num_classes, sync=False)
        n = labels.shape[0]
        one_hot = F.one_hot(labels, self.num_classes)
        rank_in_class = (one_hot.cumsum(0) - 1).gather(1, labels[:, None]).squeeze(1)
        room = self.sizes[labels]
        kept = rank_in_class < room
        target = self.starts[labels] + (self.pointers[labels] + rank_in_class) % room
        target = torch.where(kept, target, torch.full_like(target, self.size))  # no room: the spare row
        ids = self.seen + torch.arange(n, device=labels.device)
        self.slots.index_copy_(0, target, features.to(self.slots.dtype))
        self.slot_ids.index_copy_(0, target, ids)
        self.slots[self.size].zero_()
        self.slot_ids[self.size] = -1
        written = torch.minimum(one_hot.sum(0), self.sizes)
        self.pointers.copy_((self.pointers + written) % self.sizes)
        self.seen.add_(n)
        return ids

    def extra_repr(self) -> str:
        return f"size={self.size}, num_classes={self.num_classes}, dim={self.slots.shape[1]}"
