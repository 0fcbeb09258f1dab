"""The dataset interface, in-memory and file-backed datasets, and reading one image file.

Every dataset yields ``(PIL RGB image through .transform, int label)`` and exposes ``targets`` (N,) int64,
``classes``, ``num_classes``, ``class_counts()``, a settable ``transform`` and ``problems``: the images left out
when it was built (``data.skip_corrupt``), as ``(where, reason)`` pairs.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ltcl.config import DataConfig
from ltcl.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# File-system calls release the GIL: threads hide the latency of network file systems (on a local disk with a warm
# cache one thread is as fast). Decoding is CPU-bound: one thread per core.
STAT_THREADS = 16
DECODE_THREADS = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
CHUNK = 2048  # paths per thread task: few enough tasks that the executor's own cost stays small
PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)  # PIL reports bad data with all
_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


class LabelledDataset(Dataset):
    """The interface shared by every dataset here; subclasses implement ``_load(index) -> PIL RGB image``."""

    def __init__(self, targets: np.ndarray, classes: list[str], transform: Callable | None = None):
        self.targets = np.asarray(targets, dtype=np.int64)
        self.classes = list(classes)
        self.transform = transform
        self.problems: list[tuple[str, str]] = []  # (where, reason) of each image left out at build time

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
    """Images held in memory as ``images``: uint8 (N, H, W, 3).

    ``indices`` ((N,) int64) are the images' positions in the arrays they came from (a CIFAR or digits split's
    arrays; ``val`` images come from the training arrays), and ``problems`` lists the images dropped while
    decoding them (a packed file read with ``data.skip_corrupt``).
    """

    def __init__(self, images: np.ndarray, targets, classes, transform=None, problems=(), indices=None):
        super().__init__(targets, classes, transform)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise UserError(f"images must be uint8 of shape (N, H, W, 3), got {images.dtype} {images.shape}.")
        if len(images) != len(self.targets):
            raise UserError(f"Got {len(images)} images but {len(self.targets)} labels; expected one label each.")
        self.images = images
        self.problems = list(problems)
        self.indices = np.arange(len(images), dtype=np.int64) if indices is None else np.asarray(indices, np.int64)

    def _load(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])  # (H, W, 3) uint8 gives mode RGB


class FileListDataset(LabelledDataset):
    """Images read from files (``paths``, (N,) str) when loaded.

    Construction checks that every file exists (threaded ``os.path.isfile``, about 0.3 s per 100,000 paths on
    a local disk) and raises one ValueError for missing ones; with ``skip_corrupt`` it instead opens and decodes
    every image once and leaves out the missing and undecodable ones (``skipped``: their paths, ``problems``: their
    reasons, which the trainer and ``ltcl data`` print one line each; ``decoded`` is then True).

    Args:
        paths: image files, absolute or relative to the working directory.
        targets: (N,) labels.
        classes: C class names.
        source: what listed the images (``"data.train_list (/x/train.txt)"``), for messages.
        root: the folder they lie under, for messages (paths are shown relative to it).
    """

    def __init__(
        self, paths, targets, classes, transform=None, skip_corrupt: bool = False, *, source: str = "", root=""
    ):
        super().__init__(targets, classes, transform)
        # A NumPy string array, not a list of str: DataLoader workers then share it without copy-on-read.
        self.paths = np.asarray(paths, dtype=str)
        if len(self.paths) != len(self.targets):
            raise UserError(f"Got {len(self.paths)} paths but {len(self.targets)} labels; expected one label each.")
        self.source, self.root = source or "this dataset", str(root)
        self.skipped: list[str] = []
        self.decoded = bool(skip_corrupt)  # every image was opened and decoded here (check_images needs no more)
        if not len(self.paths):
            return
        exists = files_exist(self.paths)
        if not skip_corrupt:
            if not exists.all():
                missing = self.paths[~exists]
                raise UserError(
                    f"{len(missing)} of {len(self.paths)} images of {self.source} are missing under "
                    f"{self.root or os.getcwd()}, first: {', '.join(self._shown(missing[:3]))}."
                )
            return
        reasons = np.full(len(self.paths), "missing", dtype=object)
        reasons[exists] = map_chunks(decode_problems, self.paths[exists], DECODE_THREADS)
        bad = np.fromiter((r is not None for r in reasons), dtype=bool, count=len(reasons))
        if bad.any():
            self.skipped = self.paths[bad].tolist()
            self.problems = list(zip(self.skipped, reasons[bad].tolist()))
            self.paths, self.targets = self.paths[~bad], self.targets[~bad]
        if not len(self.paths):
            raise UserError(
                f"Every image of {self.source} is missing or unreadable under {self.root}; check data.root."
            )

    def _shown(self, paths) -> list[str]:
        return [os.path.relpath(p, self.root) if self.root else str(p) for p in paths]

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
    except PIL_ERRORS as err:
        raise UserError(f"Image {path} cannot be decoded ({decode_reason(err)}).") from None


def decode_reason(err: Exception) -> str:
    """Why PIL could not decode an image, without PIL's ``<_io.BytesIO object at 0x...>`` or a repeated path."""
    if isinstance(err, UnidentifiedImageError):
        return "not an image format Pillow can read"
    return _OBJECT_REPR.sub("", str(err)).strip() or type(err).__name__


def image_problem(path: str) -> str | None:
    """None when ``path`` opens and decodes, else the reason ("missing", or why it does not decode)."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (1, 1))  # JPEG: decode at 1/8 scale, which still reads every byte
            image.load()
        return None
    except FileNotFoundError:
        return "missing"
    except PIL_ERRORS as err:
        return f"cannot be decoded ({decode_reason(err)})"


def files_exist(paths: np.ndarray) -> np.ndarray:
    """(N,) bool: whether each of ``paths`` ((N,) str) is an existing file; threaded ``os.path.isfile``."""
    return np.asarray(map_chunks(_exist_chunk, np.asarray(paths, dtype=str), STAT_THREADS), dtype=bool)


def _exist_chunk(paths: np.ndarray) -> list[bool]:
    return list(map(os.path.isfile, paths.tolist()))


def decode_problems(paths: np.ndarray) -> list[str | None]:
    return list(map(image_problem, paths.tolist()))


def map_chunks(
    fn: Callable[[np.ndarray], list], items: np.ndarray, threads: int, progress=None, chunk: int = CHUNK
) -> list:
    """``fn`` over chunks of ``items`` in threads, results in order; ``progress(k)`` after each chunk of k."""
    chunks = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    pool = ThreadPoolExecutor(min(threads, len(chunks))) if len(chunks) > 1 else None
    out: list = []
    try:
        for part_items, part in zip(chunks, pool.map(fn, chunks) if pool else map(fn, chunks)):
            out += part
            if progress is not None:
                progress(len(part_items))  # from this thread only: progress bars need not be thread-safe
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return out


def existing_root(cfg: DataConfig) -> Path:
    """``data.root`` as an existing folder, or one error naming it."""
    if not cfg.root:
        raise UserError(f"data.root is empty; expected the image folder of {cfg.dataset}.")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data.root {root} is not an existing folder; expected the image folder.")
    return root
