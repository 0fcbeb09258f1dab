"""KCL's encoders (:mod:`ltcl.methods.kcl`): the momentum key encoder and the images of the view it reads, and how
stage 2 keeps the query encoder frozen (eval mode whatever ``train()`` asks, exact zero gradients for DDP)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KeyEncoder(nn.Module):
    """The momentum copy of backbone and projection head: images -> L2-normalised projections, no gradient."""

    def __init__(self, backbone: nn.Module, projection: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection = projection
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(self.projection(self.backbone(images)), dim=1)


def _evaluating(module: nn.Module, mode: bool = True) -> nn.Module:
    """``module.train(mode)`` while the module is frozen: it stays in eval mode."""
    return nn.Module.train(module, False)


def _zero_gradient(parameters: list[nn.Parameter]) -> Tensor | float:
    """0 with a graph to ``parameters``: each receives an exact zero gradient (DDP expects one for every parameter
    it averages)."""
    if not parameters:
        return 0.0
    return torch.stack([p.sum().float() for p in parameters]).sum() * 0.0
