"""Value ranges of the config, checked once when a config is loaded (and by ``train`` for configs built in Python).

Each field's own range is declared next to the field (``metadata=POSITIVE`` and so on); :func:`validate` walks the
tree and checks every declared range, then the few rules that tie two fields together. Modules still check their
own constructor arguments, for callers that do not go through a config.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from typing import Any

from ltcl.errors import UserError


class ConfigError(UserError):
    """A configuration file or override is wrong; the message names the key and what was expected."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check(predicate: Callable[[Any], bool], expected: str) -> dict[str, Any]:
    """Field metadata: ``predicate(value)`` must hold, else the message says the key ``expects {expected}``."""
    return {"check": (predicate, expected)}


POSITIVE = check(lambda v: _number(v) and math.isfinite(v) and v > 0, "a positive finite number")
NON_NEGATIVE = check(lambda v: _number(v) and math.isfinite(v) and v >= 0, "a finite number >= 0")
AT_LEAST_1 = check(lambda v: v >= 1, "an integer >= 1")
AT_LEAST_0 = check(lambda v: v >= 0, "an integer >= 0")
MOMENTUM = check(lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)")
UNIT_INTERVAL = check(lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)")
BETAS = check(
    lambda v: len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v), "two numbers in [0, 1), e.g. [0.9, 0.999]"
)
EACH_AT_LEAST_0 = check(lambda v: all(x >= 0 for x in v), "integers >= 0")
EACH_AT_LEAST_1 = check(lambda v: all(x >= 1 for x in v), "integers >= 1")
NOT_EMPTY = check(lambda v: len(v) > 0, "at least one entry")


def field_problem(cls: type, name: str, value: Any, key: str) -> str | None:
    """The sentence for a value outside field ``name``'s declared range, or None when it is inside."""
    spec = next((f.metadata.get("check") for f in dataclasses.fields(cls) if f.name == name), None)
    if spec is None:
        return None
    predicate, expected = spec
    try:
        fine = predicate(value)
    except TypeError:
        fine = False
    return None if fine else f"'{key}' expects {expected}, got {value!r}."


def check_fields(obj: Any, prefix: str = "") -> None:
    """Every declared range and every ``Literal`` choice of the dataclass tree ``obj`` (a config built in Python
    skips the loader's type checks); raises ConfigError at the first value outside."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_fields(value, f"{key}.")
            continue
        choices = typing.get_args(hints.get(f.name)) if typing.get_origin(hints.get(f.name)) is typing.Literal else ()
        if choices and value not in choices:
            raise ConfigError(f"'{key}' expects one of {', '.join(map(str, choices))}, got {value!r}.")
        problem = field_problem(type(obj), f.name, value, key)
        if problem:
            raise ConfigError(problem)


def validate(cfg: Any) -> None:
    """The whole check of a run config: every field's range, then the rules that tie fields together.

    Raises:
        ConfigError: one sentence naming the key (the first problem found).
    """
    check_fields(cfg)
    optim, views = cfg.optim, cfg.views
    if optim.warmup_epochs > optim.epochs:
        raise ConfigError(
            f"optim.warmup_epochs must be between 0 and optim.epochs ({optim.epochs}), got {optim.warmup_epochs}: "
            f"lower it with --set optim.warmup_epochs=N."
        )
    if sorted(optim.milestones) != list(optim.milestones):
        raise ConfigError(f"optim.milestones must be increasing, got {optim.milestones}.")
    if cfg.data.batch_size % optim.accumulate_steps:
        raise ConfigError(
            f"optim.accumulate_steps {optim.accumulate_steps} must divide data.batch_size {cfg.data.batch_size} "
            "(the images of one optimisation step, split into that many equal micro-batches)."
        )
    for key in ("sizes", "presets"):
        if len(getattr(views, key)) > views.num_views:
            raise ConfigError(
                f"views.{key} has {len(getattr(views, key))} entries but views.num_views is {views.num_views}: "
                f"give at most one entry per view (the last entry repeats), or raise views.num_views."
            )
    if len(views.contrastive_views) != 3:
        raise ConfigError(
            f"views.contrastive_views expects 3 numbers (many, medium, few), got {views.contrastive_views}."
        )
    if cfg.data.few_threshold > cfg.data.many_threshold:
        raise ConfigError(
            f"data.few_threshold ({cfg.data.few_threshold}) must not exceed data.many_threshold "
            f"({cfg.data.many_threshold})."
        )
