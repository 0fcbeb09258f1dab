"""The patches of DSCL's patch-based self-distillation (:mod:`ltcl.methods.dscl`): the backbone's global pooling
(whose input, the last feature map, the teacher's boxes are pooled from), the random patch boxes, their RoIAlign rows
and the patches cut from the images, and the guard that keeps the patches out of BatchNorm's running statistics."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def running_statistics_kept(model: nn.Module) -> Iterator[None]:
    """Inside, ``model``'s BatchNorm layers normalise with the batch's statistics as usual in train mode; on leaving,
    their running statistics (and batch counts) are put back as they were.

    Why: PBSD sends ``num_patches`` batches of small patches through the network per step. Their statistics are
    not those of whole images, and folded into the running averages they outweigh the images' (five patch batches
    to one image batch), so the evaluation-mode network normalises whole images with patch statistics. The
    authors' code never evaluates that state: its second stage runs the frozen backbone in train mode, which
    re-estimates the running statistics on whole images. Keeping the patches out gives the running statistics
    of whole images, as there. (Measured: a CIFAR-10-LT run without this guard scored 11.5% on validation; with
    its statistics re-estimated on whole images, 36.0%.)
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    kept = [(m.running_mean, m.running_var, m.num_batches_tracked) for m in layers]
    # The forward updates stand-in copies; writing the old values back in place instead would change tensors that
    # autograd saved for the backward pass.
    for m, (mean, var, count) in zip(layers, kept):
        m.running_mean, m.running_var, m.num_batches_tracked = mean.clone(), var.clone(), count.clone()
    try:
        yield
    finally:
        for m, (mean, var, count) in zip(layers, kept):
            m.running_mean, m.running_var, m.num_batches_tracked = mean, var, count


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
