"""Split lists (ImageNet-LT, Places-LT, iNaturalist 2018): ``<relative image path> <integer label>`` lines, the
images under ``data.root``. Labels come from the file, never from folder names (five Places-LT classes are not in
alphabetical rank)."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import numpy as np

from ltcl.config import DataConfig
from ltcl.data.datasets.base import FileListDataset, existing_root
from ltcl.errors import UserError

LIST_NUM_CLASSES = {"imagenet_lt": 1000, "places_lt": 365, "inat2018": 8142}


def read_split_list(path: str | Path, key: str, num_classes: int) -> tuple[list[str], np.ndarray]:
    """Relative paths and labels (N,) of a split file; ``key`` (``data.train_list``...) names it in errors."""
    if not str(path):
        raise UserError(f"{key} is empty; expected a split file with '<image path> <label>' lines.")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Split list {path} ({key}) does not exist.")
    paths, labels = [], []
    with path.open() as lines:
        for number, line in enumerate(lines, 1):
            text = line.strip()
            if not text:
                continue
            parts = text.rsplit(maxsplit=1)
            try:
                label = int(parts[1]) if len(parts) == 2 else None
            except ValueError:
                label = None
            if label is None:
                raise UserError(f"{path}, line {number}: expected '<image path> <integer label>', got {text!r}.")
            if not 0 <= label < num_classes:
                raise UserError(
                    f"{path}, line {number}: label {label} is outside [0, {num_classes}); "
                    f"labels must be >= 0 and below data.num_classes."
                )
            paths.append(parts[0])
            labels.append(label)
    return paths, np.asarray(labels, dtype=np.int64)


def class_names_from_paths(paths: list[str], labels: np.ndarray, num_classes: int) -> list[str]:
    """Parent folder of the first path seen for each label; the label number for a label never seen."""
    names = [str(c) for c in range(num_classes)]
    seen, first = np.unique(labels, return_index=True)
    for label, index in zip(seen.tolist(), first.tolist()):  # one iteration per class
        names[label] = PurePosixPath(paths[index]).parent.name or str(label)
    return names


def build_split_list(
    cfg: DataConfig, split: str, transform=None, class_names: list[str] | None = None
) -> FileListDataset | None:
    """One split of a split-list dataset; None for ``val`` when ``data.val_list`` is empty.

    Class names come from ``class_names`` when given (a checkpoint's: then only this split's list is read), else
    from the training list, so that every split shares them.
    """
    key = f"{split}_list"
    if split == "val" and not cfg.val_list:
        return None
    num_classes = cfg.num_classes or LIST_NUM_CLASSES[cfg.dataset]
    if class_names is not None and len(class_names) != num_classes:
        raise UserError(
            f"data.num_classes is {num_classes} but the given class names number {len(class_names)}; "
            f"expected one name per class."
        )
    root = existing_root(cfg)
    list_path = getattr(cfg, key)
    paths, labels = read_split_list(list_path, f"data.{key}", num_classes)
    if class_names is not None:
        names = list(class_names)
    elif split == "train" or not cfg.train_list:
        names = class_names_from_paths(paths, labels, num_classes)
    else:
        names = class_names_from_paths(*read_split_list(cfg.train_list, "data.train_list", num_classes), num_classes)
    full = np.char.add(str(root) + os.sep, np.asarray(paths, dtype=str))  # vectorised: 400k lines in 0.1 s
    source = f"data.{key} ({Path(list_path).expanduser()})"
    return FileListDataset(full, labels, names, transform, cfg.skip_corrupt, source=source, root=root)
