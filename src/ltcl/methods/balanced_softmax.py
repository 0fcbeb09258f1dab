"""``bs``: Balanced Softmax (Ren et al., NeurIPS 2020), the classification loss of ACL's Eq. 10."""

from __future__ import annotations

from ltcl.losses import BalancedSoftmaxLoss
from ltcl.methods.base import LossOutput, Objective, ObjectiveSetup, StepRecord
from ltcl.methods.registry import register_objective


@register_objective
class BalancedSoftmax(Objective):
    """Cross-entropy on ``logits + log N_j`` over every view (:class:`ltcl.losses.BalancedSoftmaxLoss`)."""

    name = "bs"
    role = "classification"
    paper = "Ren et al., Balanced Meta-Softmax, NeurIPS 2020"
    balanced_logits = True  # see docs/conventions.md, "Evaluation report"
    takes_label_smoothing = True  # on the adjusted logits

    def __init__(self, setup: ObjectiveSetup) -> None:
        super().__init__(setup)
        self.loss = BalancedSoftmaxLoss(setup.class_counts, label_smoothing=setup.loss.label_smoothing)

    def forward(self, step: StepRecord) -> LossOutput:
        return LossOutput(self.loss(step.logits, step.labels), {})
