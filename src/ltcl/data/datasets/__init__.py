"""Datasets: CIFAR-10/100-LT, split lists (ImageNet-LT, Places-LT, iNat 2018), class-folder trees, and the
bundled default (scikit-learn's digits, long-tailed).

Every dataset yields ``(PIL RGB image through .transform, int label)`` and exposes ``targets`` (N,) int64,
``classes``, ``num_classes``, ``class_counts()``, a settable ``transform`` and ``problems``; in-memory ones also
expose ``images``, uint8 (N, H, W, 3), file-backed ones ``paths``. :func:`build_split` is the entry point,
:func:`check_images` decodes every image once, :func:`resolve_data_paths` makes a config's paths absolute.
Training splits are long-tailed by the LDAM rule (:mod:`ltcl.data.longtail`); test splits are the standard
balanced ones.

Modules: :mod:`.base` (the dataset classes, reading an image), :mod:`.cifar`, :mod:`.split_list`, :mod:`.folder`,
:mod:`.digits` (one builder each), :mod:`.check`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, get_args

from ltcl.config import DataConfig
from ltcl.config.checks import check_fields
from ltcl.config.schema import Dataset
from ltcl.data.datasets.base import (
    IMAGE_EXTENSIONS,
    ArrayDataset,
    FileListDataset,
    LabelledDataset,
    files_exist,
    image_problem,
    load_image,
)
from ltcl.data.datasets.check import LEFT_OUT, check_images
from ltcl.data.datasets.cifar import CIFAR, CIFAR10_CLASSES, CIFAR100_CLASSES, build_cifar, read_npz
from ltcl.data.datasets.digits import DIGITS_TEST_PER_CLASS, build_digits, digits_arrays
from ltcl.data.datasets.folder import build_image_folder
from ltcl.data.datasets.split_list import LIST_NUM_CLASSES, build_split_list, class_names_from_paths, read_split_list
from ltcl.errors import UserError

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "DATASETS",
    "DIGITS_TEST_PER_CLASS",
    "IMAGE_EXTENSIONS",
    "LIST_NUM_CLASSES",
    "SPLITS",
    "ArrayDataset",
    "FileListDataset",
    "LabelledDataset",
    "build_split",
    "LEFT_OUT",
    "check_images",
    "class_names_from_paths",
    "digits_arrays",
    "files_exist",
    "image_problem",
    "load_image",
    "read_npz",
    "read_split_list",
    "resolve_data_paths",
]

DATASETS = get_args(Dataset)  # the config's legal names: one list, in the schema
SPLITS = ("train", "val", "test")
PATH_KEYS = ("root", "train_list", "val_list", "test_list")
VAL_PER_CLASS_DATASETS = ("cifar10_lt", "cifar100_lt", "digits_lt")


def build_split(
    data_cfg: DataConfig, split: str, transform: Callable | None = None, class_names: list[str] | None = None
) -> LabelledDataset | None:
    """One split of the configured dataset.

    Args:
        data_cfg: the ``data`` section of the config (``dataset`` picks the builder).
        split: ``"train"`` (long-tailed), ``"val"`` or ``"test"`` (balanced, as published).
        transform: applied to every PIL RGB image when loaded; settable later as ``dataset.transform``.
        class_names: the class names in label order (from a checkpoint). Then evaluating a split reads only
            that split: split lists do not read ``data.train_list``, class folders do not need ``train/``.

    Returns:
        The dataset, or None for ``"val"`` when the dataset has no validation split (``data.val_per_class`` 0
        for CIFAR and digits, no ``data.val_list``, no ``val/`` folder), and for ``"test"`` of a class-folder
        tree that has only ``val/``. CIFAR and digits ``val``: up to ``data.val_per_class`` images per class
        from the training images the long-tailed subset leaves unused; a class whose subset takes them all
        (the head class of CIFAR-10-LT and CIFAR-100-LT) has none, so its validation accuracy is n/a.

    Raises:
        ValueError, FileNotFoundError: one sentence naming the key, path or value at fault.
    """
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}.")
    check_fields(data_cfg, "data.")  # the config's declared ranges, for a DataConfig built in Python
    if data_cfg.val_per_class and data_cfg.dataset not in VAL_PER_CLASS_DATASETS:
        raise UserError(
            f"data.val_per_class applies to {', '.join(VAL_PER_CLASS_DATASETS)}; {data_cfg.dataset} takes its "
            f"validation split from {'a val/ folder' if data_cfg.dataset == 'image_folder' else 'data.val_list'}, "
            f"so set data.val_per_class=0."
        )
    if class_names is not None and (not len(class_names) or not all(isinstance(n, str) for n in class_names)):
        raise UserError(f"class_names must be a non-empty list of strings, got {class_names!r:.80}.")
    if data_cfg.dataset in CIFAR:
        return build_cifar(data_cfg, split, transform, class_names)
    if data_cfg.dataset in LIST_NUM_CLASSES:
        return build_split_list(data_cfg, split, transform, class_names)
    if data_cfg.dataset == "image_folder":
        return build_image_folder(data_cfg, split, transform, class_names)
    return build_digits(data_cfg, split, transform, class_names)


def resolve_data_paths(data_cfg: DataConfig) -> DataConfig:
    """A copy of ``data_cfg`` whose ``root``, ``train_list``, ``val_list`` and ``test_list`` are expanded (``~``)
    and absolute, so that a checkpoint's config finds its data from any working directory; empty stays empty."""
    resolved = {
        key: os.path.abspath(os.path.expanduser(value)) for key in PATH_KEYS if (value := getattr(data_cfg, key))
    }
    return dataclasses.replace(data_cfg, **resolved)
