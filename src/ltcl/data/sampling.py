"""Deterministic, resumable, shardable sampling.

Every training image's augmentations are a function of (seed, epoch, image index) alone. So a run resumed in
the middle of an epoch sees exactly the images and augmentations the uninterrupted run would have seen, and a
run on W processes sees the same global batches as one process with the same global batch size, whatever the
number of loader workers.

:class:`EpochBatchSampler` yields, for this process, lists of ``(index, sample_seed)`` pairs;
:class:`SeededDataset` reseeds the random generators from ``sample_seed`` before transforming item ``index``.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

from ltcl.data.samplers import SAMPLERS
from ltcl.errors import UserError

_SEED_MIX = 1_000_003  # keeps (seed, epoch) pairs apart in the generator seed


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * _SEED_MIX + epoch)


class EpochBatchSampler(Sampler):
    """Global batches drawn by a sampling policy, each split into equal per-process shares; incomplete global
    batches dropped.

    Args:
        num_items: size of the dataset.
        global_batch_size: images per optimisation step over all processes (divisible by ``world_size``).
        seed: run seed; the order of epoch e depends on (seed, e) only.
        rank, world_size: this process and the number of processes.
        labels: (N,) int64 training labels; needed by every policy but ``instance``.
        policy: ``data.sampler``, a registered :class:`~ltcl.data.samplers.SamplingPolicy` name.
        epochs: the run's length (the progressive policy moves with ``epoch / (epochs - 1)``).

    ``set_epoch(e, start_batch=k, policy=name)`` selects epoch e, skips its first k batches (resume mid-epoch) and
    may switch the policy (a method's second stage). Each item is ``(dataset index, sample seed)``.
    """

    def __init__(
        self,
        num_items: int,
        global_batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        labels: torch.Tensor | None = None,
        policy: str = "instance",
        epochs: int = 1,
    ):
        if global_batch_size % world_size:
            raise UserError(
                f"data.batch_size {global_batch_size} must be divisible by the number of processes {world_size}."
            )
        if num_items < global_batch_size:
            raise UserError(
                f"The training set has {num_items} images, fewer than one batch (data.batch_size "
                f"{global_batch_size}); lower data.batch_size."
            )
        self.num_items = num_items
        self.global_batch_size = global_batch_size
        self.per_rank = global_batch_size // world_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.start_batch = 0, 0
        self.labels, self.epochs = labels, epochs
        self.policy = SAMPLERS.get(policy)
        if policy != "instance" and (labels is None or len(labels) != num_items):
            raise ValueError(f"The {policy} sampler needs the {num_items} training labels.")

    def set_epoch(self, epoch: int, start_batch: int = 0, policy: str | None = None) -> None:
        self.epoch, self.start_batch = epoch, start_batch
        if policy is not None:
            self.policy = SAMPLERS.get(policy)

    def __len__(self) -> int:
        return self.num_items // self.global_batch_size - self.start_batch

    def rank_batches(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's share of every batch of the current epoch, skipped batches included.

        Returns:
            (num_batches, per_rank) dataset indices and their (num_batches, per_rank) sample seeds.
        """
        g = epoch_generator(self.seed, self.epoch)
        progress = self.epoch / (self.epochs - 1) if self.epochs > 1 else 0.0
        if self.policy.name == "instance":  # kept apart: the order of runs made before the sampler registry
            order = torch.randperm(self.num_items, generator=g)
        else:
            order = self.policy.draw(self.labels, g, progress)
        sample_seeds = torch.randint(0, 2**62, (self.num_items,), generator=g)  # per image, not per position
        num_batches = self.num_items // self.global_batch_size
        batches = order[: num_batches * self.global_batch_size].view(num_batches, self.world_size, self.per_rank)
        rows = batches[:, self.rank]
        if self.policy.with_replacement:  # an image drawn twice gets two different augmentations
            positions = torch.arange(num_batches * self.global_batch_size).view(batches.shape)[:, self.rank]
            return rows, sample_seeds[positions]
        return rows, sample_seeds[rows]

    def __iter__(self):
        rows, seeds = self.rank_batches()
        for b in range(self.start_batch, rows.shape[0]):
            yield list(zip(rows[b].tolist(), seeds[b].tolist()))


class SeededDataset(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` is produced with all random generators seeded by ``seed``.

    Inside loader workers the generators are simply reseeded; in the main process (``num_workers=0``) the global
    generator states are saved and restored around the item, so the caller's random streams are untouched.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        if get_worker_info() is not None:
            return self._seeded(index, seed)
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            try:
                return self._seeded(index, seed)
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)

    def _seeded(self, index: int, seed: int):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        return self.dataset[index]


class ShardSampler(Sampler):
    """Indices ``rank, rank + W, rank + 2W, ...`` of a dataset: disjoint shards that cover it exactly once."""

    def __init__(self, num_items: int, rank: int = 0, world_size: int = 1):
        self.indices = range(rank, num_items, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)
