"""What sits on the backbone's features: the contrastive projection head and the two classifiers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ltcl.errors import UserError


class ProjectionHead(nn.Sequential):
    """Linear-(BatchNorm)-ReLU-Linear MLP, or a single Linear when ``hidden_dim`` is 0.

    Maps (B, in_dim) features to (B, out_dim) projections, not normalised (the network normalises them).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool = False) -> None:
        if in_dim <= 0 or out_dim <= 0 or hidden_dim < 0:
            raise UserError(
                f"ProjectionHead needs positive in/out sizes and hidden size >= 0, got "
                f"in_dim={in_dim}, hidden_dim={hidden_dim}, out_dim={out_dim}."
            )
        if hidden_dim == 0:
            layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        else:
            # The BatchNorm makes the first bias redundant.
            layers = [nn.Linear(in_dim, hidden_dim, bias=not batch_norm)]
            layers += [nn.BatchNorm1d(hidden_dim)] if batch_norm else []
            layers += [nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)]
        super().__init__(*layers)


class LinearClassifier(nn.Linear):
    """Affine classifier: (B, in_dim) features -> (B, num_classes) logits ``f W^T + b``."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__(in_dim, num_classes)


class CosineClassifier(nn.Module):
    """Cosine classifier: ``logits = scale * normalize(f) @ normalize(W)^T``, no bias.

    Args:
        in_dim: feature size F.
        num_classes: C.
        scale: fixed logit scale (> 0); cosines lie in [-1, 1], so the scale sets how peaked softmax can be.

    Shapes: (B, F) features -> (B, C) logits; ``weight`` is (C, F).
    """

    def __init__(self, in_dim: int, num_classes: int, scale: float = 16.0) -> None:
        super().__init__()
        if not scale > 0:
            raise UserError(f"CosineClassifier scale (model.cosine_scale) must be positive, got {scale}.")
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # the nn.Linear default; only directions matter

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).t()

    def extra_repr(self) -> str:
        return f"in_dim={self.weight.shape[1]}, num_classes={self.weight.shape[0]}, scale={self.scale}"
