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
        fixed: the model takes ``size``-px inputs only (a ViT's position embeddings); other sizes fail in its
            forward pass, so :func:`check_view_sizes` refuses them before any data is read.
        size_kwarg: the ``model.backbone_kwargs`` key that builds the model for another size ("img_size"; "": none).
        any_size_kwarg: the ``model.backbone_kwargs`` flag that lets it take any size ("dynamic_img_size"; "": none).
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    fixed: bool = False
    size_kwarg: str = ""
    any_size_kwarg: str = ""


def make_input_spec(
    size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    source: str,
    *,
    fixed: bool = False,
    size_kwarg: str = "",
    any_size_kwarg: str = "",
) -> InputSpec:
    """An :class:`InputSpec` from the loose forms that timm and OpenCLIP configs use.

    Args:
        size: a side, or (H, W), or (C, H, W) as in timm's ``input_size``; H must equal W.
        mean, std: three floats.
        source: what the values came from, for the error message.
        fixed, size_kwarg, any_size_kwarg: see :class:`InputSpec`.
    """
    sides = [int(size)] if isinstance(size, (int, float)) else [int(s) for s in size][-2:]
    channels = (tuple(float(m) for m in mean), tuple(float(s) for s in std))
    if len(set(sides)) != 1 or sides[0] <= 0 or any(len(c) != 3 for c in channels):
        raise UserError(
            f"{source} gives input size {size}, mean {mean} and std {std}; ltcl needs a square RGB input "
            "(one positive side, three means and three stds)."
        )
    return InputSpec(sides[0], channels[0], channels[1], fixed, size_kwarg, any_size_kwarg)  # type: ignore[arg-type]


def check_view_sizes(
    spec: InputSpec | None, backbone: str, sizes: Sequence[int], num_views: int, test_size: int
) -> None:
    """Refuses view sizes that a fixed-size model cannot take, naming the settings to change.

    Called once per run, before any data is read; without it such a model fails deep inside its forward pass.

    Args:
        spec: the backbone's input spec (None, or not ``fixed``: any size is fine).
        backbone: ``model.backbone``, for the message.
        sizes, num_views, test_size: ``views.sizes`` (the last entry repeats), ``views.num_views`` and
            ``views.test_size`` as configured, 0 for the model's size.
    """
    if spec is None or not spec.fixed:
        return
    used = [sizes[min(i, len(sizes) - 1)] for i in range(num_views)] if sizes else []
    wrong = []
    if any(s not in (0, spec.size) for s in used):
        wrong.append(f"views.sizes {list(sizes)}")
    if test_size not in (0, spec.size):
        wrong.append(f"views.test_size {test_size}")
    if not wrong:
        return
    verb, them = ("differs", "it") if wrong == [f"views.test_size {test_size}"] else ("differ", "them")
    options = []
    explicit = {s for s in [*used, test_size] if s}
    if spec.size_kwarg and len(explicit) == 1:  # one size for every view: the model can be built for it
        options.append(f"{{{spec.size_kwarg}: {explicit.pop()}}}")
    if spec.any_size_kwarg:
        options.append(f"{{{spec.any_size_kwarg}: true}}")
    alternatives = f", or model.backbone_kwargs {' or '.join(options)}" if options else ""
    raise UserError(
        f"model.backbone {backbone} takes {spec.size}-px inputs only, but {' and '.join(wrong)} {verb}: set {them} "
        f"to 0 (the model's size){alternatives}."
    )
