"""Imports of the optional extras (``ltcl[timm]``, ``ltcl[clip]``) with a one-sentence install hint."""

from __future__ import annotations

import importlib
from types import ModuleType

from ltcl.errors import UserError

# module -> (pip package, ltcl extra that installs it)
_PACKAGES = {
    "timm": ("timm", "timm"),
    "open_clip": ("open_clip_torch", "clip"),
    "safetensors": ("safetensors", "timm"),
}


def import_optional(module: str, needed_for: str) -> ModuleType:
    """Imports ``module``, or raises ValueError saying how to install it.

    Args:
        module: a key of ``_PACKAGES`` ("timm", "open_clip", "safetensors").
        needed_for: what the user asked for, e.g. "model.backbone timm/convnext_tiny".
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package, extra = _PACKAGES[module]
        raise UserError(
            f"{needed_for} needs the {package} package, which is not installed: "
            f"pip install 'ltcl[{extra}]' (or pip install {package})."
        ) from err
