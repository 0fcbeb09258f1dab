"""``loss.mixing: cutmix`` (Yun et al., CutMix: Regularization Strategy to Train Strong Classifiers with
Localizable Features, ICCV 2019).

With probability ``prob`` a step is mixed: ``lam ~ Beta(alpha, alpha)``, a box of sides ``int(side *
sqrt(1 - lam))`` around a uniformly drawn centre (clipped to the image) is pasted from each image's partner, and
``lam`` becomes the share of the image left, ``1 - box area / image area``; the loss is ``lam * L(y) + (1 - lam) *
L(y_partner)``. Other steps train on the unmixed views (``lam`` 1). As clovaai/CutMix-PyTorch (train.py lines
227-240, ``rand_bbox`` lines 279-295), except that the draws come from generators seeded by the step (resumable),
and that views of another size (ltcl's multi-size views) get their own box, and their own ``lam``, for the same
draw of ``lam``: their loss is computed apart and weighted by their share of the rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

from ltcl.config.checks import POSITIVE, check
from ltcl.losses.mixing import box_share, cutmix_box, paste_box
from ltcl.methods.mixing import Mixed, Mixing, group_rows, scalar
from ltcl.methods.registry import register_mixing


@dataclass
class CutMixSection:
    """``loss.cutmix``; the authors' CIFAR command (clovaai/CutMix-PyTorch README.md lines 54-55: ``--beta 1.0
    --cutmix_prob 0.5``; their ImageNet command, lines 69-70, mixes every step: ``--cutmix_prob 1.0``)."""

    alpha: float = field(default=1.0, metadata=POSITIVE)  # Beta(alpha, alpha) of the box's area ("beta" in their code)
    # share of the steps that are mixed
    prob: float = field(default=0.5, metadata=check(lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"))


@register_mixing
class CutMix(Mixing):
    """CutMix of the classification term's views. Statistics: ``mix_lambda``, the image's share of the mixed
    views (1 on a step left unmixed), averaged over the views."""

    name = "cutmix"
    paper = "Yun et al., CutMix, ICCV 2019"
    Section = CutMixSection

    def mix(self, groups: list[Tensor], labels: Tensor, partner: Tensor, rng: np.random.Generator) -> Mixed:
        b = labels.shape[0]
        if not rng.random() < self.section.prob:
            return Mixed(list(groups), [1.0] * len(groups), labels, labels, {"mix_lambda": scalar(1.0, labels.device)})
        lam = float(rng.beta(self.section.alpha, self.section.alpha))
        mixed, lams = [], []
        for g in groups:
            height, width = g.shape[-2:]
            box = cutmix_box(height, width, lam, int(rng.integers(height)), int(rng.integers(width)))
            mixed.append(paste_box(g, group_rows(g, partner, b), box))
            lams.append(box_share(box, height, width))
        rows = [g.shape[0] for g in groups]
        mean = sum(lam * n for lam, n in zip(lams, rows)) / sum(rows)
        return Mixed(mixed, lams, labels, labels.index_select(0, partner), {"mix_lambda": scalar(mean, labels.device)})
