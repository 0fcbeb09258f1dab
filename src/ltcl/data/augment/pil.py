"""The PIL pipeline: one image at a time in DataLoader workers, built on ``torchvision.transforms.v2``.

Every train transform maps a PIL RGB image to a float32 normalised tensor (3, size, size), following its recipe
in ``recipes.RECIPES`` step by step. Geometric and colour operations run on the PIL image, which measured about
2 to 4 times faster than the same v2 operations on uint8 tensors for 32 and 224 px images; each pipeline converts
to a normalised tensor once, then runs the tensor-only steps (Gaussian blur, Cutout).
``benchmarks/data_speed.py`` times every preset.
"""

from __future__ import annotations

from collections.abc import Callable

import torchvision.transforms.v2 as v2
from torch import Tensor

from ltcl.config import ViewsConfig
from ltcl.data.augment.pil_ops import Cutout, RandomGaussianBlur, RandomPadCrop, ToNormalizedTensor
from ltcl.data.augment.recipes import (
    BLUR_SIGMA,
    COLOR_JITTER,
    blur_kernel_size,
    check_size,
    cutout_length,
    mean_pixel,
    recipe,
)
from ltcl.data.augment.resolve import UNRESOLVED_SIZE, cutout_fill_values, normalization_stats
from ltcl.errors import UserError


def build_train_transform(preset: str, size: int, views_cfg: ViewsConfig) -> Callable[..., Tensor]:
    """Builds one training view's augmentation from ``RECIPES[preset]``.

    A ``pad`` crop happens at the image's native size and the result is then resized to ``size`` (a no-op for
    32 px images at size 32); Cutout's side scales with ``size`` (16 px at 32). Areas that AutoAugment and
    RandAugment shifts and rotations expose are filled with the normalisation mean, as timm and GPaCo do, so they
    become 0 after normalisation; the affine steps (digits) fill with 0, the digits' background.

    Args:
        preset: one of ``PRESETS``.
        size: output side in pixels.
        views_cfg: supplies normalisation, RandAugment n/m/bins and the Cutout fill.

    Returns:
        A callable mapping a PIL RGB image to a float32 tensor (3, size, size).
    """
    view = recipe(preset)
    check_size(size)
    mean, std = normalization_stats(views_cfg)
    steps: list = []
    if view.crop == "pad":
        steps.append(RandomPadCrop(view.pad))
    elif view.crop == "random_resized":
        steps.append(v2.RandomResizedCrop(size, scale=view.crop_scale))
    if view.flip:
        steps.append(v2.RandomHorizontalFlip())
    if view.policy == "autoaugment":
        steps.append(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10, fill=mean_pixel(mean)))
    elif view.policy == "randaugment":
        steps.append(_randaugment(views_cfg, mean_pixel(mean)))
    if view.affine is not None:
        # Bilinear, so that thin strokes stay smooth.
        affine = view.affine
        steps.append(v2.RandomAffine(affine.degrees, scale=affine.scale, interpolation=v2.InterpolationMode.BILINEAR))
    if view.jitter > 0:
        steps.append(v2.RandomApply([v2.ColorJitter(*COLOR_JITTER)], p=view.jitter))
    if view.grayscale > 0:
        steps.append(v2.RandomGrayscale(p=view.grayscale))
    if view.crop != "random_resized":
        steps.append(v2.Resize((size, size)))
    steps.append(ToNormalizedTensor(mean, std))
    if view.blur > 0:
        # Blurring after normalising gives the same result as before: the blur weights sum to 1 and reflect
        # padding only repeats pixels, so a per-channel affine map commutes with it.
        steps.append(v2.RandomApply([RandomGaussianBlur(blur_kernel_size(size), BLUR_SIGMA)], p=view.blur))
    if view.cutout > 0:
        steps.append(Cutout(cutout_length(view, size), cutout_fill_values(views_cfg, mean, std)))
    return v2.Compose(steps)


def build_test_transform(views_cfg: ViewsConfig) -> Callable[..., Tensor]:
    """Evaluation transform (torchvision's convention): shorter side to ``test_resize``, centre crop ``test_size``.

    ``test_resize`` 0 means ``test_size``, so the whole image is judged (a 512 px photo is shrunk, not cropped to
    its centre); an image whose shorter side already has that length is not resampled (``Resize`` returns it).

    Returns:
        A callable mapping a PIL RGB image to a float32 tensor (3, test_size, test_size).
    """
    mean, std = normalization_stats(views_cfg)
    if views_cfg.test_size == 0:
        raise UserError(UNRESOLVED_SIZE.format(key="views.test_size"))
    if views_cfg.test_size < 0:
        raise UserError(f"views.test_size must be a positive number of pixels, got {views_cfg.test_size}.")
    if views_cfg.test_resize < 0:
        raise UserError(
            f"views.test_resize must be 0 (= views.test_size) or a side in pixels, got {views_cfg.test_resize}."
        )
    shorter_side = views_cfg.test_resize or views_cfg.test_size
    return v2.Compose([v2.Resize(shorter_side), v2.CenterCrop(views_cfg.test_size), ToNormalizedTensor(mean, std)])


def _randaugment(views_cfg: ViewsConfig, fill: tuple[int, ...]) -> v2.RandAugment:
    n, m, bins = views_cfg.randaugment_n, views_cfg.randaugment_m, views_cfg.randaugment_bins
    if n < 0:
        raise UserError(f"views.randaugment_n must be a non-negative number of operations, got {n}.")
    if bins < 2 or not 0 <= m < bins:
        raise UserError(f"views.randaugment_m must lie in 0..{bins - 1} (views.randaugment_bins - 1), got {m}.")
    return v2.RandAugment(num_ops=n, magnitude=m, num_magnitude_bins=bins, fill=fill)
