"""``focal``: focal loss (Lin et al., ICCV 2017) on the logits of every view, no class weights.

Lin et al. define it on sigmoid outputs, one binary problem per class (Sec. 3 and RetinaNet's classification
subnet); ``loss.focal.form: softmax`` gives the multi-class form ``-(1 - p_t)^gamma log p_t`` on the softmax, the
"Focal" baseline of LDAM-DRW's code. Equations, normalisation and numerics: :mod:`ltcl.losses.class_balanced`
(with ``beta = 0``); the classifier bias of the sigmoid form and what ltcl does differently:
:mod:`ltcl.methods.reweighting`.

Lin et al.'s alpha-balancing (0.25 for the foreground in detection) weighs foreground against background anchors
and has no counterpart in classification; ``cb_focal`` puts class weights in its place, as Cui et al. do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ltcl.config.checks import NON_NEGATIVE
from ltcl.losses.class_balanced import Form
from ltcl.methods.registry import register_objective
from ltcl.methods.reweighting import ReweightedClassification


@dataclass
class FocalSection:
    """``loss.focal``."""

    # The focal loss baseline of Cui et al.'s long-tailed CIFAR experiments: richardaecn/class-balanced-loss at
    # 1d78572, cifar_im_trainval.sh lines 15-16 (LOSS_TYPE=focal, GAMMA=1.0, with BETA=0 on line 7); LDAM-DRW's
    # Focal baseline also uses gamma 1 (kaidic/LDAM-DRW, cifar_train.py, FocalLoss(gamma=1)). Lin et al. chose
    # gamma 2 for detection (ICCV 2017, Sec. 5.1).
    gamma: float = field(default=1.0, metadata=NON_NEGATIVE)
    # sigmoid: Lin et al.'s form (Sec. 3), the one of Cui et al.'s focal_loss (src/cifar_main.py lines 226-266)
    form: Form = "sigmoid"


@register_objective
class Focal(ReweightedClassification):
    """Focal loss ``sum_i l_i / N`` on the logits of every view (:class:`ltcl.losses.ClassBalancedLoss`, beta 0).

    Statistics: ``focal_factor``, the mean ``(1 - p_t)^gamma`` of the true class.
    """

    name = "focal"
    paper = "Lin et al., Focal Loss for Dense Object Detection, ICCV 2017"
    Section = FocalSection
    reports_weight = False
    reports_focal = True
