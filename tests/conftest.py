"""Shared fixtures: where the real data lives, and a fresh seed for every test."""

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def shared_file(relative: str) -> Path:
    """A file under ../shared/data; a missing one fails loudly (CI must not skip silently)."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.fail(f"Test data {path} is missing: the checkout expects ../shared/data beside it.")
    return path


@pytest.fixture
def cifar10_npz() -> Path:
    return shared_file("cifar10_jpeg.npz")


@pytest.fixture
def lt_splits() -> Path:
    return shared_file("lt_splits")


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
