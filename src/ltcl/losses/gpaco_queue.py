"""GPaCo's queue of past keys (:class:`GPaCoQueue`, MoCo's without the momentum encoder): its first contents
(:func:`initial_queue`, the authors' random start or an empty one whose slots are labelled ``EMPTY``) and the
checks of a queue passed to :func:`ltcl.losses.gpaco.gpaco_loss`."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltcl.dist import gather_equal_rows
from ltcl.losses.validation import check_features

QueueStart = Literal["random", "empty"]
QUEUE_STARTS = ("random", "empty")
EMPTY = -1  # label of a queue slot that holds no key yet (masked start)


def initial_queue(size: int, dim: int, num_classes: int, start: QueueStart = "random", seed: int = 0):
    """The queue's first contents: (K, D) keys and (K,) int64 labels.

    ``random``: as the authors' builder (GPaCo/LT/moco/builder.py, ``torch.randn(K, dim)`` normalised along dim 0,
    labels ``torch.randint(0, C, (K,))``), drawn from a generator seeded with ``seed`` (the same draws as the
    global generator after ``torch.manual_seed(seed)``). The columns, not the rows, are unit vectors: each key has
    norm about sqrt(D / K). ``empty``: zero keys labelled ``EMPTY``, left out of the loss until replaced.
    """
    if start not in QUEUE_STARTS:
        raise ValueError(f"queue_start must be one of {', '.join(QUEUE_STARTS)}, got {start!r}.")
    if start == "empty":
        return torch.zeros(size, dim), torch.full((size,), EMPTY, dtype=torch.int64)
    generator = torch.Generator().manual_seed(int(seed))
    keys = F.normalize(torch.randn(size, dim, generator=generator), dim=0)
    labels = torch.randint(0, num_classes, (size,), generator=generator)
    return keys, labels


class GPaCoQueue(nn.Module):
    """A first-in first-out queue of K keys and their labels (MoCo's, without the momentum encoder).

    Buffers (checkpointed): ``keys`` (K, D), ``labels`` (K,) int64 (``EMPTY`` for a slot without a key),
    ``pointer`` (the next slot to write), ``pushed`` (real keys written so far, capped at K).

    Args:
        size: K.
        dim: D, the keys' length.
        num_classes: C (the random start draws labels in [0, C)).
        start: ``random`` (the authors') or ``empty`` (:func:`initial_queue`).
        seed: seed of the random start.
        gather_distributed: under torch.distributed, every process pushes the keys of all processes (in rank
            order), so the queues stay identical.
    """

    def __init__(
        self,
        size: int,
        dim: int,
        num_classes: int,
        *,
        start: QueueStart = "random",
        seed: int = 0,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        if not (isinstance(size, int) and size >= 1) or not (isinstance(dim, int) and dim >= 1):
            raise ValueError(f"a queue needs a size >= 1 and a key length >= 1, got size {size!r}, dim {dim!r}.")
        keys, labels = initial_queue(size, dim, num_classes, start, seed)
        self.size, self.start, self.gather_distributed = size, start, bool(gather_distributed)
        self.register_buffer("keys", keys)
        self.register_buffer("labels", labels)
        self.register_buffer("pointer", torch.zeros((), dtype=torch.int64))
        self.register_buffer("pushed", torch.zeros((), dtype=torch.int64))

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.keys.shape[1]}, start={self.start}"

    @torch.no_grad()
    def push(self, keys: Tensor, labels: Tensor) -> None:
        """Writes ``keys`` (n, D) and ``labels`` (n,) over the oldest slots (every process's rows under
        ``gather_distributed``: each process must pass the same n). No host synchronisation."""
        if keys.dim() != 2 or keys.shape[1] != self.keys.shape[1] or labels.shape != keys.shape[:1]:
            raise ValueError(
                f"push expects keys (n, {self.keys.shape[1]}) and labels (n,), got {tuple(keys.shape)} and "
                f"{tuple(labels.shape)}."
            )
        keys, labels = keys.detach(), labels.detach()
        if self.gather_distributed:
            keys, labels = gather_equal_rows(keys), gather_equal_rows(labels)
        total = keys.shape[0]
        kept = min(total, self.size)  # a batch larger than the queue leaves only its last K keys
        slots = (self.pointer + (total - kept) + torch.arange(kept, device=self.pointer.device)) % self.size
        self.keys.index_copy_(0, slots, keys[total - kept :].to(self.keys.dtype))
        self.labels.index_copy_(0, slots, labels[total - kept :].to(self.labels.device))
        self.pointer.copy_((self.pointer + total) % self.size)
        self.pushed.copy_(torch.clamp(self.pushed + total, max=self.size))

    def fill(self) -> Tensor:
        """Share of the slots that hold a key of a real batch (the random start's keys do not count)."""
        return self.pushed.to(torch.float64) / self.size


def _check_queue(queue: Tensor | None, queue_labels: Tensor | None, dim: int, num_classes: int) -> None:
    if (queue is None) != (queue_labels is None):
        raise ValueError("queue and queue_labels go together: pass both or neither.")
    if queue is None:
        return
    check_features(queue, "queue")
    if queue.shape[1] != dim:
        raise ValueError(f"queue keys have length {queue.shape[1]} but features have {dim}.")
    if not isinstance(queue_labels, Tensor) or queue_labels.dim() != 1 or queue_labels.dtype != torch.int64:
        raise ValueError("queue_labels must be a 1-D torch.int64 tensor.")
    if queue_labels.shape[0] != queue.shape[0]:
        raise ValueError(f"queue_labels have {queue_labels.shape[0]} entries but the queue has {queue.shape[0]}.")
    if queue_labels.numel() and not bool(((queue_labels >= EMPTY) & (queue_labels < num_classes)).all()):
        raise ValueError(f"queue_labels must be class indices in [0, {num_classes}) or {EMPTY} for an empty slot.")
