"""What ``focal``, ``cb_ce``, ``cb_sigmoid`` and ``cb_focal`` share: a classification loss on the logits of every
view, :class:`ltcl.losses.ClassBalancedLoss` with the method's form, gamma and beta (each method registers itself in
its own file).

As the authors of the class-balanced loss run the sigmoid-based forms (richardaecn/class-balanced-loss at 1d78572,
src/model_base.py line 196), the classifier's bias starts at ``-log(C - 1)``: every class's sigmoid then starts at
``1/C`` instead of ``1/2``, so the C - 1 negative terms of each row do not swamp the first steps. ltcl does this in
:meth:`bind`, on a classifier that has a bias (``model.classifier: linear``); a resumed run then loads its own
bias over it.

What ltcl does differently from their code, and why:

- Weight decay: for the sigmoid forms the authors leave the classifier's bias undecayed (src/cifar_main.py lines
  348-351); ltcl's engine decays every trainable parameter alike (one optimiser group for every method).
- Views: the loss covers every view of the config (``focal+acl`` works like ``bs+acl``); the authors train on one
  view, which the rival configs (configs/rivals/*_cb_*.yaml, *_focal.yaml) set.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from ltcl.losses.class_balanced import ClassBalancedLoss
from ltcl.methods.base import LossOutput, Objective, ObjectiveSetup, StepRecord


class ReweightedClassification(Objective):
    """Base of the focal and class-balanced methods; subclasses set ``name``, ``paper``, ``Section`` and
    ``form`` (or read it from their section), and which statistics they report.

    Statistics: ``cb_weight`` the mean class weight ``w_{y_i}`` of the batch's rows (1 on a balanced batch when
    every weight is 1; above 1 when the batch holds many tail rows); ``focal_factor`` the mean modulating factor
    ``(1 - p_t)^gamma`` of the true class (near 1 early, falling as the rows become easy).
    """

    role = "classification"
    form: ClassVar[str] = "softmax"
    reports_weight: ClassVar[bool] = True
    reports_focal: ClassVar[bool] = False

    def __init__(self, setup: ObjectiveSetup) -> None:
        super().__init__(setup)
        s = self.section
        self.form_used = getattr(s, "form", self.form)
        self.loss = ClassBalancedLoss(
            setup.class_counts, beta=getattr(s, "beta", 0.0), gamma=getattr(s, "gamma", 0.0), form=self.form_used
        )
        self.stat_names = ("cb_weight",) * self.reports_weight + ("focal_factor",) * self.reports_focal
        self.bias_init: float | None = None

    def bind(self, model) -> None:
        """The sigmoid forms start the classifier's bias at ``-log(C - 1)`` (module docstring)."""
        bias = getattr(getattr(model, "classifier", None), "bias", None)
        if self.form_used == "sigmoid" and isinstance(bias, torch.nn.Parameter):
            self.bias_init = -math.log(self.loss.num_classes - 1)
            with torch.no_grad():
                bias.fill_(self.bias_init)

    def forward(self, step: StepRecord) -> LossOutput:
        loss, weight, factor = self.loss.terms(step.logits, step.labels)
        parts = {"cb_weight": weight, "focal_factor": factor}
        return LossOutput(loss, {k: parts[k] for k in self.stat_names})

    def describe(self) -> str:
        s = self.section
        text = [f"{f} {getattr(s, f)}" for f in ("beta", "gamma") if hasattr(s, f)] + [f"{self.form_used} form"]
        w = self.loss.class_weights
        if getattr(s, "beta", 0.0) > 0:
            text.append(f"class weights {w.min().item():.3g}-{w.max().item():.3g}")
        if self.bias_init is not None:
            text.append(f"classifier bias starts at {self.bias_init:.3g}")
        return f"{self.name} ({', '.join(text)})"
