"""The batched pipeline on the training device (the in-memory fast path, ``data.augment_on: device``).

``pil`` augments one PIL image at a time in loader processes. Here a whole batch of float images (B, 3, H, W) in
[0, 1] is augmented at once on its own device (a GPU; the CPU in tests), following the same ``RECIPES``: every
sample draws its own parameters from one ``torch.Generator``, and every operation runs once for the whole batch
with per-sample parameters (identity parameters for samples that skip it). There is no Python loop over samples
and no host synchronisation (constants are made once per device), so a view costs a fixed number of kernel
launches whatever the batch size and however its samples split over ops.

A view is two steps: :meth:`BatchViewAugment.sample_params` draws the parameters and
:meth:`BatchViewAugment.apply` applies them. The results follow the PIL pipeline's, with these differences:

- The ops follow torchvision's tensor kernels on float images (shears, shifts and rotations use
  ``grid_sample``, nearest, as torchvision does for tensors), not PIL's; values are not rounded to whole
  pixel levels between ops, and posterize, solarize and equalize read the level round(255 x).
- Crops are resized by bilinear sampling without antialiasing: the same as torchvision when a crop is
  enlarged (always so for 32 px images), more aliased when a large crop is shrunk.
- Colour jitter applies brightness, contrast, saturation, then hue, in this fixed order (torchvision
  draws a random order per image).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ltcl.config import ViewsConfig
from ltcl.data.augment.batch_autoaugment import autoaugment_slot, device_tables
from ltcl.data.augment.batch_geometry import affine_sample, inverse_affine_matrix, pad_crop_flip, resize, resized_crop
from ltcl.data.augment.batch_geometry import cutout as cutout_op
from ltcl.data.augment.batch_ops import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    constant,
    gaussian_blur,
    grayscale,
    normalize,
    per_sample,
)
from ltcl.data.augment.plan import view_plan
from ltcl.data.augment.recipes import (
    BLUR_SIGMA,
    DEVICE_PRESETS,
    RECIPES,
    blur_kernel_size,
    check_size,
    cutout_length,
    jitter_ranges,
    mean_pixel,
)
from ltcl.data.augment.resolve import cutout_fill_values, normalization_stats
from ltcl.errors import UserError


class Draws:
    """Per-sample random numbers for a batch of B, all from one generator on the batch's device."""

    def __init__(self, generator: torch.Generator, batch: int, device: torch.device, dtype: torch.dtype):
        self.generator, self.batch, self.device, self.dtype = generator, batch, device, dtype

    def uniform(self, low: float, high: float, *shape: int) -> Tensor:
        """Uniform in [low, high), shape ``shape`` (default (B,)), of the images' dtype."""
        u = torch.rand(shape or (self.batch,), generator=self.generator, device=self.device, dtype=self.dtype)
        return low + (high - low) * u

    def coin(self, p: float) -> Tensor:
        """(B,) bool, each True with probability p."""
        return self.uniform(0.0, 1.0) < p

    def integers(self, low: int, high: int, *shape: int) -> Tensor:
        """Uniform int64 in [low, high), shape ``shape`` (default (B,))."""
        size = shape or (self.batch,)
        return torch.randint(low, high, size, generator=self.generator, device=self.device)


def random_resized_crop_boxes(draws: Draws, height: int, width: int, scale, ratio=(3 / 4, 4 / 3)):
    """Per-sample boxes of torchvision's ``RandomResizedCrop.get_params`` (10 tries, then a centre crop).

    Returns:
        top, left, crop height, crop width: (B,) int64 each.
    """
    tries = 10
    area = draws.uniform(scale[0], scale[1], draws.batch, tries).double() * (height * width)
    aspect = draws.uniform(math.log(ratio[0]), math.log(ratio[1]), draws.batch, tries).double().exp()
    w = torch.sqrt(area * aspect).round().long()
    h = torch.sqrt(area / aspect).round().long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(dim=1, keepdim=True)  # the first try that fits, as the loop would take
    found = fits.any(dim=1)
    in_ratio = width / height
    if in_ratio < min(ratio):
        fallback_w, fallback_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fallback_w, fallback_h = int(round(height * max(ratio))), height
    else:
        fallback_w, fallback_h = width, height
    w = torch.where(found, w.gather(1, first).squeeze(1), fallback_w)
    h = torch.where(found, h.gather(1, first).squeeze(1), fallback_h)
    u = draws.uniform(0.0, 1.0, draws.batch, 2).double()
    top = torch.where(found, (u[:, 0] * (height - h + 1)).floor().long(), (height - h) // 2)
    left = torch.where(found, (u[:, 1] * (width - w + 1)).floor().long(), (width - w) // 2)
    return top, left, h, w


class BatchViewAugment:
    """One view's augmentation, ``RECIPES[preset]``, applied to a whole batch on its device.

    Args:
        preset: one of ``DEVICE_PRESETS`` (``randaugment`` and ``randaugstack`` need the PIL pipeline).
        size: output side in pixels.
        views_cfg: supplies the normalisation and the Cutout fill.
    """

    def __init__(self, preset: str, size: int, views_cfg: ViewsConfig) -> None:
        if preset not in DEVICE_PRESETS:
            raise UserError(
                f"Augmentation preset {preset!r} cannot run on the device; supported there: "
                f"{', '.join(DEVICE_PRESETS)} (use data.augment_on=loader for the others)."
            )
        self.preset, self.size, self.recipe = preset, check_size(size), RECIPES[preset]
        self.mean, self.std = normalization_stats(views_cfg)
        # AutoAugment fills exposed areas with the mean colour, rounded to a pixel level as the PIL pipeline does.
        self.fill = tuple(level / 255 for level in mean_pixel(self.mean))
        self.cutout_length = cutout_length(self.recipe, size)
        self.cutout_fill = (0.0, 0.0, 0.0)
        if self.recipe.cutout:
            self.cutout_fill = tuple(cutout_fill_values(views_cfg, self.mean, self.std))

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Augments every image of the batch with its own random parameters.

        Args:
            images: (B, 3, H, W) float in [0, 1], on any device.
            generator: a ``torch.Generator`` on the same device; all randomness comes from it.

        Returns:
            (B, 3, size, size) float tensor (the dtype of ``images``), normalised, on the same device.
        """
        return self.apply(images, self.sample_params(images, generator))

    def sample_params(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Draws every sample's parameters (B = ``len(images)``), step by step in the recipe's order.

        Keys, for the steps the recipe has (each (B,) unless noted; identity values mean "not applied"): crops
        ``top``, ``left`` (and ``height``, ``width`` for resized crops), ``flip`` (bool); AutoAugment ``policy``
        (sub-policy index), ``op`` (B, 2) codes into ``AUTOAUGMENT_OPS`` (-1: skipped) and signed ``magnitude``
        (B, 2); affine ``angle`` (degrees), ``scale``; colour factors ``brightness``, ``contrast``,
        ``saturation`` (1: unchanged), ``hue`` (0: unchanged); ``gray`` (bool); ``sigma`` (0: no blur); Cutout
        centre ``cut_y``, ``cut_x``.
        """
        _check_batch(images, generator)
        batch, _, height, width = images.shape
        view = self.recipe
        draws = Draws(generator, batch, images.device, images.dtype)
        params: dict[str, Tensor] = {}
        if view.crop == "pad":
            shift = (-view.pad, view.pad + 1)
            params["top"], params["left"] = draws.integers(*shift), draws.integers(*shift)
        elif view.crop == "random_resized":
            box = random_resized_crop_boxes(draws, height, width, view.crop_scale)
            params.update(zip(("top", "left", "height", "width"), box))
        if view.flip:
            params["flip"] = draws.coin(0.5)
        if view.policy == "autoaugment":
            op_table, probability, magnitude, signed, _ = device_tables(*self._policy_size(images), images.device)
            policy = draws.integers(0, len(op_table))
            applied = draws.uniform(0.0, 1.0, batch, 2).double() <= probability[policy]
            negative = signed[policy] & (draws.uniform(0.0, 1.0, batch, 2) < 0.5)
            params["policy"] = policy
            params["op"] = torch.where(applied, op_table[policy], -1)
            signed_magnitude = torch.where(negative, -magnitude[policy], magnitude[policy])
            params["magnitude"] = signed_magnitude.to(images.dtype)
        if view.affine is not None:
            degrees, (low, high) = view.affine.degrees, view.affine.scale
            params["angle"], params["scale"] = draws.uniform(-degrees, degrees), draws.uniform(low, high)
        if view.jitter > 0:
            jitter = draws.coin(view.jitter)
            for key, low, high, identity in jitter_ranges():
                params[key] = torch.where(jitter, draws.uniform(low, high), identity)
        if view.grayscale > 0:
            params["gray"] = draws.coin(view.grayscale)
        if view.blur > 0:
            params["sigma"] = torch.where(draws.coin(view.blur), draws.uniform(*BLUR_SIGMA), 0.0)
        if view.cutout:
            params["cut_y"], params["cut_x"] = draws.integers(0, self.size), draws.integers(0, self.size)
        return params

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Applies parameters from :meth:`sample_params`: (B, 3, H, W) in [0, 1] -> (B, 3, size, size)."""
        x, view = images, self.recipe
        flip = params.get("flip")
        if view.crop == "pad":
            flip = torch.zeros_like(params["top"], dtype=torch.bool) if flip is None else flip
            x = pad_crop_flip(x, params["top"], params["left"], flip)  # the mirror costs nothing extra here
        elif view.crop == "random_resized":
            flip = torch.zeros_like(params["top"], dtype=torch.bool) if flip is None else flip
            x = resized_crop(x, params["top"], params["left"], params["height"], params["width"], self.size, flip)
        elif flip is not None:
            x = torch.where(per_sample(flip), x.flip(-1), x)
        if view.policy == "autoaugment":
            fill = constant(self.fill, x.device, x.dtype)
            names = device_tables(*self._policy_size(images), x.device)[4]
            op, magnitude = params["op"], params["magnitude"]
            for slot in range(2):  # the two ops of a sub-policy, in order
                x = autoaugment_slot(x, op[:, slot], magnitude[:, slot], fill, names[slot])
        if view.affine is not None:
            # Rotation and scaling about the centre, bilinear, black outside; resizing to ``size`` happens in
            # the same sampling pass.
            zeros = torch.zeros(len(x), 2, dtype=x.dtype, device=x.device)
            matrix = inverse_affine_matrix(params["angle"], zeros, params["scale"], zeros, zeros)
            x = affine_sample(x, matrix, self.size, mode="bilinear")
        if view.jitter > 0:
            x = adjust_brightness(x, params["brightness"])
            x = adjust_contrast(x, params["contrast"])
            x = adjust_saturation(x, params["saturation"])
            x = torch.where(per_sample(params["hue"] != 0), adjust_hue(x, params["hue"]), x)
        if view.grayscale > 0:
            x = torch.where(per_sample(params["gray"]), grayscale(x).expand_as(x), x)
        x = resize(x, self.size)  # a no-op after a resized crop or an affine map
        if view.blur > 0:
            x = gaussian_blur(x, blur_kernel_size(self.size), params["sigma"])
        x = normalize(x, self.mean, self.std)
        if view.cutout:
            fill = constant(self.cutout_fill, x.device, x.dtype)
            x = cutout_op(x, params["cut_y"], params["cut_x"], self.cutout_length, fill)
        return x

    def _policy_size(self, images: Tensor) -> tuple[int, int]:
        """(H, W) of the images the policy sees: the input's after a pad crop or none, the view's after a resize."""
        if self.recipe.crop == "random_resized":
            return self.size, self.size
        return images.shape[-2], images.shape[-1]

    def __repr__(self) -> str:
        return f"BatchViewAugment(preset={self.preset!r}, size={self.size})"


def build_batch_views(views_cfg: ViewsConfig) -> list[BatchViewAugment]:
    """One :class:`BatchViewAugment` per view, from the same :func:`view_plan` as the PIL pipeline."""
    return [BatchViewAugment(preset, size, views_cfg) for preset, size in view_plan(views_cfg)]


def normalize_batch(images: Tensor, views_cfg: ViewsConfig) -> Tensor:
    """(B, 3, H, W) in [0, 1] -> ``(images - mean) / std``, statistics of ``views_cfg.normalization``."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise UserError(f"normalize_batch expects images of shape (B, 3, H, W), got {tuple(images.shape)}.")
    return normalize(images, *normalization_stats(views_cfg))


def _check_batch(images: Tensor, generator: torch.Generator) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"Batch augmentation expects images of shape (B, 3, H, W), got {shape}.")
    if not images.is_floating_point():
        raise ValueError(f"Batch augmentation expects float images in [0, 1], got dtype {images.dtype}.")
    if not isinstance(generator, torch.Generator) or generator.device.type != images.device.type:
        got = generator.device if isinstance(generator, torch.Generator) else type(generator).__name__
        raise ValueError(f"The generator must be a torch.Generator on the images' device {images.device}; got {got}.")
