"""Configuration: one dataclass tree; YAML files hold the values; ``--set key=value`` overrides them.

Every hyperparameter of a run lives here, so that the resolved tree saved with each run is the whole
definition of that run (reference.md, trap 7). A YAML file may start from another one with
``base: other.yaml`` (a path relative to the file); keys it sets replace the base's.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message names the key and what was expected."""


@dataclass
class DataConfig:
    """Where the images come from and how the long-tailed training set is built."""

    # digits_lt | cifar10_lt | cifar100_lt | imagenet_lt | places_lt | inat2018 | image_folder
    dataset: str = "digits_lt"
    root: str = ""  # .npz file, CIFAR folder, image root or class-folder tree, by dataset
    train_list: str = ""  # split-list datasets: "path label" lines; the image paths in it are relative to root
    val_list: str = ""
    test_list: str = ""
    imbalance_factor: float = 100.0  # N_max / N_min of the long-tailed training subset (1 = keep all)
    imbalance_profile: str = "exp"  # exp | step
    download: bool = False  # CIFAR only: fetch the official archive when it is missing
    skip_corrupt: bool = False  # drop unreadable images (and report how many) instead of failing
    num_classes: int = 0  # split-list datasets: size of the label space (0: standard 1000 / 365 / 8142)
    subset_seed: int = 0  # seed of the long-tailed subset selection (0 gives LDAM-DRW's published subsets)
    many_threshold: int = 100  # classes with more training images are many-shot
    few_threshold: int = 20  # classes with fewer training images are few-shot
    batch_size: int = 128  # images per optimisation step, summed over all processes
    eval_batch_size: int = 256
    # loader: PIL augmentation in DataLoader workers | device: in-memory training set kept on the training device and
    # augmented there in batches (CIFAR, digits; the fast GPU path)
    augment_on: str = "loader"
    num_workers: int = 2  # loader processes per training process
    pin_memory: bool = True  # only takes effect on CUDA
    persistent_workers: bool = True
    prefetch_factor: int = 2


@dataclass
class ViewsConfig:
    """The distribution-aware multi-view pipeline (reference.md section 1)."""

    num_views: int = 4  # views per training image; all of them feed the classification loss
    presets: list[str] = field(default_factory=lambda: ["cifar_autoaugment_cutout"])  # per view, last repeats
    sizes: list[int] = field(default_factory=lambda: [32])  # output side per view, last repeats
    contrastive_mode: str = "distribution_aware"  # distribution_aware | uniform (every view)
    contrastive_views: list[int] = field(default_factory=lambda: [2, 3, 4])  # many / medium / few
    test_size: int = 32  # side of the evaluation crop
    test_resize: int = 0  # resize the shorter side to this before the centre crop (0: no resize)
    normalization: str = "cifar"  # cifar | imagenet
    randaugment_n: int = 2
    randaugment_m: int = 10
    randaugment_bins: int = 11  # magnitude bins; 11 puts m on timm's 0..10 scale (m10 = strongest), as GPaCo
    cutout_fill: str = "mean"  # mean: 0 after normalisation (Cutout paper) | black: pixel 0 (GPaCo's code)


@dataclass
class ModelConfig:
    """Backbone, projection head and classifier."""

    backbone: str = "resnet32"  # resnet32 (and resnet8/20/44/56) | resnet50 | resnext50_32x4d | ...
    weights: str = ""  # local file with backbone weights (never downloaded)
    projection_hidden: int = 64  # 0: a single linear projection
    projection_dim: int = 32  # 0: no projection head (objectives without a contrastive term)
    projection_bn: bool = False
    classifier: str = "linear"  # linear | cosine
    cosine_scale: float = 16.0  # logit scale of the cosine classifier
    trainable: list[str] = field(default_factory=list)  # parameter-name prefixes to train; empty: all
    sync_bn: bool = False


@dataclass
class LossConfig:
    """Objective: classification loss plus an optional contrastive term (Eq. 10)."""

    objective: str = "bs+acl"  # ce | bs | la | bs+scl | bs+acl
    alpha: float = 0.1  # weight of the contrastive term
    temperature: float = 0.05
    use_centers: bool = True  # ACL: class centres as extra positives and negatives
    center_momentum: float = 0.9  # ACL: EMA momentum of the class centres (not given by the paper)
    negative_weighting: str = "inverse_frequency"  # ACL: inverse_frequency | none
    logit_adjust_tau: float = 1.0  # objective "la": logits + tau * log(prior)


@dataclass
class OptimConfig:
    """SGD with linear warm-up, then step or cosine decay (per epoch fraction)."""

    epochs: int = 200
    lr: float = 0.07
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    warmup_epochs: int = 10
    schedule: str = "step"  # step | cosine
    milestones: list[int] = field(default_factory=lambda: [160, 180])
    gamma: float = 0.1


@dataclass
class TrainConfig:
    """How the run is executed and recorded."""

    output_dir: str = "runs"  # the run directory is output_dir/run_name
    run_name: str = ""  # default: the config's name
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "none"  # none | bf16 | fp16 (CUDA only; fp16 uses a gradient scaler)
    channels_last: bool = True  # CUDA only
    compile: bool = False
    eval_every: int = 10  # epochs between evaluations (the last epoch is always evaluated)
    max_steps_per_epoch: int = 0  # 0: whole epochs; >0 cuts each epoch (smoke tests)
    checkpoint_every_steps: int = 0  # also save checkpoint_last.pt every this many steps inside an epoch (0: off)
    monitor_conflicts: bool = False  # record SCL's per-class gradient-conflict ratio (Fig. 4a)
    tensorboard: bool = True
    progress: bool = True


@dataclass
class Config:
    """The whole definition of a run."""

    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ----------------------------------------------------------------------------------------------------------
# Building the tree from plain values, with type checking


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks ``value`` against the annotation ``tp``; converts only where no information is lost."""
    bad = ConfigError(f"'{key}' expects {_type_name(tp)}, got {value!r}.")
    if typing.get_origin(tp) is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
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
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts and lists (YAML- and ``torch.load(weights_only=True)``-safe)."""
    return dataclasses.asdict(cfg)


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
    if tp is str:
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
        if item_tp is not str:
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


def read_saved_config(path: str | Path) -> Config:
    """Reads a ``config.yaml`` written by :func:`save_config` (the ``run`` facts are ignored)."""
    values = _read_yaml(Path(path))
    values.pop("run", None)
    return from_dict(values)

