"""Reading configs: YAML files and ``--set key=value`` overrides, type-checked against the dataclass tree.

A YAML file may start from another one with ``base: other.yaml``: the path is relative to the folder of the file
that names it (not to the working directory); keys the file sets replace the base's. ``plugins:`` paths are
relative to the file's folder too. Every mistake raises :class:`ConfigError` with one sentence naming the key and
what was expected.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any

import yaml

from ltcl.config.checks import ConfigError, validate
from ltcl.config.schema import Config
from ltcl.config.values import (
    RENAMED_KEYS,
    coerce,
    field_types,
    from_dict,
    sections_field_of,
    to_dict,
    type_name,
    unknown_key,
)


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
                raise ConfigError(f"'{key}' expects {type_name(tp)}, got {raw!r}.") from None
        else:
            items = [] if not inner else [s.strip() for s in inner.split(",")]
        (item_tp,) = typing.get_args(tp)
        if item_tp is not str and typing.get_origin(item_tp) is not typing.Literal:
            items = [yaml.safe_load(s) if isinstance(s, str) else s for s in items]
        return coerce(items, tp, key)
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
    return coerce(value, tp, key)


def apply_override(values: dict[str, Any], text: str) -> dict[str, Any]:
    """Applies one ``a.b=value`` override to a plain-dict config (type-checked against the dataclasses)."""
    path, raw = _parse_override(text)
    cls: Any = Config
    node = values
    for depth, part in enumerate(path):
        hints = field_types(cls)
        full = ".".join(path[: depth + 1])
        sections_field = sections_field_of(cls)
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


# Datasets that read a user's own images or split lists: used as given unless the user asks for a subset.
AS_GIVEN_DATASETS = ("image_folder", "imagenet_lt", "places_lt", "inat2018")


def _keep_user_data_as_given(values: dict[str, Any], path: str | Path | None, overrides: typing.Sequence[str]) -> None:
    """An ``imbalance_factor`` that a ``base:`` file set does not subsample a user's own folder or split lists: only
    the file given with -c or a ``--set`` may ask for a long-tailed subset of them (a note says so)."""
    data = values.get("data") or {}
    factor = data.get("imbalance_factor", 1)
    if data.get("dataset") not in AS_GIVEN_DATASETS or factor in (1, 1.0, None):
        return
    own = (yaml.safe_load(Path(path).read_text()) or {}) if path is not None else {}
    asked = "imbalance_factor" in ((own.get("data") if isinstance(own, dict) else None) or {})
    asked = asked or any(o.split("=", 1)[0].strip() == "data.imbalance_factor" for o in overrides)
    if not asked:
        data["imbalance_factor"] = 1.0
        print(
            f"note: data.imbalance_factor {factor} comes from a base: file; {data['dataset']} data is used as given "
            "(set data.imbalance_factor in your own config or with --set to subsample it)",
            file=sys.stderr,
        )


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
    _keep_user_data_as_given(values, path, overrides)
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
