"""Test-time augmentation (``ltcl eval --tta N``): N fixed crops of each test image, their logits averaged.

The views are LIFT's test-time ensembling (Shi et al., ICML 2024, shijxcs/LIFT): the image is first brought to an
*expanded* side (224 + 24 = 248 px for a 224 px model), then cut into crops of the model's input size:

- ``N = 5``: the four corner crops and the centre crop (torchvision's ``FiveCrop``, LIFT's default ``tte_mode``);
- ``N = 10``: those five and the same five of the horizontally mirrored image (``TenCrop``);
- ``N = 1``: no test-time augmentation, the evaluation transform of the run unchanged.

LIFT averages the model's outputs, the classifier's logits (a scaled cosine), *before* any softmax; so does this.

One departure, for batching on the device: the loader gives the centre square of side ``expanded`` (shorter side
resized to it, then centre-cropped), and the corner crops are corners of that square. LIFT crops the corners of the
whole resized rectangle, so on a non-square photo its corner views reach further along the longer side; on a square
image (CIFAR, the digits) the views are the same.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from ltcl.config.schema import ViewsConfig
from ltcl.errors import UserError
from ltcl.models.network import NetworkOutput

TTA_VIEWS = (1, 5, 10)  # the view sets the builder knows: none, five crops, ten crops
LIFT_SIDE, LIFT_EXPAND = 224, 24  # LIFT's resolution and `expand` (utils/config.py): crops of 224 from 248


def check_views(n: int) -> int:
    """``n`` when the view builder supports it; otherwise one sentence (a UserError, exit status 2)."""
    if n not in TTA_VIEWS:
        raise UserError(
            f"--tta takes 1 (no test-time augmentation), 5 (the four corner crops and the centre crop) or 10 (those "
            f"and their mirror images), got {n}."
        )
    return n


def expanded_side(crop: int) -> int:
    """The side the image is brought to before it is cut into crops of side ``crop``: LIFT's 24 px at 224 px, in
    proportion at other sizes (so a 32 px CIFAR model gets 35 px, not 56)."""
    return crop + round(crop * LIFT_EXPAND / LIFT_SIDE)


def tta_views_config(views: ViewsConfig, n: int) -> ViewsConfig:
    """The evaluation views for ``n`` test-time views: ``views`` itself for 1; otherwise the expanded centre square,
    which :func:`crop_views` cuts on the device (``views.test_resize`` is replaced, as LIFT's ``Resize(248)``
    replaces its single-view ``Resize(256)``)."""
    if check_views(n) == 1:
        return views
    side = expanded_side(views.test_size)
    return dataclasses.replace(views, test_size=side, test_resize=side)


def _centre_offset(side: int, crop: int) -> int:
    # torchvision's centre crop rounds the offset (Python's round), so that the centre view is the one it takes
    return int(round((side - crop) / 2.0))


def five_crops(images: Tensor, crop: int) -> list[Tensor]:
    """The corner and centre crops of a batch, in torchvision's order (top-left, top-right, bottom-left,
    bottom-right, centre).

    Args:
        images: (B, 3, H, W), H and W at least ``crop``.

    Returns:
        Five (B, 3, crop, crop) views of ``images`` (slices: nothing is copied).
    """
    height, width = images.shape[-2:]
    if height < crop or width < crop:
        raise ValueError(f"cannot cut {crop} px crops from {height}x{width} images")
    top, left = _centre_offset(height, crop), _centre_offset(width, crop)
    bottom, right = height - crop, width - crop
    corners = [(0, 0), (0, right), (bottom, 0), (bottom, right), (top, left)]
    return [images[..., y : y + crop, x : x + crop] for y, x in corners]


def crop_views(images: Tensor, crop: int, n: int) -> list[Tensor]:
    """The ``n`` test-time views of a batch (module docstring); the mirrored five are the five crops of the
    mirrored batch, as torchvision's ``TenCrop`` takes them.

    Args:
        images: (B, 3, H, W) on any device; each view is cut from the whole batch at once.

    Returns:
        ``n`` tensors (B, 3, crop, crop).
    """
    if check_views(n) == 1:
        return [images]
    views = five_crops(images, crop)
    if n == 10:
        views += five_crops(images.flip(-1), crop)
    return views


class ViewAveraged(nn.Module):
    """A network whose logits are the mean, over the ``n`` test-time views, of ``model``'s logits (before softmax).

    The views go through the model one at a time, each a batch as large as the loader's, so that ten views need
    about the activation memory of one (LIFT too runs more than five crops one after another, trainer.py test).

    Args:
        model: returns a :class:`NetworkOutput` for (B, 3, crop, crop) images.
        crop: the model's input side (``views.test_size``).
        n: 5 or 10 (1 is the model itself: do not wrap it).
    """

    def __init__(self, model: nn.Module, crop: int, n: int) -> None:
        super().__init__()
        self.model, self.crop, self.n = model, crop, check_views(n)
        self.num_classes = model.num_classes

    def forward(self, x: Tensor, with_projection: bool = False) -> NetworkOutput:
        """(B, 3, S, S) expanded images -> logits (B, C) and features (B, F), each the mean over the views; no
        projections (evaluation reads none)."""
        logits = features = None
        for view in crop_views(x, self.crop, self.n):
            out = self.model(view, with_projection=False)
            # summed in float32 at least: under autocast the logits may be float16
            z = out.logits.to(torch.promote_types(out.logits.dtype, torch.float32))
            f = out.features.to(torch.promote_types(out.features.dtype, torch.float32))
            logits = z if logits is None else logits + z
            features = f if features is None else features + f
        return NetworkOutput(logits / self.n, features / self.n, None)
