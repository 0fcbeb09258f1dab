"""The numbers a views config stands for: pixel statistics, the Cutout fill, and the model-defined inputs.

``views.sizes`` entries and ``views.test_size`` may be 0 and ``views.normalization`` may be ``model``: the model
then defines them (a pretrained backbone's input size, mean and std). :func:`resolve_views` turns such a config
into a concrete one before any transform is built; every builder reads the statistics through
:func:`normalization_stats`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

from ltcl.config import ViewsConfig
from ltcl.config.schema import CutoutFill, Normalization
from ltcl.data.inputs import InputSpec
from ltcl.errors import UserError

NORMALIZATION = {
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
UNRESOLVED_SIZE = (
    "{key} is 0 (the model's input size), but no model input spec resolved it: give it in pixels, or build "
    "from resolve_views(views, input_spec)."
)


@dataclass
class ResolvedViewsConfig(ViewsConfig):
    """A :class:`ViewsConfig` whose sizes are all in pixels and which carries the model's ``mean`` and ``std``.

    ``mean`` and ``std`` are set (and used) only when ``normalization`` is ``model``. Built by :func:`resolve_views`
    for transform builders; it is not a run config to save.
    """

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def resolve_views(views_cfg: ViewsConfig, input_spec: InputSpec | None) -> ViewsConfig:
    """Fills in what the model defines: 0 sizes become ``input_spec.size``, ``model`` normalisation its mean/std.

    Args:
        views_cfg: the run's ``views`` section (left unchanged).
        input_spec: an object with ``size`` (int), ``mean`` and ``std`` (3 floats each), or None when the model
            defines no inputs.

    Returns:
        ``views_cfg`` itself when there is nothing to fill in, else a :class:`ResolvedViewsConfig` copy.
    """
    sizes_unset = 0 in views_cfg.sizes or views_cfg.test_size == 0
    stats_unset = views_cfg.normalization == "model" and getattr(views_cfg, "mean", None) is None
    if input_spec is None:
        if sizes_unset:
            key = "views.test_size" if views_cfg.test_size == 0 else "A views.sizes entry"
            raise UserError(UNRESOLVED_SIZE.format(key=key))
        if stats_unset:
            raise UserError(
                "views.normalization is 'model', but the model defines no mean and std: use cifar or imagenet."
            )
        return views_cfg
    if not sizes_unset and not stats_unset:
        return views_cfg
    size = input_spec.size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UserError(f"The model's input size must be a positive number of pixels, got {size!r}.")
    values = {f.name: getattr(views_cfg, f.name) for f in dataclasses.fields(views_cfg)}
    values = {k: list(v) if isinstance(v, list) else v for k, v in values.items()}  # no list shared with the input
    values["sizes"] = [size if s == 0 else s for s in views_cfg.sizes]
    values["test_size"] = views_cfg.test_size or size
    if stats_unset:
        values["mean"], values["std"] = _channel_values(input_spec.mean, "mean"), _channel_values(input_spec.std, "std")
    return ResolvedViewsConfig(**values)


def normalization_stats(views_cfg: ViewsConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel of ``views.normalization`` (``model``: those :func:`resolve_views` filled in)."""
    if views_cfg.normalization == "model":
        mean, std = getattr(views_cfg, "mean", None), getattr(views_cfg, "std", None)
        if mean is None or std is None:
            raise UserError(
                "views.normalization 'model' takes the model's mean and std: build from "
                "resolve_views(views, input_spec)."
            )
        return tuple(mean), tuple(std)
    if views_cfg.normalization not in NORMALIZATION:
        known = ", ".join(get_args(Normalization))
        raise UserError(f"views.normalization must be one of {known}; got {views_cfg.normalization!r}.")
    return NORMALIZATION[views_cfg.normalization]


def cutout_fill_values(views_cfg: ViewsConfig, mean: Sequence[float], std: Sequence[float]) -> list[float]:
    """What Cutout writes into the normalised image, per channel, for ``views.cutout_fill``.

    "mean" writes 0 (the mean colour); "black" reproduces GPaCo's code, which cuts before Normalize, so pixel 0
    becomes -mean/std.
    """
    known = get_args(CutoutFill)
    if views_cfg.cutout_fill not in known:
        raise UserError(f"views.cutout_fill must be one of {', '.join(known)}; got {views_cfg.cutout_fill!r}.")
    return [0.0] * 3 if views_cfg.cutout_fill == "mean" else [-m / s for m, s in zip(mean, std)]


def _channel_values(values: Sequence[float], name: str) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if len(out) != 3 or (name == "std" and min(out) <= 0):
        raise UserError(f"The model's input {name} must hold 3 channel values (std > 0), got {values!r}.")
    return out
