"""Low-rank adaptation (Hu et al. 2021) of a backbone's linear maps, as weight parametrizations.

Each adapted weight W (out, in) is replaced, wherever it is read, by ``W + (alpha / r) * B @ A`` with
A (r, in) Kaiming-uniform and B (out, r) zero, so the adapted model computes exactly what the base model
computes until B moves. A parametrization (rather than a wrapper module around ``forward``) also reaches
weights that their owner reads directly: ``nn.MultiheadAttention`` (OpenCLIP's towers) passes
``in_proj_weight`` and ``out_proj.weight`` to a functional kernel and never calls ``out_proj``.

Which weights: every ``nn.Linear`` of the backbone (for a timm ViT with ``num_classes=0`` these are exactly
``attn.qkv``, ``attn.proj``, ``mlp.fc1`` and ``mlp.fc2`` of every block) and the packed q/k/v projection of every
``nn.MultiheadAttention``. Convolutions are not adapted: a backbone without any linear map (ResNets) is refused.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from ltcl.errors import UserError

# nn.MultiheadAttention keeps q/k/v as one packed parameter, or three when key/value sizes differ.
_MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


class LoRADelta(nn.Module):
    """Parametrization ``W -> W + scaling * B @ A`` of one (out_features, in_features) weight.

    Args:
        weight: the weight to adapt (its shape, dtype and device are copied).
        rank: r >= 1.
        alpha: scaling numerator; the update is multiplied by ``alpha / rank``.
    """

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float) -> None:
        super().__init__()
        out_features, in_features = weight.shape
        factory = {"dtype": weight.dtype, "device": weight.device}
        self.lora_a = nn.Parameter(torch.empty(rank, in_features, **factory))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear; B = 0 makes the start exact
        self.scaling = alpha / rank

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """(out, in) base weight -> (out, in) adapted weight."""
        return weight + self.scaling * (self.lora_b @ self.lora_a)

    def extra_repr(self) -> str:
        return f"rank={self.lora_a.shape[0]}, scaling={self.scaling}"


def lora_targets(backbone: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(module name, module, weight attribute) of every weight :func:`add_lora` adapts, in module order."""
    targets = []
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Linear):
            targets.append((name, module, "weight"))
        elif isinstance(module, nn.MultiheadAttention):
            targets += [(name, module, w) for w in _MHA_WEIGHTS if isinstance(getattr(module, w), nn.Parameter)]
    return targets


def add_lora(backbone: nn.Module, rank: int, alpha: float) -> list[str]:
    """Adds a LoRA update to every target weight of ``backbone`` in place.

    Args:
        backbone: the module to adapt; must not be adapted already.
        rank: r >= 1.
        alpha: scaling numerator (> 0); the update is scaled by ``alpha / rank``.

    Returns:
        The parameter names (relative to ``backbone``) of the new A and B factors.

    Raises:
        ValueError: the backbone has no linear map, or is adapted already.
    """
    if not (isinstance(alpha, (int, float)) and alpha > 0) or not (isinstance(rank, int) and rank >= 1):
        raise UserError(f"LoRA needs a rank >= 1 and a scaling alpha > 0 (model.lora_alpha), got {rank} and {alpha}.")
    if any(parametrize.is_parametrized(m) for m in backbone.modules()):
        raise UserError("The backbone already has parametrized weights (LoRA applied twice?); build a new network.")
    targets = lora_targets(backbone)
    if not targets:
        raise UserError(
            f"model.finetune lora:{rank} adapts linear layers, and the backbone ({type(backbone).__name__}) has "
            "none (a convolutional network): use model.finetune full or bitfit, or model.trainable prefixes."
        )
    names = []
    for module_name, module, attr in targets:
        parametrize.register_parametrization(module, attr, LoRADelta(getattr(module, attr), rank, alpha))
        prefix = f"{module_name}." if module_name else ""
        names += [f"{prefix}parametrizations.{attr}.0.lora_a", f"{prefix}parametrizations.{attr}.0.lora_b"]
    return names
