"""Lightweight adapters of vision transformers, each a fine-tuning mode (:mod:`ltcl.models.finetune`).

- :mod:`~ltcl.models.adapters.adaptformer`: a bottleneck MLP beside each block's MLP (``adaptformer``).
- :mod:`~ltcl.models.adapters.vpt`: learnable prompt tokens (``vpt_shallow:N``, ``vpt_deep:N``).
- :mod:`~ltcl.models.adapters.ssf`: per-channel scales and shifts after each block's operations (``ssf``).
- :mod:`~ltcl.models.adapters.vit`: where they attach in timm and OpenCLIP vision transformers.
"""

from ltcl.models.adapters.adaptformer import AdaptFormerBranch, add_adaptformer, lift_bottleneck
from ltcl.models.adapters.ssf import ScaleShift, add_ssf
from ltcl.models.adapters.vit import AdapterModule, ViTParts, find_vit
from ltcl.models.adapters.vpt import LIFT_LENGTH, VisualPrompts, add_vpt

__all__ = [
    "LIFT_LENGTH",
    "AdaptFormerBranch",
    "AdapterModule",
    "ScaleShift",
    "ViTParts",
    "VisualPrompts",
    "add_adaptformer",
    "add_ssf",
    "add_vpt",
    "find_vit",
    "lift_bottleneck",
]
