"""``cb_sigmoid``: class-balanced sigmoid cross-entropy (Cui et al., CVPR 2019) on the logits of every view.

C binary cross-entropies per row, the row weighted by its class's inverse effective number and the sum divided by
the number of rows (richardaecn/class-balanced-loss at 1d78572, src/cifar_main.py lines 336-340); the classifier's
bias starts at ``-log(C - 1)`` (src/model_base.py line 196, see :mod:`ltcl.methods.reweighting`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ltcl.config.checks import MOMENTUM
from ltcl.methods.registry import register_objective
from ltcl.methods.reweighting import ReweightedClassification


@dataclass
class ClassBalancedSigmoidSection:
    """``loss.cb_sigmoid``."""

    beta: float = field(default=0.9999, metadata=MOMENTUM)  # cifar_im_trainval_cb.sh lines 7 and 12


@register_objective
class ClassBalancedSigmoid(ReweightedClassification):
    """Class-balanced sigmoid cross-entropy (:class:`ltcl.losses.ClassBalancedLoss`, sigmoid form, gamma 0).

    Statistics: ``cb_weight``, the mean class weight of the batch's rows.
    """

    name = "cb_sigmoid"
    paper = "Cui et al., Class-Balanced Loss Based on Effective Number of Samples, CVPR 2019"
    Section = ClassBalancedSigmoidSection
    form = "sigmoid"
