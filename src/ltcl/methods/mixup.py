"""``loss.mixing: mixup`` (Zhang et al., mixup: Beyond Empirical Risk Minimization, ICLR 2018).

One ``lam ~ Beta(alpha, alpha)`` per step; every image is mixed with its partner (a permutation of the batch),
``lam * x + (1 - lam) * x_partner``, in every view the classification term sees, and the loss is
``lam * L(y) + (1 - lam) * L(y_partner)``. As the authors' ``mixup_data`` (facebookresearch/mixup-cifar10,
train.py lines 119-134; MiSLAS methods.py lines 8-24), except that the draws come from generators seeded by the
step (resumable) and that ``alpha`` must be positive (their ``alpha <= 0`` means no mixing: ``loss.mixing=none``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

from ltcl.config.checks import POSITIVE
from ltcl.losses.mixing import mix_images
from ltcl.methods.mixing import Mixed, Mixing, group_rows, scalar
from ltcl.methods.registry import register_mixing


@dataclass
class MixupSection:
    """``loss.mixup``."""

    # alpha of Beta(alpha, alpha). 1.0: Zhang et al.'s CIFAR default (facebookresearch/mixup-cifar10, train.py
    # line 39) and MiSLAS's CIFAR stage 1 (config/cifar10/cifar10_imb001_stage1_mixup.yaml line 46); MiSLAS uses
    # 0.2 on ImageNet-LT, iNaturalist and Places (config/imagenet/imagenet_resnet50_stage1_mixup.yaml line 46).
    alpha: float = field(default=1.0, metadata=POSITIVE)


@register_mixing
class Mixup(Mixing):
    """mixup of the classification term's views. Statistics: ``mix_lambda``, the step's ``lam``."""

    name = "mixup"
    paper = "Zhang et al., mixup: Beyond Empirical Risk Minimization, ICLR 2018"
    Section = MixupSection

    def mix(self, groups: list[Tensor], labels: Tensor, partner: Tensor, rng: np.random.Generator) -> Mixed:
        lam = float(rng.beta(self.section.alpha, self.section.alpha))
        b = labels.shape[0]
        mixed = [mix_images(g, group_rows(g, partner, b), lam) for g in groups]
        stats = {"mix_lambda": scalar(lam, labels.device)}
        return Mixed(mixed, [lam] * len(groups), labels, labels.index_select(0, partner), stats)
