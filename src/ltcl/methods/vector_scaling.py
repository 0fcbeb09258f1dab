"""``vs``: the vector-scaling loss (Kini et al., "Label-Imbalanced and Group-Sensitive Classification under
Overparameterization", NeurIPS 2021).

Cross-entropy on logits that are scaled and shifted per class during training only::

    l = -log softmax(Delta * z + iota)_y,   Delta_j = (n_j / n_max) ** gamma,   iota_j = tau * log(n_j / N)

The multiplicative part (CDT, Ye et al. 2020) shrinks the logits of rare classes, which enlarges their margin; the
additive part is logit adjustment (Menon et al. 2021). At evaluation the logits are used as the network gives them,
so they already aim at a balanced test set (``balanced_logits``). The authors' code writes ``z / Delta'`` with
``Delta'_j = (n_max / n_j) ** gamma``, the same map (orparask/VS-Loss, class_imbalance/losses.py lines 36-53).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ltcl.config.checks import NON_NEGATIVE
from ltcl.methods.base import LossOutput, Objective, ObjectiveSetup, StepRecord
from ltcl.methods.registry import register_objective


@dataclass
class VectorScalingSection:
    """``loss.vs``."""

    # The authors' CIFAR-10-LT (IF 100) command: --gamma 0.2 --tau 1.2 (orparask/VS-Loss, README.md line 72).
    gamma: float = field(default=0.2, metadata=NON_NEGATIVE)
    tau: float = field(default=1.2, metadata=NON_NEGATIVE)


def vector_scaling_loss(logits: Tensor, labels: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """Mean cross-entropy of ``scale * logits + shift``.

    Args:
        logits: (N, C) logits of every view, any float dtype (computed in float32 or wider).
        labels: (N,) int64 class indices.
        scale: (C,) ``Delta``; shift: (C,) ``iota``.
    """
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    return F.cross_entropy(z * scale.to(z.dtype) + shift.to(z.dtype), labels)


@register_objective
class VectorScaling(Objective):
    """The VS loss over the logits of every view. Statistics: none of its own."""

    name = "vs"
    role = "classification"
    paper = "Kini et al., Label-Imbalanced and Group-Sensitive Classification under Overparameterization, NeurIPS 2021"
    balanced_logits = True  # the scaling and the shift are training-time only
    Section = VectorScalingSection

    def __init__(self, setup: ObjectiveSetup) -> None:
        super().__init__(setup)
        counts = torch.tensor(setup.class_counts, dtype=torch.float64)
        # buffers, so that they follow the objective to the device; derived from the counts, not learned
        self.register_buffer("scale", (counts / counts.max()) ** self.section.gamma, persistent=False)
        self.register_buffer("shift", self.section.tau * torch.log(counts / counts.sum()), persistent=False)

    def forward(self, step: StepRecord) -> LossOutput:
        return LossOutput(vector_scaling_loss(step.logits, step.labels, self.scale, self.shift), {})
