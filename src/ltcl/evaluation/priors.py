"""Shifted test priors: SADE's test-agnostic protocol (Zhang et al., NeurIPS 2022; Vanint/SADE-AgnosticLT).

The balanced test set is subsampled, not reweighted: with the classes ranked by training count (most images
first, ties by class index) and ``n`` the images of the split's smallest class, the class of rank r keeps
``int(n * (1/R) ** (r / (C - 1)))`` images under ``forward:R`` (the training order: head classes stay frequent)
and the count of rank ``C - 1 - r`` under ``backward:R`` (the order reversed); ``uniform`` keeps ``n`` of every
class, the whole of a balanced set. The images are chosen as SADE's ``IMBALANCECIFAR`` chooses them (LDAM's rule):
seed 0, then class by class in index order a shuffle of the class's images and the first of them; on CIFAR-LT,
whose class index is its training rank, the sets are SADE's image for image. R runs over 2, 5, 10, 25, 50.

The model is told the test prior by turning the logits it is evaluated with (divided by the temperature when
calibrated) into scores for that prior: ``logits + w * log p_train + log p_test``. A method declares whether its
logits are meant for a uniform prior (``balanced_logits``: Balanced Softmax, logit adjustment, ...) or carry the
training prior (cross-entropy); with ``--logit-adjust tau`` already taken off, ``w = tau`` for the first and
``w = tau - 1`` for the second (a cross-entropy model: ``logits - log p_train + log p_test``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ltcl.data.longtail import longtail_counts, select_longtail_indices
from ltcl.engine.evaluate import accuracy_from_counts
from ltcl.errors import UserError

SADE_RATIOS = (2, 5, 10, 25, 50)
SUBSET_SEED = 0  # SADE's (and LDAM's) rand_number


@dataclass(frozen=True)
class PriorShift:
    """``uniform`` (ratio 1), or ``forward`` / ``backward`` with imbalance ratio R >= 1."""

    kind: str
    ratio: float = 1

    @property
    def name(self) -> str:
        return "uniform" if self.kind == "uniform" else f"{self.kind}{self.ratio:g}"


def sweep() -> list[PriorShift]:
    """SADE's table: forward 50 .. 2, uniform, backward 2 .. 50."""
    forward = [PriorShift("forward", r) for r in reversed(SADE_RATIOS)]
    return [*forward, PriorShift("uniform", 1), *(PriorShift("backward", r) for r in SADE_RATIOS)]


def parse_test_prior(text: str) -> list[PriorShift]:
    """``--test-prior``: uniform | forward:R | backward:R | sweep."""
    value = text.strip().lower()
    if value == "sweep":
        return sweep()
    if value == "uniform":
        return [PriorShift("uniform", 1)]
    kind, _, ratio = value.partition(":")
    try:
        number = float(ratio)
    except ValueError:
        number = math.nan
    if kind not in ("forward", "backward") or not math.isfinite(number) or number < 1:
        raise UserError(
            f"--test-prior takes uniform, forward:R, backward:R (an imbalance ratio R >= 1, e.g. 50) or sweep, "
            f"got '{text}'."
        )
    return [PriorShift(kind, int(number) if number.is_integer() else number)]


def shifted_counts(train_counts: Sequence[int], available: Sequence[int], prior: PriorShift) -> list[int]:
    """Images each class keeps under ``prior`` (see the module docstring)."""
    available = np.asarray(available, dtype=np.int64)
    if available.min() < 1:
        missing = int(np.flatnonzero(available < 1)[0])
        raise UserError(f"--test-prior needs every class in the evaluated split, and class {missing} has no image.")
    size, classes = int(available.min()), len(train_counts)
    try:
        by_rank = longtail_counts(classes, size, prior.ratio)
    except UserError:
        raise UserError(
            f"--test-prior {prior.name} leaves a class without images: the split's smallest class has {size}, "
            f"so R must be at most {size}."
        ) from None
    rank = np.empty(classes, dtype=np.int64)
    rank[np.argsort(-np.asarray(train_counts), kind="stable")] = np.arange(classes)
    if prior.kind == "backward":
        rank = classes - 1 - rank
    return [by_rank[r] for r in rank.tolist()]


def sweepable(priors: Sequence[PriorShift], labels, train_counts: Sequence[int]) -> tuple[list[PriorShift], list[str]]:
    """The priors of a sweep that the split can hold, and the names of those it cannot (a ratio R above the images
    of the split's smallest class would leave a class without images: iNaturalist's 3 test images a class hold
    R <= 3, as SADE's forward / backward 2 and 3)."""
    smallest = int(np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(train_counts)).min())
    kept = [p for p in priors if p.ratio <= smallest]
    return kept, [p.name for p in priors if p.ratio > smallest]


def shifted_indices(labels, train_counts: Sequence[int], prior: PriorShift, seed: int = SUBSET_SEED) -> np.ndarray:
    """Positions (into ``labels``) of the images of the resampled split, class by class."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = shifted_counts(train_counts, np.bincount(labels, minlength=len(train_counts)), prior)
    return select_longtail_indices(labels, counts, seed)


def prior_corrected(
    logits: Tensor, test_counts: Sequence[int], train_counts: Sequence[int] | None = None, train_weight: float = 0.0
) -> Tensor:
    """``logits + train_weight * log p_train + log p_test`` (a class without test images gets -inf: it is never
    predicted); ``train_weight`` as in the module docstring (0 for balanced logits as trained)."""
    counts = torch.as_tensor(test_counts, dtype=torch.float64)
    shifted = logits.double() + (counts / counts.sum()).log()
    if train_weight and train_counts is not None:
        train = torch.as_tensor(list(train_counts), dtype=torch.float64)
        shifted = shifted + train_weight * (train / train.sum()).log()
    return shifted.float()


def group_accuracy(logits: Tensor, labels: Tensor, train_counts: Sequence[int], many: int, few: int) -> dict:
    """Many / Medium / Few / All in % (shot groups as everywhere: the mean of the classes' accuracies)."""
    classes = len(train_counts)
    hits = (logits.argmax(1) == labels).double()
    correct = torch.zeros(classes, dtype=torch.float64).index_add_(0, labels, hits)
    seen = torch.bincount(labels, minlength=classes).double()
    return accuracy_from_counts(correct, seen, train_counts, many=many, few=few).as_dict()


def evaluate_priors(
    logits: Tensor,
    labels: Tensor,
    train_counts: Sequence[int],
    priors: Sequence[PriorShift],
    *,
    many: int,
    few: int,
    train_weight: float = 0.0,
) -> list[dict]:
    """Per prior: its name, the images and class counts of the resampled split, and Many / Medium / Few / All of the
    logits as evaluated and told the test prior (``train_weight``: see :func:`prior_corrected`)."""
    rows = []
    labels = labels.long()
    for prior in priors:
        index = torch.as_tensor(shifted_indices(labels.numpy(), train_counts, prior))
        chosen_logits, chosen_labels = logits[index], labels[index]
        counts = torch.bincount(chosen_labels, minlength=len(train_counts)).tolist()
        told = prior_corrected(chosen_logits, counts, train_counts, train_weight)
        rows.append(
            {
                "prior": prior.name,
                "kind": prior.kind,
                "ratio": prior.ratio,
                "images": len(index),
                "class_counts": counts,
                "as_evaluated": group_accuracy(chosen_logits, chosen_labels, train_counts, many, few),
                "told_prior": group_accuracy(told, chosen_labels, train_counts, many, few),
            }
        )
    return rows
