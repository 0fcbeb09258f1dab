"""Augmentation presets (reference.md section 2), built on ``torchvision.transforms.v2``.

Every train preset maps a PIL RGB image to a float32 normalised tensor (3, size, size). Geometric and
colour operations run on the PIL image, which measured about 2 to 4 times faster than the same v2
operations on uint8 tensors for 32 and 224 px images; each pipeline converts to a normalised tensor once,
then runs the tensor-only steps (Gaussian blur, Cutout). ``benchmarks/data_speed.py`` times every preset.

Presets (``PRESETS``):

- ``cifar_autoaugment_cutout``: pad-4 random crop, flip, AutoAugment (CIFAR-10 policy), Cutout 16 px.
- ``simclr``: GPaCo's CIFAR second view: RandomResizedCrop(scale 0.2-1), flip, colour jitter p 0.8,
  grayscale p 0.2, Gaussian blur p 0.2.
- ``randaugment``: RandomResizedCrop(scale 0.08-1), flip, RandAugment(n, m).
- ``randaugstack``: ``randaugment`` followed by SimCLR colour jitter p 0.8, grayscale p 0.2, blur p 0.5.
- ``digits`` / ``digits_simclr``: pad-crop or RandomResizedCrop(scale 0.5-1) plus a small rotation and
  scaling; no flips (digits are not mirror-symmetric) and no colour changes.
- ``none``: resize to ``size`` and normalise.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as F
from PIL import Image
from torch import Tensor

from ltcl.config import ViewsConfig

NORMALIZATION = {
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
PRESETS = (
    "cifar_autoaugment_cutout",
    "simclr",
    "randaugment",
    "randaugstack",
    "digits",
    "digits_simclr",
    "none",
)
CUTOUT_FILLS = ("mean", "black")


class Cutout(torch.nn.Module):
    """Cutout (DeVries and Taylor, 2017): fills one square whose centre is uniform over the image.

    The square is clipped at the borders, so it covers fewer pixels when its centre lies near an edge.

    Args:
        length: side of the square in pixels.
        fill: value written into the square: a number, or one value per channel.
    """

    def __init__(self, length: int, fill: float | Sequence[float] = 0.0) -> None:
        super().__init__()
        if length < 1:
            raise ValueError(f"Cutout length must be a positive number of pixels, got {length}.")
        self.length = int(length)
        self.fill = torch.as_tensor(fill, dtype=torch.float32).reshape(-1, 1, 1)

    def forward(self, image: Tensor) -> Tensor:
        """Args: image (C, H, W) float. Returns: a new (C, H, W) tensor with the square filled."""
        height, width = image.shape[-2:]
        cy = int(torch.randint(height, ()))
        cx = int(torch.randint(width, ()))
        y0, x0 = cy - self.length // 2, cx - self.length // 2
        y1, x1 = min(y0 + self.length, height), min(x0 + self.length, width)
        y0, x0 = max(y0, 0), max(x0, 0)
        out = image.clone()
        out[..., y0:y1, x0:x1] = self.fill.to(out.dtype)
        return out

    def extra_repr(self) -> str:
        return f"length={self.length}, fill={self.fill.flatten().tolist()}"


class RandomPadCrop(torch.nn.Module):
    """Random crop of the zero-padded image back to the input's own size (``RandomCrop(s, padding=p)``).

    Unlike ``RandomCrop`` it needs no fixed size, so a preset can crop-pad at the image's native size and
    resize afterwards. A crop window that reaches outside the image reads zeros, which is the padding.

    Args:
        padding: pixels of zero padding on every side.
    """

    def __init__(self, padding: int) -> None:
        super().__init__()
        self.padding = int(padding)

    def forward(self, image):
        """Args: image, PIL or (C, H, W) tensor. Returns: the same type and size, shifted by up to padding."""
        height, width = F.get_size(image)
        top = int(torch.randint(-self.padding, self.padding + 1, ()))
        left = int(torch.randint(-self.padding, self.padding + 1, ()))
        return F.crop(image, top, left, height, width)

    def extra_repr(self) -> str:
        return f"padding={self.padding}"


class ToNormalizedTensor(torch.nn.Module):
    """PIL RGB image -> contiguous float32 (3, H, W) tensor ``(pixel / 255 - mean) / std`` in one pass.

    Replaces v2's PILToTensor + ToDtype + Normalize, which cost three times as much at 224 px (their
    intermediate tensors keep the image's channels-last strides).

    Args:
        mean: per-channel mean of pixels scaled to [0, 1].
        std: per-channel standard deviation of pixels scaled to [0, 1].
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        self.mean, self.std = tuple(mean), tuple(std)
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -mean_t / std_t

    def forward(self, image) -> Tensor:
        """Args: image, PIL or uint8 (3, H, W) tensor. Returns: float32 (3, H, W)."""
        if isinstance(image, Image.Image):
            if image.mode != "RGB":
                image = image.convert("RGB")
            image = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        return torch.addcmul(self._shift, image.contiguous(), self._scale)

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


@functools.lru_cache(maxsize=32)
def _reflect_band_indices(n: int, kernel_size: int) -> tuple[Tensor, Tensor]:
    """Row and column indices of an (n, n) blur matrix whose reflect padding is folded into the band."""
    half = kernel_size // 2
    rows = torch.arange(n).unsqueeze(1).expand(n, kernel_size)
    cols = rows + torch.arange(-half, half + 1)
    if n > 1:  # reflect without repeating the edge pixel, like torch.nn.functional.pad(mode="reflect")
        period = 2 * (n - 1)
        cols = cols.remainder(period)
        cols = torch.where(cols > n - 1, period - cols, cols)
    else:
        cols = torch.zeros_like(cols)
    return rows.reshape(-1), cols.reshape(-1)


def _blur_matrix(n: int, weights: Tensor) -> Tensor:
    rows, cols = _reflect_band_indices(n, weights.numel())
    matrix = torch.zeros(n, n, dtype=weights.dtype)
    return matrix.index_put_((rows, cols), weights.repeat(n), accumulate=True)


class RandomGaussianBlur(torch.nn.Module):
    """Gaussian blur with sigma drawn uniformly from ``sigma``, on a float tensor.

    Same result as torchvision's ``gaussian_blur`` (kernel truncated to ``kernel_size``, reflect padding),
    computed as two banded matrix products: on one CPU core this took 1.2 ms for a 224 px image and a 23-tap
    kernel, against 13 to 80 ms for torchvision's depthwise convolution.

    Args:
        kernel_size: odd number of taps.
        sigma: (low, high) range of the standard deviation in pixels.
    """

    def __init__(self, kernel_size: int, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"Gaussian blur kernel_size must be a positive odd number, got {kernel_size}.")
        if not 0 < sigma[0] <= sigma[1]:
            raise ValueError(f"Gaussian blur sigma must be a range 0 < low <= high, got {sigma}.")
        self.kernel_size = int(kernel_size)
        self.sigma = (float(sigma[0]), float(sigma[1]))

    def forward(self, image: Tensor) -> Tensor:
        """Args: image (C, H, W) float. Returns: the blurred (C, H, W) tensor."""
        low, high = self.sigma
        sigma = low + (high - low) * float(torch.rand(()))
        offsets = torch.arange(self.kernel_size, dtype=image.dtype) - (self.kernel_size - 1) / 2
        weights = torch.exp(-offsets.square() / (2 * sigma * sigma))
        weights = weights / weights.sum()
        height, width = image.shape[-2:]
        return _blur_matrix(height, weights) @ image @ _blur_matrix(width, weights).T

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, sigma={self.sigma}"


def blur_kernel_size(size: int) -> int:
    """SimCLR's kernel: about 10 % of the image side, odd, at least 3 (3 at 32 px, 23 at 224 px)."""
    k = int(round(0.1 * size))
    return max(3, k + 1 - k % 2)


def normalization_stats(views_cfg: ViewsConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel of ``views.normalization``."""
    if views_cfg.normalization not in NORMALIZATION:
        known = ", ".join(NORMALIZATION)
        raise ValueError(f"views.normalization must be one of {known}; got {views_cfg.normalization!r}.")
    return NORMALIZATION[views_cfg.normalization]


def cutout_fill_values(views_cfg: ViewsConfig, mean: Sequence[float], std: Sequence[float]) -> list[float]:
    """What Cutout writes into the normalised image, per channel, for ``views.cutout_fill``.

    "mean" writes 0 (the mean colour); "black" reproduces GPaCo's code, which cuts before Normalize, so pixel 0
    becomes -mean/std.
    """
    if views_cfg.cutout_fill not in CUTOUT_FILLS:
        raise ValueError(
            f"views.cutout_fill must be one of {', '.join(CUTOUT_FILLS)}; got {views_cfg.cutout_fill!r}."
        )
    return [0.0] * 3 if views_cfg.cutout_fill == "mean" else [-m / s for m, s in zip(mean, std)]


def _to_normalized_tensor(mean: Sequence[float], std: Sequence[float], blur: float = 0.0, size: int = 0):
    """The one conversion from PIL, then the tensor steps: normalise, optional blur (probability ``blur``).

    Blurring after normalising gives the same result as before: the blur weights sum to 1 and reflect
    padding only repeats pixels, so a per-channel affine map commutes with it.
    """
    steps: list = [ToNormalizedTensor(mean, std)]
    if blur > 0:
        steps.append(v2.RandomApply([RandomGaussianBlur(blur_kernel_size(size))], p=blur))
    return steps


def _simclr_colour() -> list:
    return [v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), v2.RandomGrayscale(p=0.2)]


def _small_affine() -> v2.RandomAffine:
    """Digits: rotate by up to 10 degrees and scale by 0.9-1.1 (bilinear, so strokes stay smooth)."""
    return v2.RandomAffine(degrees=10, scale=(0.9, 1.1), interpolation=v2.InterpolationMode.BILINEAR)


def _randaugment(views_cfg: ViewsConfig, fill: tuple[int, ...]) -> v2.RandAugment:
    n, m, bins = views_cfg.randaugment_n, views_cfg.randaugment_m, views_cfg.randaugment_bins
    if n < 0:
        raise ValueError(f"views.randaugment_n must be a non-negative number of operations, got {n}.")
    if bins < 2 or not 0 <= m < bins:
        raise ValueError(
            f"views.randaugment_m must lie in 0..{bins - 1} (views.randaugment_bins - 1), got {m}."
        )
    return v2.RandAugment(num_ops=n, magnitude=m, num_magnitude_bins=bins, fill=fill)


def build_train_transform(preset: str, size: int, views_cfg: ViewsConfig) -> Callable[..., Tensor]:
    """Builds one training view's augmentation.

    For ``cifar_autoaugment_cutout`` and ``digits`` the pad-4 crop happens at the image's native size and
    the result is then resized to ``size`` (a no-op for 32 px images at size 32); Cutout's side scales with
    ``size`` (16 px at 32). Areas that AutoAugment and RandAugment shifts and rotations expose are filled
    with the normalisation mean, as timm and GPaCo do, so they become 0 after normalisation; the digits
    presets fill with 0, the digits' background.

    Args:
        preset: one of ``PRESETS``.
        size: output side in pixels.
        views_cfg: supplies normalisation, RandAugment n/m/bins and the Cutout fill.

    Returns:
        A callable mapping a PIL RGB image to a float32 tensor (3, size, size).
    """
    if preset not in PRESETS:
        raise ValueError(f"Unknown augmentation preset {preset!r}; known presets: {', '.join(PRESETS)}.")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"View size must be a positive number of pixels, got {size!r}.")
    mean, std = normalization_stats(views_cfg)
    mean_pixel = tuple(round(255 * m) for m in mean)
    flip = v2.RandomHorizontalFlip()

    if preset == "cifar_autoaugment_cutout":
        fill = cutout_fill_values(views_cfg, mean, std)
        steps = [
            RandomPadCrop(4),
            flip,
            v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10, fill=mean_pixel),
            v2.Resize((size, size)),
            *_to_normalized_tensor(mean, std),
            Cutout(max(1, round(16 * size / 32)), fill),
        ]
    elif preset == "simclr":
        steps = [
            v2.RandomResizedCrop(size, scale=(0.2, 1.0)),
            flip,
            *_simclr_colour(),
            *_to_normalized_tensor(mean, std, blur=0.2, size=size),
        ]
    elif preset in ("randaugment", "randaugstack"):
        steps = [v2.RandomResizedCrop(size, scale=(0.08, 1.0)), flip, _randaugment(views_cfg, mean_pixel)]
        if preset == "randaugstack":
            steps += [*_simclr_colour(), *_to_normalized_tensor(mean, std, blur=0.5, size=size)]
        else:
            steps += _to_normalized_tensor(mean, std)
    elif preset == "digits":
        steps = [
            RandomPadCrop(4),
            _small_affine(),
            v2.Resize((size, size)),
            *_to_normalized_tensor(mean, std),
        ]
    elif preset == "digits_simclr":
        steps = [
            v2.RandomResizedCrop(size, scale=(0.5, 1.0)),
            _small_affine(),
            *_to_normalized_tensor(mean, std),
        ]
    else:  # "none"
        steps = [v2.Resize((size, size)), *_to_normalized_tensor(mean, std)]
    return v2.Compose(steps)


def build_test_transform(views_cfg: ViewsConfig) -> Callable[..., Tensor]:
    """Evaluation transform: shorter side to ``test_resize`` (when > 0), centre crop ``test_size``, normalise.

    Returns:
        A callable mapping a PIL RGB image to a float32 tensor (3, test_size, test_size).
    """
    mean, std = normalization_stats(views_cfg)
    if views_cfg.test_size < 1:
        raise ValueError(f"views.test_size must be a positive number of pixels, got {views_cfg.test_size}.")
    if views_cfg.test_resize < 0:
        raise ValueError(
            f"views.test_resize must be 0 (no resize) or a side in pixels, got {views_cfg.test_resize}."
        )
    steps = [v2.Resize(views_cfg.test_resize)] if views_cfg.test_resize > 0 else []
    steps += [v2.CenterCrop(views_cfg.test_size), *_to_normalized_tensor(mean, std)]
    return v2.Compose(steps)
