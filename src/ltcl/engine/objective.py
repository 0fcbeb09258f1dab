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
from ltcl.losses import AlignedContrastiveLoss, BalancedSoftmaxLoss, LogitAdjustedLoss, SupConLoss


def parse_objective(objective: str) -> tuple[str, str | None]:
    """``"bs+acl"`` -> ``("bs", "acl")``; ``"bs"`` -> ``("bs", None)``."""
    if objective not in OBJECTIVES:
        raise ValueError(f"loss.objective '{objective}' is not one of {', '.join(OBJECTIVES)}.")
    classification, _, contrastive = objective.partition("+")
    return classification, contrastive or None


class Objective(nn.Module):
    """Classification loss on every view plus ``alpha`` times the contrastive loss on the selected views.

    Args:
        loss_cfg: the ``loss`` section of the config.
        class_counts: (C,) training images per class.
        projection_dim: D, size of the projections (ACL's centres live there).
        gather_distributed: contrast against the global batch under torch.distributed.

    Shapes:
        forward(logits (V*B, C), labels (V*B,), projections (V*B, D) or None, contrastive_mask (V*B,) bool)
        -> (total loss, {"cls": ..., "con": ...} detached parts).
    """

    def __init__(
        self, loss_cfg: LossConfig, class_counts: Sequence[int], projection_dim: int, gather_distributed: bool = False
    ) -> None:
        super().__init__()
        self.classification_kind, self.contrastive_kind = parse_objective(loss_cfg.objective)
        self.alpha = float(loss_cfg.alpha)
        self.cls_weight = float(loss_cfg.cls_weight)
        if self.classification_kind == "bs":
            self.classification = BalancedSoftmaxLoss(class_counts)
        elif self.classification_kind == "la":
            self.classification = LogitAdjustedLoss(class_counts, tau=loss_cfg.logit_adjust_tau)
        else:
            self.classification = None
        self.contrastive: nn.Module | None = None
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
        if self.contrastive is not None and projection_dim <= 0:
            raise ValueError(
                f"loss.objective '{loss_cfg.objective}' needs a projection head: set model.projection_dim > 0."
            )

    @property
    def needs_projections(self) -> bool:
        return self.contrastive is not None

    def forward(
        self, logits: Tensor, labels: Tensor, projections: Tensor | None, contrastive_mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if self.classification is None:
            cls = F.cross_entropy(logits.float(), labels)
        else:
            cls = self.classification(logits, labels)
        parts = {"cls": cls.detach()}
        total = cls if self.cls_weight == 1.0 else self.cls_weight * cls
        if self.contrastive is None:
            return total, parts
        # One index computation for both selections: each boolean-mask selection waits for the host on a GPU.
        rows = contrastive_mask.nonzero().squeeze(1)
        con = self.contrastive(projections.index_select(0, rows), labels.index_select(0, rows))
        parts["con"] = con.detach()
        return total + self.alpha * con, parts
