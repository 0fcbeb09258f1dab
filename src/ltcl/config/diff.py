"""Comparing two configs key by key: what a resume, a sweep or a comparison of runs may and may not change."""

from __future__ import annotations

import json
from typing import Any


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested plain values -> ``{"optim.lr": 0.07, ...}`` (lists and mappings of values stay whole)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and not (prefix == "model." and key == "backbone_kwargs"):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (old value, new value)}`` for every dotted key whose value differs (missing keys read as None)."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if _same(a.get(k)) != _same(b.get(k))}


def _same(value: Any) -> str:
    """A canonical text of a value: 1 and 1.0 compare equal, as the config's typed fields do."""
    return json.dumps(value, sort_keys=True, default=str).replace(".0,", ",").removesuffix(".0")


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    """``optim.lr 0.05 -> 0.5, optim.epochs 2 -> 3``."""
    return ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())
