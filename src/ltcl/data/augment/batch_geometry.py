"""Batched geometric ops with per-sample parameters, on any device (used by ``batched``).

Crops, flips, affine maps, resizing and Cutout for float images (B, C, H, W), each run once for the whole batch
with per-sample parameters (B,); identity parameters leave a sample unchanged. The tests compare them with
torchvision's per-image functional ops.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as nnf


def inverse_affine_matrix(angle: Tensor, translate: Tensor, scale: Tensor, shear: Tensor, center: Tensor) -> Tensor:
    """torchvision's ``_get_inverse_affine_matrix`` for a batch of parameter sets.

    Coordinates are pixels measured from the image centre, as in torchvision's tensor kernels.

    Args:
        angle: (B,) clockwise rotation in degrees (``F.affine``'s convention; ``F.rotate`` negates it).
        translate: (B, 2) shift (x, y) in pixels.
        scale: (B,) zoom factor.
        shear: (B, 2) shear angles (x, y) in degrees.
        center: (B, 2) centre of rotation, scaling and shear (x, y).

    Returns:
        (B, 2, 3): the input point each output point reads, ``matrix @ (x, y, 1)``.
    """
    rot = torch.deg2rad(angle)
    shear_x, shear_y = torch.deg2rad(shear).unbind(1)
    cx, cy = center.unbind(1)
    ox, oy = (center + translate).unbind(1)
    a = torch.cos(rot - shear_y) / torch.cos(shear_y)
    b = -(a * torch.tan(shear_x) + torch.sin(rot))
    c = torch.sin(rot - shear_y) / torch.cos(shear_y)
    d = torch.cos(rot) - c * torch.tan(shear_x)
    m0, m1, m3, m4 = d / scale, -b / scale, -c / scale, a / scale
    m2 = cx - m0 * ox - m1 * oy
    m5 = cy - m3 * ox - m4 * oy
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=1).reshape(-1, 2, 3)


def affine_sample(images: Tensor, matrix: Tensor, size: int, mode: str, fill: Tensor | None = None) -> Tensor:
    """Samples every image through its own affine map, and resizes to ``size`` in the same pass.

    Args:
        images: (B, C, H, W).
        matrix: (B, 2, 3) from :func:`inverse_affine_matrix` (pixel units of the input).
        size: output side; the output covers the same extent as the input.
        mode: "nearest" or "bilinear".
        fill: (C,) value for points outside the input, or None for zeros.

    Returns:
        (B, C, size, size).
    """
    batch, channels, height, width = images.shape
    m = matrix.to(images.dtype)
    # Pixel units about the centre -> grid_sample's [-1, 1] units (align_corners=False).
    theta = torch.stack([
        torch.stack([m[:, 0, 0], m[:, 0, 1] * height / width, m[:, 0, 2] * 2.0 / width], dim=1),
        torch.stack([m[:, 1, 0] * width / height, m[:, 1, 1], m[:, 1, 2] * 2.0 / height], dim=1),
    ], dim=1)  # fmt: skip
    grid = nnf.affine_grid(theta, [batch, channels, size, size], align_corners=False)
    if fill is None:
        return nnf.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)
    # A ones channel records which outputs read the image, as torchvision's _apply_grid_transform does.
    with_mask = torch.cat([images, images.new_ones(batch, 1, height, width)], dim=1)
    sampled = nnf.grid_sample(with_mask, grid, mode=mode, align_corners=False)
    sampled, mask = sampled.split([channels, 1], dim=1)
    fill = fill.to(images.dtype).reshape(1, -1, 1, 1)
    if mode == "nearest":
        return torch.where(mask < 0.5, fill, sampled)
    return sampled + (1.0 - mask) * fill


def pad_crop_flip(images: Tensor, top: Tensor, left: Tensor, flip: Tensor) -> Tensor:
    """Crop of the zero-padded image at offsets (``top``, ``left``) (B,), then an optional mirror (B,) bool.

    Output pixel (y, x) is input pixel (y + top, x + left), or (y + top, W - 1 - x + left) when flipped;
    pixels outside the input are 0. One gather per axis for the whole batch.
    """
    batch, channels, height, width = images.shape
    rows = torch.arange(height, device=images.device) + top.unsqueeze(1)  # (B, H)
    cols = torch.arange(width, device=images.device).expand(batch, width)
    cols = torch.where(flip.unsqueeze(1), width - 1 - cols, cols) + left.unsqueeze(1)  # (B, W)
    inside = ((rows >= 0) & (rows < height)).unsqueeze(2) & ((cols >= 0) & (cols < width)).unsqueeze(1)
    rows = rows.clamp(0, height - 1).reshape(batch, 1, height, 1).expand(batch, channels, height, width)
    cols = cols.clamp(0, width - 1).reshape(batch, 1, 1, width).expand(batch, channels, height, width)
    out = images.gather(2, rows).gather(3, cols)
    return out * inside.unsqueeze(1).to(images.dtype)


def resized_crop(
    images: Tensor, top: Tensor, left: Tensor, height: Tensor, width: Tensor, size: int, flip: Tensor
) -> Tensor:
    """Crops box (``top``, ``left``, ``height``, ``width``) (B,) of every image, resizes it to ``size``
    (bilinear, no antialiasing), and mirrors the samples where ``flip`` (B,) is True.

    Sample points are clamped to the box's edge pixels, as resizing the cut-out crop would read them.
    """
    batch, channels, full_h, full_w = images.shape
    dtype = images.dtype
    top, left, height, width = (v.to(dtype) for v in (top, left, height, width))
    sign = torch.where(flip, -1.0, 1.0).to(dtype)
    zeros = torch.zeros_like(top)
    theta = torch.stack([
        torch.stack([sign * width / full_w, zeros, (2 * left + width) / full_w - 1], dim=1),
        torch.stack([zeros, height / full_h, (2 * top + height) / full_h - 1], dim=1),
    ], dim=1)  # fmt: skip
    grid = nnf.affine_grid(theta, [batch, channels, size, size], align_corners=False)
    low = torch.stack([(2 * left + 1) / full_w - 1, (2 * top + 1) / full_h - 1], dim=1).reshape(-1, 1, 1, 2)
    high = torch.stack([(2 * (left + width) - 1) / full_w - 1, (2 * (top + height) - 1) / full_h - 1], dim=1)
    grid = torch.maximum(torch.minimum(grid, high.reshape(-1, 1, 1, 2)), low)
    return nnf.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def resize(images: Tensor, size: int) -> Tensor:
    """Bilinear resize to (size, size) with antialiasing (as ``v2.Resize``); a no-op at the same size."""
    if images.shape[-2:] == (size, size):
        return images
    return nnf.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def cutout(images: Tensor, center_y: Tensor, center_x: Tensor, length: int, fill: Tensor) -> Tensor:
    """Fills a ``length`` square centred at (``center_y``, ``center_x``) (B,), clipped at the borders."""
    _, channels, height, width = images.shape
    y0, x0 = (center_y - length // 2).unsqueeze(1), (center_x - length // 2).unsqueeze(1)
    ys = torch.arange(height, device=images.device)
    xs = torch.arange(width, device=images.device)
    inside = ((ys >= y0) & (ys < y0 + length)).unsqueeze(2) & ((xs >= x0) & (xs < x0 + length)).unsqueeze(1)
    return torch.where(inside.unsqueeze(1), fill.to(images.dtype).reshape(1, channels, 1, 1), images)
