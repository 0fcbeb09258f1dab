"""The bundled default: scikit-learn's 1,797 handwritten digits, 8x8 grey upsampled to 32x32 RGB, long-tailed.

The last 50 images of each class (scikit-learn's order) are the balanced test set; the rest is the training pool.
``train`` is the LDAM-rule long-tailed subset of that pool, with max_count the pool's smallest class so that every
class can fill its quota; ``val`` (``data.val_per_class`` > 0) takes up to that many images per class from the pool
images the subset leaves unused, never from the test images.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from ltcl.config import DataConfig
from ltcl.data.datasets.base import ArrayDataset
from ltcl.data.longtail import longtail_counts, select_longtail_split
from ltcl.errors import UserError

DIGITS_TEST_PER_CLASS = 50
DIGITS_CLASSES = [str(c) for c in range(10)]


def digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 (N, 32, 32, 3), labels (N,), and a mask (N,) of the balanced test set
    (the last 50 images of each class in scikit-learn's order)."""
    values, labels = _digits_table()
    grey = torch.from_numpy(values * (255.0 / 16.0)).float().unsqueeze(1)  # (N, 1, 8, 8), 0..255
    big = torch.nn.functional.interpolate(grey, size=(32, 32), mode="bilinear", align_corners=False)
    images = big.round().clamp(0, 255).to(torch.uint8).squeeze(1).unsqueeze(-1).expand(-1, -1, -1, 3)
    test = np.zeros(len(labels), dtype=bool)
    for c in range(10):  # one iteration per class
        test[np.flatnonzero(labels == c)[-DIGITS_TEST_PER_CLASS:]] = True
    return np.ascontiguousarray(images.numpy()), labels, test


def _digits_table() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: pixel values 0..16 as float64 (N, 8, 8) and labels (N,).

    Read from the csv file scikit-learn ships, without importing scikit-learn: the import costs about a second in
    every command that trains or evaluates on the digits. scikit-learn's own loader where the file is elsewhere.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",", dtype=np.float64)  # 64 pixels then the label, per row
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target.astype(np.int64)


def build_digits(
    cfg: DataConfig, split: str, transform=None, class_names: list[str] | None = None
) -> ArrayDataset | None:
    """One split of the digits; None for ``val`` when ``data.val_per_class`` is 0.

    ``val`` holds up to ``val_per_class`` images per class from the training pool's unused images; a class
    whose long-tailed quota takes all of its pool images gets none there (n/a in validation accuracy).
    """
    if split == "val" and not cfg.val_per_class:
        return None
    names = DIGITS_CLASSES if class_names is None else list(class_names)
    if len(names) != 10:
        raise UserError(f"The digits have 10 classes but the given class names number {len(names)}.")
    images, labels, test = digits_arrays()
    if split == "test":
        indices = np.flatnonzero(test)
    else:
        pool = np.flatnonzero(~test)
        smallest = int(np.bincount(labels[pool], minlength=10).min())  # every class can then fill its quota
        counts = longtail_counts(10, smallest, cfg.imbalance_factor, cfg.imbalance_profile)
        train, val = select_longtail_split(labels[pool], counts, cfg.subset_seed, cfg.val_per_class)
        indices = pool[train if split == "train" else val]
        if split == "val" and not len(indices):
            raise UserError(
                f"data.val_per_class={cfg.val_per_class} takes validation images from the digits training images "
                f"that the long-tailed subset leaves unused, and data.imbalance_factor={cfg.imbalance_factor:g} "
                f"leaves none."
            )
    return ArrayDataset(images[indices], labels[indices], names, transform, indices=indices)
