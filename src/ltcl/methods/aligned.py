"""``acl``: the aligned contrastive loss (the paper's Eq. 9), with EMA class centres and inverse-frequency
negative weights. ``bs+acl`` is the paper's method (Eq. 10)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ltcl.config.checks import MOMENTUM
from ltcl.losses import AlignedContrastiveLoss
from ltcl.methods.base import LossOutput, Objective, ObjectiveSetup, StepRecord
from ltcl.methods.registry import register_objective


@dataclass
class ACLSection:
    """``loss.acl``. The paper gives neither the centres' momentum nor the constant of the negative weights: 0.9
    and weights averaging 1 over the training images are ours (``ltcl.losses.inverse_frequency_weights``)."""

    use_centers: bool = True  # class centres as one more positive (own class) and as negatives (the others)
    center_momentum: float = field(default=0.9, metadata=MOMENTUM)  # EMA momentum of the centres
    negative_weighting: Literal["inverse_frequency", "none"] = "inverse_frequency"


@register_objective
class AlignedContrastive(Objective):
    """ACL on the contrastive views at ``loss.temperature`` (:class:`ltcl.losses.AlignedContrastiveLoss`); the
    centres live in its state and are saved with every checkpoint."""

    name = "acl"
    role = "contrastive"
    paper = "Ma et al., Aligned Contrastive Loss for Long-Tailed Recognition (this package's paper)"
    Section = ACLSection
    needs_projections = True

    def __init__(self, setup: ObjectiveSetup) -> None:
        super().__init__(setup)
        s = self.section
        self.loss = AlignedContrastiveLoss(
            setup.class_counts,
            setup.projection_dim,
            temperature=setup.loss.temperature,
            center_momentum=s.center_momentum,
            use_centers=s.use_centers,
            negative_weighting=s.negative_weighting,
            gather_distributed=setup.gather_distributed,
        )

    def forward(self, step: StepRecord) -> LossOutput:
        return LossOutput(self.loss(*step.contrastive_rows), {})

    def describe(self) -> str:
        s = self.section
        centres = f"centres momentum {s.center_momentum}" if s.use_centers else "no centres"
        return f"acl (tau {self.setup.loss.temperature}, {centres}, negatives {s.negative_weighting})"
