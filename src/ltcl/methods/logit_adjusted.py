"""``la``: logit-adjusted cross-entropy (Menon et al., ICLR 2021), BCL's classification loss."""

from __future__ import annotations

from dataclasses import dataclass, field

from ltcl.config.checks import NON_NEGATIVE
from ltcl.losses import LogitAdjustedLoss
from ltcl.methods.base import LossOutput, Objective, ObjectiveSetup, StepRecord
from ltcl.methods.registry import register_objective


@dataclass
class LogitAdjustSection:
    """``loss.la``."""

    # logits + tau * log prior. Menon et al.: tau = 1; BCL's code too (FlamieZhu/Balanced-Contrastive-Learning,
    # loss/logitadjust.py line 10 default tau=1, which main.py line 231 keeps).
    tau: float = field(default=1.0, metadata=NON_NEGATIVE)


@register_objective
class LogitAdjusted(Objective):
    """Cross-entropy on ``logits + tau * log prior_j`` over every view (:class:`ltcl.losses.LogitAdjustedLoss`)."""

    name = "la"
    role = "classification"
    paper = "Menon et al., Long-tail learning via logit adjustment, ICLR 2021"
    balanced_logits = True  # see docs/conventions.md, "Evaluation report"
    takes_label_smoothing = True  # on the adjusted logits
    Section = LogitAdjustSection

    def __init__(self, setup: ObjectiveSetup) -> None:
        super().__init__(setup)
        self.loss = LogitAdjustedLoss(
            setup.class_counts, tau=self.section.tau, label_smoothing=setup.loss.label_smoothing
        )

    def forward(self, step: StepRecord) -> LossOutput:
        return LossOutput(self.loss(step.logits, step.labels), {})
