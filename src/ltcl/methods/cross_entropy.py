"""``ce``: plain cross-entropy on every view, the baseline that ignores the long tail."""

from __future__ import annotations

import torch.nn.functional as F

from ltcl.methods.base import LossOutput, Objective, StepRecord
from ltcl.methods.registry import register_objective


@register_objective
class CrossEntropy(Objective):
    """Softmax cross-entropy on the logits of every view, computed in float32 under autocast (with
    ``loss.label_smoothing``'s smoothed target)."""

    name = "ce"
    role = "classification"
    paper = "softmax cross-entropy (the baseline)"
    takes_label_smoothing = True

    def forward(self, step: StepRecord) -> LossOutput:
        smoothing = self.setup.loss.label_smoothing
        return LossOutput(F.cross_entropy(step.logits.float(), step.labels, label_smoothing=smoothing), {})
