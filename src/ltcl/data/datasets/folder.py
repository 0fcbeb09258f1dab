"""Class-folder trees: ``root/train/<class>/<image files>`` and one evaluation split, ``root/test/`` or
``root/val/`` (or both), with the same class folders.

Labels are the alphabetical ranks of the training class folders (or the positions in given ``class_names``).
The training set holds every image unless ``data.imbalance_factor`` > 1 is set: then it is a long-tailed subset
whose profile follows the classes' own sizes (:func:`ltcl.data.longtail.longtail_counts_by_size`). A class with
no folder, or an empty one, in an evaluation split simply has no image there.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ltcl.config import DataConfig
from ltcl.data.datasets.base import IMAGE_EXTENSIONS, FileListDataset, existing_root
from ltcl.data.longtail import longtail_counts_by_size, select_longtail_indices
from ltcl.errors import UserError

EVAL_SPLITS = ("test", "val")


def build_image_folder(
    cfg: DataConfig, split: str, transform=None, class_names: list[str] | None = None
) -> FileListDataset | None:
    """One split of a class-folder tree; None for an evaluation split whose folder is missing while the other
    evaluation split's folder exists.

    Args:
        class_names: the classes in label order (a checkpoint's); then ``train/`` is not needed to evaluate.

    Raises:
        ValueError: neither ``test/`` nor ``val/`` exists, a split holds a class folder that is not a class,
            or a training class holds no image.
        FileNotFoundError: ``train/`` is missing and no ``class_names`` are given.
    """
    root = existing_root(cfg)
    train_dir = root / "train"
    if class_names is not None:
        classes, known = list(class_names), "the given class names"
    else:
        if not train_dir.is_dir():
            raise FileNotFoundError(f"{train_dir} does not exist; expected {root}/train/<class>/<image files>.")
        classes, known = _subfolders(train_dir), f"the class folders of {train_dir}"
        if not classes:
            raise UserError(f"{train_dir} holds no class folders; expected {root}/train/<class>/<image files>.")
    if not any((root / s).is_dir() for s in EVAL_SPLITS):
        raise UserError(
            f"{root} holds neither test/ nor val/; an image_folder dataset needs an evaluation split, "
            f"{root}/test/<class>/<image files> (or val/)."
        )
    folder = root / split
    if not folder.is_dir():
        if split in EVAL_SPLITS:
            return None  # the other evaluation split exists
        raise FileNotFoundError(f"{folder} does not exist; expected {folder}/<class>/<image files>.")
    unknown = sorted(set(_subfolders(folder)) - set(classes))
    if unknown:
        raise UserError(f"{folder / unknown[0]} names a class that is not among {known}.")
    files = [_images(folder / name) for name in classes]  # one listing per class
    if split == "train":
        empty = [name for name, found in zip(classes, files) if not found]
        if empty:
            raise UserError(
                f"{folder / empty[0]} holds no images (expected {', '.join(IMAGE_EXTENSIONS)} files); "
                f"every training class needs at least one."
            )
    sizes = np.asarray([len(f) for f in files], dtype=np.int64)
    paths = np.asarray([p for found in files for p in found], dtype=str)
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), sizes)
    if split == "train" and cfg.imbalance_factor > 1:
        counts = longtail_counts_by_size(sizes, cfg.imbalance_factor, cfg.imbalance_profile)
        indices = select_longtail_indices(labels, counts, seed=cfg.subset_seed)
        paths, labels = paths[indices], labels[indices]
    return FileListDataset(
        paths, labels, classes, transform, cfg.skip_corrupt, source=f"the {split}/ folder", root=root
    )


def _subfolders(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _images(folder: Path) -> list[str]:
    """Sorted image files of one class folder; none when the folder is missing or empty."""
    try:
        with os.scandir(folder) as entries:  # DirEntry.is_file() needs no stat call on most file systems
            names = sorted(
                e.name
                for e in entries
                if e.is_file()
                and not e.name.startswith(".")
                and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
            )
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [os.path.join(folder, n) for n in names]
