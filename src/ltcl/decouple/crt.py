"""``crt``: classifier re-training (Kang et al., "Decoupling Representation and Classifier for Long-Tailed
Recognition", ICLR 2020, Sec. 4).

A new linear classifier, initialised at random, is trained with cross-entropy on class-balanced batches while the
backbone stays frozen; the first stage's classifier is thrown away.

The authors' code (facebookresearch/classifier-balancing, ``config/ImageNet_LT/cls_crt.yaml`` with
``run_networks.py``) and what ltcl does differently:

- their ``ClassAwareSampler`` cycles through the classes in a shuffled order, 4 images of a class in a row, each
  class's images in a reshuffled cycle; ltcl's ``class_balanced`` sampler draws the class uniformly, then one of its
  images, independently for each position (the same class-balanced distribution; the epoch length is the same,
  ``N // batch`` steps, as their ``epoch_steps``);
- their frozen feature model runs in training mode (``model.train()`` on every network), so its BatchNorm layers use
  batch statistics and re-estimate their running statistics on the balanced batches: ``bn: shift`` here; ``bn:
  frozen`` keeps the first stage's statistics;
- their images are augmented with their first stage's training transform; here the view is the run's first view
  (``view: ''``), the first stage's augmentation in ltcl;
- the test split is scored for the last and the best-on-validation model, never used for a choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor

from ltcl.config.checks import AT_LEAST_1, MOMENTUM, NON_NEGATIVE, POSITIVE
from ltcl.decouple.base import SAMPLER, VIEW, BatchNormMode, RefitSetup, Refitter, register_refitter
from ltcl.models import LinearClassifier


@dataclass
class CRTSection:
    """``decouple.*`` for crt; defaults from the authors' ImageNet-LT config (``cls_crt.yaml``)."""

    epochs: int = field(default=10, metadata=AT_LEAST_1)  # training_opt.num_epochs: 10
    lr: float = field(default=0.2, metadata=POSITIVE)  # networks.classifier.optim_params.lr: 0.2
    momentum: float = field(default=0.9, metadata=MOMENTUM)  # optim_params.momentum: 0.9
    weight_decay: float = field(default=5e-4, metadata=NON_NEGATIVE)  # optim_params.weight_decay: 0.0005
    batch_size: int = field(default=512, metadata=AT_LEAST_1)  # training_opt.batch_size: 512
    sampler: str = field(default="class_balanced", metadata=SAMPLER)  # sampler: ClassAwareSampler
    # run_networks.py: model.train() on the fixed feature model too (BatchNorm statistics re-estimated)
    bn: BatchNormMode = "shift"
    view: str = field(default="", metadata=VIEW)  # their first stage's training transform


@register_refitter
class ClassifierRetraining(Refitter):
    """A fresh linear classifier trained with cross-entropy on class-balanced batches of frozen features."""

    name = "crt"
    paper = "Kang et al., Decoupling (cRT), ICLR 2020"
    code = "facebookresearch/classifier-balancing: run_networks.py, models/DotProductClassifier.py, cls_crt.yaml"
    Section = CRTSection
    # Places-LT and iNaturalist 2018 have configs of their own (cls_crt.yaml in config/Places_LT, iNaturalist18)
    authors_settings = {
        "places_lt": {"lr": 0.1, "batch_size": 256},
        "inat2018": {"lr": 0.2, "weight_decay": 1e-4, "epochs": 30},
    }

    def __init__(self, section: CRTSection, setup: RefitSetup) -> None:
        super().__init__(section, setup)
        # DotProduct_Classifier: nn.Linear with PyTorch's default initialisation, no stage-1 weights
        self.head = LinearClassifier(setup.feature_dim, setup.num_classes)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(logits, labels)  # loss/SoftmaxLoss.py
