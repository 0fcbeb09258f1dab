"""``pc_softmax``: plain softmax cross-entropy in training, the post-compensated softmax at test time (Hong et al.,
CVPR 2021, Sec. 3.2: the "PC Softmax" baseline of LADE's paper).

A model trained with cross-entropy on long-tailed data learns ``softmax(f(x)) ~ p_s(y|x)``, with the training prior
``p_s`` inside; PC-softmax swaps it for the test prior: ``f(x) - log p_s(y) + log p_t(y)``. The authors apply it
at evaluation to any run trained with their softmax loss on a linear classifier (hyperconnect/LADE at 5db5d13,
run_networks.py lines 594-597: ``logits -= log(prior_distribution["train"])``; the test prior, uniform here, adds
a constant). :meth:`PCSoftmax.bind` writes ``-log p_s`` into ``model.classifier.eval_bias``, so the checkpoint
itself evaluates and predicts with PC-softmax (``ltcl eval``, ``ltcl predict``, user code), while training and the
train accuracy see the plain logits.

For a model trained with LADE, whose LADE-CE already takes ``log p_s`` out, use ``lade`` instead (its test-time
bias is the test prior alone).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ltcl.losses.validation import check_class_counts
from ltcl.methods.base import LossOutput, Objective, ObjectiveSetup, StepRecord
from ltcl.methods.registry import register_objective


@register_objective
class PCSoftmax(Objective):
    """Softmax cross-entropy on the logits of every view (in float32 under autocast); evaluation logits
    ``f(x) - log p_s`` through the classifier's ``eval_bias``."""

    name = "pc_softmax"
    role = "classification"
    paper = "Hong et al., LADE, CVPR 2021 (PC Softmax, Sec. 3.2)"
    balanced_logits = True  # see docs/conventions.md, "Evaluation report"

    def __init__(self, setup: ObjectiveSetup) -> None:
        super().__init__(setup)
        counts = check_class_counts(setup.class_counts)
        self.register_buffer("log_prior", (counts / counts.sum()).log())  # float64

    def bind(self, model) -> None:
        """Writes ``-log p_s`` into the classifier's ``eval_bias``."""
        eval_bias = getattr(getattr(model, "classifier", None), "eval_bias", None)
        if not isinstance(eval_bias, torch.Tensor):
            raise ValueError("pc_softmax needs a classifier with an eval_bias buffer (every registered one has it).")
        with torch.no_grad():
            eval_bias.copy_(-self.log_prior.to(eval_bias.dtype))

    def forward(self, step: StepRecord) -> LossOutput:
        return LossOutput(F.cross_entropy(step.logits.float(), step.labels), {})

    def describe(self) -> str:
        return "pc_softmax (test logits - log p_s, the training prior)"
