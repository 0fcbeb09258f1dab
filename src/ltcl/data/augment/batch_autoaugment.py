"""torchvision's CIFAR-10 AutoAugment policy for whole batches: the policy as tables, and one op slot per sample.

Every sample draws its own sub-policy (``batched`` draws them); :func:`autoaugment_slot` then applies each op type
once to the whole batch, with identity parameters for the samples that use another op.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torchvision.transforms import AutoAugment, AutoAugmentPolicy

from ltcl.data.augment.batch_geometry import affine_sample, inverse_affine_matrix
from ltcl.data.augment.batch_ops import (
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    adjust_sharpness,
    autocontrast,
    constant,
    equalize,
    invert,
    per_sample,
    posterize,
    solarize,
)

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
        corner = constant((-0.5 * width, -0.5 * height), x.device, x.dtype)
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


@functools.lru_cache(maxsize=8)
def device_tables(height: int, width: int, device: torch.device):
    """The AutoAugment tables, copied once per image size and device."""
    op, probability, magnitude, signed, names = autoaugment_tables(height, width)
    return op.to(device), probability.to(device), magnitude.to(device), signed.to(device), names
