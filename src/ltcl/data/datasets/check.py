"""Opening and decoding every image of a dataset once (``ltcl data --check``)."""

from __future__ import annotations

from typing import Callable

from ltcl.data.datasets.base import DECODE_THREADS, ArrayDataset, FileListDataset, decode_problems, map_chunks

LEFT_OUT = "; left out (data.skip_corrupt)"


def check_images(
    dataset: ArrayDataset | FileListDataset, progress: Callable[[int], object] | None = None
) -> list[tuple[str, str]]:
    """Every image of ``dataset`` that is missing or does not decode, as ``(where, reason)`` pairs.

    Files are opened and decoded in threads, each once; in-memory datasets (CIFAR, packed .npz, digits) were
    decoded when they were built, and so were file datasets built with ``data.skip_corrupt``: their problems are
    the ones recorded then. Images left out at build time (``data.skip_corrupt``) are listed, their reason ending
    in ``"; left out (data.skip_corrupt)"``; ``dataset.problems`` holds them alone.

    Args:
        dataset: a dataset of :mod:`ltcl.data.datasets`.
        progress: called from the calling thread with the number of images just checked (an increment, as
            ``tqdm.update`` takes); the increments sum to ``len(dataset)``.

    Returns:
        ``(where, reason)``: ``where`` is a file path or ``"packed image i (split, class) of PATH"``; ``reason``
        is ``"missing"`` or ``"cannot be decoded (...)"``.
    """
    if not isinstance(dataset, (ArrayDataset, FileListDataset)):
        raise TypeError(f"check_images takes a dataset of ltcl.data.datasets, got {type(dataset).__name__}.")
    problems = [(where, reason + LEFT_OUT) for where, reason in dataset.problems]
    if isinstance(dataset, ArrayDataset) or dataset.decoded:
        if progress is not None and len(dataset):
            progress(len(dataset))  # decoded at build time: nothing left to open
        return problems
    reasons = map_chunks(decode_problems, dataset.paths, DECODE_THREADS, progress, chunk=64)
    return problems + [(p, r) for p, r in zip(dataset.paths.tolist(), reasons) if r is not None]
