"""AdaptFormer (Chen et al., NeurIPS 2022): a bottleneck MLP beside each block's MLP, as LIFT (Shi et al., ICML
2024) uses it.

Each block ``x -> x' = x + attn(norm1(x))``, ``y = x' + mlp(norm2(x'))`` becomes ``y + s * up(relu(down(LN(x'))))``:
the branch reads the same residual stream x' as the MLP branch and its output joins the block's output. The
block is untouched: a forward pre-hook on ``norm2`` notes x' and a forward hook on the block adds the branch.

Defaults, each from LIFT's code (github shijxcs/LIFT, ``models/peft_modules.py`` class ``AdaptFormer`` and
``models/peft_vit.py``), where they differ from AdaptFormer's own (github ShoufaChen/AdaptFormer, ``models/adapter.py``,
``main_image.py``: no LayerNorm, fixed scale 0.1, bottleneck 64, kaiming-uniform down-projection, dropout 0.1):

- the branch normalises its input with its own LayerNorm (weight 1, bias 0);
- the scale s is a learnable scalar, initially 1;
- ``down`` (D -> r) is Kaiming-normal (a = sqrt(5)), its bias 0; ``up`` (r -> D) is all zeros, so the adapted
  network computes exactly what the pretrained one does until ``up`` moves;
- no dropout;
- bottleneck width r = 2 ** max(0, int(log2(C / (2 * depth)))) for C classes (``peft_vit.py``,
  ``adapter_dim``): it keeps the adapters' parameters on the order of the classifier's. ``adaptformer:R`` sets r.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ltcl.models.adapters.vit import AdapterModule, adapter_parameters, factory, find_vit, unadapted_vit

ATTRIBUTE = "adaptformer"  # the branch's name inside its block: blocks.<i>.adaptformer.down.weight, ...
_TAPPED = "_adaptformer_input"  # where norm2's pre-hook leaves x' for the block's hook


class AdaptFormerBranch(AdapterModule):
    """``s * up(relu(down(LayerNorm(x))))``: (..., D) -> (..., D).

    Args:
        width: D.
        bottleneck: r >= 1.
        factory: dtype and device of the new parameters.
    """

    def __init__(self, width: int, bottleneck: int, factory: dict) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, **factory)
        self.down = nn.Linear(width, bottleneck, **factory)
        self.up = nn.Linear(bottleneck, width, **factory)
        self.scale = nn.Parameter(torch.ones(1, **factory))
        nn.init.kaiming_normal_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)  # zero output at the start: the pretrained network exactly
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(F.relu(self.down(self.norm(x))))


def lift_bottleneck(backbone: nn.Module, num_classes: int) -> int:
    """LIFT's bottleneck width for ``num_classes`` classes: 2 ** max(0, int(log2(C / (2 * depth))))."""
    depth = len(find_vit(backbone, ATTRIBUTE).blocks)
    return 2 ** max(0, int(math.log2(max(num_classes, 1) / (2 * depth))))


def _tap(norm: nn.Module, args: tuple) -> None:
    setattr(norm, _TAPPED, args[0])  # x', the residual stream entering the MLP branch


def _add_branch(block: nn.Module, args: tuple, output: torch.Tensor, norm: str) -> torch.Tensor:
    tapped = getattr(block, norm).__dict__.pop(_TAPPED)  # popped: no activation outlives the forward pass
    return output + getattr(block, ATTRIBUTE)(tapped)


def add_adaptformer(backbone: nn.Module, bottleneck: int) -> list[str]:
    """Adds an AdaptFormer branch to every block of ``backbone`` in place.

    Args:
        backbone: a timm or OpenCLIP vision transformer (:func:`~ltcl.models.adapters.vit.find_vit`).
        bottleneck: r >= 1.

    Returns:
        The names (relative to ``backbone``) of the branches' parameters.

    Raises:
        UserError: not a vision transformer, or adapted already.
    """
    parts = unadapted_vit(backbone, f"adaptformer:{bottleneck}")
    for block in parts.blocks:
        block.add_module(ATTRIBUTE, AdaptFormerBranch(parts.width, bottleneck, factory(block)))
        getattr(block, parts.norm2).register_forward_pre_hook(_tap)
        block.register_forward_hook(functools.partial(_add_branch, norm=parts.norm2))
    return adapter_parameters(backbone, AdaptFormerBranch)
