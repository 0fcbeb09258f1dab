"""Shared fixtures: where the real data lives, and a fresh seed for every test."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core this process may run on (the affinity mask, which a container sets; the
    machine's count can be far larger), at most four: each worker holds torch and its own fixtures."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cores))


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs one worker per core) each worker, and every ltcl process it starts,
    keeps to one thread: two workers of two threads each on two cores would fight over them."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        os.environ["MKL_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def shared_file(relative: str) -> Path:
    """A file under ../shared/data; a missing one fails loudly (CI must not skip silently)."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.fail(f"Test data {path} is missing: the checkout expects ../shared/data beside it.")
    return path


@pytest.fixture
def cifar10_npz() -> Path:
    return shared_file("cifar10_jpeg.npz")


@pytest.fixture(scope="session")
def small_cifar10_npz(tmp_path_factory) -> Path:
    """The shared file's format with its first 120 training and 20 test images of each class (their JPEG bytes).

    For end-to-end runs through the command line, whose cost would otherwise be decoding and evaluating the full
    10,000-image test set in every subprocess; the long-tailed subset is drawn from the 120 as from the 5,000.
    """
    full = np.load(shared_file("cifar10_jpeg.npz"))
    arrays = {"class_names": full["class_names"]}
    for split, per_class in (("train", 120), ("test", 20)):
        labels, offsets, jpeg = full[f"y_{split}"], full[f"offsets_{split}"], full[f"jpeg_{split}"]
        keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(len(arrays["class_names"]))])
        sizes = offsets[keep + 1] - offsets[keep]
        arrays[f"jpeg_{split}"] = np.concatenate([jpeg[offsets[i] : offsets[i + 1]] for i in keep])
        arrays[f"offsets_{split}"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        arrays[f"y_{split}"] = labels[keep]
    path = tmp_path_factory.mktemp("data") / "cifar10_small.npz"
    np.savez(path, **arrays)
    return path


@pytest.fixture
def lt_splits() -> Path:
    return shared_file("lt_splits")


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
