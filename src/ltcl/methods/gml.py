"""``gml``: mutual information maximisation between latent features and labels (Suh and Seo, ICML 2023), the whole
objective: a logit-adjusted cosine classifier, the Gaussian-mixture likelihood of the query against a
class-partitioned queue of keys with a learned temperature, and (optionally) distillation from the key encoder.
The equations and the loss-level differences from the authors' code are in :mod:`ltcl.losses.gml`.

How the authors run it (bluecdm/Long-tailed-recognition at 1ff816c, moco/builder.py ``MoCo._train`` and main.py /
cifar_main.py ``train``), and how ltcl does:

- Three views per image: the classification view (the classifier's logits; view 1 here), the query view (the
  projection head's query; view 2) and the key view (through the key encoder into the queue; view 3). Further views
  of the config are forwarded by the engine but unused.
- Key encoder. The authors' scripts give a frozen teacher, trained beforehand with the logit-adjusted cross-entropy
  (``--path_t``: ResNet-56 for CIFAR-100-LT, ResNeXt-101-32x8d for ImageNet-LT), which then replaces MoCo's momentum
  encoder: the teacher's backbone features are queued and the key head, a separate trainable copy of the query head,
  maps the queue to keys (the keys carry gradient to it). Without ``--path_t`` the code is MoCo: a momentum copy
  (0.999) of backbone, classifier and head, keys without gradient. ``loss.gml.teacher`` (a checkpoint of an ltcl
  run, e.g. ``la`` with a cosine classifier of scale 30 like the authors' cifar_ce.py) selects the first; empty,
  the second. The teacher is read again from its file on resume, not copied into checkpoints.
- ltcl updates the momentum encoder after each optimiser step (the code: before the next forward; the same
  sequence), and runs it in train mode like the code (its BatchNorm on batch statistics). The code also runs the
  classification view through the key encoder for the distillation logits; here only when ``alpha > 0`` (with the
  key view in one batch when both have the same size), which otherwise changes only its BatchNorm statistics. The
  code's shuffled BatchNorm (``_batch_shuffle_ddp``) is not done: it changes nothing in one process, and the
  ImageNet-LT code converts every BatchNorm to SyncBatchNorm (ltcl: ``model.sync_bn``).
- The classifier temperature ``T_s = 1/30`` (a fixed buffer of ``GMLLoss``) is the cosine classifier's scale here:
  ``model.classifier: cosine`` with ``model.cosine_scale: 30`` (the code's ``--normalize true``).
- The query network's BatchNorm sees every view the engine forwards in one batch of a size (the code: the
  classification and query views), and the query head's BatchNorm every view's projections (the code: the queries).
- The learned log-temperature is trained with the run's weight decay (ltcl's optimiser has one parameter group;
  the code exempts it): the pull, ``weight_decay * log T`` (about 1e-3), is small next to its gradient.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltcl.config import ConfigError
from ltcl.config.checks import AT_LEAST_1, MOMENTUM, NON_NEGATIVE, POSITIVE
from ltcl.dist import distributed_world, gather_equal_rows
from ltcl.losses.gml import GMLLoss
from ltcl.losses.gml_queue import ClassQueue
from ltcl.methods.base import LossOutput, Objective, ObjectiveSetup, StepRecord
from ltcl.methods.registry import register_objective
from ltcl.models.heads import ProjectionHead

CLS_VIEW, QUERY_VIEW, KEY_VIEW = 0, 1, 2
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass
class GMLSection:
    """``loss.gml``. Defaults: the authors' CIFAR-100-LT student (bluecdm/Long-tailed-recognition,
    sh/CIFAR100_train_student.sh and the defaults of cifar_main.py it leaves); ``loss.temperature`` is the initial
    learned temperature (cifar_main.py line 106: 0.1; sh/ImageNetLT_train_student.sh line 5: 0.07)."""

    gamma: float = field(default=1.0, metadata=NON_NEGATIVE)  # logit-adjusted CE weight (student sh line 14)
    beta: float = field(default=1.0, metadata=NON_NEGATIVE)  # contrastive weight (student sh line 16)
    # distillation weight: 1.0 in the CIFAR student sh (line 15) with its teacher; main.py (ImageNet-LT) never
    # distils (GMLLoss built without alpha, line 219). 0 here because the default key encoder is the momentum one.
    alpha: float = field(default=0.0, metadata=NON_NEGATIVE)
    distill_temperature: float = field(default=4.0, metadata=POSITIVE)  # losses.py DistillKL(T=4)
    queue_size: int = field(default=4096, metadata=AT_LEAST_1)  # cifar_main.py line 100 (ImageNet-LT sh: 16384)
    base_k: int = field(default=2, metadata=AT_LEAST_1)  # keys per class at least: cifar_main.py line 102 (IN: 3)
    momentum: float = field(default=0.999, metadata=MOMENTUM)  # key encoder: cifar_main.py line 104, main.py 107
    # checkpoint of a trained ltcl run to use as the frozen key encoder (the authors' --path_t; read at the start
    # and on every resume: give an absolute path); empty: the momentum encoder
    teacher: str = ""


@register_objective
class GML(Objective):
    """GML (see the module docstring). Statistics: ``loss_sup``, ``loss_con``, ``loss_con_t`` (``loss_kd`` with
    alpha > 0), ``temperature`` (the learned T) and ``queue_fill`` (the fraction of queue slots holding a real key
    rather than a random initial vector)."""

    name = "gml"
    role = "objective"
    paper = (
        "Suh and Seo, Long-Tailed Recognition by Mutual Information Maximization between Latent Features and "
        "Ground-Truth Labels, ICML 2023"
    )
    balanced_logits = True  # see docs/conventions.md, "Evaluation report"
    Section = GMLSection
    needs_projections = True

    @classmethod
    def adapt_config(cls, cfg):
        """The plain linear classifier becomes GML's cosine classifier at the authors' scale 1/T_s = 30."""
        if cfg.model.classifier == "linear":
            return replace(cfg, model=replace(cfg.model, classifier="cosine", cosine_scale=30.0))
        return cfg

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.views.num_views < 3:
            raise ConfigError(
                f"loss.objective gml needs 3 views (classification, query, key): set views.num_views >= 3, got "
                f"{cfg.views.num_views}."
            )
        if cfg.model.classifier != "cosine":
            raise ConfigError(
                "loss.objective gml trains a cosine classifier whose scale is 1/T_s (the authors: 30): set "
                f"model.classifier=cosine and model.cosine_scale=30; got {cfg.model.classifier}."
            )

    def __init__(self, setup: ObjectiveSetup) -> None:
        super().__init__(setup)
        s = self.section
        self.loss = GMLLoss(
            setup.class_counts,
            temperature=setup.loss.temperature,
            gamma=s.gamma,
            beta=s.beta,
            alpha=s.alpha,
            distill_temperature=s.distill_temperature,
            gather_distributed=setup.gather_distributed,
        )
        self.momentum = float(s.momentum)
        self.key_network: nn.Module | None = None  # momentum mode: a copy of the network, checkpointed
        self.key_head: nn.Module | None = None  # teacher mode: the trainable key head, checkpointed
        self.queue: ClassQueue | None = None
        self._frozen_norms: list[int] = []
        self.stat_names = (*self.loss.part_names, "temperature", "queue_fill")

    # ----------------------------------------------------------------------------------------------------------
    # Set-up

    def bind(self, model: nn.Module) -> None:
        device = next(model.parameters()).device
        teacher = None
        if self.section.teacher:
            teacher = load_teacher(self.section.teacher, device, self.setup.num_classes, self.setup.load_network)
        self.attach(model, teacher)

    def attach(self, model: nn.Module, teacher: nn.Module | None = None) -> None:
        """Builds the key side for ``model``: the momentum copy (``teacher`` None) or the frozen ``teacher``
        network (a :class:`~ltcl.models.LongTailNetwork`) with a trainable key head; then the queue."""
        if model.projection is None:
            raise ValueError("gml needs the network's projection head (model.projection_dim > 0).")
        device = next(model.parameters()).device
        if teacher is not None:
            for p in teacher.parameters():
                p.requires_grad_(False)
            object.__setattr__(self, "_teacher", teacher.eval())  # not a submodule: not trained, not checkpointed
            feature_dim = teacher.feature_dim
            if feature_dim == model.feature_dim:
                head = copy.deepcopy(model.projection)  # the code starts its key head as a copy of the query head
            else:
                norm = any(isinstance(m, _BATCH_NORMS) for m in model.projection.modules())
                head = ProjectionHead(feature_dim, self.setup.hidden_dim, self.setup.projection_dim, norm)
            for p in head.parameters():
                p.requires_grad_(self.section.beta > 0)
            self.key_head = head.to(device)
        else:
            self.key_network = copy.deepcopy(model)
            for p in self.key_network.parameters():
                p.requires_grad_(False)
            # BatchNorm layers the network keeps in eval mode (frozen by partial fine-tuning) stay so in the copy.
            norms = [m for m in model.modules() if isinstance(m, _BATCH_NORMS)]
            self._frozen_norms = [i for i, m in enumerate(norms) if not any(p.requires_grad for p in m.parameters())]
            feature_dim = model.feature_dim
        s = self.section
        dtype = next(model.parameters()).dtype
        self.queue = ClassQueue(self.setup.class_counts, s.queue_size, s.base_k, feature_dim).to(device, dtype)
        self.train(self.training)

    @property
    def teacher(self) -> nn.Module | None:
        return self.__dict__.get("_teacher")

    def train(self, mode: bool = True) -> GML:
        super().train(mode)
        if self.key_network is not None:  # all of its BatchNorm layers train, as the code's key encoder
            nn.Module.train(self.key_network, mode)
            norms = [m for m in self.key_network.modules() if isinstance(m, _BATCH_NORMS)]
            for i in self._frozen_norms:
                norms[i].eval()
        if self.teacher is not None:
            self.teacher.eval()
        return self

    # ----------------------------------------------------------------------------------------------------------
    # A step

    def _keys_and_teacher_logits(self, step: StepRecord) -> tuple[Tensor, Tensor | None]:
        """The key encoder's backbone features of the key view and, with alpha > 0, its logits of the
        classification view (no gradient)."""
        encoder = self.teacher if self.teacher is not None else self.key_network
        key_images = step.view_images(KEY_VIEW)
        if self.loss.alpha == 0:
            return encoder(key_images, with_projection=False).features, None
        cls_images = step.view_images(CLS_VIEW)
        if cls_images.shape[1:] == key_images.shape[1:]:
            out = encoder(torch.cat([cls_images, key_images]), with_projection=False)
            b = step.batch_size
            return out.features[b:], out.logits[:b]
        return encoder(key_images, with_projection=False).features, encoder(cls_images, with_projection=False).logits

    def _key_head(self) -> nn.Module:
        return self.key_head if self.key_head is not None else self.key_network.projection

    def forward(self, step: StepRecord) -> LossOutput:
        if self.queue is None:
            raise RuntimeError("gml must be bound to its network (Objective.bind) before the first step.")
        b = step.batch_size
        labels = step.labels[:b]
        with torch.no_grad():
            key_features, teacher_logits = self._keys_and_teacher_logits(step)
            gather = self.setup.gather_distributed
            all_features = gather_equal_rows(key_features) if gather else key_features
            all_labels = gather_equal_rows(labels) if gather else labels
            ids = self.queue.enqueue(all_features, all_labels)
            rank = distributed_world()[0] if gather else 0
            query_ids = ids[rank * b : (rank + 1) * b]
        # The whole queue through the key head: with gradient to the teacher's trainable head, none in momentum mode.
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.key_head is not None and self.loss.beta > 0):
            keys = F.normalize(self._key_head()(self.queue.features), dim=1)
        loss, parts = self.loss(
            step.projections[step.view_rows(QUERY_VIEW, QUERY_VIEW + 1)],
            labels,
            query_ids,
            keys,
            self.queue.labels,
            self.queue.ids,
            step.logits[step.view_rows(CLS_VIEW, CLS_VIEW + 1)],
            teacher_logits,
        )
        parts |= {"temperature": self.loss.temperature, "queue_fill": self.queue.fill()}
        return LossOutput(loss, parts)

    @torch.no_grad()
    def after_step(self, step: StepRecord) -> None:
        """The momentum update of the key encoder, ``k = m k + (1 - m) q`` over every parameter."""
        if self.key_network is None:
            return
        keys = list(self.key_network.parameters())
        queries = [p.detach() for p in step.model.parameters()]
        torch._foreach_mul_(keys, self.momentum)
        torch._foreach_add_(keys, queries, alpha=1.0 - self.momentum)

    def describe(self) -> str:
        s = self.section
        encoder = f"teacher {s.teacher}" if s.teacher else f"momentum encoder {s.momentum}"
        kd = f", alpha {s.alpha} (kd t {s.distill_temperature})" if s.alpha > 0 else ""
        return (
            f"gml (gamma {s.gamma}, beta {s.beta}{kd}; queue {s.queue_size} keys, >= {s.base_k} per class, "
            f"{encoder}; tau {self.setup.loss.temperature} learned; views 1 classified, 2 query, 3 key)"
        )


def load_teacher(path: str, device: torch.device, num_classes: int, load_network) -> nn.Module:
    """The network of a trained ltcl checkpoint (read by ``load_network``, see ObjectiveSetup), frozen, in eval
    mode, on ``device``."""
    if not Path(path).expanduser().is_file():
        raise ConfigError(f"loss.gml.teacher {path!r} is not a file (give the checkpoint of a trained ltcl run).")
    if load_network is None:
        raise ValueError("loss.gml.teacher needs ObjectiveSetup.load_network: build the objective through the engine.")
    teacher = load_network(str(Path(path).expanduser()))
    if teacher.num_classes != num_classes:
        raise ConfigError(f"loss.gml.teacher {path} classifies {teacher.num_classes} classes, this run {num_classes}.")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.to(device).eval()
