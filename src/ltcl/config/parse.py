"""Reading configs: YAML files and ``--set key=value`` overrides, type-checked against the dataclass tree.

A YAML file may start from another one with ``base: other.yaml`` (a path relative to the file); keys it sets
replace the base's. Every mistake raises :class:`ConfigError` with one sentence naming the key and what was
expected.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ltcl.config.schema import Config


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message names the key and what was expected."""


# ----------------------------------------------------------------------------------------------------------
# Building the tree from plain values, with type checking


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is typing.Literal:
        return "one of " + ", ".join(str(v) for v in typing.get_args(tp))
    if origin is dict:
        return "a mapping of names to values"
    if _is_union(tp):
        return " or ".join(_type_name(t) for t in typing.get_args(tp))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks ``value`` against the annotation ``tp``; converts only where no information is lost."""
    bad = ConfigError(f"'{key}' expects {_type_name(tp)}, got {value!r}.")
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
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
                return _coerce(value, member, key)
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


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_pattern(cls: type, name: str, value: Any, key: str) -> None:
    """Fields with a ``pattern`` in their metadata must match it as a whole."""
    pattern = next((f.metadata.get("pattern") for f in dataclasses.fields(cls) if f.name == name), None)
    if pattern and not re.fullmatch(pattern, value):
        choices = pattern.replace("[1-9][0-9]*", "R").replace("|", ", ")
        raise ConfigError(f"'{key}' expects one of {choices}, got {value!r}.")


def from_dict(values: dict[str, Any], cls: type = Config, prefix: str = "") -> Any:
    """Builds dataclass ``cls`` from nested plain values; unknown keys and wrong types raise ConfigError."""
    if not isinstance(values, dict):
        raise ConfigError(f"'{prefix or 'config'}' expects a mapping of keys, got {values!r}.")
    hints = _field_types(cls)
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in hints:
            known = ", ".join(sorted(hints))
            raise ConfigError(f"Unknown config key '{full}' (known keys here: {known}).")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(value, tp, f"{full}.")
        else:
            kwargs[key] = _coerce(value, tp, full)
            _check_pattern(cls, key, kwargs[key], full)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts and lists (YAML- and ``torch.load(weights_only=True)``-safe)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip()


def _merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"Config file {path} includes itself through 'base'.")
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist.")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"Config file {path} is not valid YAML: {err}".replace("\n", " ")) from None
    if not isinstance(values, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of keys at the top level.")
    base = values.pop("base", None)
    if base is not None:
        values = _merge(_read_yaml(path.parent / base, seen + (path,)), values)
    return values


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"Override '{text}' must have the form key=value, for example optim.lr=0.1.")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"Override '{text}' names no key.")
    return key.split("."), raw


def _override_value(raw: str, tp: Any, key: str) -> Any:
    """Reads a command-line value for a field of type ``tp``."""
    if tp is str or typing.get_origin(tp) is typing.Literal:
        return raw
    if typing.get_origin(tp) is list:
        inner = raw.strip()
        if inner.startswith("["):
            try:
                items = yaml.safe_load(inner)
            except yaml.YAMLError:
                raise ConfigError(f"'{key}' expects {_type_name(tp)}, got {raw!r}.") from None
        else:
            items = [] if not inner else [s.strip() for s in inner.split(",")]
        (item_tp,) = typing.get_args(tp)
        if item_tp is not str and typing.get_origin(item_tp) is not typing.Literal:
            items = [yaml.safe_load(s) if isinstance(s, str) else s for s in items]
        return _coerce(items, tp, key)
    if tp is bool:
        lowered = raw.strip().lower()
        table = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
        if lowered not in table:
            raise ConfigError(f"'{key}' expects true or false, got {raw!r}.")
        return table[lowered]
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return _coerce(value, tp, key)


def apply_override(values: dict[str, Any], text: str) -> dict[str, Any]:
    """Applies one ``a.b=value`` override to a plain-dict config (type-checked against the dataclasses)."""
    path, raw = _parse_override(text)
    cls: Any = Config
    node = values
    for depth, part in enumerate(path):
        hints = _field_types(cls)
        full = ".".join(path[: depth + 1])
        if part not in hints:
            known = ", ".join(sorted(hints))
            raise ConfigError(f"Unknown config key '{full}' (known keys here: {known}).")
        tp = hints[part]
        last = depth == len(path) - 1
        if dataclasses.is_dataclass(tp):
            if last:
                raise ConfigError(f"'{full}' is a section; set one of its keys, for example {full}.<key>=value.")
            node = node.setdefault(part, {})
            cls = tp
        else:
            if not last:
                raise ConfigError(f"'{full}' is a value, not a section, so '{'.'.join(path)}' does not exist.")
            node[part] = _override_value(raw, tp, full)
    return values


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Reads a YAML config (or the defaults when ``path`` is None) and applies ``--set`` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        values = _read_yaml(Path(path))
        values.setdefault("name", Path(path).stem)
    for text in overrides:
        apply_override(values, text)
    return from_dict(values)


def save_config(cfg: Config, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Writes the resolved config (plus ``extra`` facts such as seed and code revision) as YAML."""
    document = to_dict(cfg)
    if extra:
        document = {"run": extra, **document}
    Path(path).write_text(yaml.safe_dump(document, sort_keys=False))
