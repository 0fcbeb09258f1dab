"""The view recipes (docs/conventions.md, "Recipes"), written once: both pipelines build their steps from this table.

A recipe lists what one training view does, in the order both pipelines apply it (and draw its random numbers):

1. crop: ``pad`` (random crop of the zero-padded image at its native size), ``random_resized``
   (RandomResizedCrop to the view size) or ``resize`` (the whole image);
2. horizontal flip with probability 0.5, when ``flip``;
3. ``policy``: AutoAugment (CIFAR-10 policy) or RandAugment, filling exposed areas with the mean colour;
4. ``affine``: a small random rotation and scaling (bilinear, black outside);
5. SimCLR colour jitter with probability ``jitter``, then grayscale with probability ``grayscale``;
6. resize to the view size (a no-op when a crop or the affine map already produced it);
7. normalisation, Gaussian blur with probability ``blur``, then Cutout of side ``cutout`` (at 32 px).

The PIL pipeline is ``pil.build_train_transform``, the batched one ``batched.BatchViewAugment``; the digits presets
use no flips (digits are not mirror-symmetric) and no colour changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from ltcl.config.schema import Preset
from ltcl.errors import UserError

PRESETS: tuple[str, ...] = get_args(Preset)

CropKind = Literal["pad", "random_resized", "resize"]
Policy = Literal["autoaugment", "randaugment", "none"]

COLOR_JITTER = (0.4, 0.4, 0.4, 0.1)  # SimCLR's ColorJitter(brightness, contrast, saturation, hue)
BLUR_SIGMA = (0.1, 2.0)  # SimCLR's Gaussian blur: sigma uniform in this range, in pixels
CUTOUT_REFERENCE_SIZE = 32  # Cutout sides are given for 32 px views and scale with the view size


@dataclass(frozen=True)
class Affine:
    """A random rotation by up to ``degrees`` either way and a zoom uniform in ``scale``, about the centre."""

    degrees: float
    scale: tuple[float, float]


@dataclass(frozen=True)
class ViewRecipe:
    """One preset's augmentation; the fields are listed in the order the steps apply (see the module docstring).

    Attributes:
        crop: ``pad``, ``random_resized`` or ``resize``.
        pad: pixels of zero padding for the ``pad`` crop.
        crop_scale: (low, high) area fraction of the ``random_resized`` crop.
        flip: horizontal flip with probability 0.5.
        policy: ``autoaugment`` (CIFAR-10 policy), ``randaugment`` (``views.randaugment_*``) or ``none``.
        affine: small rotation and scaling, or None.
        jitter: probability of ``ColorJitter(*COLOR_JITTER)``.
        grayscale: probability of converting to grayscale.
        blur: probability of a Gaussian blur (kernel :func:`blur_kernel_size`, sigma in ``BLUR_SIGMA``).
        cutout: Cutout side in pixels at 32 px (0: no Cutout); see :func:`cutout_length`.
    """

    crop: CropKind
    pad: int = 0
    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip: bool = True
    policy: Policy = "none"
    affine: Affine | None = None
    jitter: float = 0.0
    grayscale: float = 0.0
    blur: float = 0.0
    cutout: int = 0


_DIGITS_AFFINE = Affine(degrees=10.0, scale=(0.9, 1.1))

RECIPES: dict[str, ViewRecipe] = {
    # CIFAR's first views: pad-4 crop, flip, AutoAugment, Cutout 16 px.
    "cifar_autoaugment_cutout": ViewRecipe(crop="pad", pad=4, policy="autoaugment", cutout=16),
    # GPaCo's CIFAR second view.
    "simclr": ViewRecipe(crop="random_resized", crop_scale=(0.2, 1.0), jitter=0.8, grayscale=0.2, blur=0.2),
    # ImageNet-scale first view (timm style) and the later views (RandAugStack).
    "randaugment": ViewRecipe(crop="random_resized", policy="randaugment"),
    "randaugstack": ViewRecipe(crop="random_resized", policy="randaugment", jitter=0.8, grayscale=0.2, blur=0.5),
    "digits": ViewRecipe(crop="pad", pad=4, flip=False, affine=_DIGITS_AFFINE),
    "digits_simclr": ViewRecipe(crop="random_resized", crop_scale=(0.5, 1.0), flip=False, affine=_DIGITS_AFFINE),
    "none": ViewRecipe(crop="resize", flip=False),
}
if tuple(RECIPES) != PRESETS:  # the schema's Literal and this table must name the same presets, in order
    raise RuntimeError(f"RECIPES {tuple(RECIPES)} do not match ltcl.config.schema.Preset {PRESETS}.")

# The batched pipeline implements every recipe but RandAugment (those views need data.augment_on=loader).
DEVICE_PRESETS: tuple[str, ...] = tuple(name for name, r in RECIPES.items() if r.policy != "randaugment")


def recipe(preset: str) -> ViewRecipe:
    """The recipe of ``preset``; an unknown name is a ValueError listing the known ones."""
    if preset not in RECIPES:
        raise UserError(f"Unknown augmentation preset {preset!r}; known presets: {', '.join(PRESETS)}.")
    return RECIPES[preset]


def check_size(size: object) -> int:
    """``size`` if it is a positive int (not a bool), else a ValueError."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UserError(f"View size must be a positive number of pixels, got {size!r}.")
    return size


def jitter_ranges() -> tuple[tuple[str, float, float, float], ...]:
    """(name, low, high, identity) of each colour-jitter factor, in the order they apply.

    The same ranges as ``ColorJitter(*COLOR_JITTER)``: brightness, contrast and saturation factors in 1 -+ s,
    hue shifts in -+ h (turns).
    """
    b, c, s, h = COLOR_JITTER
    return (
        ("brightness", 1.0 - b, 1.0 + b, 1.0),
        ("contrast", 1.0 - c, 1.0 + c, 1.0),
        ("saturation", 1.0 - s, 1.0 + s, 1.0),
        ("hue", -h, h, 0.0),
    )


def blur_kernel_size(size: int) -> int:
    """SimCLR's kernel: about 10 % of the image side, odd, at least 3 (3 at 32 px, 23 at 224 px)."""
    k = int(round(0.1 * size))
    return max(3, k + 1 - k % 2)


def cutout_length(view: ViewRecipe, size: int) -> int:
    """Cutout side in pixels for a ``size`` px view: the recipe's side scaled from 32 px (16 at 32, 12 at 24), at
    least 1; 0 when the recipe has no Cutout."""
    return max(1, round(view.cutout * size / CUTOUT_REFERENCE_SIZE)) if view.cutout else 0


def mean_pixel(mean: tuple[float, ...]) -> tuple[int, ...]:
    """The mean colour as whole pixel levels: what AutoAugment and RandAugment write into exposed areas."""
    return tuple(round(255 * m) for m in mean)
