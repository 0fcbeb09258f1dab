"""Datasets: CIFAR-10/100-LT, split lists (ImageNet-LT, Places-LT, iNat 2018), class-folder trees, and the
bundled default (scikit-learn's digits, long-tailed).

Every dataset yields ``(PIL RGB image through .transform, int label)`` and exposes ``targets`` (np.int64),
``classes``, ``num_classes``, ``class_counts()`` and a settable ``transform``; in-memory ones also expose
``images``, uint8 (N, H, W, 3). :func:`build_split` is the entry point. Training splits are long-tailed by the
LDAM rule (:mod:`ltcl.data.longtail`); test splits are the standard balanced ones.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import Dataset

from ltcl.config import DataConfig
from ltcl.data.longtail import PROFILES, longtail_counts, select_longtail_indices

DATASETS = ("digits_lt", "cifar10_lt", "cifar100_lt", "imagenet_lt", "places_lt", "inat2018", "image_folder")
SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
LIST_NUM_CLASSES = {"imagenet_lt": 1000, "places_lt": 365, "inat2018": 8142}
CIFAR10_CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()
CIFAR100_CLASSES = """
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel
can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur
dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion
lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree
pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea
seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank
telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm
""".split()


class LabelledDataset(Dataset):
    """The interface shared by every dataset here; subclasses implement ``_load(index) -> PIL RGB image``."""

    def __init__(self, targets: np.ndarray, classes: list[str], transform: Callable | None = None):
        self.targets = np.asarray(targets, dtype=np.int64)
        self.classes = list(classes)
        self.transform = transform

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self) -> list[int]:
        """Items per class in this dataset, index = label."""
        return np.bincount(self.targets, minlength=self.num_classes).tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = self._load(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])

    def _load(self, index: int) -> Image.Image:
        raise NotImplementedError


class ArrayDataset(LabelledDataset):
    """Images held in memory as ``images``: uint8 (N, H, W, 3)."""

    def __init__(self, images: np.ndarray, targets, classes, transform=None):
        super().__init__(targets, classes, transform)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"images must be uint8 of shape (N, H, W, 3), got {images.dtype} {images.shape}."
            )
        if len(images) != len(self.targets):
            raise ValueError(
                f"Got {len(images)} images but {len(self.targets)} labels; expected one label each."
            )
        self.images = images

    def _load(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])  # (H, W, 3) uint8 gives mode RGB


class FileListDataset(LabelledDataset):
    """Images read from files (``paths``) when loaded; ``skip_corrupt`` checks them all up front."""

    def __init__(self, paths, targets, classes, transform=None, skip_corrupt: bool = False):
        super().__init__(targets, classes, transform)
        # A NumPy string array, not a list of str: DataLoader workers then share it without copy-on-read.
        self.paths = np.asarray([str(p) for p in paths], dtype=str)
        self.skipped: list[str] = []
        if skip_corrupt and len(self.paths):
            with ThreadPoolExecutor(max_workers=16) as pool:
                ok = np.fromiter(
                    pool.map(_is_readable, self.paths, chunksize=64), dtype=bool, count=len(self.paths)
                )
            self.skipped = self.paths[~ok].tolist()
            self.paths, self.targets = self.paths[ok], self.targets[ok]
            if self.skipped:
                warnings.warn(
                    f"Skipped {len(self.skipped)} of {len(ok)} images that are missing or cannot be decoded, "
                    f"first: {', '.join(self.skipped[:5])}.",
                    stacklevel=2,
                )
            if not len(self.paths):
                raise ValueError("Every image of this split is missing or unreadable; check data.root.")

    def _load(self, index: int) -> Image.Image:
        return load_image(self.paths[index])


def load_image(path: str | Path) -> Image.Image:
    """Opens an image as RGB; a missing or undecodable file raises an error that names its full path."""
    path = Path(path).absolute()
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"Image {path} does not exist.") from None
    except (OSError, SyntaxError, ValueError) as err:  # PIL reports bad data with all three
        raise ValueError(f"Image {path} cannot be decoded ({err}).") from None


def _is_readable(path: str) -> bool:
    try:
        with Image.open(path) as image:
            image.draft("RGB", (1, 1))  # JPEG: decode at 1/8 scale, which still reads every byte
            image.load()
        return True
    except (OSError, SyntaxError, ValueError):
        return False


# ----------------------------------------------------------------------------------------------------------
# CIFAR-10/100: the official torchvision folder or a packed .npz (raw arrays or JPEG bytes)


def _presence_checked(base: type) -> type:
    """torchvision's CIFAR class with its MD5 checks reduced to presence checks, so that copies holding other
    images in the official format load too; a damaged file still fails when it is unpickled, and a download
    still checks the archive's MD5."""
    return type(
        f"Local{base.__name__}",
        (base,),
        {
            "train_list": [[name, None] for name, _ in base.train_list],
            "test_list": [[name, None] for name, _ in base.test_list],
            "meta": {**base.meta, "md5": None},
        },
    )


_CIFAR = {
    "cifar10_lt": (10, torchvision.datasets.CIFAR10),
    "cifar100_lt": (100, torchvision.datasets.CIFAR100),
}


def _cifar_source(
    cfg: DataConfig, train: bool
) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray], list]:
    """Labels (N,), a function that returns uint8 images (M, H, W, 3) for M indices, and the class names."""
    num_classes, tv_class = _CIFAR[cfg.dataset]
    official = CIFAR10_CLASSES if num_classes == 10 else CIFAR100_CLASSES
    if not cfg.root:
        raise ValueError(
            f"data.root is empty; expected a .npz file or the folder holding {tv_class.base_folder}/."
        )
    root = Path(cfg.root).expanduser()
    if root.suffix == ".npz":
        if not root.is_file():
            raise FileNotFoundError(f"data.root {root} does not exist; expected a packed CIFAR .npz file.")
        return _npz_source(root, "train" if train else "test", official)
    parent = root.parent if root.name == tv_class.base_folder else root
    if not (parent / tv_class.base_folder).is_dir() and not cfg.download:
        raise FileNotFoundError(
            f"data.root {root} holds no {tv_class.base_folder}/ folder; put the official python version of "
            f"the dataset there, point data.root at a .npz file, or set data.download=true."
        )
    try:
        data = _presence_checked(tv_class)(str(parent), train=train, download=cfg.download)
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as err:
        raise ValueError(f"CIFAR folder {parent / tv_class.base_folder} cannot be read ({err}).") from None
    images = np.ascontiguousarray(data.data)
    return np.asarray(data.targets, dtype=np.int64), lambda idx: images[idx], list(data.classes)


def _npz_source(path: Path, split: str, official: list[str]):
    with np.load(path, allow_pickle=False) as archive:
        arrays = {
            key: archive[key] for key in archive.files if key.endswith(f"_{split}") or key == "class_names"
        }
    keys = set(arrays)
    if f"y_{split}" not in keys:
        raise ValueError(
            f"{path} has no array y_{split}; expected x_/y_ or jpeg_/offsets_/y_ arrays per split."
        )
    labels = arrays[f"y_{split}"].astype(np.int64)
    if f"x_{split}" in keys:
        images = arrays[f"x_{split}"]
        if (
            images.dtype != np.uint8
            or images.ndim != 4
            or images.shape[-1] != 3
            or len(images) != len(labels)
        ):
            raise ValueError(
                f"{path}: x_{split} must be uint8 (N, H, W, 3) with one image per label in y_{split}."
            )
        decode = lambda idx: images[idx]  # noqa: E731
    elif {f"jpeg_{split}", f"offsets_{split}"} <= keys:
        blob, offsets = arrays[f"jpeg_{split}"], arrays[f"offsets_{split}"]
        if len(offsets) != len(labels) + 1:
            raise ValueError(f"{path}: offsets_{split} must hold one more entry than y_{split} has labels.")
        decode = lambda idx: _decode_jpegs(blob, offsets, idx, path)  # noqa: E731
    else:
        raise ValueError(
            f"{path} has neither x_{split} nor jpeg_{split} with offsets_{split}; found {sorted(keys)}."
        )
    names = [str(n) for n in arrays["class_names"]] if "class_names" in keys else list(official)
    if len(names) != len(official):
        raise ValueError(f"{path}: class_names holds {len(names)} names; expected {len(official)}.")
    return labels, decode, names


def _decode_jpegs(blob: np.ndarray, offsets: np.ndarray, indices: np.ndarray, path: Path) -> np.ndarray:
    """Decodes the JPEG images ``indices`` of a packed buffer with Pillow: uint8 (M, H, W, 3)."""
    view = memoryview(blob)
    out = []
    for i in indices:  # once per image at construction, never per training step
        try:
            image = Image.open(io.BytesIO(view[offsets[i] : offsets[i + 1]])).convert("RGB")
        except (OSError, SyntaxError, ValueError) as err:
            raise ValueError(f"{path}: packed image {i} cannot be decoded ({err}).") from None
        out.append(np.asarray(image))
    return np.stack(out) if out else np.zeros((0, 32, 32, 3), dtype=np.uint8)


def _build_cifar(cfg: DataConfig, split: str, transform) -> ArrayDataset | None:
    if split == "val":
        return None
    labels, decode, names = _cifar_source(cfg, train=split == "train")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise ValueError(
            f"data.root {cfg.root}: labels must lie in [0, {len(names)}), got {labels.min()}..{labels.max()}."
        )
    indices = _longtail_subset(cfg, labels, len(names)) if split == "train" else np.arange(len(labels))
    return ArrayDataset(decode(indices), labels[indices], names, transform)


def _longtail_subset(cfg: DataConfig, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """LDAM-rule subset of ``labels`` with max_count = the largest class; the config's factor and profile."""
    largest = int(np.bincount(labels, minlength=num_classes).max())
    counts = longtail_counts(num_classes, largest, cfg.imbalance_factor, cfg.imbalance_profile)
    return select_longtail_indices(labels, counts, seed=cfg.subset_seed)


# ----------------------------------------------------------------------------------------------------------
# Split lists: "<relative path> <label>" lines under an image root


def read_split_list(path: str | Path, key: str, num_classes: int) -> tuple[list[str], np.ndarray]:
    """Relative paths and labels (N,) of a split file; ``key`` (``data.train_list``...) names it in errors."""
    if not str(path):
        raise ValueError(f"{key} is empty; expected a split file with '<image path> <label>' lines.")
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
                raise ValueError(
                    f"{path}, line {number}: expected '<image path> <integer label>', got {text!r}."
                )
            if not 0 <= label < num_classes:
                raise ValueError(
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
    for label, index in zip(seen.tolist(), first.tolist()):
        names[label] = PurePosixPath(paths[index]).parent.name or str(label)
    return names


def _build_split_list(cfg: DataConfig, split: str, transform) -> FileListDataset | None:
    key = f"{split}_list"
    if split == "val" and not cfg.val_list:
        return None
    num_classes = cfg.num_classes or LIST_NUM_CLASSES[cfg.dataset]
    root = _existing_root(cfg)
    paths, labels = read_split_list(getattr(cfg, key), f"data.{key}", num_classes)
    # Names come from the training list so that every split shares them.
    named = (
        (paths, labels)
        if split == "train" or not cfg.train_list
        else read_split_list(cfg.train_list, "data.train_list", num_classes)
    )
    names = class_names_from_paths(*named, num_classes)
    full = [os.path.join(root, p) for p in paths]  # os.path: ~10x faster than Path for 400k lines
    return FileListDataset(full, labels, names, transform, cfg.skip_corrupt)


def _existing_root(cfg: DataConfig) -> Path:
    if not cfg.root:
        raise ValueError(f"data.root is empty; expected the image folder of {cfg.dataset}.")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data.root {root} is not an existing folder; expected the image folder.")
    return root


# ----------------------------------------------------------------------------------------------------------
# Class-folder trees: root/{train,val,test}/<class>/<image files>


def _subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _build_image_folder(cfg: DataConfig, split: str, transform) -> FileListDataset | None:
    root = _existing_root(cfg)
    if not (root / "train").is_dir():
        raise FileNotFoundError(
            f"{root / 'train'} does not exist; expected {root}/train/<class>/<image files>."
        )
    classes = _subfolders(root / "train")
    if not classes:
        raise ValueError(
            f"{root / 'train'} holds no class folders; expected {root}/train/<class>/<image files>."
        )
    folder = root / split
    if not folder.is_dir():
        if split == "val":
            return None
        raise FileNotFoundError(f"{folder} does not exist; expected {folder}/<class>/<image files>.")
    unknown = sorted(set(_subfolders(folder)) - set(classes))
    if unknown:
        raise ValueError(f"{folder / unknown[0]} names a class that {root / 'train'} does not have.")
    paths, labels = [], []
    for label, name in enumerate(classes):  # one iteration per class
        files = sorted(
            p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if split == "train" and not files:
            raise ValueError(
                f"{folder / name} holds no images (expected {', '.join(IMAGE_EXTENSIONS)} files)."
            )
        paths += files
        labels += [label] * len(files)
    labels = np.asarray(labels, dtype=np.int64)
    indices = np.arange(len(labels))
    if split == "train" and cfg.imbalance_factor > 1:
        indices = _longtail_subset(cfg, labels, len(classes))
    return FileListDataset([paths[i] for i in indices], labels[indices], classes, transform, cfg.skip_corrupt)


# ----------------------------------------------------------------------------------------------------------
# The bundled default: scikit-learn's digits, 8x8 grey -> 32x32 RGB, long-tailed


DIGITS_TEST_PER_CLASS = 50


def digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 (N, 32, 32, 3), labels (N,), and a mask (N,) of the balanced test set
    (the last 50 images of each class in scikit-learn's order)."""
    from sklearn.datasets import load_digits  # imported here: only the default dataset needs it

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    grey = torch.from_numpy(digits.images * (255.0 / 16.0)).float().unsqueeze(1)  # (N, 1, 8, 8), 0..255
    big = torch.nn.functional.interpolate(grey, size=(32, 32), mode="bilinear", align_corners=False)
    images = big.round().clamp(0, 255).to(torch.uint8).squeeze(1).unsqueeze(-1).expand(-1, -1, -1, 3)
    test = np.zeros(len(labels), dtype=bool)
    for c in range(10):  # one iteration per class
        test[np.flatnonzero(labels == c)[-DIGITS_TEST_PER_CLASS:]] = True
    return np.ascontiguousarray(images.numpy()), labels, test


def _build_digits(cfg: DataConfig, split: str, transform) -> ArrayDataset | None:
    if split == "val":
        return None
    images, labels, test = digits_arrays()
    if split == "test":
        indices = np.flatnonzero(test)
    else:
        pool = np.flatnonzero(~test)
        smallest = int(np.bincount(labels[pool], minlength=10).min())  # every class can then fill its quota
        counts = longtail_counts(10, smallest, cfg.imbalance_factor, cfg.imbalance_profile)
        indices = pool[select_longtail_indices(labels[pool], counts, seed=cfg.subset_seed)]
    return ArrayDataset(images[indices], labels[indices], [str(c) for c in range(10)], transform)


# ----------------------------------------------------------------------------------------------------------


def build_split(
    data_cfg: DataConfig, split: str, transform: Callable | None = None
) -> LabelledDataset | None:
    """One split of the configured dataset.

    Args:
        data_cfg: the ``data`` section of the config (``dataset`` picks the builder).
        split: ``"train"`` (long-tailed), ``"val"`` or ``"test"`` (balanced, as published).
        transform: applied to every PIL RGB image when loaded; settable later as ``dataset.transform``.

    Returns:
        The dataset, or None for ``"val"`` when the dataset has no validation split.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}.")
    if data_cfg.dataset not in DATASETS:
        raise ValueError(
            f"data.dataset {data_cfg.dataset!r} is unknown; expected one of {', '.join(DATASETS)}."
        )
    if not data_cfg.imbalance_factor >= 1:
        raise ValueError(f"data.imbalance_factor must be a number >= 1, got {data_cfg.imbalance_factor!r}.")
    if data_cfg.imbalance_profile not in PROFILES:
        raise ValueError(
            f"data.imbalance_profile must be one of {', '.join(PROFILES)}, "
            f"got {data_cfg.imbalance_profile!r}."
        )
    if data_cfg.num_classes < 0:
        raise ValueError(
            f"data.num_classes must be >= 0 (0: the dataset's standard), got {data_cfg.num_classes}."
        )
    if data_cfg.dataset in _CIFAR:
        return _build_cifar(data_cfg, split, transform)
    if data_cfg.dataset in LIST_NUM_CLASSES:
        return _build_split_list(data_cfg, split, transform)
    if data_cfg.dataset == "image_folder":
        return _build_image_folder(data_cfg, split, transform)
    return _build_digits(data_cfg, split, transform)
