"""Batched colour, level and filter ops with per-sample parameters, on any device (used by ``batched``).

Each function takes float images (B, 3, H, W) in [0, 1] and per-sample parameters (B,) and runs once for the whole
batch; an identity parameter (factor 1, shift 0, ...) leaves a sample unchanged. The tests compare every op with
torchvision's per-image functional op. Geometric ops are in ``batch_geometry``.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.nn import functional as nnf

_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
# HSV -> RGB: for each hue sector 0..5, which of (v, p, q, t) becomes r, g and b.
_HSV_SELECT = ((0, 2, 1, 1, 3, 0), (3, 0, 0, 2, 1, 1), (1, 1, 3, 0, 0, 2))


@functools.lru_cache(maxsize=64)
def constant(values: tuple, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A small constant tensor made once per device (a host-to-device copy per call would make the host wait).

    Callers must not modify it in place.
    """
    return torch.tensor(values, dtype=dtype, device=device)


def per_sample(values: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1), to broadcast one value per sample over an image batch."""
    return values.reshape(-1, 1, 1, 1)


def normalize(images: Tensor, mean, std) -> Tensor:
    """(B, 3, H, W) -> ``(images - mean) / std`` per channel (3 values each), in one pass."""
    std_t = constant(tuple(std), images.device, images.dtype).reshape(1, -1, 1, 1)
    mean_t = constant(tuple(mean), images.device, images.dtype).reshape(1, -1, 1, 1)
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
    """(B, 3, H, W) scaled by ``factor`` (B,), clamped to [0, 1]."""
    return (images * per_sample(factor).to(images.dtype)).clamp_(0.0, 1.0)


def adjust_saturation(images: Tensor, factor: Tensor) -> Tensor:
    """(B, 3, H, W) blended with its grayscale by ``factor`` (B,) (0: gray, 1: unchanged)."""
    return _blend(images, grayscale(images), factor)


def adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    """(B, 3, H, W) blended with its mean gray level by ``factor`` (B,) (0: flat, 1: unchanged)."""
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
    select = constant(_HSV_SELECT, images.device, torch.long)
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
    """(B, 3, H, W) -> 1 - images."""
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
