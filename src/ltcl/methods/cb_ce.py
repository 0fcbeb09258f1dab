"""``cb_ce``: class-balanced softmax cross-entropy (Cui et al., CVPR 2019) on the logits of every view.

``sum_i w_{y_i} CE_i / N`` with the inverse effective numbers ``w`` summing to C, divided by the number of rows as
the authors' ``tf.losses.softmax_cross_entropy(weights=...)`` does (richardaecn/class-balanced-loss at 1d78572,
src/cifar_main.py lines 332-335), not by ``sum_i w_{y_i}`` as ``F.cross_entropy(weight=w)`` would.
Equations: :mod:`ltcl.losses.class_balanced`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ltcl.config.checks import MOMENTUM
from ltcl.methods.registry import register_objective
from ltcl.methods.reweighting import ReweightedClassification


@dataclass
class ClassBalancedSection:
    """``loss.cb_ce``."""

    # richardaecn/class-balanced-loss at 1d78572, cifar_im_trainval_cb.sh line 7 (every loss type of the script);
    # 0 gives plain cross-entropy (cifar_im_trainval.sh line 7)
    beta: float = field(default=0.9999, metadata=MOMENTUM)


@register_objective
class ClassBalancedCrossEntropy(ReweightedClassification):
    """Class-balanced softmax cross-entropy (:class:`ltcl.losses.ClassBalancedLoss`, softmax form, gamma 0).

    Statistics: ``cb_weight``, the mean class weight of the batch's rows.
    """

    name = "cb_ce"
    paper = "Cui et al., Class-Balanced Loss Based on Effective Number of Samples, CVPR 2019"
    # weights close to 1/N_j (beta 0.9999 on CIFAR-LT): the weighted softmax targets a uniform prior
    balanced_logits = True
    Section = ClassBalancedSection
    form = "softmax"
