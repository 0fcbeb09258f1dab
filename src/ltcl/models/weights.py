"""Backbone weights from a local file (``model.weights``): PyTorch ``.pth``/``.pt`` or ``.safetensors``.

Files of other codebases are accepted as they are: the backbone's tensors may sit in a nested mapping
(``{"state_dict": ...}``, ``{"model": ...}``) and under prefixes such as DDP's ``module.``, our own network's
``backbone.`` or MoCo's ``encoder_q.``. Nothing is ever downloaded here.
"""

from __future__ import annotations

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


def _load_file(path: Path) -> object:
    """The file's content: a flat mapping for safetensors, whatever was pickled (weights only) otherwise."""
    if path.suffix == ".safetensors":
        safetensors_torch = import_optional("safetensors", f"Backbone weights file {path}").torch
        try:
            return safetensors_torch.load_file(str(path), device="cpu")
        except Exception as err:  # a truncated or foreign file: the same user mistake
            raise UserError(f"Backbone weights file {path} could not be read as safetensors ({_reason(err)}).") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable content is the same user mistake
        raise UserError(
            f"Backbone weights file {path} could not be read as a PyTorch state_dict ({_reason(err)})."
        ) from err


def _reason(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


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
        path: a ``.safetensors`` file, or any other suffix for a PyTorch pickle (read with ``weights_only``).
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
