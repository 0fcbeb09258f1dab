"""``ce``: plain cross-entropy on every view, the baseline that ignores the long tail."""

from __future__ import annotations

import torch.nn.functional as F

from ltcl.methods.base import LossOutput, Objective, StepRecord
from ltcl.methods.registry import register_objective


@register_objective
class CrossEntropy(Objective):
    """Softmax cross-entropy on the logits of every view, computed in float32 under autocast."""

    name = "ce"
    role = "classification"
    paper = "softmax cross-entropy (the baseline)"

    def forward(self, step: StepRecord) -> LossOutput:
        return LossOutput(F.cross_entropy(step.logits.float(), step.labels), {})
