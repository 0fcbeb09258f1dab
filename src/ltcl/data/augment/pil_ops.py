"""The PIL-pipeline steps that torchvision does not provide, or provides more slowly (used by ``pil``).

Each is an ``nn.Module`` (picklable for DataLoader workers) drawing its randomness from torch's global generator,
as torchvision's transforms do, so a worker's seed fixes every view.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torch import Tensor

from ltcl.data.augment.recipes import BLUR_SIGMA
from ltcl.errors import UserError


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
            raise UserError(f"Cutout length must be a positive number of pixels, got {length}.")
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

    def __init__(self, kernel_size: int, sigma: tuple[float, float] = BLUR_SIGMA) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise UserError(f"Gaussian blur kernel_size must be a positive odd number, got {kernel_size}.")
        if not 0 < sigma[0] <= sigma[1]:
            raise UserError(f"Gaussian blur sigma must be a range 0 < low <= high, got {sigma}.")
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
