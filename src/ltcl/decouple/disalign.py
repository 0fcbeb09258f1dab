"""``disalign``: distribution alignment (Zhang et al., "Distribution Alignment: A Unified Framework for Long-tail
Visual Recognition", CVPR 2021, Sec. 3).

The first stage's linear classifier ``z = W f + b`` is kept frozen and calibrated by an adaptive function: a
per-class scale and bias applied in proportion to an input-dependent confidence ``sigma(v . f + c)``
(:class:`ltcl.models.DisAlignClassifier`), trained with the generalized re-weighted cross-entropy
(:mod:`ltcl.losses.grw`), whose class weights ``(N / N_j) ** rho`` align the prediction with a balanced reference
distribution.

The layer, the loss and the schedule are not in the DisAlign repository (Megvii-BaseDetection/DisAlign holds only
the configs and a ``net.py``): they live in Megvii-BaseDetection/cvpods (``DisAlignLinear`` in
``cvpods/layers/wrappers.py``, ``GRWCrossEntropyLoss`` in ``cvpods/modeling/losses/grw_loss.py``, the epoch-wise
cosine of ``WarmupCosineLR``), with the values of DisAlign's
``classification/imagenetlt/resnext50/resx50.scratch.imagenet_lt.224size.90e.disalign.10e/config.py`` (10 epochs,
lr 0.1, weight decay 5e-4, batch 256, rho 1.2, no warm-up) and its ``net.py`` (only ``logit_scale``,
``logit_bias`` and the confidence layer train). Their training images come in the default random order (cvpods'
``DistributedGroupSampler``): ``sampler: instance``; their backbone runs in training mode with frozen parameters,
its BatchNorm statistics re-estimated (``bn: shift``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
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
)
from ltcl.losses.grw import GeneralizedReweightedCE
from ltcl.models import DisAlignClassifier


@dataclass
class DisAlignSection:
    """``decouple.*`` for disalign; defaults from DisAlign's ImageNet-LT config (``...disalign.10e/config.py``)."""

    epochs: int = field(default=10, metadata=AT_LEAST_1)  # SOLVER.LR_SCHEDULER.MAX_EPOCH: 10
    lr: float = field(default=0.1, metadata=POSITIVE)  # SOLVER.OPTIMIZER.BASE_LR: 0.1
    momentum: float = field(default=0.9, metadata=MOMENTUM)  # cvpods base_config OPTIMIZER.MOMENTUM: 0.9
    weight_decay: float = field(default=5e-4, metadata=NON_NEGATIVE)  # SOLVER.OPTIMIZER.WEIGHT_DECAY: 0.0005
    batch_size: int = field(default=256, metadata=AT_LEAST_1)  # SOLVER.IMS_PER_BATCH: 256
    sampler: str = field(default="instance", metadata=SAMPLER)  # DATALOADER.SAMPLER_TRAIN: DistributedGroupSampler
    bn: BatchNormMode = "shift"  # cvpods trains with model.train(); only requires_grad is turned off
    view: str = field(default="", metadata=VIEW)  # their first stage's training transform
    grw_exponent: float = field(default=1.2, metadata=NON_NEGATIVE)  # MODEL.GRW_SCALE: 1.2


@register_refitter
class DistributionAlignment(Refitter):
    """DisAlign's adaptive calibration of the first stage's linear classifier, trained with re-weighted CE."""

    name = "disalign"
    paper = "Zhang et al., DisAlign, CVPR 2021"
    code = (
        "Megvii-BaseDetection/cvpods: DisAlignLinear (cvpods/layers/wrappers.py), GRWCrossEntropyLoss "
        "(cvpods/modeling/losses/grw_loss.py); Megvii-BaseDetection/DisAlign: the ImageNet-LT disalign.10e config"
    )
    Section = DisAlignSection
    classifier = "disalign"
    needs_linear_source = True
    stat_names = ("confidence", "scale_mean")

    def __init__(self, section: DisAlignSection, setup: RefitSetup) -> None:
        super().__init__(section, setup)
        weight, bias = linear_weights(setup.source_classifier, self.name)
        self.head = DisAlignClassifier(setup.feature_dim, setup.num_classes).to(weight)
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(bias)
        self.head.weight.requires_grad_(False)  # net.py: every parameter frozen but the calibration's
        self.head.bias.requires_grad_(False)
        self.criterion = GeneralizedReweightedCE(setup.class_counts, section.grw_exponent).to(weight.device)
        # the mean confidence sigma(v . f + c) over the epoch's training batches, summed on the device
        self._confidence = torch.zeros(2, dtype=torch.float64, device=weight.device)
        self.head.confidence.register_forward_hook(self._record_confidence)

    def _record_confidence(self, module: nn.Module, inputs, output: Tensor) -> None:
        if module.training:
            sigma = torch.sigmoid(output.detach()).double()
            count = torch.tensor(float(sigma.numel()), dtype=torch.float64, device=sigma.device)
            self._confidence += torch.stack([sigma.sum(), count])

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return self.criterion(logits, labels)

    def statistics(self) -> dict[str, float]:
        """``confidence``: the mean sigma over the epoch's training images; ``scale_mean``: the mean of
        ``1 + alpha_j``, the scale a fully confident input gets."""
        total, count = self._confidence.tolist()
        self._confidence.zero_()
        return {"confidence": total / max(count, 1.0), "scale_mean": float(1.0 + self.head.logit_scale.detach().mean())}

    def export(self) -> nn.Module:
        return self.head
