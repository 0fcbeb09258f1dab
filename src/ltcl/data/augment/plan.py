"""Which preset and which size each of the V views uses: the per-view expansion both pipelines share."""

from __future__ import annotations

from collections.abc import Sequence

from ltcl.config import ViewsConfig
from ltcl.data.augment.recipes import PRESETS
from ltcl.data.augment.resolve import UNRESOLVED_SIZE
from ltcl.errors import UserError


def check_num_views(views_cfg: ViewsConfig) -> int:
    """``views.num_views``, or a ValueError when it is below 1."""
    if views_cfg.num_views < 1:
        raise UserError(f"views.num_views must be at least 1, got {views_cfg.num_views}.")
    return views_cfg.num_views


def per_view(values: Sequence, key: str, num_views: int) -> list:
    """The entries of views 0..num_views-1: a longer list is cut to its first entries, a shorter one repeats its
    last; a longer list is refused when the config is loaded."""
    if len(values) == 0:
        raise UserError(f"{key} must list at least one entry.")
    return [values[min(v, len(values) - 1)] for v in range(num_views)]


def view_plan(views_cfg: ViewsConfig) -> list[tuple[str, int]]:
    """(preset, size) of every view, checked: known presets and sizes in pixels (0 must be resolved first).

    Returns:
        ``views.num_views`` pairs, view 0 first.
    """
    num_views = check_num_views(views_cfg)
    presets = per_view(views_cfg.presets, "views.presets", num_views)
    sizes = per_view(views_cfg.sizes, "views.sizes", num_views)
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise UserError(f"views.presets names unknown preset {unknown[0]!r}; known presets: {', '.join(PRESETS)}.")
    if 0 in sizes:
        raise UserError(UNRESOLVED_SIZE.format(key="A views.sizes entry"))
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise UserError(f"views.sizes must hold positive sides in pixels, got {list(views_cfg.sizes)}.")
    return list(zip(presets, sizes))
