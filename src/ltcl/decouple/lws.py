"""``lws``: learnable weight scaling (Kang et al., "Decoupling Representation and Classifier for Long-Tailed
Recognition", ICLR 2020, Sec. 4).

The first stage's linear classifier is kept, weights and bias frozen; a per-class scale ``s_j`` (initialised at 1)
multiplies its logits, ``s_j (w_j . f + b_j)``, and is learnt with cross-entropy on class-balanced batches. The
result is saved as a ``linear`` classifier with ``w_j <- s_j w_j`` and ``b_j <- s_j b_j`` (the same logits).

The authors' code (facebookresearch/classifier-balancing, ``models/TauNormClassifier.py`` with
``config/ImageNet_LT/cls_lws.yaml``; the first stage's ``fc`` is loaded by ``run_networks.load_model``) differs from
ltcl's in the sampler and the BatchNorm mode exactly as cRT's does (see :mod:`ltcl.decouple.crt`). The first stage's
test-time bias (``eval_bias``, e.g. LADE's PC-softmax) is not carried over: the scales replace that rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltcl.config.checks import AT_LEAST_1, MOMENTUM, NON_NEGATIVE, POSITIVE
from ltcl.decouple.base import (
    SAMPLER,
    VIEW,
    BatchNormMode,
    RefitSetup,
    Refitter,
    linear_weights,
    register_refitter,
    scaled_linear,
)


@dataclass
class LWSSection:
    """``decouple.*`` for lws; defaults from the authors' ImageNet-LT config (``cls_lws.yaml``)."""

    epochs: int = field(default=5, metadata=AT_LEAST_1)  # training_opt.num_epochs: 5
    lr: float = field(default=0.2, metadata=POSITIVE)  # networks.classifier.optim_params.lr: 0.2
    momentum: float = field(default=0.9, metadata=MOMENTUM)  # optim_params.momentum: 0.9
    weight_decay: float = field(default=5e-4, metadata=NON_NEGATIVE)  # optim_params.weight_decay: 0.0005 (scales)
    batch_size: int = field(default=512, metadata=AT_LEAST_1)  # training_opt.batch_size: 512
    sampler: str = field(default="class_balanced", metadata=SAMPLER)  # sampler: ClassAwareSampler
    bn: BatchNormMode = "shift"  # run_networks.py: model.train() on the fixed feature model too
    view: str = field(default="", metadata=VIEW)  # their first stage's training transform


class ScaledLogits(nn.Module):
    """``scales * (W f + b)`` with W and b frozen buffers and ``scales`` (C,) the learnt parameter."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.scales = nn.Parameter(torch.ones_like(bias))

    def forward(self, features: Tensor) -> Tensor:
        return F.linear(features, self.weight, self.bias) * self.scales


@register_refitter
class LearnableWeightScaling(Refitter):
    """The first stage's linear classifier with a learnt scale per class."""

    name = "lws"
    paper = "Kang et al., Decoupling (LWS), ICLR 2020"
    code = "facebookresearch/classifier-balancing: models/TauNormClassifier.py, run_networks.py, cls_lws.yaml"
    Section = LWSSection
    needs_linear_source = True
    stat_names = ("scale_min", "scale_max")
    # Places-LT and iNaturalist 2018 (cls_lws.yaml in config/Places_LT, config/iNaturalist18)
    authors_settings = {
        "places_lt": {"lr": 0.1, "batch_size": 256},
        "inat2018": {"lr": 0.2, "weight_decay": 1e-4},
    }

    def __init__(self, section: LWSSection, setup: RefitSetup) -> None:
        super().__init__(section, setup)
        self.head = ScaledLogits(*linear_weights(setup.source_classifier, self.name))

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(logits, labels)

    def statistics(self) -> dict[str, float]:
        scales = self.head.scales.detach()
        return {"scale_min": float(scales.min()), "scale_max": float(scales.max())}

    def export(self) -> nn.Module:
        return scaled_linear(self.head.weight, self.head.bias, self.head.scales.detach())
