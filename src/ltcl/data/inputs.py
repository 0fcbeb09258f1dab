"""What a pretrained backbone expects of its input images: side length and normalisation.

The backbone registry (:mod:`ltcl.models.registry`) gives one per pretrained backbone; the view pipeline
(:func:`ltcl.data.augment.resolve_views`) fills in the sizes and statistics that a config leaves to the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ltcl.errors import UserError


@dataclass(frozen=True)
class InputSpec:
    """Input resolution and per-channel normalisation of a pretrained backbone.

    Attributes:
        size: side of the square (3, size, size) input in pixels.
        mean: RGB mean subtracted from [0, 1] pixels.
        std: RGB standard deviation divided out after the mean.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def make_input_spec(size: int | Sequence[int], mean: Sequence[float], std: Sequence[float], source: str) -> InputSpec:
    """An :class:`InputSpec` from the loose forms that timm and OpenCLIP configs use.

    Args:
        size: a side, or (H, W), or (C, H, W) as in timm's ``input_size``; H must equal W.
        mean, std: three floats.
        source: what the values came from, for the error message.
    """
    sides = [int(size)] if isinstance(size, (int, float)) else [int(s) for s in size][-2:]
    channels = (tuple(float(m) for m in mean), tuple(float(s) for s in std))
    if len(set(sides)) != 1 or sides[0] <= 0 or any(len(c) != 3 for c in channels):
        raise UserError(
            f"{source} gives input size {size}, mean {mean} and std {std}; ltcl needs a square RGB input "
            "(one positive side, three means and three stds)."
        )
    return InputSpec(sides[0], channels[0], channels[1])  # type: ignore[arg-type]
