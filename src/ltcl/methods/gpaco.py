"""``gpaco``: generalized parametric contrastive learning (Cui et al., TPAMI 2023), one loss that classifies and
contrasts (:class:`ltcl.losses.GPaCoLoss`; its docstring lists where the loss departs from the authors' code).

As the authors build it (dvlab-research/Parametric-Contrastive-Learning, GPaCo/LT/moco/builder.py, ``MoCo``):

- Two views per image, both through the same encoder, both anchors (views 1 and 2 of the config; further views
  are forwarded by the engine but not used).
- The classifier is a plain linear layer with bias on the pooled backbone features (builder line 43,
  ``nn.Linear(feat_dim, num_classes)``, read from a hook on the layer before ``fc``): ltcl's
  ``model.classifier: linear``, whose logits are also what the authors evaluate (no prior at test time).
- The projection head is the encoder's ``fc`` made an MLP (builder line 47, ``mlp=True`` by default in every
  script): Linear(F, F)-ReLU-Linear(F, F)-ReLU-Linear(F, D), three linear layers, no BatchNorm, F the backbone's
  feature size (64 for ResNet-32, 2048 for ResNeXt-50), D ``--moco-dim``. This method owns that head
  (:class:`ltcl.losses.gpaco_head.GPaCoProjectionHead`, ``loss.gpaco.dim``) and reads the backbone features; the
  network's own projection head (``model.projection_*``) is not built.
- A queue of ``--moco-k`` keys with labels: the second view's normalised projections, detached, enqueued for the
  global batch after each step (builder lines 50-56 and 86-99). It starts with random keys and labels
  (``loss.gpaco.queue_start: random``), or masked and empty (``empty``). The random keys are gone after
  ``K / B`` steps (B keys pushed per step); ``benchmarks/gpaco_queue_start.py`` measures what they change until then.

What ltcl does differently, and why:

- BatchNorm statistics: the authors forward the two views as two batches (two BatchNorm batches); ltcl's engine
  forwards the views of one size as one batch, so BatchNorm normalises both views together (the engine is shared by
  every method).
- Distributed: the batch rows of every process are contrasted (gathered with gradient), so the loss is the
  one-process loss of the global batch; the authors contrast each GPU's batch with the queue.
- Initialisation of the head's last layer on CIFAR: the authors' ResNet-32 applies Kaiming-normal to its ``fc``
  before it becomes the head's last layer; here all three layers have PyTorch's default Linear initialisation (as
  the authors' ImageNet backbones, whose ``fc`` torchvision leaves at the default).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ltcl.config import ConfigError
from ltcl.config.checks import AT_LEAST_0, AT_LEAST_1, NON_NEGATIVE, check
from ltcl.losses.gpaco import GPaCoLoss
from ltcl.losses.gpaco_head import GPaCoProjectionHead
from ltcl.losses.gpaco_queue import QueueStart
from ltcl.methods.base import LossOutput, Objective, ObjectiveSetup, StepRecord
from ltcl.methods.registry import register_objective

SMOOTHING = check(
    lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1,
    "a number in [0, 1)",
)


@dataclass
class GPaCoSection:
    """``loss.gpaco``. Defaults: the authors' CIFAR-100 script and the defaults of the training file it runs
    (dvlab-research/Parametric-Contrastive-Learning at fe56535, GPaCo/LT/sh/CIFAR/CIFAR100_train.sh and
    GPaCo/LT/paco_cifar.py). The temperature is the shared ``loss.temperature`` (``--moco-t``)."""

    alpha: float = field(default=0.01, metadata=NON_NEGATIVE)  # sample positives: CIFAR100_train.sh line 15
    beta: float = field(default=1.0, metadata=NON_NEGATIVE)  # own-centre positive: CIFAR100_train.sh line 16
    gamma: float = field(default=1.0, metadata=NON_NEGATIVE)  # sample terms of the denominator: line 17
    # label smoothing of the centre: PaCoLoss default (GPaCo/LT/losses.py line 8); only the full-ImageNet script
    # (sh/ImageNet/train_resnet50.sh line 19) sets 0.1
    smooth: float = field(default=0.0, metadata=SMOOTHING)
    # K, past keys kept: CIFAR100_train.sh line 22 (--moco-k 1024; paco_lt.py line 97 defaults to 8192); 0: none
    queue_size: int = field(default=1024, metadata=AT_LEAST_0)
    # random keys and labels as moco/builder.py lines 51-54, or empty: masked until real keys replace them
    queue_start: QueueStart = "random"
    dim: int = field(default=128, metadata=AT_LEAST_1)  # D of the head's output: --moco-dim, paco_cifar.py line 90


@register_objective
class GPaCo(Objective):
    """GPaCo on views 1 and 2: the classifier's logits are the parametric centres, the method's own three-layer
    head maps the backbone features to the samples, and a queue of past keys adds contrast rows.
    ``loss.temperature`` is the temperature of the sample similarities; ``loss.alpha`` is not used.

    Statistics: ``queue_fill`` (share of the queue holding keys of real batches), ``centre_weight`` (the mean
    own-centre weight ``beta / (beta + alpha |P(i)|)`` of the anchors).
    """

    name = "gpaco"
    role = "objective"
    paper = "Cui et al., Generalized Parametric Contrastive Learning, TPAMI 2023"
    balanced_logits = True  # see docs/conventions.md, "Evaluation report"
    Section = GPaCoSection
    needs_features = True
    used_views = 2  # the authors' query and key views

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.views.num_views < cls.used_views:
            raise ConfigError(
                f"loss.objective gpaco contrasts two views of every image: set views.num_views to 2 or more "
                f"(got {cfg.views.num_views})."
            )

    def __init__(self, setup: ObjectiveSetup) -> None:
        super().__init__(setup)
        if setup.feature_dim <= 0:
            raise ValueError("gpaco needs the backbone's feature size (feature_dim) to build its projection head.")
        s = self.section
        self.head = GPaCoProjectionHead(setup.feature_dim, s.dim)
        self.loss = GPaCoLoss(
            setup.class_counts,
            alpha=s.alpha,
            beta=s.beta,
            gamma=s.gamma,
            temperature=setup.loss.temperature,
            smooth=s.smooth,
            queue_size=s.queue_size,
            key_dim=s.dim,
            queue_start=s.queue_start,
            # The training seed (torch.manual_seed before the model is built): the same start on every process,
            # drawn from its own generator so that the other random streams do not move.
            seed=torch.initial_seed(),
            gather_distributed=setup.gather_distributed,
        )
        self.stat_names = ("queue_fill", "centre_weight")
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, step: StepRecord) -> LossOutput:
        if step.features is None:
            raise RuntimeError("gpaco reads the backbone features: the step must carry them (needs_features).")
        if step.num_views < self.used_views:
            raise ValueError(f"gpaco needs {self.used_views} views of every image, the step has {step.num_views}.")
        pair = step.first_views(self.used_views)
        z = F.normalize(self.head(pair.features), dim=1)
        fill = self.loss.queue.fill() if self.loss.queue is not None else z.new_zeros((), dtype=torch.float64)
        loss = self.loss(z, pair.labels, pair.logits)
        # The keys are the second view's projections of this forward pass (before the optimiser step); they enter
        # the queue in after_step, after the loss has used the queue as it was.
        second = pair.view_rows(1, 2)
        self._pending = (z[second].detach(), pair.labels[second])
        return LossOutput(loss, {"queue_fill": fill, "centre_weight": self.loss.last_centre_weight})

    def after_step(self, step: StepRecord) -> None:
        if self._pending is not None:
            self.loss.enqueue(*self._pending)
            self._pending = None

    def describe(self) -> str:
        s, f = self.section, self.setup.feature_dim
        queue = f"queue {s.queue_size} ({s.queue_start} start)" if s.queue_size else "no queue"
        smooth = f", smooth {s.smooth}" if s.smooth else ""
        return (
            f"gpaco (alpha {s.alpha}, beta {s.beta}, gamma {s.gamma}, tau {self.setup.loss.temperature}{smooth}; "
            f"head {f}-{f}-{f}-{s.dim}, {queue}; views 1-2)"
        )
