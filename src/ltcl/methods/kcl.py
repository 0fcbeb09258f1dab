"""``kcl``: k-positive contrastive learning, then a balanced linear classifier (Kang et al., ICLR 2021), as the two
stages of one run.

Stage 1 (epochs ``1 .. E - classifier_epochs``) trains the representation with :class:`ltcl.losses.KCLLoss`: view 1
of each image is the query (the network and its projection head), view 2 the key (a momentum copy of backbone and
projection head, made by :meth:`KCL.bind`), contrasted against a queue of past keys with ``k`` same-class queue
keys as extra positives. The classifier is not trained.

Stage 2 (the last ``classifier_epochs`` epochs) re-trains the linear classifier from zero with cross-entropy on the
frozen features of view 1, drawing the images with ``classifier_sampler`` (class-balanced by default).

What the authors' code does (bingykang/BalFeat: ``main_kcl.py``, ``moco/kcl_builder.py``, ``main_lincls.py``;
README "K-positive Contrastive Learning") and what ltcl does differently, and why:

- Positives from the MoCo queue, the first ``k`` same-class slots (see :mod:`ltcl.losses.kcl`), no MLP head (the
  README's KCL command has no ``--mlp``: ResNet's ``fc`` maps the pooled features to 128-d), which is what
  ``model.projection_hidden: 0`` gives. LTH14/targeted-supcon re-implements KCL with random positives and an MLP
  head; ltcl follows the authors' own code.
- Two programs there (``main_kcl.py``, then ``main_lincls.py`` on the saved encoder), one run here: stage 2 shares
  the run's optimiser and learning-rate schedule, so it trains at the end of the schedule's decay, with the run's
  weight decay, where the authors' ``main_lincls.py`` starts a new SGD at lr 30 (steps at 60 and 80 of 100 epochs,
  weight decay 0). ``classifier_lr_scale`` multiplies stage 2's gradient (only the classifier receives one), which
  for SGD is the same as that factor on its learning rate, weight decay aside; the authors' lr 30 suits features
  of small norm (``feature_norm``): momentum SGD on a cross-entropy is only sure to converge for lr below about
  ``8 / feature_norm**2``. The optimiser's momentum of the classifier also carries over from stage 1 (small: the
  classifier only decays there).
- The new classifier starts from zero (the code: normal with std 0.01, bias 0): deterministic and identical on
  every process; the classifier is linear, so the start does not matter much.
- Sampling of stage 2. The paper trains the classifier class-balanced (and so does LTH14's re-implementation); the
  README's command for ImageNet-LT does not pass ``--balanced``, so the published run sampled instances:
  ``classifier_sampler: instance`` reproduces that.
- Frozen means frozen, as ``main_lincls.py`` (it puts the network in eval mode, BatchNorm statistics included, and
  checks that no weight moved): in stage 2 backbone and projection head run in eval mode (running statistics, none
  updated) and their weights are put back after every optimiser step. They keep ``requires_grad`` and receive
  exact zero gradients, because DistributedDataParallel, built once for the whole run, expects a gradient for every
  parameter it was given (a parameter that stops receiving one stops the run); SGD would then apply weight decay
  and momentum to them, which the restore undoes. For the same reason the classifier receives zero gradients in
  stage 1.
- No pass over the data before training to fill the queue (``init_key_queue``): the queue fills during the first
  ``queue_size / batch`` steps and its empty slots are left out of the loss.
- Shuffle BN (the code shuffles the key batch across GPUs so that BatchNorm cannot leak which key belongs to which
  query): not done; on one device it is impossible, and under torchrun each process's key batch is normalised with
  its own statistics. Query and key views of one size are also forwarded together through the network (the engine
  runs each view size as one batch).
- The key encoder copies the query encoder's train/eval mode of every module before each forward (a frozen
  pretrained BatchNorm stays in eval mode in both).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltcl.config import ConfigError, from_dict
from ltcl.config.checks import AT_LEAST_0, AT_LEAST_1, MOMENTUM, POSITIVE
from ltcl.data.samplers import SAMPLERS
from ltcl.dist import global_mean
from ltcl.losses.kcl import KCLLoss
from ltcl.methods.base import LossOutput, Objective, ObjectiveSetup, StepRecord
from ltcl.methods.kcl_encoder import KeyEncoder, _evaluating, _zero_gradient
from ltcl.methods.registry import register_objective

QUERY_VIEW, KEY_VIEW = 0, 1  # 0-based: views 1 and 2 of the config


@dataclass
class KCLSection:
    """``loss.kcl``: the first stage's k-positive contrast and the second stage's classifier. Defaults: the authors'
    ImageNet-LT commands (bingykang/BalFeat, README.md "K-positive Contrastive Learning", and the argument defaults
    of ``main_kcl.py`` and ``main_lincls.py`` they rely on). The temperature is ``loss.temperature`` (the code's
    ``--moco-t``, 0.07: ``main_kcl.py`` line 49)."""

    positives: int = field(default=6, metadata=AT_LEAST_0)  # k: README line 138, "--posk 6"
    queue_size: int = field(default=65536, metadata=AT_LEAST_1)  # main_kcl.py line 45, --moco-k
    key_momentum: float = field(default=0.999, metadata=MOMENTUM)  # main_kcl.py line 47, --moco-m
    # Epochs of stage 2, the last of optim.epochs; 0: a third of them, rounded (at least 1), which is the authors'
    # 100 epochs of main_lincls.py (line 35, --epochs 100) after the 200 of main_kcl.py (README line 138).
    classifier_epochs: int = field(default=0, metadata=AT_LEAST_0)
    # The paper's class-balanced classifier; README line 144 (main_lincls.py without --balanced) sampled instances.
    classifier_sampler: str = "class_balanced"
    # Stage 2's gradient times this: the classifier's learning rate in units of the run's schedule (its weight decay
    # keeps the schedule's rate). 1: the schedule's own. main_lincls.py trains at lr 30 (line 33), with steps at 60
    # and 80 of its 100 epochs (line 37) and no weight decay (line 34), a rate for features of small norm.
    classifier_lr_scale: float = field(default=1.0, metadata=POSITIVE)


def classifier_epochs(value: int, epochs: int) -> int:
    """The epochs of stage 2: ``value``, or for 0 a third of the run's ``epochs`` (at least 1)."""
    return value if value > 0 else max(1, round(epochs / 3))


@register_objective
class KCL(Objective):
    """KCL's two stages in one run (module docstring).

    Statistics: ``stage`` (1 or 2), ``loss_kcl`` (stage 1, else 0), ``loss_classifier`` (stage 2, else 0; its
    value is the cross-entropy, whatever ``classifier_lr_scale``), ``queue_fill`` (fraction of the queue holding
    keys), ``positives`` (queue positives per query, at most k) and ``feature_norm`` (mean L2 norm of the backbone
    features of view 1: the scale that the classifier's learning rate has to suit).
    """

    name = "kcl"
    role = "objective"
    paper = "Kang et al., Exploring Balanced Feature Spaces for Representation Learning, ICLR 2021"
    balanced_logits = True  # see docs/conventions.md, "Evaluation report"
    Section = KCLSection
    needs_projections = True
    needs_features = True

    @classmethod
    def check_config(cls, cfg) -> None:
        section = from_dict(cfg.loss.sections.get(cls.config_section(), {}) or {}, KCLSection, "loss.kcl.")
        if cfg.views.num_views < 2:
            raise ConfigError(
                f"loss.objective kcl needs two views (query and key): set views.num_views >= 2, got "
                f"{cfg.views.num_views}."
            )
        if cfg.model.classifier != "linear":
            raise ConfigError(
                f"loss.objective kcl re-trains a linear classifier in its second stage: set model.classifier=linear "
                f"(got {cfg.model.classifier})."
            )
        if cfg.optim.epochs < 2:
            raise ConfigError(
                f"loss.objective kcl trains in two stages of at least one epoch each: set optim.epochs >= 2 (got "
                f"{cfg.optim.epochs})."
            )
        if section.classifier_epochs >= cfg.optim.epochs:
            raise ConfigError(
                f"loss.kcl.classifier_epochs ({section.classifier_epochs}) must be less than optim.epochs "
                f"({cfg.optim.epochs}): the first stage needs at least one epoch."
            )
        if section.classifier_sampler not in SAMPLERS:
            raise ConfigError(
                f"loss.kcl.classifier_sampler expects a sampler ({', '.join(SAMPLERS)}), got "
                f"'{section.classifier_sampler}'."
            )

    def __init__(self, setup: ObjectiveSetup) -> None:
        super().__init__(setup)
        s = self.section
        if setup.projection_dim <= 0:
            raise ValueError("kcl needs a projection head (projection_dim > 0).")
        self.loss = KCLLoss(
            setup.projection_dim,
            s.queue_size,
            s.positives,
            setup.loss.temperature,
            gather_distributed=setup.gather_distributed,
        )
        self.classifier_start = max(setup.epochs - classifier_epochs(s.classifier_epochs, setup.epochs), 1)
        # Set once the classifier of stage 2 has been re-initialised (saved: a resume inside stage 2 keeps it).
        self.register_buffer("classifier_reset", torch.zeros((), dtype=torch.bool))
        self.key_encoder: KeyEncoder | None = None
        self.stat_names = ("stage", "loss_kcl", "loss_classifier", "queue_fill", "positives", "feature_norm")
        self._stage = 1
        self._network: tuple[nn.Module, ...] = ()  # the bound network (a tuple: not a submodule of the objective)
        self._snapshot: list[Tensor] | None = None
        self._pending: tuple[Tensor, Tensor] | None = None

    # --- binding and stages ---------------------------------------------------------------------------------

    def bind(self, model: nn.Module) -> None:
        if getattr(model, "projection", None) is None:
            raise ValueError("kcl needs a network with a projection head.")
        self._network = (model,)
        self.key_encoder = KeyEncoder(copy.deepcopy(model.backbone), copy.deepcopy(model.projection))

    @property
    def network(self) -> nn.Module:
        if not self._network:
            raise RuntimeError("kcl must be bound to the network first: call bind(model).")
        return self._network[0]

    def _encoder_modules(self) -> tuple[nn.Module, nn.Module]:
        return self.network.backbone, self.network.projection

    def _encoder_parameters(self) -> list[nn.Parameter]:
        return [p for m in self._encoder_modules() for p in m.parameters() if p.requires_grad]

    def _classifier_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.network.classifier.parameters() if p.requires_grad]

    def stage_of(self, epoch: int) -> int:
        return 2 if epoch >= self.classifier_start else 1

    def set_epoch(self, epoch: int) -> None:
        self._stage = self.stage_of(epoch)
        frozen = self._stage == 2
        for module in self._encoder_modules():
            if frozen:
                module.train = _evaluating.__get__(module)  # type: ignore[method-assign]
                module.eval()
            else:
                module.__dict__.pop("train", None)
        if not frozen:
            self._snapshot = None
            return
        if not bool(self.classifier_reset):
            with torch.no_grad():
                for p in self.network.classifier.parameters():
                    p.zero_()
            self.classifier_reset.fill_(True)
        if self._snapshot is None:
            # The encoder as stage 1 left it: after a resume inside stage 2 the loaded weights are exactly these.
            self._snapshot = [p.detach().clone() for p in self._encoder_parameters()]

    def sampler_for_epoch(self, epoch: int) -> str | None:
        return self.section.classifier_sampler if self.stage_of(epoch) == 2 else None

    # --- the step -------------------------------------------------------------------------------------------

    def forward(self, step: StepRecord) -> LossOutput:
        zero = torch.zeros((), dtype=torch.float64, device=step.labels.device)
        b = step.batch_size
        if self._stage == 2:
            # Cross-entropy of the classifier on the frozen features of view 1; the encoder gets exact zeros.
            logits = self.network.classifier(step.features[:b].detach())
            per_image = F.cross_entropy(logits.float(), step.labels[:b], reduction="none")
            loss = global_mean(per_image, torch.ones_like(per_image, dtype=torch.bool))
            parts = {"stage": zero + 2, "loss_kcl": zero, "loss_classifier": loss.detach().double()}
            parts |= {"queue_fill": self.loss.fill(), "positives": zero, "feature_norm": _norm(step.features[:b])}
            scale = self.section.classifier_lr_scale
            if scale != 1.0:  # the value stays the cross-entropy, its gradient is scaled
                loss = loss + (scale - 1.0) * (loss - loss.detach())
            return LossOutput(loss + _zero_gradient(self._encoder_parameters()), parts)
        if self.key_encoder is None:
            raise RuntimeError("kcl must be bound to the network first: call bind(model).")
        queries = step.projections[step.view_rows(QUERY_VIEW, QUERY_VIEW + 1)]
        labels = step.labels[:b]
        with torch.no_grad():
            self._mirror_modes()
            keys = self.key_encoder(step.view_images(KEY_VIEW))
        out = self.loss(queries, keys, labels)
        self._pending = (keys, labels)
        parts = {"stage": zero + 1, "loss_kcl": out.loss.detach().double(), "loss_classifier": zero}
        parts |= {"queue_fill": self.loss.fill(), "positives": out.positives, "feature_norm": _norm(step.features[:b])}
        return LossOutput(out.loss + _zero_gradient(self._classifier_parameters()), parts)

    def _mirror_modes(self) -> None:
        for query, key in zip(self._encoder_modules(), (self.key_encoder.backbone, self.key_encoder.projection)):
            for mq, mk in zip(query.modules(), key.modules()):
                mk.training = mq.training

    @torch.no_grad()
    def after_step(self, step: StepRecord) -> None:
        if self._stage == 2:
            for p, saved in zip(self._encoder_parameters(), self._snapshot or []):
                p.copy_(saved)
            return
        if self._pending is not None:
            keys, labels = self._pending
            self._pending = None
            self.loss.enqueue(keys, labels)
        # MoCo's momentum update: key = m * key + (1 - m) * query, every parameter of backbone and head.
        m = self.section.key_momentum
        query = [p for module in self._encoder_modules() for p in module.parameters()]
        key = [p for p in self.key_encoder.parameters()]
        torch._foreach_mul_(key, m)
        torch._foreach_add_(key, query, alpha=1.0 - m)

    def describe(self) -> str:
        s, e = self.section, self.setup.epochs
        start = self.classifier_start + 1
        return (
            f"kcl (k {s.positives}, queue {s.queue_size}, key momentum {s.key_momentum}, "
            f"tau {self.setup.loss.temperature}; stage 1, {_epochs(1, start - 1)}: KCL, query view {QUERY_VIEW + 1}, "
            f"key view {KEY_VIEW + 1}; stage 2, {_epochs(start, e)}: linear classifier re-trained "
            f"from zero on frozen features of view {QUERY_VIEW + 1}, {s.classifier_sampler} sampler"
            + (f", learning rate x{s.classifier_lr_scale:g}" if s.classifier_lr_scale != 1.0 else "")
            + ")"
        )


def _epochs(first: int, last: int) -> str:
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"


def _norm(features: Tensor) -> Tensor:
    return features.detach().float().norm(dim=1).mean().double()
