"""GPaCo's projection head (:class:`GPaCoProjectionHead`): the authors' three-layer MLP without BatchNorm."""

from __future__ import annotations

from torch import nn


class GPaCoProjectionHead(nn.Sequential):
    """GPaCo's projection head: Linear(F, F)-ReLU-Linear(F, F)-ReLU-Linear(F, D), no BatchNorm (the authors'
    builder turns the encoder's ``fc`` into this MLP, GPaCo/LT/moco/builder.py line 47). Maps (B, F) backbone
    features to (B, D) projections, not normalised."""

    def __init__(self, feature_dim: int, out_dim: int) -> None:
        if feature_dim <= 0 or out_dim <= 0:
            raise ValueError(f"GPaCoProjectionHead needs positive sizes, got {feature_dim} -> {out_dim}.")
        super().__init__(
            nn.Linear(feature_dim, feature_dim),
            nn.ReLU(inplace=True),
            nn.Linear(feature_dim, feature_dim),
            nn.ReLU(inplace=True),
            nn.Linear(feature_dim, out_dim),
        )
