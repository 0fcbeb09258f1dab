"""The fast path for in-memory datasets: the whole uint8 training set lives on the training device, and every
view of a batch is augmented there with batched tensor ops (``ltcl.data.augment.batched``).

On a GPU this removes the loader processes, the per-image PIL work and the host-to-device copies that limit small
models such as ResNet-32 on CIFAR (``data.augment_on: device``). Batches are the same global batches as the standard
loader's (:class:`~ltcl.data.sampling.EpochBatchSampler`); augmentations are drawn from a generator seeded by
(seed, epoch, batch, rank), so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ltcl.config import ViewsConfig
from ltcl.data.sampling import EpochBatchSampler
from ltcl.data.views import assemble_views
from ltcl.errors import UserError

_MIX = (1_000_003, 10_007, 101)


def resident_images(dataset, device: torch.device) -> tuple[Tensor, Tensor]:
    """(N, 3, H, W) uint8 images and (N,) labels of an in-memory dataset, on ``device``."""
    images = getattr(dataset, "images", None)
    if images is None:
        raise UserError(
            "data.augment_on 'device' needs an in-memory dataset (cifar10_lt, cifar100_lt, digits_lt); this one "
            "reads image files: use data.augment_on=loader."
        )
    pixels = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).contiguous()
    return pixels, torch.as_tensor(dataset.targets, dtype=torch.int64).to(device)


class DeviceViewLoader:
    """Iterates over :class:`MultiViewBatch` es built on ``device`` (a drop-in for the training DataLoader).

    Args:
        views_cfg: the view settings (backbone sizes and normalisation resolved).
        seed: the run's seed.
        dataset: in-memory training dataset (``images`` (N, H, W, 3) uint8, ``targets``).
        sampler: the run's batch sampler; its ``set_epoch`` selects the epoch and first batch.
        view_counts: (C,) how many views of an image of each class feed the contrastive loss.
        device: where images live and augmentations run.
    """

    def __init__(
        self,
        views_cfg: ViewsConfig,
        seed: int,
        dataset,
        sampler: EpochBatchSampler,
        view_counts: Tensor,
        device: torch.device,
    ) -> None:
        from ltcl.data.augment import build_batch_views

        self.views = build_batch_views(views_cfg)
        self.images, self.labels = resident_images(dataset, device)
        self.sampler = sampler
        self.view_counts = view_counts.to(device)
        self.device = device
        self.seed = seed

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        epoch, start, rank = self.sampler.epoch, self.sampler.start_batch, self.sampler.rank
        batches = self.sampler.rank_batches()[0].to(self.device)  # one copy per epoch, none per step
        for b in range(start, batches.shape[0]):
            index = batches[b]
            generator = torch.Generator(device=self.device)
            generator.manual_seed(self.seed * _MIX[0] + epoch * _MIX[1] + b * _MIX[2] + rank)
            pixels = self.images.index_select(0, index).float().div_(255.0)
            labels = self.labels.index_select(0, index)
            yield assemble_views([augment(pixels, generator) for augment in self.views], labels, self.view_counts)


class DeviceEvalBatches:
    """Evaluation batches from a resident, normalised copy of an in-memory split (one shard per process).

    Only used when the test transform is plain normalisation (no resize or crop), as for CIFAR and digits.
    """

    def __init__(
        self,
        views_cfg: ViewsConfig,
        dataset,
        device: torch.device,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        from ltcl.data.augment import normalize_batch

        images, labels = resident_images(dataset, device)
        self.images = normalize_batch(images[rank::world_size].float().div_(255.0), views_cfg)
        self.labels = labels[rank::world_size]
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self):
        for begin in range(0, len(self.labels), self.batch_size):
            yield self.images[begin : begin + self.batch_size], self.labels[begin : begin + self.batch_size]


def device_eval_supported(views_cfg: ViewsConfig, dataset) -> bool:
    """Whether the split can be evaluated from resident tensors (in memory, test transform = normalisation)."""
    images = getattr(dataset, "images", None)
    side = views_cfg.test_size
    return images is not None and views_cfg.test_resize in (0, side) and images.shape[1] == images.shape[2] == side
