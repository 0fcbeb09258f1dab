"""``cb_focal``: the class-balanced focal loss (Cui et al., CVPR 2019) on the logits of every view.

Sigmoid focal loss (Lin et al.) whose rows are weighted by the inverse effective number of their class, the
variant Cui et al. report as best on long-tailed CIFAR and use on ImageNet and iNaturalist. Equations and the
normalisation by the number of rows (the authors' code, not the sum of the weights):
:mod:`ltcl.losses.class_balanced`; the classifier bias and what ltcl does differently:
:mod:`ltcl.methods.reweighting`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ltcl.config.checks import MOMENTUM, NON_NEGATIVE
from ltcl.losses.class_balanced import Form
from ltcl.methods.registry import register_objective
from ltcl.methods.reweighting import ReweightedClassification


@dataclass
class ClassBalancedFocalSection:
    """``loss.cb_focal``. Defaults: the authors' long-tailed CIFAR script (richardaecn/class-balanced-loss at
    1d78572, cifar_im_trainval_cb.sh); their ImageNet and iNaturalist scripts use beta 0.999 and gamma 0.5
    (tpu/run_ILSVRC2012.sh and tpu/run_inat2018.sh lines 32-33)."""

    beta: float = field(default=0.9999, metadata=MOMENTUM)  # cifar_im_trainval_cb.sh line 7
    gamma: float = field(default=1.0, metadata=NON_NEGATIVE)  # cifar_im_trainval_cb.sh line 16
    # sigmoid: their focal_loss (src/cifar_main.py lines 226-266); softmax: the focal form on the softmax
    form: Form = "sigmoid"


@register_objective
class ClassBalancedFocal(ReweightedClassification):
    """``sum_i w_{y_i} l_i / N`` with focal rows ``l_i`` and effective-number weights ``w``
    (:class:`ltcl.losses.ClassBalancedLoss`).

    Statistics: ``cb_weight`` (mean class weight of the rows), ``focal_factor`` (mean ``(1 - p_t)^gamma`` of the
    true class).
    """

    name = "cb_focal"
    paper = "Cui et al., Class-Balanced Loss Based on Effective Number of Samples, CVPR 2019"
    Section = ClassBalancedFocalSection
    reports_focal = True
