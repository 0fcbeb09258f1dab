"""The training batches of one run: the main stream and, when the method asks for one, a second stream.

Both streams are functions of (seed, epoch) (see :mod:`ltcl.data.sampling`), so a resumed epoch draws the same
pairs; the second stream keeps the sampler its method asked for (BBN's reversed sampler) while the main one may
switch (``sampler_for_epoch``).
"""

from __future__ import annotations

from collections.abc import Iterator

from ltcl.data.sampling import EpochBatchSampler

SECOND_SEED = 7_919  # added to train.seed for the second stream


class TrainBatches:
    """Iterates over ``(batch, second)`` pairs of :class:`~ltcl.data.views.MultiViewBatch` es (second is None
    without a second stream).

    Args:
        sampler, loader: the main stream's batch sampler and loader.
        second_sampler, second_loader: the second stream's, or None.
    """

    def __init__(self, sampler: EpochBatchSampler, loader, second_sampler=None, second_loader=None) -> None:
        self.sampler, self.loader = sampler, loader
        self.second_sampler, self.second_loader = second_sampler, second_loader

    def set_epoch(self, epoch: int, start_batch: int = 0, policy: str | None = None) -> None:
        """Selects the epoch and its first batch in both streams; ``policy`` switches the main stream's sampler."""
        self.sampler.set_epoch(epoch, start_batch, policy=policy)
        if self.second_sampler is not None:
            self.second_sampler.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator:
        if self.second_loader is None:
            return ((batch, None) for batch in self.loader)
        return zip(self.loader, self.second_loader)
