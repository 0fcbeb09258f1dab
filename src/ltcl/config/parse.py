"""Reading configs: YAML files and ``--set key=value`` overrides, type-checked against the dataclass tree.

A YAML file may start from another one with ``base: other.yaml``: the path is relative to the folder of the file
that names it (not to the working directory); keys the file sets replace the base's. ``plugins:`` paths are
relative to the file's folder too. Every mistake raises :class:`ConfigError` with one sentence naming the key and
what was expected.

A dataclass field with ``metadata={"inline_sections": True}`` (``loss.sections``) holds named sections that are
written inline: ``loss.acl.center_momentum`` in YAML and ``--set`` lands in ``loss.sections["acl"]``. The sections
are plain mappings here; the method that owns a section types and checks it (:mod:`ltcl.methods`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ltcl.config.checks import ConfigError, field_problem, validate
from ltcl.config.schema import Config

# Keys of earlier ltcl versions, now in their method's section. A config that still uses one is refused with a
# sentence naming the new key; a checkpoint written by an earlier version is read with its keys moved.
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


def _sections_field(cls: type) -> str | None:
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
    hints = _field_types(cls)
    sections_field = _sections_field(cls)
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
            kwargs[key] = _coerce(value, hints[key], full)
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
    """A config dict of an earlier ltcl version with its renamed keys moved to their new place (checkpoints)."""
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    for old, new in RENAMED_KEYS.items():
        section, key = old.split(".")
        if key in values.get(section, {}):
            _, method, name = new.split(".")
            values[section].setdefault(method, {})[name] = values[section].pop(key)
    return values


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
    if isinstance(values.get("plugins"), list):  # relative to this file, like base
        values["plugins"] = [str(path.parent / str(p)) for p in values["plugins"]]
    base = values.pop("base", None)
    if base is not None:
        base_path = path.parent / str(base)
        if not base_path.is_file():
            raise ConfigError(
                f"Config file {path} names base: {base}, but {base_path.resolve()} does not exist (base is "
                "relative to the folder of the file that names it, not to the working directory)."
            )
        values = _merge(_read_yaml(base_path, seen + (path,)), values)
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
    """Reads a command-line value for a field of type ``tp`` (``Any``: as YAML reads it)."""
    if tp is Any:
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError:
            return raw
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
        sections_field = _sections_field(cls)
        if part not in hints and sections_field and full not in RENAMED_KEYS and depth == len(path) - 2:
            # a method section's key (loss.acl.center_momentum): typed by the method when the run starts
            node.setdefault(part, {})[path[-1]] = _override_value(raw, Any, ".".join(path))
            return values
        if part not in hints or part == sections_field:
            known = [h for h in hints if h != sections_field]
            raise unknown_key(".".join(path) if full in RENAMED_KEYS else full, known)
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
    """Reads a YAML config (or the defaults when ``path`` is None), applies ``--set`` overrides and checks the
    values (:func:`ltcl.config.checks.validate`).

    Raises:
        ConfigError: one sentence naming the problem, e.g. a file (or its bases and overrides) that names no
            dataset: the built-in defaults are no experiment anyone meant to run.
    """
    values: dict[str, Any] = {}
    if path is not None:
        values = _read_yaml(Path(path))
        values.setdefault("name", Path(path).stem)
    for text in overrides:
        apply_override(values, text)
    if path is not None and "dataset" not in (values.get("data") or {}):
        raise ConfigError(
            f"Config file {path} names no dataset (data.dataset, in the file, its base: files or --set): start "
            "from a config of configs/ with base:, or set data.dataset to digits_lt, cifar10_lt, cifar100_lt, "
            "imagenet_lt, places_lt, inat2018 or image_folder."
        )
    cfg = from_dict(values)
    validate(cfg)
    return cfg


def save_config(cfg: Config, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Writes the resolved config (plus ``extra`` facts such as seed and code revision) as YAML."""
    document = to_dict(cfg)
    if extra:
        document = {"run": extra, **document}
    Path(path).write_text(yaml.safe_dump(document, sort_keys=False))
