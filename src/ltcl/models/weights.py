"""Backbone weights from a local file (``model.weights``): PyTorch ``.pth``/``.pt`` or ``.safetensors``.

Files of other codebases are accepted as they are: the backbone's tensors may sit in a nested mapping
(``{"state_dict": ...}``, ``{"model": ...}``) and under prefixes such as DDP's ``module.``, our own network's
``backbone.`` or MoCo's ``encoder_q.``. Nothing is ever downloaded here.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ltcl.errors import UserError
from ltcl.models.optional import import_optional

# Where checkpoints of other codebases keep the backbone: nested mappings, then key prefixes
# (DataParallel/DDP "module.", our own network's "backbone.", MoCo's "encoder_q.").
_NESTING_KEYS = ("state_dict", "model", "backbone")
_KEY_PREFIXES = ("module.", "backbone.", "encoder_q.")

# File formats, from their first bytes
_ZIP = b"PK\x03\x04"  # torch.save's archive (PyTorch >= 1.6)
_LEGACY_TORCH = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"  # a pickle of torch's magic number: the older format
_LFS_POINTER = b"version https://git-lfs"
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")
_NOT_WEIGHTS = "not a PyTorch (torch.save) or safetensors weights file"
# what a file that is not a torch or safetensors file is, by _file_kind
_NOT_TORCH = {
    "empty": f"is empty, {_NOT_WEIGHTS}",
    "lfs": "is a Git LFS pointer, not the weights themselves: git lfs pull fetches them",
    "pickle": f"is a plain Python pickle, {_NOT_WEIGHTS}: save the backbone's tensors with torch.save instead",
    "text": f"is a text file, {_NOT_WEIGHTS}",
    "unknown": f"is {_NOT_WEIGHTS} (it starts neither as a torch.save archive nor as a safetensors header)",
}


def _file_kind(path: Path) -> str:
    """What the file holds, from its first bytes: torch, safetensors, empty, lfs, pickle, text or unknown."""
    with open(path, "rb") as f:
        head = f.read(512)
    header_length = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
    if not head:
        return "empty"
    if head.startswith((_ZIP, _LEGACY_TORCH)):
        return "torch"
    if head[8:9] == b"{" and 0 < header_length <= path.stat().st_size - 8:
        return "safetensors"
    if head.startswith(_LFS_POINTER):
        return "lfs"
    if head.startswith(b"\x80"):
        return "pickle"
    text = head.decode("utf-8", errors="replace")
    if "\x00" not in text and text.count("\ufffd") <= 1 and all(c.isprintable() or c.isspace() for c in text[:-1]):
        return "text"
    return "unknown"


def _load_file(path: Path) -> object:
    """The file's content: a flat mapping for safetensors, whatever was pickled (weights only) for a torch file.

    The format is read from the content, not the suffix. Anything else is refused in one sentence that says what
    the file is not; torch's own message is never passed on, since it advises unpickling arbitrary objects.
    """
    name = f"Backbone weights file {path} (model.weights)"
    kind = _file_kind(path)
    if kind == "safetensors":
        safetensors_torch = import_optional("safetensors", f"Backbone weights file {path}").torch
        try:
            return safetensors_torch.load_file(str(path), device="cpu")
        except Exception as err:  # a truncated or foreign file: the same user mistake
            raise UserError(f"{name} could not be read as safetensors ({_reason(err)}).") from err
    if kind != "torch":
        raise UserError(f"{name} {_NOT_TORCH[kind]}.")
    try:
        # an open file: torch.load itself would read a path named .safetensors as safetensors
        with warnings.catch_warnings(), open(path, "rb") as f:  # and its note on pickle protocols names its unpickler
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # objects other than tensors and containers
        refused = sorted(set(_REFUSED_GLOBAL.findall(str(err))))
        what = f" ({', '.join(refused)})" if refused else ""
        raise UserError(
            f"{name} holds pickled Python objects besides tensors{what}, which ltcl does not unpickle because "
            "unpickling can run code: save only the backbone's tensors, torch.save(model.state_dict(), path), or a "
            "safetensors file."
        ) from err
    except Exception as err:  # a truncated or damaged archive
        raise UserError(f"{name} is a damaged or truncated PyTorch file ({_reason(err)}).") from err


def _reason(err: Exception) -> str:
    """The first sentence of an error, or its type where the text would repeat torch's advice to unpickle anything."""
    text = str(err).splitlines()[0].split(". ")[0].rstrip(".") if str(err) else ""
    if not text or any(word in text for word in ("weights_only", "allow_pickle", "\x1b")):
        return type(err).__name__
    return text


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _KEY_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def read_state_dict(path: Path, select: str = "") -> dict[str, torch.Tensor]:
    """Loads a weights file and returns its backbone tensors under the backbone's own key names.

    Args:
        path: the file.
        select: when the file holds keys under this prefix, keep only those, without it: a whole CLIP
            checkpoint holds both towers ("visual." and the text tower's "transformer."), whose names collide
            once the prefix is gone.
    """
    if not path.is_file():
        raise FileNotFoundError(f"Backbone weights file {path} (model.weights) does not exist or is not a file.")
    obj = _load_file(path)
    while isinstance(obj, Mapping):
        nested = next((obj[k] for k in _NESTING_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = nested
    items = obj.items() if isinstance(obj, Mapping) else ()
    tensors = {k: v for k, v in items if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UserError(f"Backbone weights file {path} holds no state_dict (a mapping of names to tensors).")
    state = {_strip_prefixes(k): v for k, v in tensors.items()}
    if select and any(k.startswith(select) for k in state):
        state = {k[len(select) :]: v for k, v in state.items() if k.startswith(select)}
    return state


def load_backbone_weights(backbone: nn.Module, path: str | Path, select: str = "") -> None:
    """Copies the weights of a local file into ``backbone``; every backbone tensor must be present.

    Keys the backbone does not have are ignored: the pretraining ``fc`` or ``head`` classifier (our backbones
    replace it by an identity), a projection head, MoCo's key encoder. BatchNorm ``num_batches_tracked``
    counters may be absent (older torchvision files lack them).

    Args:
        backbone: the module to fill.
        path: a safetensors or a PyTorch (``torch.save``, read with ``weights_only``) file, whatever its suffix.
        select: see :func:`read_state_dict` ("visual." for OpenCLIP towers).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a state_dict, lacks backbone keys, or holds tensors of the wrong shape.
    """
    path = Path(path)
    state = read_state_dict(path, select)
    own = backbone.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise UserError(
            f"Backbone weights file {path} lacks {len(missing)} of the backbone's keys, first "
            f"{missing[:5]} (the file has keys such as {list(state)[:5]})."
        )
    for key, value in own.items():
        if key in state and state[key].shape != value.shape:
            raise UserError(
                f"Backbone weights file {path} holds '{key}' with shape "
                f"{tuple(state[key].shape)}, expected {tuple(value.shape)}: it was trained for "
                "another architecture."
            )
    backbone.load_state_dict({k: state[k] for k in own if k in state}, strict=False)
