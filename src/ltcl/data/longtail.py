"""Long-tail mechanics: imbalance profiles, LDAM-compatible subset selection and shot groups.

The CIFAR-LT subsets of every published anchor come from LDAM-DRW's ``IMBALANCECIFAR10``: per-class sizes
``n_i = int(n_max * (1/IF) ** (i / (C - 1)))``, then ``np.random.seed(0)`` and, class by class in index
order, ``np.random.shuffle`` of that class's indices and the first ``n_i`` of them (docs/conventions.md, "Recipes").
The functions here reproduce that rule exactly, with a private ``RandomState`` so that the global NumPy RNG is
left untouched (a legacy ``RandomState(seed)`` draws the same numbers as ``np.random.seed(seed)`` followed by
the global calls; the tests check it). :func:`select_longtail_split` also takes a class-balanced validation set
from the images that subset leaves unused, and :func:`longtail_counts_by_size` ranks classes by their own sizes
(a user's class folders, whose index order says nothing about size).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import get_args

import numpy as np
import torch

from ltcl.config.schema import ImbalanceProfile
from ltcl.errors import UserError

PROFILES = get_args(ImbalanceProfile)  # the config's legal values: one list, in the schema
SHOT_GROUPS = ("many", "medium", "few")  # names of the indices 0, 1, 2 that shot_groups returns
ACCURACY_COLUMNS = (*SHOT_GROUPS, "all")  # the columns of every accuracy table, in percent


def longtail_counts(num_classes: int, max_count: int, imbalance_factor: float, profile: str = "exp") -> list[int]:
    """Images per class of a long-tailed subset, largest class first.

    Args:
        num_classes: C, the number of classes (>= 1).
        max_count: images kept for class 0 (>= 1).
        imbalance_factor: IF = n_max / n_min (>= 1; 1 keeps ``max_count`` everywhere).
        profile: ``"exp"``: ``n_i = int(max_count * (1/IF) ** (i / (C - 1)))``; ``"step"``: the first
            ``C // 2`` classes keep ``max_count``, the others get ``int(max_count * (1/IF))`` (LDAM's rules,
            written with the same floating-point operations so the sizes match LDAM's to the image).

    Returns:
        C integers, one per class index.

    Raises:
        ValueError: an argument is out of range, the profile is unknown, or the factor is so large that a
            class would keep no image.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise UserError(f"num_classes must be an integer >= 1, got {num_classes!r}.")
    if isinstance(max_count, bool) or not isinstance(max_count, (int, np.integer)) or max_count < 1:
        raise UserError(f"max_count must be an integer >= 1, got {max_count!r}.")
    if not np.isfinite(imbalance_factor) or imbalance_factor < 1:
        raise UserError(f"imbalance_factor must be a finite number >= 1, got {imbalance_factor!r}.")
    if profile not in PROFILES:
        raise UserError(f"imbalance profile must be one of {', '.join(PROFILES)}, got {profile!r}.")
    ratio = 1.0 / float(imbalance_factor)  # LDAM passes 1/IF and multiplies: keep that rounding
    if num_classes == 1:
        counts = [int(max_count)]
    elif profile == "exp":
        counts = [int(max_count * ratio ** (i / (num_classes - 1.0))) for i in range(num_classes)]
    else:
        head = num_classes // 2
        counts = [int(max_count)] * head + [int(max_count * ratio)] * (num_classes - head)
    if min(counts) < 1:
        raise UserError(
            f"imbalance_factor {imbalance_factor} leaves a class with no image when max_count is "
            f"{max_count}; "
            f"expected imbalance_factor <= {max_count}."
        )
    return counts


def longtail_counts_by_size(
    sizes: Sequence[int] | np.ndarray, imbalance_factor: float, profile: str = "exp"
) -> list[int]:
    """Images per class of a long-tailed subset of classes that come with their own sizes (a user's folders).

    The profile follows the classes' sizes, not their index: the r-th largest class (ties broken by class
    index) gets the r-th count of ``longtail_counts(C, max(sizes), imbalance_factor, profile)``, and no class
    is asked for more images than it has.

    Args:
        sizes: (C,) images available per class, each >= 1.
        imbalance_factor: IF >= 1 (1 keeps every image).
        profile: ``"exp"`` or ``"step"``, as in :func:`longtail_counts`.

    Returns:
        C integers, one per class index, each ``<= sizes[c]``.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.ndim != 1 or not sizes.size or sizes.min() < 1:
        raise UserError(f"sizes must be a non-empty list of integers >= 1, got {sizes.tolist()}.")
    targets = np.asarray(longtail_counts(len(sizes), int(sizes.max()), imbalance_factor, profile), dtype=np.int64)
    by_size = np.argsort(-sizes, kind="stable")  # largest first; stable: equal sizes keep class-index order
    counts = np.empty_like(sizes)
    counts[by_size] = targets
    return np.minimum(counts, sizes).tolist()


def select_longtail_indices(labels: Sequence[int] | np.ndarray, counts: Sequence[int], seed: int = 0) -> np.ndarray:
    """Dataset indices of the LDAM-compatible long-tailed subset.

    For each class c in index order: the indices of class c in dataset order are shuffled with the RNG seeded
    once at the start, and the first ``counts[c]`` are kept (all of them if the class has fewer). The
    permutation depends only on the class sizes and the RNG state, so any copy whose within-class order is the
    official one selects the same images.

    Args:
        labels: (N,) integer labels in [0, len(counts)).
        counts: images to keep per class.
        seed: the RNG seed (LDAM uses 0).

    Returns:
        (M,) int64 array of dataset indices, class by class (LDAM's order), M = sum of the kept counts.
    """
    return select_longtail_split(labels, counts, seed)[0]


def select_longtail_split(
    labels: Sequence[int] | np.ndarray, counts: Sequence[int], seed: int = 0, val_per_class: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The long-tailed training subset and a class-balanced validation set from the images it leaves unused.

    Each class's indices are shuffled exactly as in :func:`select_longtail_indices` (so the training part is
    that function's result, image for image); the validation part of class c is the next ``val_per_class``
    images of that same permutation, right after the ``counts[c]`` kept ones. A class whose training part
    takes all its images (the head class of CIFAR-10-LT and CIFAR-100-LT: 5,000 and 500) gets no validation
    image, so its validation accuracy is undefined (n/a).

    Args:
        labels: (N,) integer labels in [0, len(counts)).
        counts: training images to keep per class.
        seed: the RNG seed (LDAM uses 0).
        val_per_class: validation images wanted per class (>= 0); a class gets fewer when too few are left.

    Returns:
        ``(train, val)``: (M,) and (V,) int64 dataset indices, each class by class in index order; disjoint.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise UserError(f"labels must be a 1-D integer array, got shape {labels.shape} and dtype {labels.dtype}.")
    if labels.size and (labels.min() < 0 or labels.max() >= len(counts)):
        raise UserError(f"labels must lie in [0, {len(counts)}) to match counts, got {labels.min()}..{labels.max()}.")
    if any(int(n) < 0 for n in counts):
        raise UserError(f"counts must be non-negative, got {list(counts)}.")
    if isinstance(val_per_class, bool) or not isinstance(val_per_class, (int, np.integer)) or val_per_class < 0:
        raise UserError(f"val_per_class must be an integer >= 0, got {val_per_class!r}.")
    rng = np.random.RandomState(seed)
    # Stable sort keeps dataset order inside each class, exactly what np.where(labels == c) yields.
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(len(counts) + 1))
    train, val = [], []
    for c, n in enumerate(counts):  # one iteration per class, not per sample
        idx = order[bounds[c] : bounds[c + 1]].astype(np.int64)
        rng.shuffle(idx)  # one shuffle per class, whatever val_per_class is: the training part never changes
        train.append(idx[: int(n)])
        val.append(idx[int(n) : int(n) + int(val_per_class)])
    empty = np.zeros(0, dtype=np.int64)
    return (np.concatenate(train) if train else empty), (np.concatenate(val) if val else empty)


def shot_groups(train_counts: Sequence[int] | torch.Tensor, many: int = 100, few: int = 20) -> torch.Tensor:
    """Shot group of every class from its number of training images.

    Args:
        train_counts: (C,) training images per class.
        many: classes with strictly more images are many-shot.
        few: classes with strictly fewer images are few-shot; ``few..many`` inclusive is medium-shot.

    Returns:
        (C,) int64 tensor: 0 many, 1 medium, 2 few.
    """
    if few > many:
        raise UserError(f"few threshold ({few}) must not exceed the many threshold ({many}).")
    counts = torch.as_tensor(train_counts, dtype=torch.long)
    groups = torch.ones_like(counts)
    groups[counts > many] = 0
    groups[counts < few] = 2
    return groups
