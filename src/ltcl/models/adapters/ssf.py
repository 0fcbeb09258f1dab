"""SSF, Scaling & Shifting your Features (Lian et al., NeurIPS 2022): ``y -> gamma * y + beta`` per channel after
the operations of every transformer block.

Sites, as LIFT applies SSF (github shijxcs/LIFT, ``models/peft_vit.py``: ``ssf_attn``, ``ssf_mlp``, ``ssf_ln``),
per block: the outputs of the two norms, of the q/k/v projection and the attention output projection, and of
every linear layer of the MLP (fc1 before the activation, fc2). SSF's own code (github dongzelian/SSF,
``models/vision_transformer.py``) also scales the patch embedding and the final norm; these are left out, as in
LIFT.

Initialisation: gamma = 1 and beta = 0, so the adapted network computes exactly what the pretrained one does.
SSF's and LIFT's code (``init_ssf_scale_shift``; ``peft_modules.py`` class ``SSF``) draw gamma ~ N(1, 0.02) and
beta ~ N(0, 0.02); the exact start is kept here because both parameters get gradients from the start anyway
(unlike a product of two factors, nothing needs a random start to move).

How: a forward hook on each module that its block calls (norms, ``nn.Linear``). OpenCLIP's attention is an
``nn.MultiheadAttention``, which hands its packed q/k/v weight and its output projection to a functional kernel
and never calls a submodule: there the scale and shift are folded into those weights and biases as
parametrizations, ``W -> gamma[:, None] * W`` and ``b -> gamma * b + beta``, which is the same function.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ltcl.errors import UserError
from ltcl.models.adapters.vit import AdapterModule, adapter_parameters, factory, unadapted_vit

ATTRIBUTE = "ssf"  # a site's parameters: <module>.ssf.scale, <module>.ssf.shift
# nn.MultiheadAttention's projections, (weight, bias, SSF name): folded instead of hooked
_MHA_PROJECTIONS = (("in_proj_weight", "in_proj_bias", "ssf_qkv"), ("out_proj.weight", "out_proj.bias", "ssf_out"))


class ScaleShift(AdapterModule):
    """``gamma * y + beta`` over the last dimension: (..., C) -> (..., C); gamma = 1, beta = 0 at the start.

    Args:
        channels: C.
        factory: dtype and device of gamma and beta.
    """

    def __init__(self, channels: int, factory: dict) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels, **factory))
        self.shift = nn.Parameter(torch.zeros(channels, **factory))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.scale + self.shift


def _scale_shift_output(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return getattr(module, ATTRIBUTE)(output)


class _FoldedScale(nn.Module):
    """Parametrization ``W (C, in) -> gamma[:, None] * W`` reading gamma from a :class:`ScaleShift`."""

    def __init__(self, ssf: ScaleShift) -> None:
        super().__init__()
        self._ssf = [ssf]  # a list: the ScaleShift is registered once, at its site, not again in here

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self._ssf[0].scale.unsqueeze(1) * weight


class _FoldedScaleShift(_FoldedScale):
    """Parametrization ``b (C,) -> gamma * b + beta``."""

    def forward(self, bias: torch.Tensor) -> torch.Tensor:
        return self._ssf[0](bias)


def _fold(attention: nn.MultiheadAttention, weight: str, bias: str, name: str) -> None:
    owner_w, _, attr_w = weight.rpartition(".")
    owner_b, _, attr_b = bias.rpartition(".")
    w_module, b_module = attention.get_submodule(owner_w), attention.get_submodule(owner_b)
    ssf = ScaleShift(getattr(w_module, attr_w).shape[0], factory(attention))
    attention.add_module(name, ssf)
    parametrize.register_parametrization(w_module, attr_w, _FoldedScale(ssf))
    parametrize.register_parametrization(b_module, attr_b, _FoldedScaleShift(ssf))


def _channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    return int(module.normalized_shape[-1])  # nn.LayerNorm and its OpenCLIP subclasses


def add_ssf(backbone: nn.Module) -> list[str]:
    """Adds a scale and a shift after every SSF site of every block of ``backbone`` in place.

    Args:
        backbone: a timm or OpenCLIP vision transformer (:func:`~ltcl.models.adapters.vit.find_vit`).

    Returns:
        The names (relative to ``backbone``) of the scales and shifts.

    Raises:
        UserError: not a vision transformer, adapted already, or an ``nn.MultiheadAttention`` without the packed
            projection or the biases that the folding needs (the backbone is then left as it was).
    """
    parts = unadapted_vit(backbone, "ssf")
    plan = []  # (hooked sites, folded attentions) per block; everything is checked before anything changes
    for block in parts.blocks:
        attentions = [m for m in block.modules() if isinstance(m, nn.MultiheadAttention)]
        if any(a.in_proj_weight is None or a.in_proj_bias is None or a.out_proj.bias is None for a in attentions):
            raise UserError(
                "model.finetune ssf folds its scales and shifts into the packed q/k/v projection and the biases of "
                "nn.MultiheadAttention, and this backbone's attention has separate projections or no biases."
            )
        inside_attention = {id(m) for a in attentions for m in a.modules()}
        sites = [getattr(block, parts.norm1), getattr(block, parts.norm2)]
        sites += [m for m in block.modules() if isinstance(m, nn.Linear) and id(m) not in inside_attention]
        plan.append((sites, attentions))
    for sites, attentions in plan:
        for site in sites:
            site.add_module(ATTRIBUTE, ScaleShift(_channels(site), factory(site)))
            site.register_forward_hook(_scale_shift_output)
        for attention in attentions:
            for weight, bias, name in _MHA_PROJECTIONS:
                _fold(attention, weight, bias, name)
    return adapter_parameters(backbone, ScaleShift)
