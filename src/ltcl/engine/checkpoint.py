"""Checkpoints: atomic writes, and contents that ``torch.load(weights_only=True)`` accepts (reference.md, trap 6).

A checkpoint holds plain dicts, lists, numbers, strings and tensors only: the config as a dict, the random
generator states as tensors. It is written to a temporary file in the same folder, flushed to disk, then renamed
over the old one, so a run killed while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1


def save_atomic(state: dict[str, Any], path: str | Path) -> None:
    """Writes ``state`` to ``path`` so that readers see either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Loads a checkpoint written by ltcl (weights only, on the CPU).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not an ltcl checkpoint, or is damaged.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"Checkpoint {path} could not be read ({reason}).") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION or "model" not in state:
        raise ValueError(f"Checkpoint {path} was not written by ltcl's trainer (no format {FORMAT_VERSION} marker).")
    return state


def rng_state() -> dict[str, Any]:
    """Every random generator's state, as tensors and plain numbers."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy_position": int(position),
        "numpy_has_gauss": int(has_gauss),
        "numpy_cached": float(cached),
        "python": torch.tensor(python_state, dtype=torch.int64),
        "python_version": int(version),
        "python_gauss": None if gauss is None else float(gauss),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_position"],
            state["numpy_has_gauss"],
            state["numpy_cached"],
        )
    )
    random.setstate((state["python_version"], tuple(state["python"].tolist()), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
