"""Augmentation presets (docs/conventions.md, "Recipes"): one recipe table, a PIL pipeline and a batched device
pipeline.

- ``recipes``: ``RECIPES``, one :class:`ViewRecipe` per preset, the only place the recipes' numbers live.
- ``resolve``: normalisation statistics, the Cutout fill, and :func:`resolve_views` for model-defined inputs.
- ``plan``: which preset and size each view uses (:func:`view_plan`).
- ``pil`` and ``pil_ops``: per-image transforms for DataLoader workers (``data.augment_on: loader``).
- ``batched``, ``batch_autoaugment``, ``batch_ops``, ``batch_geometry``: whole-batch augmentation on the training
  device (``data.augment_on: device``).
"""

from ltcl.data.augment.batched import BatchViewAugment, build_batch_views, normalize_batch
from ltcl.data.augment.pil import build_test_transform, build_train_transform
from ltcl.data.augment.pil_ops import Cutout, RandomGaussianBlur, RandomPadCrop, ToNormalizedTensor
from ltcl.data.augment.plan import check_num_views, per_view, view_plan
from ltcl.data.augment.recipes import (
    DEVICE_PRESETS,
    PRESETS,
    RECIPES,
    Affine,
    ViewRecipe,
    blur_kernel_size,
    cutout_length,
    recipe,
)
from ltcl.data.augment.resolve import (
    NORMALIZATION,
    InputSpec,
    ResolvedViewsConfig,
    cutout_fill_values,
    normalization_stats,
    resolve_views,
)

__all__ = [
    "DEVICE_PRESETS",
    "NORMALIZATION",
    "PRESETS",
    "RECIPES",
    "Affine",
    "BatchViewAugment",
    "Cutout",
    "InputSpec",
    "RandomGaussianBlur",
    "RandomPadCrop",
    "ResolvedViewsConfig",
    "ToNormalizedTensor",
    "ViewRecipe",
    "blur_kernel_size",
    "build_batch_views",
    "build_test_transform",
    "build_train_transform",
    "check_num_views",
    "cutout_fill_values",
    "cutout_length",
    "normalization_stats",
    "normalize_batch",
    "per_view",
    "recipe",
    "resolve_views",
    "view_plan",
]
