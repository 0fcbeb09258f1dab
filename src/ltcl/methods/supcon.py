"""``scl``: supervised contrastive learning (Khosla et al., NeurIPS 2020), the paper's Eq. 1."""

from __future__ import annotations

from ltcl.losses import SupConLoss
from ltcl.methods.base import LossOutput, Objective, ObjectiveSetup, StepRecord
from ltcl.methods.registry import register_objective


@register_objective
class SupervisedContrastive(Objective):
    """SCL on the contrastive views at ``loss.temperature`` (:class:`ltcl.losses.SupConLoss`)."""

    name = "scl"
    role = "contrastive"
    paper = "Khosla et al., Supervised Contrastive Learning, NeurIPS 2020"
    needs_projections = True

    def __init__(self, setup: ObjectiveSetup) -> None:
        super().__init__(setup)
        self.loss = SupConLoss(setup.loss.temperature, gather_distributed=setup.gather_distributed)

    def forward(self, step: StepRecord) -> LossOutput:
        return LossOutput(self.loss(*step.contrastive_rows), {})

    def describe(self) -> str:
        return f"scl (tau {self.setup.loss.temperature})"
