"""Config values: plain nested dicts <-> the dataclass tree, with type checking and the keys that were renamed.

A dataclass field with ``metadata={"inline_sections": True}`` (``loss.sections``) holds named sections that are
written inline: ``loss.acl.center_momentum`` in YAML and ``--set`` lands in ``loss.sections["acl"]``. The sections
are plain mappings here; the method that owns a section types and checks it (:mod:`ltcl.methods`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from ltcl.config.checks import ConfigError, field_problem
from ltcl.config.schema import Config

RENAMED_KEYS = {
    "loss.use_centers": "loss.acl.use_centers",
    "loss.center_momentum": "loss.acl.center_momentum",
    "loss.negative_weighting": "loss.acl.negative_weighting",
    "loss.logit_adjust_tau": "loss.la.tau",
    "loss.ldam_max_margin": "loss.ldam.max_margin",
    "loss.ldam_scale": "loss.ldam.scale",
    "loss.drw_start_epoch": "loss.ldam.drw_start_epoch",
    "loss.drw_beta": "loss.ldam.drw_beta",
    "loss.gpaco_alpha": "loss.gpaco.alpha",
    "loss.gpaco_beta": "loss.gpaco.beta",
    "loss.gpaco_gamma": "loss.gpaco.gamma",
}


# ----------------------------------------------------------------------------------------------------------
# Building the tree from plain values, with type checking


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {type_name(typing.get_args(tp)[0])}"
    if origin is typing.Literal:
        return "one of " + ", ".join(str(v) for v in typing.get_args(tp))
    if origin is dict:
        return "a mapping of names to values"
    if _is_union(tp):
        return " or ".join(type_name(t) for t in typing.get_args(tp))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks ``value`` against the annotation ``tp``; converts only where no information is lost."""
    bad = ConfigError(f"'{key}' expects {type_name(tp)}, got {value!r}.")
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item,) = typing.get_args(tp)
        return [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is typing.Literal:
        if isinstance(value, str) and value in typing.get_args(tp):
            return value
        raise bad
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise bad
        return dict(value)
    if _is_union(tp):  # the first member that takes the value as it is (bool before str: YAML's true)
        for member in typing.get_args(tp):
            try:
                return coerce(value, member, key)
            except ConfigError:
                continue
        raise bad
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise ConfigError(f"'{key}' has an unsupported type {tp}.")  # a bug in this file, not the user's


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def sections_field_of(cls: type) -> str | None:
    """The name of ``cls``'s inline-sections field, or None."""
    return next((f.name for f in dataclasses.fields(cls) if f.metadata.get("inline_sections")), None)


def unknown_key(full: str, known: typing.Iterable[str]) -> ConfigError:
    """The error for an unknown key: its new name when it was renamed, else the known keys and the closest."""
    if full in RENAMED_KEYS:
        return ConfigError(f"'{full}' is now '{RENAMED_KEYS[full]}': rename it in the config or --set.")
    known = sorted(known)
    name = full.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, known, n=2)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"Unknown config key '{full}' (known keys here: {', '.join(known)}).{hint}")


def _section(value: Any, key: str) -> dict[str, Any]:
    """A method section as given: a mapping of names to plain values (typed later by the method that owns it)."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"'{key}' expects a mapping of the method's keys, got {value!r}.")
    for name, item in value.items():
        if isinstance(item, dict):
            raise ConfigError(f"'{key}.{name}' expects a value, not a mapping: method sections are one level deep.")
    return dict(value)


def from_dict(values: dict[str, Any], cls: type = Config, prefix: str = "") -> Any:
    """Builds dataclass ``cls`` from nested plain values; unknown keys, wrong types and values outside a field's
    declared range raise ConfigError."""
    if not isinstance(values, dict):
        raise ConfigError(f"'{prefix or 'config'}' expects a mapping of keys, got {values!r}.")
    hints = field_types(cls)
    sections_field = sections_field_of(cls)
    kwargs: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key == sections_field:  # a config dict written by an earlier version of to_dict
            sections |= {name: _section(v, f"{prefix}{name}") for name, v in (value or {}).items()}
        elif key not in hints:
            if sections_field is None or not isinstance(value, dict) or full in RENAMED_KEYS:
                raise unknown_key(full, [h for h in hints if h != sections_field])
            sections[key] = _section(value, full)
        elif dataclasses.is_dataclass(hints[key]):
            kwargs[key] = from_dict(value, hints[key], f"{full}.")
        else:
            kwargs[key] = coerce(value, hints[key], full)
            problem = field_problem(cls, key, kwargs[key], full)
            if problem:
                raise ConfigError(problem)
    if sections_field is not None:
        kwargs[sections_field] = sections
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts and lists (YAML- and ``torch.load(weights_only=True)``-safe); method
    sections are written inline, as in the YAML files."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("inline_sections"):
            values |= {name: dict(section) for name, section in value.items()}
        elif dataclasses.is_dataclass(value):
            values[f.name] = to_dict(value)
        else:
            values[f.name] = _plain(value)
    return values


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def migrate_renamed_keys(values: dict[str, Any]) -> dict[str, Any]:
    """A config dict of an earlier ltcl version (a format-2 checkpoint) with its renamed keys moved to their new
    place, and the defaults that changed since set to what that version did (BCL on every view)."""
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    for old, new in RENAMED_KEYS.items():
        section, key = old.split(".")
        if key in values.get(section, {}):
            _, method, name = new.split(".")
            values[section].setdefault(method, {})[name] = values[section].pop(key)
    objective = str(values.get("loss", {}).get("objective", ""))
    if objective == "gpaco":
        raise ConfigError(
            "it was trained with the GPaCo of ltcl 0.1 (no memory queue, the network's own projection head), which "
            "this version replaced by the authors' GPaCo: use ltcl 0.1.0 for it."
        )
    if objective.endswith("+bcl"):  # before loss.bcl.views, BCL classified and contrasted every view
        values["loss"].setdefault("bcl", {}).setdefault("views", "all")
    return values
