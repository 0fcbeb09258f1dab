"""``proco``: probabilistic contrastive learning (Du et al., TPAMI 2024), the whole objective: logit-adjusted
cross-entropy on the classifier's logits plus ProCo's closed-form contrastive loss against per-class von
Mises-Fisher estimates (:class:`ltcl.losses.ProCoLoss`; its docstring gives the equations and the Bessel functions).

The objective, as the authors' training step computes it (LeapLabTHU/ProCo, ``ProCo_cifar/main.py`` and
``ProCo/main.py``, function ``train``; the same in both)::

    loss = cls_weight * LA(logits of view 1) + alpha * (LA(g(view 2)) + LA(g(view 3))) / 2

with ``LA`` the logit-adjusted cross-entropy (``loss/logitadjust.py``, tau 1) and ``g`` ProCo's contrastive logits
of the projections. View 1 (the AutoAugment/RandAugment view) feeds only the classifier, views 2 and 3 (the
SimCLR-style views) only ProCo; views after the third are not used. ``loss.alpha`` is ProCo's ``--alpha`` (1.0 in
the code), ``loss.temperature`` its ``--temp`` (0.1 on CIFAR, 0.07 on ImageNet-LT), ``loss.cls_weight`` is 1 in
the code.

What ltcl does differently from the authors' code, and why:

- The Bessel function of the vMF normaliser is exact by default (``loss.proco.bessel: exact``); the code's Miller
  recurrence departs from it at large concentrations (by up to 1e-3 in the logits and 2.4% in their gradients at
  p = 128; numbers in :mod:`ltcl.losses.proco_bessel`). ``bessel: authors`` reproduces the code's routine.
- The estimates are float64 (the code: float32 means; its concentrations feed a float64 Bessel routine). The
  initial means of classes not seen yet are drawn from a generator seeded by the epoch, so that every process and a
  resumed run draw the same ones (the code draws them from the global generator, unseeded by default, so the
  processes of a multi-GPU run start from different ones).
- The mean over the rows is the global batch's under torchrun (``ltcl.dist.global_mean``): the same as the code's
  per-process mean averaged by DDP when every process holds as many rows, which ltcl's sampler guarantees.
- The distribution-aware contrastive views (``views.contrastive_mode``) do not apply: ProCo contrasts views 2 and
  3 of every image, as its code.
- The code's ``--alpha`` also weights the contrastive logits added to the classifier's for the training accuracy it
  prints; ltcl's training accuracy is the classifier's (as the code's validation).

Statistics: ``loss_cls`` and ``loss_proco`` (the two terms, unweighted), ``kappa_min`` and ``kappa_max`` (the range
of the class concentrations the loss read at the step, averaged over the epoch's steps).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ltcl.config import ConfigError
from ltcl.config.checks import NON_NEGATIVE, POSITIVE
from ltcl.losses import LogitAdjustedLoss, ProCoLoss
from ltcl.methods.base import LossOutput, Objective, ObjectiveSetup, StepRecord
from ltcl.methods.registry import register_objective

CLASSIFIED_VIEW = 0  # view 1: the classifier's (main.py, train: ``ce_logits, _, __ = torch.split(...)``)
CONTRASTED_VIEWS = (1, 2)  # views 2 and 3: ProCo's (``_, f2, f3 = torch.split(feat_mlp, ...)``)


@dataclass
class ProCoSection:
    """``loss.proco``. Defaults: LeapLabTHU/ProCo at commit af9e78e (file and line in each comment)."""

    # exact | authors: the Bessel function of the vMF normaliser (ltcl.losses.proco_bessel); the code's is "authors"
    bessel: Literal["exact", "authors"] = "exact"
    # the concentrations' ceiling: ProCo_cifar/loss/proco.py line 206, ``self.kappa[self.kappa > 1e5] = 1e5``
    max_kappa: float = field(default=1e5, metadata=POSITIVE)
    # logit adjustment of both terms: ProCo_cifar/loss/logitadjust.py line 10 (``tau=1``, main.py passes none)
    logit_adjust_tau: float = field(default=1.0, metadata=NON_NEGATIVE)


@register_objective
class ProCo(Objective):
    """ProCo: ``cls_weight * LA(view 1) + alpha * mean_v LA(ProCo logits of view v)``, v = 2, 3 (module docstring)."""

    name = "proco"
    role = "objective"
    paper = "Du et al., Probabilistic Contrastive Learning for Long-Tailed Visual Recognition, TPAMI 2024"
    balanced_logits = True  # see docs/conventions.md, "Evaluation report"
    Section = ProCoSection
    needs_projections = True

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.views.num_views < 1 + len(CONTRASTED_VIEWS):
            raise ConfigError(
                "loss.objective proco classifies view 1 and contrasts views 2 and 3: set views.num_views to 3 or "
                f"more (got {cfg.views.num_views})."
            )
        bessel = cfg.loss.sections.get("proco", {}).get("bessel", ProCoSection.bessel)
        p = cfg.model.projection_dim
        if bessel == "authors" and p > 0 and (p % 2 or p < 4):
            raise ConfigError(
                "loss.proco.bessel authors (the code's Miller recurrence) needs an even model.projection_dim >= 4, "
                f"got {p}; use loss.proco.bessel=exact."
            )

    def __init__(self, setup: ObjectiveSetup) -> None:
        super().__init__(setup)
        s = self.section
        self.classification = LogitAdjustedLoss(setup.class_counts, tau=s.logit_adjust_tau)
        self.contrastive = ProCoLoss(
            setup.class_counts,
            setup.projection_dim,
            setup.loss.temperature,
            logit_adjust_tau=s.logit_adjust_tau,
            max_kappa=s.max_kappa,
            bessel=s.bessel,
            gather_distributed=setup.gather_distributed,
        )
        self.cls_weight, self.alpha = float(setup.loss.cls_weight), float(setup.loss.alpha)
        self.stat_names = ("loss_cls", "loss_proco", "kappa_min", "kappa_max")

    def set_epoch(self, epoch: int) -> None:
        self.contrastive.begin_epoch(epoch)

    def forward(self, step: StepRecord) -> LossOutput:
        rows = step.view_rows(CLASSIFIED_VIEW, CLASSIFIED_VIEW + 1)
        loss_cls = self.classification(step.logits[rows], step.labels[rows])
        terms = []
        for view in CONTRASTED_VIEWS:  # one after the other: each view updates the estimates before its logits
            rows = step.view_rows(view, view + 1)
            terms.append(self.contrastive(step.projections[rows], step.labels[rows]))
        loss_proco = sum(terms) / len(terms)
        kappa = self.contrastive.estimates()[1]
        parts = {
            "loss_cls": loss_cls.detach(),
            "loss_proco": loss_proco.detach(),
            "kappa_min": kappa.min(),
            "kappa_max": kappa.max(),
        }
        return LossOutput(self.cls_weight * loss_cls + self.alpha * loss_proco, parts)

    def describe(self) -> str:
        s, c = self.section, self.contrastive
        weight = "" if self.cls_weight == 1.0 else f"classification weight {self.cls_weight}, "
        return (
            f"proco (view 1 classified, views 2-3 contrasted; {weight}alpha {self.alpha}, tau {c.temperature}, "
            f"logit adjustment tau {s.logit_adjust_tau}, vMF on S^{c.dim - 1}, kappa <= {s.max_kappa:g}, "
            f"bessel {s.bessel})"
        )
