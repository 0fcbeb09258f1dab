"""Where the adapters attach: the blocks of a timm or OpenCLIP vision transformer, found without copying either.

Both libraries build pre-norm blocks ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``; they differ in names
(timm ``blocks[i].norm1/attn/norm2/mlp``, OpenCLIP ``transformer.resblocks[i].ln_1/attn/ln_2/mlp``) and in the
token layout (timm and current OpenCLIP run (B, L, D); OpenCLIP built with ``batch_first=False`` runs (L, B, D)).
:func:`find_vit` reads those facts once, so the adapters work on either through forward hooks and never copy a
block's ``forward``.

Hooks are module-level functions (or partials of them over plain values) that find their adapter through the
hooked module's own attributes: ``copy.deepcopy`` of the network (the momentum encoders of PaCo, KCL, GML, DSCL)
then gives the copy hooks that use the copy's adapters, where a closure over a module would keep the original's.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from torch import nn

from ltcl.errors import UserError


class AdapterModule(nn.Module):
    """Base of the modules that the adapters add to a backbone: it marks a backbone as adapted already."""


@dataclass(frozen=True)
class ViTParts:
    """The facts about a vision transformer that the adapters need.

    Attributes:
        family: "timm" or "open_clip".
        blocks: the transformer blocks, in order.
        width: D, the token width.
        patch_size: (ph, pw) pixels per patch.
        prefix_tokens: P, tokens before the patch tokens (the class token; timm's register or distillation tokens).
        token_dim: the sequence dimension of the tensors between blocks: 1 for (B, L, D), 0 for (L, B, D).
        norm1, norm2: attribute names of a block's norm before attention and before the MLP.
    """

    family: str
    blocks: tuple[nn.Module, ...]
    width: int
    patch_size: tuple[int, int]
    prefix_tokens: int
    token_dim: int
    norm1: str
    norm2: str


def _module(name: str):
    # Only a library that built the backbone can own it, and that library is imported then: no optional import.
    return sys.modules.get(name)


def find_vit(backbone: nn.Module, mode: str) -> ViTParts:
    """The blocks and token layout of ``backbone``, a timm ``VisionTransformer`` or an OpenCLIP ViT image tower.

    Args:
        backbone: the network's backbone.
        mode: the fine-tuning mode, for the error message ("adaptformer", "vpt_deep:10", ...).

    Raises:
        UserError: another kind of backbone (a ResNet, a Swin, a ViT with post-norm or parallel blocks).
    """
    parts = None
    timm_vit = _module("timm.models.vision_transformer")
    clip = _module("open_clip.transformer")
    if timm_vit is not None and isinstance(backbone, timm_vit.VisionTransformer):
        if all(isinstance(b, timm_vit.Block) for b in backbone.blocks):
            parts = ViTParts(
                "timm",
                tuple(backbone.blocks),
                int(backbone.embed_dim),
                tuple(backbone.patch_embed.patch_size),
                int(backbone.num_prefix_tokens),
                1,
                "norm1",
                "norm2",
            )
    elif clip is not None and isinstance(backbone, clip.VisionTransformer):
        blocks = tuple(backbone.transformer.resblocks)
        if all(isinstance(b, clip.ResidualAttentionBlock) for b in blocks):
            parts = ViTParts(
                "open_clip",
                blocks,
                int(backbone.class_embedding.shape[-1]),
                tuple(backbone.patch_size),
                1,  # the class token (OpenCLIP towers have no other prefix tokens)
                1 if backbone.transformer.batch_first else 0,
                "ln_1",
                "ln_2",
            )
    if parts is None or not parts.blocks:
        raise UserError(
            f"model.finetune {mode} adapts the pre-norm blocks of a vision transformer (a timm VisionTransformer or "
            f"an OpenCLIP ViT tower), and the backbone ({type(backbone).__name__}) is not one: use model.finetune "
            "full, bitfit or lora:R."
        )
    return parts


def unadapted_vit(backbone: nn.Module, mode: str) -> ViTParts:
    """:func:`find_vit` for a backbone about to be adapted.

    Raises:
        UserError: not a vision transformer, or one with adapters already (their hooks would run twice).
    """
    parts = find_vit(backbone, mode)
    if any(isinstance(m, AdapterModule) for m in backbone.modules()):
        raise UserError(
            f"The backbone has adapters already (model.finetune {mode} applied twice?); build a new network."
        )
    return parts


def adapter_parameters(backbone: nn.Module, kind: type[AdapterModule]) -> list[str]:
    """Names (relative to ``backbone``) of the parameters of its ``kind`` modules, in module order."""
    return [
        f"{module_name}.{name}"
        for module_name, module in backbone.named_modules()
        if isinstance(module, kind)
        for name, _ in module.named_parameters()
    ]


def factory(module: nn.Module) -> dict:
    """dtype and device of ``module``'s first parameter, for new parameters that live beside it."""
    param = next(module.parameters())
    return {"dtype": param.dtype, "device": param.device}
