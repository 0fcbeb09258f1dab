"""``bcl``: balanced contrastive learning (Zhu et al., CVPR 2022) with its prototype head; ``la+bcl`` is BCL's
objective."""

from __future__ import annotations

from ltcl.losses import BalancedContrastiveLoss, BCLPrototypeHead
from ltcl.methods.base import LossOutput, Objective, ObjectiveSetup, StepRecord
from ltcl.methods.registry import register_objective


@register_objective
class BalancedContrastive(Objective):
    """BCL on the contrastive views at ``loss.temperature``; the class prototypes are the classifier's weights
    mapped by a trainable head (:class:`ltcl.losses.BCLPrototypeHead`), which trains with the network."""

    name = "bcl"
    role = "contrastive"
    paper = "Zhu et al., Balanced Contrastive Learning for Long-Tailed Visual Recognition, CVPR 2022"
    needs_projections = True

    def __init__(self, setup: ObjectiveSetup) -> None:
        super().__init__(setup)
        if setup.feature_dim <= 0:
            raise ValueError("bcl needs the classifier's input size (feature_dim) to build its prototype head.")
        self.loss = BalancedContrastiveLoss(
            setup.num_classes, setup.loss.temperature, gather_distributed=setup.gather_distributed
        )
        self.prototype_head = BCLPrototypeHead(setup.feature_dim, setup.hidden_dim or setup.feature_dim,
                                               setup.projection_dim)  # fmt: skip

    def forward(self, step: StepRecord) -> LossOutput:
        prototypes = self.prototype_head(step.model.classifier.weight)
        return LossOutput(self.loss(*step.contrastive_rows, prototypes), {})

    def describe(self) -> str:
        return f"bcl (tau {self.setup.loss.temperature})"
