"""The network trained by every recipe: backbone -> features -> (classifier logits, normalised projections)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ltcl.config import ModelConfig
from ltcl.config.checks import check_fields
from ltcl.errors import UserError
from ltcl.models.backbones import build_backbone
from ltcl.models.heads import CLASSIFIERS, ProjectionHead

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class NetworkOutput(NamedTuple):
    """What :class:`LongTailNetwork` returns for a batch of B images.

    Attributes:
        logits: (B, C) classifier scores.
        features: (B, F) backbone features.
        projections: (B, D) L2-normalised projections, or None when the head was skipped or absent.
    """

    logits: torch.Tensor
    features: torch.Tensor
    projections: torch.Tensor | None


class LongTailNetwork(nn.Module):
    """Backbone shared by a classifier and an optional projection head.

    Args:
        backbone: maps (B, 3, H, W) images to (B, feature_dim) features.
        feature_dim: F.
        num_classes: C.
        projection: head for the contrastive loss, or None (plain classification objectives).
        classifier: maps (B, F) to (B, C) logits.

    ``train(True)`` keeps every BatchNorm layer whose parameters are all frozen in eval mode, so that its
    running statistics stay those of the pretrained weights (see :func:`ltcl.models.finetune.apply_finetune`).
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        projection: ProjectionHead | None,
        classifier: nn.Module,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.projection = projection
        self.classifier = classifier

    def forward(self, x: torch.Tensor, with_projection: bool = True) -> NetworkOutput:
        """(B, 3, H, W) images -> logits (B, C), features (B, F), projections (B, D) unit-norm or None."""
        features = self.backbone(x)
        logits = self.classifier(features)
        projections = None
        if with_projection and self.projection is not None:
            projections = F.normalize(self.projection(features), dim=1)
        return NetworkOutput(logits, features, projections)

    def train(self, mode: bool = True) -> LongTailNetwork:
        super().train(mode)
        if mode:
            for module in self.modules():
                params = list(module.parameters(recurse=False)) if isinstance(module, _BATCH_NORMS) else []
                # A BatchNorm without affine parameters has nothing to freeze: it keeps training normally.
                if params and not any(p.requires_grad for p in params):
                    module.eval()
        return self


def _check(model_cfg: ModelConfig, num_classes: int, class_names: Sequence[str] | None) -> None:
    check_fields(model_cfg, "model.")  # the config's declared ranges, for a ModelConfig built in Python
    if num_classes < 1:
        raise UserError(f"The network needs at least one class, got num_classes={num_classes}.")
    if model_cfg.zero_shot_head:
        if model_cfg.classifier != "cosine":
            raise UserError(
                "model.zero_shot_head initialises a cosine classifier: set model.classifier cosine (it is "
                f"{model_cfg.classifier})."
            )
        if class_names is None or len(class_names) != num_classes:
            got = "none" if class_names is None else len(class_names)
            raise UserError(f"model.zero_shot_head needs the {num_classes} class names, got {got}.")


def build_network(
    model_cfg: ModelConfig, num_classes: int, class_names: Sequence[str] | None = None
) -> LongTailNetwork:
    """Builds backbone, projection head (none when ``projection_dim`` is 0) and classifier from the config.

    Args:
        model_cfg: the ``model`` section.
        num_classes: C.
        class_names: the C class names, index-aligned with the labels; needed by ``model.zero_shot_head``, which
            sets the cosine classifier's rows to the CLIP text embeddings of "a photo of a {name}.".

    Every parameter trains; :func:`ltcl.models.finetune.apply_finetune` then chooses which do.
    """
    _check(model_cfg, num_classes, class_names)
    built = build_backbone(
        model_cfg.backbone,
        model_cfg.weights,
        pretrained=model_cfg.pretrained,
        kwargs=model_cfg.backbone_kwargs,
        class_names=class_names if model_cfg.zero_shot_head else None,
    )
    backbone, feature_dim, text_weights = built.module, built.feature_dim, built.text_weights
    if model_cfg.zero_shot_head and text_weights is None:
        raise UserError(
            f"model.zero_shot_head needs text embeddings of the class names, which backbone {model_cfg.backbone} "
            "does not provide (open_clip/<arch> does)."
        )
    projection = None
    if model_cfg.projection_dim > 0:
        projection = ProjectionHead(
            feature_dim, model_cfg.projection_hidden, model_cfg.projection_dim, model_cfg.projection_bn
        )
    classifier = CLASSIFIERS.get(model_cfg.classifier).build(feature_dim, num_classes, model_cfg)
    if text_weights is not None:
        with torch.no_grad():
            classifier.weight.copy_(text_weights)
    return LongTailNetwork(backbone, feature_dim, num_classes, projection, classifier)
