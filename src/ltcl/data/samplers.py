"""Which training images an epoch draws (``data.sampler``): one registered policy per name.

Every policy draws one epoch of ``N`` positions (N the training set's size) as a function of the epoch's generator
alone, so a run resumed mid-epoch draws the same batches, and every process of a ``torchrun`` job draws the same
global order and takes its own share.

- ``instance``: every image once, in a random order (no re-balancing).
- ``class_balanced``: a class drawn uniformly, then one of its images (Kang et al., ICLR 2020, "Decoupling
  representation and classifier"; with replacement).
- ``square_root``: class j drawn with probability proportional to ``sqrt(N_j)`` (Mahajan et al., ECCV 2018, as
  used by Kang et al.).
- ``progressive``: from instance to class-balanced over the run, class probabilities
  ``(1 - t) N_j / N + t / C`` with ``t = epoch / (epochs - 1)`` (Kang et al.'s progressively-balanced sampling).
- ``reversed``: class j drawn with probability proportional to ``N_max / N_j`` (BBN's re-balancing branch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ltcl.registry import Registry


@dataclass(frozen=True)
class SamplingPolicy:
    """One registered sampler.

    Attributes:
        name: ``data.sampler``.
        draw: ``(labels (N,) int64, generator, progress in [0, 1]) -> (N,) int64`` dataset indices of one epoch;
            ``progress`` is ``epoch / (epochs - 1)`` (0 for a one-epoch run).
        paper: where it comes from.
        with_replacement: an image may appear several times in an epoch (its augmentations then differ).
    """

    name: str
    draw: Callable[[Tensor, torch.Generator, float], Tensor]
    paper: str = ""
    with_replacement: bool = True


SAMPLERS: Registry[SamplingPolicy] = Registry("sampler", "data.sampler")


def register_sampler(policy: SamplingPolicy) -> SamplingPolicy:
    return SAMPLERS.register(policy.name, policy)


def draw_by_class(labels: Tensor, class_probabilities: Tensor, generator: torch.Generator) -> Tensor:
    """N positions: a class drawn from ``class_probabilities`` (C,), then one of its images uniformly.

    Classes without images must have probability 0.
    """
    counts = torch.bincount(labels, minlength=class_probabilities.numel())
    by_class = torch.argsort(labels, stable=True)  # indices grouped by class, in dataset order within a class
    starts = torch.cumsum(counts, 0) - counts
    classes = torch.multinomial(class_probabilities.double(), labels.numel(), replacement=True, generator=generator)
    within = (torch.rand(labels.numel(), generator=generator, dtype=torch.float64) * counts[classes]).long()
    return by_class[starts[classes] + within.clamp(max=counts[classes] - 1)]


def _class_counts(labels: Tensor) -> Tensor:
    return torch.bincount(labels).double()


def _instance(labels: Tensor, generator: torch.Generator, progress: float) -> Tensor:
    return torch.randperm(labels.numel(), generator=generator)


def _class_balanced(labels: Tensor, generator: torch.Generator, progress: float) -> Tensor:
    counts = _class_counts(labels)
    return draw_by_class(labels, (counts > 0).double() / (counts > 0).sum(), generator)


def _square_root(labels: Tensor, generator: torch.Generator, progress: float) -> Tensor:
    root = _class_counts(labels).sqrt()
    return draw_by_class(labels, root / root.sum(), generator)


def _progressive(labels: Tensor, generator: torch.Generator, progress: float) -> Tensor:
    counts = _class_counts(labels)
    balanced = (counts > 0).double() / (counts > 0).sum()
    return draw_by_class(labels, (1 - progress) * counts / counts.sum() + progress * balanced, generator)


def _reversed(labels: Tensor, generator: torch.Generator, progress: float) -> Tensor:
    counts = _class_counts(labels)
    inverse = torch.where(counts > 0, counts.max() / counts.clamp(min=1), torch.zeros_like(counts))
    return draw_by_class(labels, inverse / inverse.sum(), generator)


register_sampler(SamplingPolicy("instance", _instance, "every image once per epoch", with_replacement=False))
register_sampler(SamplingPolicy("class_balanced", _class_balanced, "Kang et al., ICLR 2020"))
register_sampler(SamplingPolicy("square_root", _square_root, "Mahajan et al., ECCV 2018; Kang et al., ICLR 2020"))
register_sampler(SamplingPolicy("progressive", _progressive, "Kang et al., ICLR 2020 (progressively balanced)"))
register_sampler(SamplingPolicy("reversed", _reversed, "Zhou et al., CVPR 2020 (BBN's reversed sampler)"))
