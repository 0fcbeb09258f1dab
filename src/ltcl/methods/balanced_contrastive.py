"""``bcl``: balanced contrastive learning (Zhu et al., CVPR 2022) with its prototype head; ``la+bcl`` is BCL's
objective.

What BCL's public code does (FlamieZhu/Balanced-Contrastive-Learning, commit f72d070, ``main.py``): every image has
three views; the network runs on all three (``train``, line 304), the logit-adjusted cross-entropy sees the logits of
view 1 only (lines 308, 310) and the balanced contrastive loss the projections of views 2 and 3 only (lines 306-309);
the objective is ``alpha * LA + beta * BCL`` (line 311; ltcl's ``loss.cls_weight`` and ``loss.alpha``). The class
prototypes are ``normalize(head_fc(W))`` with ``W`` the classifier's weight and ``head_fc`` an MLP shaped like the
projection head, Linear-BatchNorm-ReLU-Linear (``models/resnext.py`` lines 301-302, 308).

ltcl does the same by default (``loss.bcl.views: split``): the classification part sees view 1 (this term's
``classification_views`` is 1) and BCL contrasts views 2 and 3. Where ltcl differs, and why:

- More than three views (the digits config has four): views 4 and up are computed but feed neither loss.
- ``views.contrastive_mode`` still applies: BCL contrasts those rows of views 2 and 3 that the contrastive schedule
  selects. With ``uniform`` (the rival configs) that is every row, as in the authors' code; with
  ``distribution_aware`` a many-shot image may give view 2 only.
- ``loss.bcl.views: all`` is the earlier ltcl reading (both losses on every view, BCL on the rows of
  ``views.contrastive_mode``), kept as an option; on the same network outputs its loss differs from the authors' by
  0.10-0.32 (four label patterns, float64), while ``split`` equals it to the last bit.
- The projection head: the authors' has a BatchNorm after its first Linear (``models/resnext.py`` line 291); the
  rival configs set ``model.projection_bn: true``, whose head leaves out that Linear's bias (BatchNorm cancels it).
  The prototype head keeps the authors' exact shape.
- Under ``torchrun`` the contrast set is the global batch (gathered with gradient); the authors run one process with
  ``DataParallel``, whose loss also sees the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ltcl.config import ConfigError
from ltcl.losses import BalancedContrastiveLoss, BCLPrototypeHead
from ltcl.methods.base import LossOutput, Objective, ObjectiveSetup, StepRecord
from ltcl.methods.registry import register_objective, typed_section


@dataclass
class BCLSection:
    """``loss.bcl``."""

    # split: the classification loss on view 1, BCL on views 2 and 3 (the authors' main.py, lines 306-310);
    # all: both losses on every view (BCL on the rows of views.contrastive_mode), not the authors' setup.
    views: Literal["split", "all"] = "split"


@register_objective
class BalancedContrastive(Objective):
    """BCL at ``loss.temperature`` (:class:`ltcl.losses.BalancedContrastiveLoss`); the class prototypes are the
    classifier's weights mapped by a trainable head (:class:`ltcl.losses.BCLPrototypeHead`, trained with the
    network). Statistic ``bcl_proto_cos``: the mean cosine between a contrasted projection and its class's prototype.
    """

    name = "bcl"
    role = "contrastive"
    paper = "Zhu et al., Balanced Contrastive Learning for Long-Tailed Visual Recognition, CVPR 2022"
    Section = BCLSection
    needs_projections = True

    def __init__(self, setup: ObjectiveSetup) -> None:
        super().__init__(setup)
        if setup.feature_dim <= 0:
            raise ValueError("bcl needs the classifier's input size (feature_dim) to build its prototype head.")
        self.split = (self.section or BCLSection()).views == "split"
        if self.split and setup.num_views < 3:
            raise ValueError(f"bcl with views 'split' needs at least 3 views per image, got {setup.num_views}.")
        # The classification part of la+bcl sees view 1 only (the composite reads this).
        self.classification_views = 1 if self.split else None
        self.loss = BalancedContrastiveLoss(
            setup.num_classes, setup.loss.temperature, gather_distributed=setup.gather_distributed
        )
        self.prototype_head = BCLPrototypeHead(setup.feature_dim, setup.hidden_dim or setup.feature_dim,
                                               setup.projection_dim)  # fmt: skip
        self.stat_names = ("bcl_proto_cos",)

    @classmethod
    def check_config(cls, cfg) -> None:
        section = typed_section(cfg, cls) or BCLSection()
        if section.views == "split" and cfg.views.num_views < 3:
            raise ConfigError(
                f"loss.bcl.views 'split' classifies view 1 and contrasts views 2 and 3, but views.num_views is "
                f"{cfg.views.num_views}: set views.num_views to 3 or more, or loss.bcl.views to 'all'."
            )

    def contrast_rows(self, step: StepRecord) -> tuple[Tensor, Tensor]:
        """(projections, labels) that BCL contrasts: the selected rows of views 2-3 (``split``) or of every view."""
        if not self.split:
            return step.contrastive_rows
        if step.projections is None:
            raise RuntimeError("bcl needs projections: the objective must set needs_projections.")
        rows = step.view_rows(1, 3)
        selected = step.contrastive_mask[rows].nonzero().squeeze(1)
        return step.projections[rows].index_select(0, selected), step.labels[rows].index_select(0, selected)

    def forward(self, step: StepRecord) -> LossOutput:
        prototypes = self.prototype_head(step.model.classifier.weight)
        z, y = self.contrast_rows(step)
        loss = self.loss(z, y, prototypes)
        with torch.no_grad():
            cosine = (z * prototypes.index_select(0, y).to(z.dtype)).sum(1)
            proto_cos = cosine.sum() / max(cosine.numel(), 1)
        return LossOutput(loss, {"bcl_proto_cos": proto_cos})

    def describe(self) -> str:
        where = "classification on view 1, BCL on views 2-3" if self.split else "both losses on every view"
        return f"bcl (tau {self.setup.loss.temperature}, views {'split' if self.split else 'all'}: {where})"
