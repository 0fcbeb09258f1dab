"""Checkpoints: one schema, atomic writes, and contents that ``torch.load(weights_only=True)`` accepts.

A checkpoint holds plain dicts, lists, numbers, strings and tensors only, so that ``torch.load(weights_only=True)``
reads it without unpickling code (a NumPy RNG state or a config object would need that): the stateful
objects of :class:`~ltcl.engine.state.TrainState` under their own names (``STATEFUL``), its counters
(``COUNTERS``), the random generator states as tensors, and the facts needed to use the model without the
training data (``FACTS``: the config as a dict, the class counts and names). It is written to a temporary file in
the same folder, flushed, then renamed over the old one, so a run killed while saving keeps its previous
checkpoint.
"""

from __future__ import annotations

import os
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltcl.config import migrate_renamed_keys
from ltcl.engine.rundir import RunDir
from ltcl.engine.state import TrainState
from ltcl.errors import UserError

# 3: named epoch statistics and method sections in the config. Format 2 (before the method registry) is read too:
# its config keys and statistics are moved to their new names, and the objective's state by the method itself.
FORMAT_VERSION = 3
READABLE_FORMATS = (2, 3)
STATEFUL = ("model", "objective", "optimizer", "scaler", "progress", "ema")  # objects with state_dict()
# Saved since the format-3 checkpoints that lacked them: absent on load means "none" (such a run had no EMA).
OPTIONAL = ("ema",)
COUNTERS = ("epoch", "batch", "global_step", "best")
FACTS = ("config", "class_counts", "class_names")


class Checkpointer:
    """Saves and restores a :class:`TrainState` in a run directory (only rank 0 writes).

    Args:
        run_dir: where ``checkpoint_last.pt`` and ``checkpoint_best.pt`` live.
        facts: the config dict, class counts and class names stored with every checkpoint.
        is_main: whether this process writes.
    """

    def __init__(self, run_dir: RunDir, facts: dict[str, Any], *, is_main: bool) -> None:
        if set(facts) != set(FACTS):
            raise ValueError(f"Checkpointer facts must be exactly {', '.join(FACTS)}.")
        self.run_dir, self.facts, self.is_main = run_dir, facts, is_main

    def save_last(self, state: TrainState) -> None:
        self._save(state, self.run_dir.last_checkpoint)

    def save_best(self, state: TrainState) -> None:
        self._save(state, self.run_dir.best_checkpoint)

    def _save(self, state: TrainState, path: Path) -> None:
        # Every process collects the state (the epoch sums are all-reduced in the process); rank 0 writes it.
        contents: dict[str, Any] = {"format": FORMAT_VERSION, "rng": rng_state(), **self.facts}
        for name in STATEFUL:
            obj = getattr(state, name)
            contents[name] = None if obj is None else obj.state_dict()
        contents |= {name: getattr(state, name) for name in COUNTERS}
        if self.is_main:
            save_atomic(contents, path)


def restore(state: TrainState, checkpoint: dict[str, Any]) -> None:
    """Loads every stateful object, the counters and the random generators of ``checkpoint`` into ``state``."""
    for name in STATEFUL:
        obj, saved = getattr(state, name), checkpoint.get(name) if name in OPTIONAL else checkpoint[name]
        if obj is not None and saved is not None:
            obj.load_state_dict(saved)
    for name in COUNTERS:
        setattr(state, name, checkpoint[name])
    set_rng_state(checkpoint["rng"])


def save_atomic(contents: dict[str, Any], path: str | Path) -> None:
    """Writes ``contents`` to ``path`` so that readers see either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(contents, file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's file is private (0600); checkpoints follow the umask
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: put it back at once
    os.umask(mask)
    return mask


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Loads a checkpoint written by ltcl (tensors and plain values only, on the CPU).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a directory, a damaged or foreign file, or a checkpoint of another format version. The message
            never repeats torch's advice to unpickle the file: a file we cannot read safely is not read at all.
    """
    path = Path(path)
    if path.is_dir():
        inside = [name for name in (RunDir.LAST, RunDir.BEST) if (path / name).is_file()]
        hint = f"; it holds {' and '.join(inside)}" if inside else ""
        raise UserError(f"Checkpoint {path} is a directory, not a checkpoint file{hint}.")
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    with path.open("rb") as file:
        starts_like_zip = file.read(4) == b"PK\x03\x04"  # torch.save writes a zip archive
    if not zipfile.is_zipfile(path):
        what = "is truncated or damaged" if starts_like_zip else "is not a PyTorch checkpoint written by ltcl"
        raise UserError(f"Checkpoint {path} {what}, so it was not loaded.")
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, EOFError, RuntimeError):
        raise UserError(f"Checkpoint {path} is truncated or damaged, so it was not loaded.") from None
    except Exception:  # weights_only refusals (pickled objects) and anything else: never retry unsafely
        raise UserError(
            f"Checkpoint {path} holds objects other than tensors and plain values (it was not written "
            "by ltcl), so it was not loaded."
        ) from None
    if not isinstance(contents, dict) or "format" not in contents or "model" not in contents:
        raise UserError(f"Checkpoint {path} was not written by ltcl's trainer (no format marker).")
    if contents["format"] not in READABLE_FORMATS:
        raise UserError(
            f"Checkpoint {path} has format {contents['format']}; this ltcl reads formats "
            f"{', '.join(map(str, READABLE_FORMATS))} (it was written by another version of ltcl)."
        )
    if contents["format"] == 2:
        try:
            contents["config"] = migrate_renamed_keys(contents["config"])
        except UserError as err:
            raise UserError(f"Checkpoint {path}: {err}") from None
    return contents


def non_finite_tensors(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or inf."""
    return [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


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
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_position"], state["numpy_has_gauss"], state["numpy_cached"]))
    random.setstate((state["python_version"], tuple(state["python"].tolist()), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
