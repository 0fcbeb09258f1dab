"""The patches of DSCL's patch-based self-distillation (:mod:`ltcl.methods.dscl`): the backbone's global pooling
(whose input, the last feature map, the teacher's boxes are pooled from), the random patch boxes, their RoIAlign rows
and the patches cut from the images."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from ltcl.config import ConfigError


def global_pool(backbone: nn.Module) -> nn.Module:
    """The backbone's last ``AdaptiveAvgPool2d``: its input is the last feature map (the teacher's RoI source)."""
    pools = [m for m in backbone.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    if not pools:
        raise ConfigError(
            "loss.objective dscl pools patch boxes from the backbone's last feature map and needs a convolutional "
            "backbone ending in global average pooling (model.backbone resnet32, resnet50, resnext50_32x4d, ...)."
        )
    return pools[-1]


def sample_patch_boxes(
    count: int, batch: int, height: int, width: int, scale, ratio, generator: torch.Generator
) -> Tensor:
    """(count, batch, 4) boxes ``x1, y1, x2, y2`` in pixels, on the generator's device: area a fraction uniform in
    ``scale`` of the image's, aspect ratio log-uniform in ``ratio``, position uniform (RandomResizedCrop's draw,
    without its retries: a box wider or taller than the image is clipped to it)."""
    u = torch.rand(4, count, batch, device=generator.device, generator=generator)
    s = scale[0] + (scale[1] - scale[0]) * u[0]
    low, high = math.log(ratio[0]), math.log(ratio[1])
    r = torch.exp(low + (high - low) * u[1])
    w = torch.sqrt(height * width * s * r).clamp(max=width)
    h = torch.sqrt(height * width * s / r).clamp(max=height)
    x1, y1 = u[2] * (width - w), u[3] * (height - h)
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=-1)


def box_rois(boxes: Tensor) -> Tensor:
    """(count, batch, 4) boxes -> (count * batch, 5) RoIAlign rows ``image index, x1, y1, x2, y2``, patch-major."""
    count, batch = boxes.shape[:2]
    index = torch.arange(batch, device=boxes.device, dtype=boxes.dtype).repeat(count)
    return torch.cat([index[:, None], boxes.reshape(-1, 4)], dim=1)


def _at_least_float32(tensor: Tensor) -> Tensor:
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def cut_patches(images: Tensor, rois: Tensor, size: int) -> Tensor:
    """The boxes of ``rois`` cut from ``images`` (B, 3, H, W) and resized to ``size`` px: (R, 3, size, size)."""
    images = _at_least_float32(images)
    return roi_align(images, rois.to(images.dtype), size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
