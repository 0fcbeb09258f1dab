"""Batched image operations with per-sample parameters, on any device (used by ``batch_augment``).

Each function takes float images (B, 3, H, W) in [0, 1] and per-sample parameters (B,) and runs once for the whole
batch; an identity parameter (factor 1, shift 0, ...) leaves a sample unchanged. The tests compare every op with
torchvision's per-image functional op.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.nn import functional as nnf

_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
# HSV -> RGB: for each hue sector 0..5, which of (v, p, q, t) becomes r, g and b.
_HSV_SELECT = ((0, 2, 1, 1, 3, 0), (3, 0, 0, 2, 1, 1), (1, 1, 3, 0, 0, 2))


# ----------------------------------------------------------------------------------------------------------
# Batched ops: (B, 3, H, W) float images in [0, 1]; per-sample parameters are (B,) tensors.


@functools.lru_cache(maxsize=64)
def _constant(values: tuple, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A small constant tensor made once per device (a host-to-device copy per call would make the host wait).

    Callers must not modify it in place.
    """
    return torch.tensor(values, dtype=dtype, device=device)


def per_sample(values: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1), to broadcast one value per sample over an image batch."""
    return values.reshape(-1, 1, 1, 1)


def normalize(images: Tensor, mean, std) -> Tensor:
    """(B, 3, H, W) -> ``(images - mean) / std`` per channel, in one pass."""
    std_t = _constant(tuple(std), images.device, images.dtype).reshape(1, -1, 1, 1)
    mean_t = _constant(tuple(mean), images.device, images.dtype).reshape(1, -1, 1, 1)
    return torch.addcmul(-mean_t / std_t, images, 1.0 / std_t)


def _blend(images: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """torchvision's blend, ``factor * images + (1 - factor) * other`` clamped; factor 1 returns images."""
    factor = per_sample(factor).to(images.dtype)
    return (images * factor + other * (1.0 - factor)).clamp_(0.0, 1.0)


def grayscale(images: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma."""
    r, g, b = images.unbind(1)
    return (r * _GRAY[0] + g * _GRAY[1] + b * _GRAY[2]).unsqueeze(1)


def adjust_brightness(images: Tensor, factor: Tensor) -> Tensor:
    return (images * per_sample(factor).to(images.dtype)).clamp_(0.0, 1.0)


def adjust_saturation(images: Tensor, factor: Tensor) -> Tensor:
    return _blend(images, grayscale(images), factor)


def adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    return _blend(images, grayscale(images).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_sharpness(images: Tensor, factor: Tensor) -> Tensor:
    """Blend with a smoothed copy (3x3 kernel: 1s around a 5, over 13) whose one-pixel border is the image
    itself, as torchvision does."""
    if images.shape[-2] <= 2 or images.shape[-1] <= 2:
        return images
    # The kernel is a 3x3 box sum plus 4 times the centre; shifted sums cost far less than a depthwise
    # convolution on the CPU.
    rows = images[..., :-2, :] + images[..., 1:-1, :] + images[..., 2:, :]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    degenerate = images.clone()
    degenerate[..., 1:-1, 1:-1] = (box + 4.0 * images[..., 1:-1, 1:-1]) / 13.0
    return _blend(images, degenerate, factor)


def adjust_hue(images: Tensor, shift: Tensor) -> Tensor:
    """Rotates the hue by ``shift`` (B,) turns, in [-0.5, 0.5], via torchvision's RGB-HSV conversion."""
    r, g, _ = images.unbind(1)
    value, low = images.amax(dim=1), images.amin(dim=1)
    grey = value == low  # no hue and no saturation; avoid 0 / 0
    spread = value - low
    saturation = spread / torch.where(grey, torch.ones_like(value), value)
    divisor = torch.where(grey, torch.ones_like(spread), spread).unsqueeze(1)
    rc, gc, bc = ((value.unsqueeze(1) - images) / divisor).unbind(1)
    hue = torch.where(value == r, bc - gc, torch.where(value == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.fmod(hue / 6.0 + 1.0, 1.0)
    hue = torch.remainder(hue + per_sample(shift).squeeze(1).to(images.dtype), 1.0)

    sector = torch.floor(hue * 6.0)
    frac = hue * 6.0 - sector
    p = (value * (1.0 - saturation)).clamp(0.0, 1.0)
    q = (value * (1.0 - saturation * frac)).clamp(0.0, 1.0)
    t = (value * (1.0 - saturation + saturation * frac)).clamp(0.0, 1.0)
    vpqt = torch.stack([value, p, q, t], dim=1)
    select = _constant(_HSV_SELECT, images.device, torch.long)
    index = select[:, sector.long().remainder(6)].transpose(0, 1)  # (B, 3, H, W)
    return vpqt.gather(1, index)


def _levels(images: Tensor) -> Tensor:
    """Pixel levels 0..255 as the nearest whole numbers (float)."""
    return (images * 255.0).round_().clamp_(0.0, 255.0)


def posterize(images: Tensor, bits: Tensor) -> Tensor:
    """Keeps the top ``bits`` (B,) bits of each level, like ``uint8 & mask``."""
    step = torch.pow(2.0, 8.0 - per_sample(bits).to(images.dtype))
    return torch.floor(_levels(images) / step) * step / 255.0


def solarize(images: Tensor, threshold: Tensor) -> Tensor:
    """Inverts the levels at or above ``threshold`` (B,) on the 0..255 scale."""
    return torch.where(_levels(images) >= per_sample(threshold).to(images.dtype), 1.0 - images, images)


def invert(images: Tensor) -> Tensor:
    return 1.0 - images


def autocontrast(images: Tensor) -> Tensor:
    """Stretches every channel to span [0, 1]; a constant channel stays unchanged."""
    low = images.amin(dim=(-2, -1), keepdim=True)
    high = images.amax(dim=(-2, -1), keepdim=True)
    flat = high == low
    low = torch.where(flat, torch.zeros_like(low), low)
    spread = torch.where(flat, torch.ones_like(high), high - low)
    return ((images - low) / spread).clamp_(0.0, 1.0)


def equalize(images: Tensor) -> Tensor:
    """Histogram equalisation of every image and channel at once (torchvision's and PIL's lookup table).

    The level histograms of all B * 3 channels come from one ``scatter_add_`` into a (B * 3, 256) table.
    A channel whose non-maximal levels hold fewer than 255 pixels stays unchanged, as in PIL.
    """
    batch, channels, height, width = images.shape
    levels = _levels(images).long().reshape(batch * channels, height * width)
    hist = torch.zeros(batch * channels, 256, dtype=torch.long, device=images.device)
    hist.scatter_add_(1, levels, torch.ones_like(levels))
    cumulative = hist.cumsum(dim=1)
    top = cumulative.argmax(dim=1, keepdim=True)  # the highest level present
    step = torch.div(height * width - hist.gather(1, top), 255, rounding_mode="floor")
    lut = torch.div(cumulative[:, :-1] + step // 2, step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
    lut = torch.cat([torch.zeros_like(lut[:, :1]), lut], dim=1)  # level k maps through cumulative[k - 1]
    equalized = lut.gather(1, levels).to(images.dtype) / 255.0
    equalized = equalized.reshape(batch, channels, height, width)
    return torch.where((step > 0).reshape(batch, channels, 1, 1), equalized, images)


def gaussian_blur(images: Tensor, kernel_size: int, sigma: Tensor) -> Tensor:
    """Per-sample Gaussian blur with reflect padding, as torchvision's ``gaussian_blur``.

    Args:
        images: (B, C, H, W).
        kernel_size: odd number of taps.
        sigma: (B,) standard deviations in pixels; 0 leaves a sample unchanged (its kernel is a delta).

    Returns:
        (B, C, H, W): two depthwise passes of a grouped convolution, one kernel per sample.
    """
    batch, channels, height, width = images.shape
    offsets = torch.arange(kernel_size, dtype=images.dtype, device=images.device) - (kernel_size - 1) / 2
    spread = sigma.to(images.dtype).clamp(min=1e-3).unsqueeze(1)  # tiny sigma -> exactly a delta kernel
    weights = torch.exp(-0.5 * (offsets / spread).square())
    weights = (weights / weights.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    half = kernel_size // 2
    x = nnf.pad(images.reshape(1, batch * channels, height, width), [half] * 4, mode="reflect")
    x = nnf.conv2d(x, weights.reshape(-1, 1, kernel_size, 1), groups=batch * channels)
    x = nnf.conv2d(x, weights.reshape(-1, 1, 1, kernel_size), groups=batch * channels)
    return x.reshape(batch, channels, height, width)


def inverse_affine_matrix(
    angle: Tensor, translate: Tensor, scale: Tensor, shear: Tensor, center: Tensor
) -> Tensor:
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
