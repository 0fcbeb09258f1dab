"""``mislas``: MiSLAS's second stage (Zhong et al., "Improving Calibration for Long-Tailed Recognition", CVPR 2021,
Sec. 4.2-4.3): label-aware smoothing and shifted batch normalisation while re-training the classifier.

The first stage's linear classifier is trained further (at ``lr_factor`` times the learning rate) together with a
learnt per-class scale of its logits (their ``LearnableWeightScaling``, at the full rate), on class-balanced batches,
with the label-aware smoothing loss (:mod:`ltcl.losses.label_aware_smoothing`); with ``bn: shift`` the frozen
backbone's BatchNorm layers normalise with the batch's statistics and re-estimate their running statistics on the
balanced batches (their ``shift_bn``: ``model.train()`` on the backbone). The result is saved as a ``linear``
classifier with the scales folded in. Stage 1 (mixup) is a training option of its own, not part of this re-fit.

Following dvlab-research/MiSLAS (``train_stage2.py``, ``methods.py``, ``config/*/..._stage2_mislas.yaml``), with
the values of its config for the run's dataset (``authors_settings``; the ImageNet-LT config otherwise). What ltcl
does differently: their class-aware sampler cycles through shuffled classes and images where ltcl draws each
position independently (the same class-balanced distribution), and they run ``ceil(N / batch) + 1`` steps per
epoch (an off-by-one in ``if i > end_steps``) where ltcl runs ``N // batch``; the extra residual block that their
Places-LT stage 2 trains is not part of ltcl's backbones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from ltcl.config.checks import AT_LEAST_1, MOMENTUM, NON_NEGATIVE, POSITIVE, check
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
from ltcl.losses.label_aware_smoothing import LabelAwareSmoothing

UNIT = check(lambda v: 0 <= v <= 1, "a number in [0, 1]")


@dataclass
class MiSLASSection:
    """``decouple.*`` for mislas; defaults from the authors' ImageNet-LT config
    (``config/imagenet/imagenet_resnet50_stage2_mislas.yaml``)."""

    epochs: int = field(default=10, metadata=AT_LEAST_1)  # num_epochs: 10
    lr: float = field(default=0.1, metadata=POSITIVE)  # lr: 0.1 (the scales'; the classifier's is lr * lr_factor)
    lr_factor: float = field(default=0.05, metadata=POSITIVE)  # lr_factor: 0.05
    momentum: float = field(default=0.9, metadata=MOMENTUM)  # momentum: 0.9
    weight_decay: float = field(default=5e-4, metadata=NON_NEGATIVE)  # weight_decay: 5e-4
    batch_size: int = field(default=256, metadata=AT_LEAST_1)  # batch_size: 256
    sampler: str = field(default="class_balanced", metadata=SAMPLER)  # dataset.train_balance: ClassAwareSampler
    bn: BatchNormMode = "shift"  # shift_bn: True
    view: str = field(default="", metadata=VIEW)  # their first stage's training transform (without mixup)
    smooth_head: float = field(default=0.3, metadata=UNIT)  # smooth_head: 0.3
    smooth_tail: float = field(default=0.0, metadata=UNIT)  # smooth_tail: 0.0
    shape: Literal["concave", "linear", "convex", "exp"] = "concave"  # LabelAwareSmoothing(shape='concave')
    power: float = field(default=1.0, metadata=POSITIVE)  # only for shape exp (their power=None otherwise)


_CIFAR = {"batch_size": 128, "weight_decay": 2e-4}  # every CIFAR stage-2 config


class ScaledTrainableLinear(nn.Module):
    """``scales * (W f + b)`` with W, b and the (C,) scales all trained (MiSLAS's classifier and its LWS)."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0]).to(weight)
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)
        self.scales = nn.Parameter(torch.ones_like(bias))

    def forward(self, features: Tensor) -> Tensor:
        return self.scales * self.linear(features)


@register_refitter
class MiSLASStageTwo(Refitter):
    """The first stage's classifier re-trained with label-aware smoothing, learnt logit scales and shifted BN."""

    name = "mislas"
    paper = "Zhong et al., MiSLAS (stage 2), CVPR 2021"
    code = "dvlab-research/MiSLAS: train_stage2.py, methods.py (LabelAwareSmoothing, LearnableWeightScaling)"
    Section = MiSLASSection
    needs_linear_source = True
    stat_names = ("scale_min", "scale_max")
    authors_settings = {
        # config/cifar10/cifar10_imb001 (IF 100), imb002 (IF 50), imb01 (IF 10)_stage2_mislas.yaml
        "cifar10_lt@100": {**_CIFAR, "smooth_head": 0.3, "smooth_tail": 0.0, "bn": "frozen", "lr_factor": 0.5},
        "cifar10_lt@50": {**_CIFAR, "smooth_head": 0.2, "smooth_tail": 0.0, "bn": "frozen", "lr_factor": 0.2},
        "cifar10_lt@10": {**_CIFAR, "smooth_head": 0.1, "smooth_tail": 0.0, "bn": "frozen", "lr_factor": 0.2},
        "cifar10_lt": {**_CIFAR, "smooth_head": 0.3, "smooth_tail": 0.0, "bn": "frozen", "lr_factor": 0.5},
        # config/cifar100/cifar100_imb001 / imb002 / imb01_stage2_mislas.yaml
        "cifar100_lt@100": {**_CIFAR, "smooth_head": 0.4, "smooth_tail": 0.1, "bn": "shift", "lr_factor": 0.2},
        "cifar100_lt@50": {**_CIFAR, "smooth_head": 0.3, "smooth_tail": 0.0, "bn": "shift", "lr_factor": 0.1},
        "cifar100_lt@10": {**_CIFAR, "smooth_head": 0.2, "smooth_tail": 0.0, "bn": "shift", "lr_factor": 0.1},
        "cifar100_lt": {**_CIFAR, "smooth_head": 0.4, "smooth_tail": 0.1, "bn": "shift", "lr_factor": 0.2},
        # config/ina2018/ina2018_resnet50_stage2_mislas.yaml, config/places/places_resnet152_stage2_mislas.yaml
        "inat2018": {"weight_decay": 1e-4},
        "places_lt": {"smooth_head": 0.4, "smooth_tail": 0.1},
    }

    def __init__(self, section: MiSLASSection, setup: RefitSetup) -> None:
        super().__init__(section, setup)
        self.head = ScaledTrainableLinear(*linear_weights(setup.source_classifier, self.name))
        self.criterion = LabelAwareSmoothing(
            setup.class_counts, section.smooth_head, section.smooth_tail, section.shape, section.power
        ).to(setup.device)

    def param_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        # train_stage2.adjust_learning_rate: group 0 (the classifier) at lr_factor * lr, group 1 (the scales) at lr
        return [(list(self.head.linear.parameters()), self.section.lr_factor), ([self.head.scales], 1.0)]

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return self.criterion(logits, labels)

    def statistics(self) -> dict[str, float]:
        scales = self.head.scales.detach()
        return {"scale_min": float(scales.min()), "scale_max": float(scales.max())}

    def export(self) -> nn.Module:
        linear = self.head.linear
        return scaled_linear(linear.weight.detach(), linear.bias.detach(), self.head.scales.detach())
