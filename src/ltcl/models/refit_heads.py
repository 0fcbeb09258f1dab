"""Classifiers fitted by a second stage on a frozen backbone (``ltcl decouple``) whose test-time rule is not an affine
map, registered so that ``ltcl eval``, ``ltcl predict`` and :func:`ltcl.engine.inference.load_trained_model`
rebuild them from ``model.classifier`` alone (their state is in the checkpoint).

The re-fits that are affine maps (cRT, LWS, tau-normalisation, MiSLAS's re-trained classifier with its learnt
weight scaling) are saved as a ``linear`` classifier: scaling logit j by ``s_j`` is ``W <- diag(s) W``,
``b <- s * b``, and dividing row j by ``||w_j||^tau`` is a new ``W``.

- ``ncm``: nearest class mean (Kang et al., ICLR 2020, Sec. 4; facebookresearch/classifier-balancing,
  ``models/KNNClassifier.py``).
- ``disalign``: DisAlign's adaptive calibration of a linear classifier (Zhang et al., CVPR 2021, Eq. 4;
  Megvii-BaseDetection/cvpods, ``DisAlignLinear`` in ``cvpods/layers/wrappers.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ltcl.models.heads import ClassifierKind, EvalBias, register_classifier


class NearestClassMeanClassifier(EvalBias, nn.Module):
    """Logits ``-|| normalize(f - center) - m_j ||^2``: the negative squared distance of the centred, L2-normalised
    feature to class mean j (the authors' default, ``feat_type cl2n`` and ``dist_type l2``).

    Attributes (buffers, set by the re-fit):
        weight: (C, F) the class means ``m_j`` of the training features transformed the same way (centred and
            normalised, then averaged); with unit-length means the ranking is that of the cosine to the means.
        center: (F,) the mean training feature subtracted first (zeros: ``l2n``, normalised only).

    Nothing trains; a network built with it and no checkpoint predicts nothing useful.
    """

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(num_classes, in_dim))
        self.register_buffer("center", torch.zeros(in_dim))
        self._add_eval_bias(num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = F.normalize(features - self.center.to(features.dtype), dim=1)
        means = self.weight.to(x.dtype)
        distance = x.pow(2).sum(1, keepdim=True) + means.pow(2).sum(1)[None, :] - 2.0 * x @ means.t()
        return self._at_eval(-distance)

    def extra_repr(self) -> str:
        return f"in_dim={self.weight.shape[1]}, num_classes={self.weight.shape[0]}"


class DisAlignClassifier(EvalBias, nn.Linear):
    """A linear classifier ``z = W f + b`` with DisAlign's adaptive calibration::

        sigma(f) = sigmoid(v . f + c)                     (the input-dependent confidence)
        logits_j = (1 + sigma(f) * alpha_j) * z_j + sigma(f) * beta_j

    ``alpha`` is the authors' ``logit_scale`` (the paper's scale minus 1: ``(1 - sigma) z + sigma (a z + beta)``
    with ``a = 1 + alpha``) and ``beta`` their ``logit_bias``; ``W`` and ``b`` stay those of the first stage.

    Attributes:
        confidence: ``nn.Linear(F, 1)``, the confidence ``v, c``; logit_scale, logit_bias: (C,) alpha and beta.
    """

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__(in_dim, num_classes)
        self.confidence = nn.Linear(in_dim, 1)
        self.logit_scale = nn.Parameter(torch.ones(num_classes))
        self.logit_bias = nn.Parameter(torch.zeros(num_classes))
        nn.init.constant_(self.confidence.weight, 0.1)  # the authors' initialisation (the bias keeps Linear's)
        self._add_eval_bias(num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = F.linear(features, self.weight, self.bias)
        sigma = torch.sigmoid(self.confidence(features))
        return self._at_eval((1.0 + sigma * self.logit_scale) * z + sigma * self.logit_bias)


register_classifier(
    ClassifierKind(
        "ncm",
        lambda f, c, cfg: NearestClassMeanClassifier(f, c),
        "nearest class mean of the training features (Kang et al., ICLR 2020; set by ltcl decouple --method ncm)",
    )
)
register_classifier(
    ClassifierKind(
        "disalign",
        lambda f, c, cfg: DisAlignClassifier(f, c),
        "DisAlign's adaptive calibration (Zhang et al., CVPR 2021; set by ltcl decouple --method disalign)",
    )
)
