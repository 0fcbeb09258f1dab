"""``lade``: LADE (Hong et al., CVPR 2021), LADE-CE plus the LADE regulariser on the logits of every view, and the
test prior put back at evaluation through the classifier's ``eval_bias``.

Training (equations and what ltcl's loss does differently: :mod:`ltcl.losses.lade`): cross-entropy on
``f(x) + log p_s`` plus ``alpha`` times the regularised Donsker-Varadhan term. The logits ``f(x)`` then estimate
the class likelihoods with no training prior in them.

Test time. The authors evaluate LADE on ``f(x) + log p_t(y)``, the test set's prior (hyperconnect/LADE at 5db5d13,
run_networks.py lines 594-599, the ``else`` branch: a run with the ``RouteWeightLoss``). :meth:`LADE.bind` writes
``log p_t = log(1/C)`` into ``model.classifier.eval_bias``, so the checkpoint itself evaluates and predicts as the
authors do, in ``ltcl eval``, ``ltcl predict`` and user code, with no flag to remember. For the balanced test sets
of every benchmark here that bias is the same for every class: softmax and arg-max equal those of the raw logits.

It is not ``-log p_s``: that is the PC-softmax of a model trained with plain cross-entropy (the ``if`` branch of
the same lines, the authors' "PC Softmax" baseline; ltcl's ``pc_softmax``). LADE-CE already takes ``log p_s`` out
during training, and subtracting it again at test time would tilt every prediction towards the tail by the prior
ratio a second time.

What ltcl does differently, and why:

- Views: the loss covers every view of the config (``lade+acl`` works like ``bs+acl``), and the regulariser sees
  the rows of all views as one batch; the authors train one view (configs/rivals/*_lade.yaml set one view).
- Distributed: the regulariser's batch is the global batch (``ltcl.losses.lade``).

Statistics: ``lade_ce`` (the LADE-CE term) and ``lade_reg`` (the regulariser, before its weight ``alpha``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ltcl.config.checks import NON_NEGATIVE
from ltcl.losses.lade import LADELoss
from ltcl.methods.base import LossOutput, Objective, ObjectiveSetup, StepRecord
from ltcl.methods.registry import register_objective


@dataclass
class LADESection:
    """``loss.lade``. Defaults: hyperconnect/LADE at 5db5d13; the README's per-dataset commands change both
    (CIFAR-100-LT IF100: lambda 0.01; ImageNet-LT: alpha 0.05, lambda 0.5), which configs/rivals/*_lade.yaml
    set."""

    # weight of the regulariser: main.py line 29 (--alpha default 0.1), which utils.py lines 61-62 always write
    # over the config's RouteWeightLoss weight
    alpha: float = field(default=0.1, metadata=NON_NEGATIVE)
    # lambda of the ReMINE term: config/CIFAR100_LT/lade.yaml line 9, config/ImageNet_LT/lade.yaml line 10
    # (remine_lambda: 0.1; main.py's --remine_lambda has no default of its own)
    remine_lambda: float = field(default=0.1, metadata=NON_NEGATIVE)


@register_objective
class LADE(Objective):
    """LADE-CE + ``alpha`` * LADE regulariser (:class:`ltcl.losses.LADELoss`); the classifier's ``eval_bias`` set
    to the uniform test prior ``log(1/C)`` (module docstring)."""

    name = "lade"
    role = "classification"
    paper = "Hong et al., Disentangling Label Distribution for Long-tailed Visual Recognition (LADE), CVPR 2021"
    balanced_logits = True  # see docs/conventions.md, "Evaluation report"
    Section = LADESection

    def __init__(self, setup: ObjectiveSetup) -> None:
        super().__init__(setup)
        s = self.section
        self.loss = LADELoss(
            setup.class_counts,
            alpha=s.alpha,
            remine_lambda=s.remine_lambda,
            gather_distributed=setup.gather_distributed,
        )
        self.stat_names = ("lade_ce", "lade_reg")

    def bind(self, model) -> None:
        """Writes the test prior ``log(1/C)`` into the classifier's ``eval_bias`` (a resumed run loads the same)."""
        eval_bias = getattr(getattr(model, "classifier", None), "eval_bias", None)
        if not isinstance(eval_bias, torch.Tensor):
            raise ValueError("lade needs a classifier with an eval_bias buffer (every registered classifier has one).")
        with torch.no_grad():
            eval_bias.fill_(-math.log(self.loss.num_classes))

    def forward(self, step: StepRecord) -> LossOutput:
        loss, ce, regularizer = self.loss.terms(step.logits, step.labels)
        return LossOutput(loss, {"lade_ce": ce.detach(), "lade_reg": regularizer.detach()})

    def describe(self) -> str:
        s = self.section
        return (
            f"lade (alpha {s.alpha}, remine_lambda {s.remine_lambda}; test logits + log(1/C), the uniform test prior)"
        )
