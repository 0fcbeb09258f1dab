"""The training objective of Eq. 10: ``cls_weight * classification over all views + alpha * contrastive``.

``loss.objective`` names a classification loss (``ce``, ``bs`` Balanced Softmax, ``la`` logit-adjusted
cross-entropy, ``ldam``), optionally followed by ``+scl``, ``+acl`` or ``+bcl``; or ``gpaco``, whose loss both
classifies and contrasts. The legal names are ``ltcl.config.schema.OBJECTIVES``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ltcl.config import LossConfig
from ltcl.config.schema import OBJECTIVES
from ltcl.losses import (
    AlignedContrastiveLoss,
    BalancedContrastiveLoss,
    BalancedSoftmaxLoss,
    BCLPrototypeHead,
    GPaCoLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    SupConLoss,
)


def parse_objective(objective: str) -> tuple[str, str | None]:
    """``"bs+acl"`` -> ``("bs", "acl")``; ``"bs"`` -> ``("bs", None)``."""
    if objective not in OBJECTIVES:
        raise ValueError(f"loss.objective '{objective}' is not one of {', '.join(OBJECTIVES)}.")
    classification, _, contrastive = objective.partition("+")
    return classification, contrastive or None


def uses_projections(objective: str) -> bool:
    """Whether the objective contrasts projections (a ``+scl``/``+acl``/``+bcl`` term, or GPaCo)."""
    classification, contrastive = parse_objective(objective)
    return contrastive is not None or classification == "gpaco"


def drw_start_epoch(loss_cfg: LossConfig, epochs: int) -> int:
    """The first (0-based) epoch of LDAM's deferred re-weighting: ``loss.drw_start_epoch``, or 80% of the epochs
    when it is 0 (160 of LDAM-DRW's 200)."""
    return loss_cfg.drw_start_epoch or int(0.8 * epochs)


class Objective(nn.Module):
    """Classification loss on every view plus ``alpha`` times the contrastive loss on the selected views.

    Args:
        loss_cfg: the ``loss`` section of the config.
        class_counts: (C,) training images per class.
        projection_dim: D, size of the projections (ACL's centres and BCL's prototypes live there).
        feature_dim: F, the classifier's input size (BCL maps the classifier weights (C, F) to prototypes).
        hidden_dim: hidden width of BCL's prototype head (the projection head's; F when 0).
        epochs: the run's length (LDAM's re-weighting starts at 80% of it by default).
        gather_distributed: contrast against the global batch under torch.distributed.

    Shapes:
        forward(logits (V*B, C), labels (V*B,), projections (V*B, D) or None, contrastive_mask (V*B,) bool,
        classifier_weight (C, F) or None) -> (total loss, {"cls": ..., "con": ...} detached parts).
    """

    def __init__(
        self,
        loss_cfg: LossConfig,
        class_counts: Sequence[int],
        *,
        projection_dim: int,
        feature_dim: int = 0,
        hidden_dim: int = 0,
        epochs: int = 1,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.classification_kind, self.contrastive_kind = parse_objective(loss_cfg.objective)
        self.alpha = float(loss_cfg.alpha)
        self.cls_weight = float(loss_cfg.cls_weight)
        self.drw_start = drw_start_epoch(loss_cfg, epochs)
        self.classification: nn.Module | None = None
        if self.classification_kind == "bs":
            self.classification = BalancedSoftmaxLoss(class_counts)
        elif self.classification_kind == "la":
            self.classification = LogitAdjustedLoss(class_counts, tau=loss_cfg.logit_adjust_tau)
        elif self.classification_kind == "ldam":
            self.classification = LDAMLoss(
                class_counts, max_margin=loss_cfg.ldam_max_margin, scale=loss_cfg.ldam_scale, drw_beta=loss_cfg.drw_beta
            )
        elif self.classification_kind == "gpaco":  # classifies and contrasts at once: the whole objective
            self.classification = GPaCoLoss(
                class_counts,
                alpha=loss_cfg.gpaco_alpha,
                beta=loss_cfg.gpaco_beta,
                gamma=loss_cfg.gpaco_gamma,
                temperature=loss_cfg.temperature,
                gather_distributed=gather_distributed,
            )
        self.contrastive: nn.Module | None = None
        self.prototype_head: BCLPrototypeHead | None = None
        if self.contrastive_kind == "scl":
            self.contrastive = SupConLoss(loss_cfg.temperature, gather_distributed=gather_distributed)
        elif self.contrastive_kind == "acl":
            self.contrastive = AlignedContrastiveLoss(
                class_counts,
                projection_dim,
                temperature=loss_cfg.temperature,
                center_momentum=loss_cfg.center_momentum,
                use_centers=loss_cfg.use_centers,
                negative_weighting=loss_cfg.negative_weighting,
                gather_distributed=gather_distributed,
            )
        elif self.contrastive_kind == "bcl":
            self.contrastive = BalancedContrastiveLoss(
                len(class_counts), loss_cfg.temperature, gather_distributed=gather_distributed
            )
            if feature_dim <= 0 or projection_dim <= 0:
                raise ValueError("loss.objective with +bcl needs the classifier's input size and a projection head.")
            self.prototype_head = BCLPrototypeHead(feature_dim, hidden_dim or feature_dim, projection_dim)
        if self.needs_projections and projection_dim <= 0:
            raise ValueError(
                f"loss.objective '{loss_cfg.objective}' needs a projection head: set model.projection_dim > 0."
            )

    @property
    def needs_projections(self) -> bool:
        return self.contrastive is not None or self.classification_kind == "gpaco"

    def trainable_heads(self) -> nn.ModuleList:
        """Modules of the objective with parameters (BCL's prototype head): they train with the network, and
        DDP must average their gradients too."""
        return nn.ModuleList([self.prototype_head] if self.prototype_head is not None else [])

    def set_epoch(self, epoch: int) -> None:
        """Epoch-dependent parts: LDAM's deferred re-weighting from ``drw_start`` (0-based epochs)."""
        if isinstance(self.classification, LDAMLoss):
            self.classification.set_reweighting(epoch >= self.drw_start)

    def forward(
        self,
        logits: Tensor,
        labels: Tensor,
        projections: Tensor | None,
        contrastive_mask: Tensor,
        classifier_weight: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if self.classification_kind == "gpaco":  # every view, as GPaCo's code uses both views as anchors
            cls = self.classification(projections, labels, logits)
        elif self.classification is None:
            cls = F.cross_entropy(logits.float(), labels)
        else:
            cls = self.classification(logits, labels)
        parts = {"cls": cls.detach()}
        total = cls if self.cls_weight == 1.0 else self.cls_weight * cls
        if self.contrastive is None:
            return total, parts
        # One index computation for both selections: each boolean-mask selection waits for the host on a GPU.
        rows = contrastive_mask.nonzero().squeeze(1)
        features, selected = projections.index_select(0, rows), labels.index_select(0, rows)
        if self.prototype_head is not None:
            con = self.contrastive(features, selected, self.prototype_head(classifier_weight))
        else:
            con = self.contrastive(features, selected)
        parts["con"] = con.detach()
        return total + self.alpha * con, parts
