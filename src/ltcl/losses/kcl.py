"""KCLLoss: k-positive contrastive learning (Kang et al., ICLR 2021, "Exploring Balanced Feature Spaces for
Representation Learning"), the representation loss of KCL's first stage.

KCL is MoCo with labels: a query ``q_i`` (a view through the trained encoder), its key ``k_i`` (another view of the
same image through a momentum copy of the encoder) and a queue of ``K`` keys of past batches with their labels.
Besides its own key, each query takes at most ``k`` queue keys of its class as positives, so that every class,
however many images it has, pulls its samples together with the same number of positives (the "balanced feature
space"). With ``s_ij = q_i . u_j / tau`` over the keys ``u`` (own key first, then the filled queue slots)::

    P(i)  = {own key} + the first k queue slots whose label is y_i (by slot index)
    L_i   = log sum_j exp(s_ij) - (1 / |P(i)|) sum_{p in P(i)} s_ip
    L     = mean of L_i over the queries

Queue positives beyond the first ``k`` stay in the denominator (the code's ``losstype v1``, its default and the
one of every README command; ``v2``, which sets their logits to 0, is not implemented). With ``k = 0`` this is
MoCo's InfoNCE.

Where ltcl follows the authors' code (bingykang/BalFeat, ``moco/kcl_builder.py`` and ``util.SoftCrossEntropyLoss``)
and where it departs:

- Which ``k`` positives. The code picks them with ``topk(k)`` on the 0/1 same-class mask of the queue. Ties are
  broken by the backend: CUDA's ``gatherTopK`` fills tied values in index order, so on the authors' GPUs these are
  the ``k`` same-class slots of lowest index, which is what is taken here (deterministic, the same on every device
  and process). PyTorch's CPU ``topk`` breaks the ties differently. The paper speaks of k positives drawn from the
  class; LTH14/targeted-supcon, a re-implementation, draws them at random.
- Soft labels. The code normalises the 0/1 target row ``[1, mask]`` by its sum and takes the soft cross-entropy:
  exactly ``L_i`` above.
- Empty slots. The code fills the queue before training with ``K / B`` batches that train nothing
  (``init_key_queue`` of ``main_kcl.py``); ltcl has no such pass: the queue starts empty and slots not yet written
  (label -1) are left out of the loss, neither negatives nor positives, until they are filled (LTH14 instead uses
  random unit vectors as negatives).
- Distributed. Keys of every process are enqueued (``gather_equal_rows``, as the code's ``concat_all_gather``), so
  the queues stay identical; there is no term between the queries of one batch, so the loss is a per-query mean
  (``global_mean`` for DDP). The code's "shuffle BN" of the key batch across GPUs is the method's business, not the
  loss's (see ``ltcl.methods.kcl``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ltcl.dist import gather_equal_rows, global_mean
from ltcl.losses.validation import check_features, check_labels, check_temperature, compute_dtype


class KCLOutput(NamedTuple):
    """The loss and the mean number of queue positives per query (at most ``k``)."""

    loss: Tensor
    positives: Tensor


def first_k_positives(labels: Tensor, queue_labels: Tensor, positives: int) -> Tensor:
    """(A, K) bool: for each query, the ``positives`` queue slots of its class with the lowest slot index.

    Args:
        labels: (A,) int64 classes of the queries (>= 0).
        queue_labels: (K,) int64 classes of the queue slots, -1 for an empty slot.
        positives: k >= 0.
    """
    # The rank of each slot among the slots of its class, by slot index: a stable sort groups the classes and keeps
    # the index order inside each; a slot is eligible when fewer than k slots of its class come before it.
    order = torch.argsort(queue_labels, stable=True)
    grouped = queue_labels[order]
    first_of_class = torch.searchsorted(grouped, grouped)
    rank = torch.empty_like(queue_labels)
    rank[order] = torch.arange(queue_labels.numel(), device=queue_labels.device) - first_of_class
    eligible = (rank < positives) & (queue_labels >= 0)
    return (labels[:, None] == queue_labels[None, :]) & eligible[None, :]


def kcl_per_anchor(
    queries: Tensor, keys: Tensor, queue: Tensor, queue_labels: Tensor, selected: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """Per-query KCL terms ``L_i`` (module docstring) for a given choice of queue positives; no checks.

    Args:
        queries: (A, D) L2-normalised queries (with gradient).
        keys: (A, D) their L2-normalised keys (no gradient is taken through them).
        queue: (K, D) L2-normalised queued keys; queue_labels: (K,) their classes, -1 for empty slots.
        selected: (A, K) bool, the queue positives of each query (slots of its class).
        temperature: tau.

    Returns:
        (A,) ``L_i`` and (A,) the number of queue positives of each query.
    """
    dtype = compute_dtype(queries)
    with torch.autocast(device_type=queries.device.type, enabled=False):
        q = queries.to(dtype) / temperature
        own = (q * keys.detach().to(dtype)).sum(1)  # (A,)
        against_queue = q @ queue.detach().to(dtype).T  # (A, K)
        filled = (queue_labels >= 0)[None, :]
        denominator = torch.where(filled, against_queue, torch.tensor(-torch.inf, dtype=dtype, device=q.device))
        log_den = torch.logsumexp(torch.cat([own[:, None], denominator], dim=1), dim=1)
        chosen = selected & filled
        count = chosen.sum(1)
        positive_sum = own + torch.where(chosen, against_queue, torch.zeros((), dtype=dtype, device=q.device)).sum(1)
        loss = log_den - positive_sum / (1 + count).to(dtype)
    return loss, count


def kcl_loss(
    queries: Tensor,
    keys: Tensor,
    labels: Tensor,
    queue: Tensor,
    queue_labels: Tensor,
    positives: int = 6,
    temperature: float = 0.07,
) -> Tensor:
    """KCL loss (module docstring) of one batch against a given queue, validating every input.

    Args:
        queries: (A, D) L2-normalised queries; keys: (A, D) their keys.
        labels: (A,) int64 classes >= 0.
        queue: (K, D) queued keys; queue_labels: (K,) int64, -1 marks an empty slot.
        positives: k, queue positives per query (>= 0).
        temperature: tau > 0.

    Returns:
        Scalar mean of ``L_i`` over the queries (a zero with a graph for an empty batch).
    """
    _check_positives(positives)
    check_temperature(temperature)
    for name, tensor in (("queries", queries), ("keys", keys), ("queue", queue)):
        check_features(tensor, name)
    if keys.shape != queries.shape or queue.shape[1] != queries.shape[1]:
        raise ValueError(
            f"queries {tuple(queries.shape)}, keys {tuple(keys.shape)} and queue {tuple(queue.shape)} must agree: "
            "(A, D), (A, D) and (K, D)."
        )
    check_labels(labels, queries.shape[0], None)
    shape_ok = isinstance(queue_labels, Tensor) and queue_labels.shape == queue.shape[:1]
    if not shape_ok or queue_labels.dtype != torch.int64:
        raise ValueError(f"queue_labels must be an int64 tensor of shape ({queue.shape[0]},), got {queue_labels!r}.")
    if queue_labels.numel() and int(queue_labels.min()) < -1:
        raise ValueError("queue_labels must be class indices >= 0, or -1 for an empty slot.")
    if queries.shape[0] == 0:
        return queries.sum() * 0.0
    selected = first_k_positives(labels, queue_labels, positives)
    loss, _ = kcl_per_anchor(queries, keys, queue, queue_labels, selected, temperature)
    return loss.mean()


def _check_positives(positives: int) -> None:
    if isinstance(positives, bool) or not isinstance(positives, int) or positives < 0:
        raise ValueError(f"positives (k) must be an integer >= 0, got {positives!r}.")


class KCLLoss(nn.Module):
    """K-positive contrastive loss with its queue of keys (equations and code differences in the module docstring).

    Args:
        dim: D, the size of the projections.
        queue_size: K, keys kept (65536 in the authors' ImageNet runs).
        positives: k, queue positives per query (6 in the paper's runs; 0 gives MoCo's loss).
        temperature: tau (0.07, MoCo's and the authors' default).
        gather_distributed: under torch.distributed, enqueue the keys of every process (the queues stay identical)
            and average the loss over the global batch (``global_mean``).

    State (buffers, saved in checkpoints): ``queue`` (K, D), ``queue_labels`` (K,) int64 with -1 for slots never
    written, ``queue_ptr`` the next slot to write.

    ``forward(queries, keys, labels)`` gives a :class:`KCLOutput`; after the optimiser step, ``enqueue(keys,
    labels)`` writes the batch's keys (the next batch contrasts against them, as in MoCo).
    """

    def __init__(
        self,
        dim: int,
        queue_size: int = 65536,
        positives: int = 6,
        temperature: float = 0.07,
        *,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}.")
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size must be a positive integer, got {queue_size!r}.")
        _check_positives(positives)
        check_temperature(temperature)
        self.positives = positives
        self.temperature = float(temperature)
        self.gather_distributed = bool(gather_distributed)
        self.register_buffer("queue", torch.zeros(queue_size, dim))
        self.register_buffer("queue_labels", torch.full((queue_size,), -1, dtype=torch.int64))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.int64))

    def extra_repr(self) -> str:
        return (
            f"queue_size={self.queue.shape[0]}, dim={self.queue.shape[1]}, positives={self.positives}, "
            f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"
        )

    def fill(self) -> Tensor:
        """The fraction of queue slots holding a key (0-dim float64)."""
        return (self.queue_labels >= 0).to(torch.float64).mean()

    def forward(self, queries: Tensor, keys: Tensor, labels: Tensor) -> KCLOutput:
        for name, tensor in (("queries", queries), ("keys", keys)):
            if not isinstance(tensor, Tensor) or tensor.dim() != 2 or tensor.shape[1] != self.queue.shape[1]:
                shape = getattr(tensor, "shape", tensor)
                raise ValueError(f"{name} must have shape (A, {self.queue.shape[1]}), got {shape}.")
        if keys.shape != queries.shape:
            raise ValueError(f"keys {tuple(keys.shape)} must have the shape of the queries {tuple(queries.shape)}.")
        check_labels(labels, queries.shape[0], None, sync=False)
        selected = first_k_positives(labels, self.queue_labels, self.positives)
        per_anchor, count = kcl_per_anchor(queries, keys, self.queue, self.queue_labels, selected, self.temperature)
        everyone = torch.ones_like(per_anchor, dtype=torch.bool)
        loss = global_mean(per_anchor, everyone) if self.gather_distributed else per_anchor.mean()
        return KCLOutput(loss, count.to(torch.float64).mean().detach())

    @torch.no_grad()
    def enqueue(self, keys: Tensor, labels: Tensor) -> None:
        """Writes the batch's keys and labels (of every process under ``gather_distributed``) at the queue pointer,
        wrapping around (the oldest keys are replaced)."""
        if self.gather_distributed:
            keys, labels = gather_equal_rows(keys.detach()), gather_equal_rows(labels)
        size, count = self.queue.shape[0], keys.shape[0]
        slots = (self.queue_ptr + torch.arange(count, device=self.queue.device)) % size
        if count > size:  # more keys than slots: as if written one by one, the last ones survive
            keys, labels, slots = keys[-size:], labels[-size:], slots[-size:]
        self.queue.index_copy_(0, slots, keys.detach().to(self.queue.dtype))
        self.queue_labels.index_copy_(0, slots, labels.to(self.queue_labels.dtype))
        self.queue_ptr.copy_((self.queue_ptr + count) % size)
