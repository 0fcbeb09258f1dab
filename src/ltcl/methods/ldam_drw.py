"""``ldam``: LDAM with deferred re-weighting (Cao et al., NeurIPS 2019), "LDAM-DRW" in the rivals' tables."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ltcl.config import ConfigError
from ltcl.config.checks import AT_LEAST_0, MOMENTUM, NON_NEGATIVE, POSITIVE
from ltcl.losses import LDAMLoss
from ltcl.methods.base import LossOutput, Objective, ObjectiveSetup, StepRecord
from ltcl.methods.registry import register_objective


@dataclass
class LDAMSection:
    """``loss.ldam``; defaults from the authors' CIFAR script (kaidic/LDAM-DRW, cifar_train.py: ``max_m=0.5``,
    ``s=30``, DRW from epoch 160 of 200 with ``beta = 0.9999``)."""

    max_margin: float = field(default=0.5, metadata=NON_NEGATIVE)  # margin of the rarest class
    scale: float = field(default=30.0, metadata=POSITIVE)  # s, multiplying the cosine logits
    drw_start_epoch: int = field(default=0, metadata=AT_LEAST_0)  # 0: 80% of optim.epochs (160 of 200)
    drw_beta: float = field(default=0.9999, metadata=MOMENTUM)  # effective-number weights (1 - b) / (1 - b^n)


@register_objective
class LDAMDeferredReweighting(Objective):
    """LDAM margins on cosine logits; from ``drw_start_epoch`` (0-based) the classes are re-weighted by their
    effective number. Needs normalised features and weights: ``model.classifier: cosine`` with
    ``model.cosine_scale: 1`` (the scale ``s`` is applied here).

    Statistics: ``drw`` is 1 in the epochs where the re-weighting is on.
    """

    name = "ldam"
    role = "classification"
    paper = "Cao et al., LDAM-DRW, NeurIPS 2019"
    Section = LDAMSection

    @classmethod
    def check_config(cls, cfg) -> None:
        # LDAM's margins are on cosine logits; on a linear classifier's logits scaled by s = 30 the loss reaches
        # the hundreds and the margins mean nothing.
        if cfg.model.classifier != "cosine" or cfg.model.cosine_scale != 1.0:
            raise ConfigError(
                "loss.objective ldam needs normalised features and weights: set model.classifier=cosine and "
                f"model.cosine_scale=1 (ldam applies its own scale, loss.ldam.scale); got {cfg.model.classifier} "
                f"with scale {cfg.model.cosine_scale}."
            )

    def __init__(self, setup: ObjectiveSetup) -> None:
        super().__init__(setup)
        s = self.section
        self.loss = LDAMLoss(setup.class_counts, max_margin=s.max_margin, scale=s.scale, drw_beta=s.drw_beta)
        self.drw_start = s.drw_start_epoch or int(0.8 * setup.epochs)
        self.stat_names = ("drw",)

    def set_epoch(self, epoch: int) -> None:
        self.loss.set_reweighting(epoch >= self.drw_start)

    def forward(self, step: StepRecord) -> LossOutput:
        return LossOutput(self.loss(step.logits, step.labels), {"drw": self.loss.reweighting.to(torch.float64)})

    def describe(self) -> str:
        s = self.section
        return (
            f"ldam (max margin {s.max_margin}, s {s.scale}, re-weighting from epoch {self.drw_start + 1}, "
            f"beta {s.drw_beta})"
        )
