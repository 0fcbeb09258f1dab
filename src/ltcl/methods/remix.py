"""``loss.mixing: remix`` (Chou et al., Remix: Rebalanced Mixup, ECCV 2020 workshops).

The images are mixed as by mixup (``lam ~ Beta(alpha, alpha)``, one per step); the label weight of a pair moves to
its minority class (Eq. 10): 0 when the image's class has at least ``kappa`` times its partner's training images
and ``lam < tau``, 1 when its partner's class has at least ``kappa`` times its own and ``1 - lam < tau``, ``lam``
otherwise. The authors publish no code; BagofTricks-LT (zhangyongshun/BagofTricks-LT, lib/core/combiner.py lines
108-146) implements it, and ltcl differs from it in one place: there the per-pair weights multiply the batch MEAN
of the loss (``l_list * criterion(output, label_a)`` with a criterion that averages, then ``.mean()``), so the
step's loss is ``mean(lam_y) * L(y) + (1 - mean(lam_y)) * L(y_partner)``; ltcl weights each pair's own loss, as
Eq. 10 states, ``mean over pairs of lam_y * l(y) + (1 - lam_y) * l(y_partner)`` (for a batch-mean loss: the
scalar interpolation of relabelled targets, :func:`ltcl.losses.mixing.remix_targets`). Both agree when every pair
keeps ``lam``. As everywhere in ltcl's mixing, the draws come from generators seeded by the step (resumable).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

from ltcl.config.checks import POSITIVE, check
from ltcl.losses.mixing import mix_images, remix_targets
from ltcl.methods.mixing import Mixed, Mixing, group_rows, scalar
from ltcl.methods.registry import register_mixing


@dataclass
class RemixSection:
    """``loss.remix``; BagofTricks-LT's CIFAR-10-LT IF100 Remix config
    (configs/cao_cifar/mixup/remix/cifar10_im100_remix_alpha10.yaml lines 34-37, the same values as the defaults
    of lib/config/default.py lines 127 and 133-134). The paper itself could not be read here: its values are not
    checked against these."""

    alpha: float = field(default=1.0, metadata=POSITIVE)  # Beta(alpha, alpha) of the images' lam
    kappa: float = field(default=3.0, metadata=check(lambda v: v >= 1, "a number >= 1"))  # count ratio
    tau: float = field(default=0.5, metadata=check(lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"))


@register_mixing
class Remix(Mixing):
    """Remix of the classification term's views. Statistics: ``mix_lambda``, the step's ``lam``;
    ``remix_moved``, the share of pairs whose label weight went wholly to one class (0 or 1)."""

    name = "remix"
    paper = "Chou et al., Remix: Rebalanced Mixup, ECCV 2020 workshops"
    Section = RemixSection
    stat_names = ("mix_lambda", "remix_moved")

    def mix(self, groups: list[Tensor], labels: Tensor, partner: Tensor, rng: np.random.Generator) -> Mixed:
        s = self.section
        lam = float(rng.beta(s.alpha, s.alpha))
        b = labels.shape[0]
        mixed = [mix_images(g, group_rows(g, partner, b), lam) for g in groups]
        counts = self.class_counts
        a, other, moved = remix_targets(labels, labels.index_select(0, partner), lam, counts, kappa=s.kappa, tau=s.tau)
        stats = {"mix_lambda": scalar(lam, labels.device), "remix_moved": moved.double().mean()}
        return Mixed(mixed, [lam] * len(groups), a, other, stats)
