"""``gpaco``: generalized parametric contrastive learning (Cui et al., TPAMI 2023), one loss that classifies and
contrasts (:class:`ltcl.losses.GPaCoLoss`; its docstring lists where it departs from the authors' code)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ltcl.config.checks import NON_NEGATIVE
from ltcl.losses import GPaCoLoss
from ltcl.methods.base import LossOutput, Objective, ObjectiveSetup, StepRecord
from ltcl.methods.registry import register_objective


@dataclass
class GPaCoSection:
    """``loss.gpaco``: weights of the sample positives (alpha), the own-centre positive (beta) and the sample terms
    of the denominator (gamma). Defaults: the authors' CIFAR-100-LT scripts (dvlab-research/
    Parametric-Contrastive-Learning, GPaCo/LT/sh/CIFAR/CIFAR100_train.sh: alpha 0.01, beta 1.0, gamma 1.0)."""

    alpha: float = field(default=0.01, metadata=NON_NEGATIVE)
    beta: float = field(default=1.0, metadata=NON_NEGATIVE)
    gamma: float = field(default=1.0, metadata=NON_NEGATIVE)


@register_objective
class GPaCo(Objective):
    """GPaCo on every view: the classifier's logits are the parametric centres, the projections the samples;
    ``loss.temperature`` is the temperature of the sample similarities, ``loss.alpha`` is not used."""

    name = "gpaco"
    role = "objective"
    paper = "Cui et al., Generalized Parametric Contrastive Learning, TPAMI 2023"
    Section = GPaCoSection
    needs_projections = True

    def __init__(self, setup: ObjectiveSetup) -> None:
        super().__init__(setup)
        s = self.section
        self.loss = GPaCoLoss(
            setup.class_counts,
            alpha=s.alpha,
            beta=s.beta,
            gamma=s.gamma,
            temperature=setup.loss.temperature,
            gather_distributed=setup.gather_distributed,
        )

    def forward(self, step: StepRecord) -> LossOutput:
        return LossOutput(self.loss(step.projections, step.labels, step.logits), {})

    def describe(self) -> str:
        s = self.section
        return f"gpaco (alpha {s.alpha}, beta {s.beta}, gamma {s.gamma}, tau {self.setup.loss.temperature})"
