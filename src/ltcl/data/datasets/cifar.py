"""CIFAR-10/100-LT from the official torchvision folder or a packed .npz (raw arrays or JPEG bytes).

The training split is LDAM's long-tailed subset; ``val`` (``data.val_per_class`` > 0) is a class-balanced set
taken from the training images that subset leaves unused (:func:`ltcl.data.longtail.select_longtail_split`);
``test`` is the balanced official test set.
"""

from __future__ import annotations

import io
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import torchvision
from PIL import Image

from ltcl.config import DataConfig
from ltcl.data.datasets.base import DECODE_THREADS, PIL_ERRORS, ArrayDataset, decode_reason, map_chunks
from ltcl.data.longtail import longtail_counts, select_longtail_split
from ltcl.errors import UserError

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
CIFAR = {
    "cifar10_lt": (10, torchvision.datasets.CIFAR10),
    "cifar100_lt": (100, torchvision.datasets.CIFAR100),
}
# decode(indices (M,)) -> (images uint8 (M', H, W, 3), kept (M,) bool, problems [(where, reason)])
Decoder = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, list]]


def build_cifar(
    cfg: DataConfig, split: str, transform=None, class_names: list[str] | None = None
) -> ArrayDataset | None:
    """One split of CIFAR-10/100-LT; None for ``val`` when ``data.val_per_class`` is 0.

    ``val`` holds up to ``val_per_class`` images per class, from the training images the long-tailed subset
    leaves unused; the head class uses all of its images (5,000 in CIFAR-10-LT, 500 in CIFAR-100-LT), so it
    has none and its validation accuracy is n/a. The training subset is the same with or without ``val``.
    """
    if split == "val" and not cfg.val_per_class:
        return None
    labels, decode, names = _cifar_source(cfg, train=split != "test")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise UserError(
            f"data.root {cfg.root}: labels must lie in [0, {len(names)}), got {labels.min()}..{labels.max()}."
        )
    if class_names is not None:
        if len(class_names) != len(names):
            raise UserError(
                f"data.root {cfg.root} holds {len(names)} classes but the given class names number {len(class_names)}."
            )
        names = list(class_names)
    if split == "test":
        indices = np.arange(len(labels))
    else:
        largest = int(np.bincount(labels, minlength=len(names)).max())
        counts = longtail_counts(len(names), largest, cfg.imbalance_factor, cfg.imbalance_profile)
        train, val = select_longtail_split(labels, counts, cfg.subset_seed, cfg.val_per_class)
        indices = train if split == "train" else val
        if split == "val" and not len(indices):
            raise UserError(
                f"data.val_per_class={cfg.val_per_class} takes validation images from the training images that the "
                f"long-tailed subset leaves unused, and data.imbalance_factor={cfg.imbalance_factor:g} leaves none."
            )
    images, kept, problems = decode(indices)
    return ArrayDataset(images, labels[indices][kept], names, transform, problems, indices[kept])


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


def _cifar_source(cfg: DataConfig, train: bool) -> tuple[np.ndarray, Decoder, list[str]]:
    """Labels (N,), a decoder of the images of M indices, and the class names."""
    num_classes, tv_class = CIFAR[cfg.dataset]
    official = CIFAR10_CLASSES if num_classes == 10 else CIFAR100_CLASSES
    if not cfg.root:
        raise UserError(f"data.root is empty; expected a .npz file or the folder holding {tv_class.base_folder}/.")
    root = Path(cfg.root).expanduser()
    if root.suffix == ".npz":
        if not root.is_file():
            raise FileNotFoundError(f"data.root {root} does not exist; expected a packed CIFAR .npz file.")
        return _npz_source(root, "train" if train else "test", official, cfg.skip_corrupt)
    parent = root.parent if root.name == tv_class.base_folder else root
    if not (parent / tv_class.base_folder).is_dir() and not cfg.download:
        raise FileNotFoundError(
            f"data.root {root} holds no {tv_class.base_folder}/ folder; put the official python version of "
            f"the dataset there, point data.root at a .npz file, or set data.download=true."
        )
    try:
        data = _presence_checked(tv_class)(str(parent), train=train, download=cfg.download)
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as err:
        reason = type(err).__name__ if "pickle" in str(err).lower() else str(err)
        raise UserError(f"CIFAR folder {parent / tv_class.base_folder} cannot be read ({reason}).") from None
    images = np.ascontiguousarray(data.data)
    return np.asarray(data.targets, dtype=np.int64), _all_kept(images), list(data.classes)


def _all_kept(images: np.ndarray) -> Decoder:
    return lambda idx: (images[idx], np.ones(len(idx), dtype=bool), [])


def read_npz(path: Path, split: str) -> dict[str, np.ndarray]:
    """The arrays of one split (``*_<split>``) and ``class_names`` of a packed file.

    Raises:
        ValueError: one sentence naming ``path`` when the file is truncated, damaged, not an .npz archive, or
            holds pickled objects (never loaded: unpickling runs arbitrary code).
    """
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a readable .npz archive (it is truncated, damaged or another kind of file).")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            for key in [k for k in archive.files if k.endswith(f"_{split}") or k == "class_names"]:
                try:
                    arrays[key] = archive[key]
                except ValueError as err:
                    if "pickle" in str(err).lower() or "object arrays" in str(err).lower():
                        raise _Pickled(key) from None
                    raise
    except _Pickled as pickled:
        raise UserError(
            f"{path} holds pickled Python objects (array {pickled.args[0]}), which ltcl does not load; "
            f"store the images, labels and class names as plain numeric or string arrays."
        ) from None
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error, ValueError, KeyError) as err:
        reason = type(err).__name__ if "pickle" in str(err).lower() else str(err)  # numpy's advice never reaches users
        raise UserError(f"{path} is damaged and cannot be read ({reason}).") from None
    return arrays


class _Pickled(Exception):
    """An array of a packed file holds Python objects (its key in args[0])."""


def _npz_source(path: Path, split: str, official: list[str], skip_corrupt: bool):
    arrays = read_npz(path, split)
    keys = set(arrays)
    if f"y_{split}" not in keys:
        raise UserError(f"{path} has no array y_{split}; expected x_/y_ or jpeg_/offsets_/y_ arrays per split.")
    labels = arrays[f"y_{split}"].astype(np.int64)
    names = [str(n) for n in arrays["class_names"]] if "class_names" in keys else list(official)
    if len(names) != len(official):
        raise UserError(f"{path}: class_names holds {len(names)} names; expected {len(official)}.")
    if f"x_{split}" in keys:
        images = arrays[f"x_{split}"]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(labels):
            raise UserError(f"{path}: x_{split} must be uint8 (N, H, W, 3) with one image per label in y_{split}.")
        return labels, _all_kept(images), names
    if {f"jpeg_{split}", f"offsets_{split}"} <= keys:
        blob, offsets = arrays[f"jpeg_{split}"], arrays[f"offsets_{split}"].astype(np.int64)
        if len(offsets) != len(labels) + 1:
            raise UserError(f"{path}: offsets_{split} must hold one more entry than y_{split} has labels.")
        if (
            blob.dtype != np.uint8
            or blob.ndim != 1
            or (len(offsets) and not 0 <= offsets.min() <= offsets.max() <= len(blob))
        ):
            raise UserError(f"{path}: jpeg_{split} must be 1-D uint8 and offsets_{split} must lie inside it.")

        def where(i: int) -> str:
            label = labels[i]
            name = names[label] if 0 <= label < len(names) else str(label)
            return f"packed image {i} ({split}, {name}) of {path}"

        return labels, lambda idx: _decode_packed(blob, offsets, idx, where, skip_corrupt, path), names
    raise UserError(f"{path} has neither x_{split} nor jpeg_{split} with offsets_{split}; found {sorted(keys)}.")


def _decode_packed(
    blob: np.ndarray, offsets: np.ndarray, indices: np.ndarray, where: Callable[[int], str], skip: bool, path: Path
) -> tuple[np.ndarray, np.ndarray, list]:
    """Decodes the packed images ``indices`` (M,) with Pillow, in threads: uint8 (M', H, W, 3), the kept mask
    (M,) and the ``(where, reason)`` of each dropped one (``skip``; otherwise the first bad one raises)."""
    view = memoryview(blob)

    def decode(chunk: np.ndarray) -> list:
        out = []
        for i in chunk.tolist():  # once per image at construction, never per training step
            try:
                with Image.open(io.BytesIO(view[offsets[i] : offsets[i + 1]])) as image:
                    out.append(np.asarray(image.convert("RGB")))
            except PIL_ERRORS as err:
                out.append(decode_reason(err))
        return out

    results = map_chunks(decode, np.asarray(indices, dtype=np.int64), DECODE_THREADS, chunk=512)
    kept = np.fromiter((isinstance(r, np.ndarray) for r in results), dtype=bool, count=len(results))
    reasons = [r for r in results if isinstance(r, str)]
    problems = [(where(i), f"cannot be decoded ({r})") for i, r in zip(np.asarray(indices)[~kept].tolist(), reasons)]
    if problems and not skip:
        raise UserError(f"{problems[0][0]} {problems[0][1]}; set data.skip_corrupt=true to leave such images out.")
    images = [r for r in results if isinstance(r, np.ndarray)]
    if not images:
        return np.zeros((0, 32, 32, 3), dtype=np.uint8), kept, problems
    try:
        return np.stack(images), kept, problems
    except ValueError:  # numpy's text names no file
        raise UserError(f"The packed images of {path} differ in size; expected one height and width for all.") from None
