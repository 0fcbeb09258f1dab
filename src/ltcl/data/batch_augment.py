"""Batched augmentation on the training device (the in-memory fast path, ``data.augment_on: device``).

``augment.py`` augments one PIL image at a time in loader processes. Here a whole batch of float images
(B, 3, H, W) in [0, 1] is augmented at once on its own device (a GPU; the CPU in tests): every sample draws
its own parameters from one ``torch.Generator``, and every operation runs once for the whole batch with
per-sample parameters (identity parameters for samples that skip it). There is no Python loop over samples
and no host synchronisation (constants are made once per device), so a view costs a fixed number of kernel
launches whatever the batch size and however its samples split over ops.

A view is two steps: :meth:`BatchViewAugment.sample_params` draws the parameters and
:meth:`BatchViewAugment.apply` applies them. The presets follow ``augment.py``'s, with these differences:

- The ops follow torchvision's tensor kernels on float images (shears, shifts and rotations use
  ``grid_sample``, nearest, as torchvision does for tensors), not PIL's; values are not rounded to whole
  pixel levels between ops, and posterize, solarize and equalize read the level round(255 x).
- Crops are resized by bilinear sampling without antialiasing: the same as torchvision when a crop is
  enlarged (always so for 32 px images), more aliased when a large crop is shrunk.
- Colour jitter applies brightness, contrast, saturation, then hue, in this fixed order (torchvision
  draws a random order per image).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor
from torchvision.transforms import AutoAugment, AutoAugmentPolicy

from ltcl.config import ViewsConfig
from ltcl.data.augment import blur_kernel_size, cutout_fill_values, normalization_stats
from ltcl.data.batch_ops import (
    _constant,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    adjust_sharpness,
    affine_sample,
    autocontrast,
    cutout,
    equalize,
    gaussian_blur,
    grayscale,
    inverse_affine_matrix,
    invert,
    normalize,
    pad_crop_flip,
    per_sample,
    posterize,
    resize,
    resized_crop,
    solarize,
)
from ltcl.data.views import _check_num_views, _per_view

DEVICE_PRESETS = ("cifar_autoaugment_cutout", "simclr", "digits", "digits_simclr", "none")

# ----------------------------------------------------------------------------------------------------------
# AutoAugment and the presets


# AutoAugment op names, in the order of their integer codes (-1: no op).
AUTOAUGMENT_OPS = (
    "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness",
    "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert",
)  # fmt: skip
_OP = {name: code for code, name in enumerate(AUTOAUGMENT_OPS)}
_BLENDS = {
    "Brightness": adjust_brightness,
    "Color": adjust_saturation,
    "Contrast": adjust_contrast,
    "Sharpness": adjust_sharpness,
}
_WHOLE_IMAGE = {"AutoContrast": autocontrast, "Equalize": equalize, "Invert": invert}
# SimCLR colour jitter (ColorJitter(0.4, 0.4, 0.4, 0.1)): factor ranges and the value that changes nothing.
_JITTER = (
    ("brightness", 0.6, 1.4, 1.0),
    ("contrast", 0.6, 1.4, 1.0),
    ("saturation", 0.6, 1.4, 1.0),
    ("hue", -0.1, 0.1, 0.0),
)


@functools.lru_cache(maxsize=8)
def autoaugment_tables(height: int, width: int) -> tuple:
    """torchvision's CIFAR-10 AutoAugment policy as lookup tables for images of the given size.

    Returns:
        op (P, 2) int64 codes into ``AUTOAUGMENT_OPS``; probability (P, 2); magnitude (P, 2) float64,
        unsigned, as the op uses it (pixels truncated to integers for translations, bits for posterize, a
        level on the 0..255 scale for solarize, 0 for ops without one); signed (P, 2) bool; and, per slot,
        the frozenset of op names that occur in it.
    """
    transform = AutoAugment(AutoAugmentPolicy.CIFAR10)
    space = transform._augmentation_space(10, (height, width))
    rows = []
    for policy in transform.policies:
        row = []
        for name, probability, bin_index in policy:
            if name not in _OP:
                raise RuntimeError(f"torchvision's CIFAR-10 AutoAugment policy uses {name!r}, unknown here.")
            magnitudes, signed = space[name]
            magnitude = float(magnitudes[bin_index]) if bin_index is not None else 0.0
            if name in ("TranslateX", "TranslateY", "Posterize"):
                magnitude = float(int(magnitude))  # torchvision's _apply_op truncates these to integers
            row.append((_OP[name], probability, magnitude, bool(signed and bin_index is not None)))
        rows.append(row)
    op, probability, magnitude, signed = (
        torch.tensor([[slot[i] for slot in row] for row in rows], dtype=dtype)
        for i, dtype in enumerate((torch.int64, torch.float64, torch.float64, torch.bool))
    )
    names = tuple(frozenset(AUTOAUGMENT_OPS[c] for c in op[:, s].tolist()) for s in range(2))
    return op, probability, magnitude, signed, names


def autoaugment_slot(
    images: Tensor, op: Tensor, magnitude: Tensor, fill: Tensor, names: frozenset = frozenset(AUTOAUGMENT_OPS)
) -> Tensor:
    """Applies one AutoAugment op per sample, as torchvision's ``_apply_op`` does for one image.

    Every op type runs once over the whole batch with identity parameters for samples that use another
    op, so the cost does not depend on how the batch splits over ops.

    Args:
        images: (B, 3, H, W) float in [0, 1].
        op: (B,) int64 codes into ``AUTOAUGMENT_OPS``; -1 leaves the sample unchanged.
        magnitude: (B,) signed magnitude of each sample's op (ignored for ops without one).
        fill: (3,) colour in [0, 1] for areas that geometric ops expose.
        names: op names that may occur in ``op``; others are skipped without being computed.

    Returns:
        (B, 3, H, W) float in [0, 1].
    """
    x, height, width = images, images.shape[-2], images.shape[-1]
    magnitude = magnitude.to(x.dtype)
    zero = torch.zeros_like(magnitude)

    def where(name: str, value: Tensor, default: float | Tensor = zero) -> Tensor:
        return torch.where(op == _OP[name], value, default)

    if names & {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"}:
        # One sampling pass for every geometric op: each sample's matrix is torchvision's for its own op
        # (shears about the top-left corner, as _apply_op passes center=[0, 0]; rotation about the centre).
        shear_degrees = torch.rad2deg(torch.atan(magnitude))
        shear = torch.stack([where("ShearX", shear_degrees), where("ShearY", shear_degrees)], dim=1)
        translate = torch.stack([where("TranslateX", magnitude), where("TranslateY", magnitude)], dim=1)
        sheared = (op == _OP["ShearX"]) | (op == _OP["ShearY"])
        corner = _constant((-0.5 * width, -0.5 * height), x.device, x.dtype)
        center = torch.where(sheared.unsqueeze(1), corner, torch.zeros_like(corner))
        angle = where("Rotate", -magnitude)  # rotate() turns counter-clockwise, affine() clockwise
        matrix = inverse_affine_matrix(angle, translate, torch.ones_like(magnitude), shear, center)
        x = affine_sample(x, matrix, height, mode="nearest", fill=fill)
    for name, blend in _BLENDS.items():
        if name in names:
            x = blend(x, where(name, 1.0 + magnitude, 1.0))
    if "Posterize" in names:
        posterized = posterize(x, where("Posterize", magnitude, 8.0))
        x = torch.where(per_sample(op == _OP["Posterize"]), posterized, x)
    if "Solarize" in names:
        x = solarize(x, where("Solarize", magnitude, 256.0))  # no level reaches 256: unchanged
    for name, function in _WHOLE_IMAGE.items():
        if name in names:
            x = torch.where(per_sample(op == _OP[name]), function(x), x)
    return x


class _Draws:
    """Per-sample random numbers for a batch of B, all from one generator on the batch's device."""

    def __init__(self, generator: torch.Generator, batch: int, device: torch.device, dtype: torch.dtype):
        self.generator, self.batch, self.device, self.dtype = generator, batch, device, dtype

    def uniform(self, low: float, high: float, *shape: int) -> Tensor:
        u = torch.rand(shape or (self.batch,), generator=self.generator, device=self.device, dtype=self.dtype)
        return low + (high - low) * u

    def coin(self, p: float) -> Tensor:
        return self.uniform(0.0, 1.0) < p

    def integers(self, low: int, high: int, *shape: int) -> Tensor:
        """Uniform integers in [low, high)."""
        size = shape or (self.batch,)
        return torch.randint(low, high, size, generator=self.generator, device=self.device)


def random_resized_crop_boxes(draws: _Draws, height: int, width: int, scale, ratio=(3 / 4, 4 / 3)):
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
    """One view's augmentation applied to a whole batch on its device.

    Args:
        preset: one of ``DEVICE_PRESETS`` (``randaugment`` and ``randaugstack`` need the PIL pipeline).
        size: output side in pixels.
        views_cfg: supplies the normalisation and the Cutout fill.
    """

    def __init__(self, preset: str, size: int, views_cfg: ViewsConfig) -> None:
        if preset not in DEVICE_PRESETS:
            raise ValueError(
                f"Augmentation preset {preset!r} cannot run on the device; supported there: "
                f"{', '.join(DEVICE_PRESETS)} (use data.augment_on=loader for the others)."
            )
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"View size must be a positive number of pixels, got {size!r}.")
        self.preset, self.size = preset, size
        self.mean, self.std = normalization_stats(views_cfg)
        # AutoAugment fills exposed areas with the mean colour, rounded to a pixel level as augment.py does.
        self.fill = tuple(round(255 * m) / 255 for m in self.mean)
        self.cutout_length = max(1, round(16 * size / 32))
        self.cutout_fill = (0.0, 0.0, 0.0)
        if preset == "cifar_autoaugment_cutout":
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
        """Draws every sample's parameters (B = ``len(images)``); identity values mean "not applied".

        Keys by preset: crops ``top``, ``left`` (and ``height``, ``width`` for resized crops), ``flip``
        (bool); AutoAugment ``policy`` (sub-policy index), ``op`` (B, 2) codes into ``AUTOAUGMENT_OPS`` (-1:
        skipped) and signed ``magnitude`` (B, 2), Cutout centre ``cut_y``, ``cut_x``; colour factors
        ``brightness``, ``contrast``, ``saturation`` (1: unchanged), ``hue`` (0: unchanged), ``gray`` (bool),
        ``sigma`` (0: no blur); affine ``angle`` (degrees), ``scale``.
        """
        _check_batch(images, generator)
        batch, _, height, width = images.shape
        draws = _Draws(generator, batch, images.device, images.dtype)
        params: dict[str, Tensor] = {}
        if self.preset in ("cifar_autoaugment_cutout", "digits"):
            params["top"], params["left"] = draws.integers(-4, 5), draws.integers(-4, 5)
        if self.preset in ("simclr", "digits_simclr"):
            scale = (0.2, 1.0) if self.preset == "simclr" else (0.5, 1.0)
            box = random_resized_crop_boxes(draws, height, width, scale)
            params.update(zip(("top", "left", "height", "width"), box))
        if self.preset in ("cifar_autoaugment_cutout", "simclr"):
            params["flip"] = draws.coin(0.5)
        if self.preset == "cifar_autoaugment_cutout":
            op_table, probability, magnitude, signed, _ = _tables_on(height, width, images.device)
            policy = draws.integers(0, len(op_table))
            applied = draws.uniform(0.0, 1.0, batch, 2).double() <= probability[policy]
            negative = signed[policy] & (draws.uniform(0.0, 1.0, batch, 2) < 0.5)
            params["policy"] = policy
            params["op"] = torch.where(applied, op_table[policy], -1)
            signed_magnitude = torch.where(negative, -magnitude[policy], magnitude[policy])
            params["magnitude"] = signed_magnitude.to(images.dtype)
            params["cut_y"], params["cut_x"] = draws.integers(0, self.size), draws.integers(0, self.size)
        elif self.preset == "simclr":
            jitter = draws.coin(0.8)
            for key, low, high, identity in _JITTER:
                params[key] = torch.where(jitter, draws.uniform(low, high), identity)
            params["gray"] = draws.coin(0.2)
            params["sigma"] = torch.where(draws.coin(0.2), draws.uniform(0.1, 2.0), 0.0)
        elif self.preset in ("digits", "digits_simclr"):
            params["angle"], params["scale"] = draws.uniform(-10.0, 10.0), draws.uniform(0.9, 1.1)
        return params

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Applies parameters from :meth:`sample_params`: (B, 3, H, W) in [0, 1] -> (B, 3, size, size)."""
        x, height, width = images, images.shape[-2], images.shape[-1]
        if self.preset in ("cifar_autoaugment_cutout", "digits"):
            flip = params.get("flip", torch.zeros_like(params["top"], dtype=torch.bool))
            x = pad_crop_flip(x, params["top"], params["left"], flip)
        elif self.preset in ("simclr", "digits_simclr"):
            flip = params.get("flip", torch.zeros_like(params["top"], dtype=torch.bool))
            box = (params["top"], params["left"], params["height"], params["width"])
            x = resized_crop(x, *box, self.size, flip)

        if self.preset == "cifar_autoaugment_cutout":
            fill = _constant(self.fill, x.device, x.dtype)
            names = _tables_on(height, width, x.device)[4]
            op, magnitude = params["op"], params["magnitude"]
            for slot in range(2):  # the two ops of a sub-policy, in order
                x = autoaugment_slot(x, op[:, slot], magnitude[:, slot], fill, names[slot])
            x = self._normalize(resize(x, self.size))
            fill = _constant(self.cutout_fill, x.device, x.dtype)
            return cutout(x, params["cut_y"], params["cut_x"], self.cutout_length, fill)
        if self.preset == "simclr":
            x = adjust_brightness(x, params["brightness"])
            x = adjust_contrast(x, params["contrast"])
            x = adjust_saturation(x, params["saturation"])
            x = torch.where(per_sample(params["hue"] != 0), adjust_hue(x, params["hue"]), x)
            x = torch.where(per_sample(params["gray"]), grayscale(x).expand_as(x), x)
            x = gaussian_blur(x, blur_kernel_size(self.size), params["sigma"])
        elif self.preset in ("digits", "digits_simclr"):
            # Small rotation and scaling about the centre, bilinear, black outside; the digits preset's
            # resize to ``size`` happens in the same sampling pass.
            zeros = torch.zeros(len(x), 2, dtype=x.dtype, device=x.device)
            matrix = inverse_affine_matrix(params["angle"], zeros, params["scale"], zeros, zeros)
            x = affine_sample(x, matrix, self.size, mode="bilinear")
        else:  # "none"
            x = resize(x, self.size)
        return self._normalize(x)

    def _normalize(self, x: Tensor) -> Tensor:
        return normalize(x, self.mean, self.std)

    def __repr__(self) -> str:
        return f"BatchViewAugment(preset={self.preset!r}, size={self.size})"


def build_batch_views(views_cfg: ViewsConfig) -> list[BatchViewAugment]:
    """One :class:`BatchViewAugment` per view; presets and sizes expand as ``build_multiview_transform``'s."""
    num_views = _check_num_views(views_cfg)
    presets = _per_view(views_cfg.presets, "views.presets", num_views)
    sizes = _per_view(views_cfg.sizes, "views.sizes", num_views)
    return [BatchViewAugment(p, s, views_cfg) for p, s in zip(presets, sizes)]


def normalize_batch(images: Tensor, views_cfg: ViewsConfig) -> Tensor:
    """(B, 3, H, W) in [0, 1] -> ``(images - mean) / std``, statistics of ``views_cfg.normalization``."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"normalize_batch expects images of shape (B, 3, H, W), got {tuple(images.shape)}.")
    return normalize(images, *normalization_stats(views_cfg))


def _check_batch(images: Tensor, generator: torch.Generator) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"Batch augmentation expects images of shape (B, 3, H, W), got {shape}.")
    if not images.is_floating_point():
        raise ValueError(f"Batch augmentation expects float images in [0, 1], got dtype {images.dtype}.")
    if not isinstance(generator, torch.Generator) or generator.device.type != images.device.type:
        got = generator.device if isinstance(generator, torch.Generator) else type(generator).__name__
        raise ValueError(
            f"The generator must be a torch.Generator on the images' device {images.device}; got {got}."
        )


@functools.lru_cache(maxsize=8)
def _tables_on(height: int, width: int, device: torch.device):
    """The AutoAugment tables, copied once per image size and device."""
    op, probability, magnitude, signed, names = autoaugment_tables(height, width)
    return op.to(device), probability.to(device), magnitude.to(device), signed.to(device), names
