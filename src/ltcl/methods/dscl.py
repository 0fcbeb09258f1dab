"""``dscl``: decoupled supervised contrastive learning with patch-based self-distillation (Xuan and Zhang, AAAI 2024),
the whole objective: DSCL + PBSD on the projections, and the classifier on the detached backbone features.

What the authors' code does (SY-Xuan/DSCL at 72c823bacabc7e09a3656e9047403681eb0ef5c2; equations and loss-level
differences in :mod:`ltcl.losses.dscl`):

- Stage 1 (``main.py``, ``train.sh``): MoCo with a key encoder (momentum 0.999) and a queue of 65536 labelled keys.
  The query view goes through the network, the key view through the key encoder; five patches (64 px, 5-60 % of
  the query crop's area) are cut from the query crop and go through the network as well. Loss: DSCL + 1.5 PBSD.
  200 epochs, batch 256, lr 0.1 (x batch / 256), 10 warm-up epochs then cosine, weight decay 5e-4.
- Stage 2 (``equal_lincls.py``, ``train_cls.sh``): the backbone frozen, a new linear classifier on its pooled
  features, cross-entropy with class-balanced sampling (a class drawn uniformly, then one of its images), 40 epochs,
  batch 2048, lr 10 divided by 10 at epochs 20 and 30, no weight decay. The test set is scored after every epoch and
  the best epoch is kept (``equal_lincls.py`` lines 320-334, its "val" loader reads ``test.json``): the published
  numbers are best-on-test. ltcl reports the last epoch and the epoch best on the validation split, never the test.

What ltcl does differently, and why:

- One command, classifier trained jointly. The classifier learns during the whole run on the query view's backbone
  features, detached (no gradient reaches the backbone: the representation is DSCL's and PBSD's alone, as in stage
  1), with cross-entropy weighted by ``N / (C N_y)``, which in expectation equals the authors' class-balanced
  sampling. Not a second stage, because in one ltcl command (a) one optimiser and one learning-rate schedule run
  over all epochs: a second stage would inherit the tail of the representation's cosine (near 0) instead of the
  authors' lr 10 without weight decay; (b) under torchrun, DDP needs every trainable parameter to receive a gradient
  in every step, and a frozen backbone (or, in stage 1, an unused classifier) stops it; both need engine changes.
  The classifier's weight decay is the run's (the authors' stage 2 uses none), its learning rate the run's.
  The authors' stage 2 also runs the frozen backbone in train mode (``equal_lincls.py`` line 356), so its
  BatchNorm statistics are re-estimated on class-balanced batches of whole images; here they are those of the
  training views (instance-sampled), the patches' forwards kept out of them
  (:func:`~ltcl.methods.dscl_patches.running_statistics_kept`).
- Patches are cut on the device from the query view that the network saw (RoIAlign with adaptive sampling, which
  averages when it shrinks, like PIL's bilinear resize), with a random horizontal flip each; in the authors' loader
  they are cut before the query's colour augmentation and get colour jitter, grayscale and blur of their own. Here
  they share the query's colours. Box sizes and positions are continuous, not rounded to pixels.
- The teacher's RoI features come from the map that the global average pooling of the backbone receives (a forward
  pre-hook on the backbone's last ``AdaptiveAvgPool2d``; ResNet-50's ``layer4`` output, ResNet-32's last stage),
  at that map's own scale (1/32 for ResNet-50 at 224 px, as the code's ``spatial_scale``; 1/4 for ResNet-32).
- The network's forward of the query view is the engine's: views of one size are forwarded together, so the query's
  BatchNorm statistics include the other views of that size (the key view too, which the network also sees: its
  outputs are not used). The authors forward the query batch alone. The key encoder sees the key view alone, in
  train mode, as in the code; without shuffle-BN across GPUs (a no-op on one GPU, and the authors' code on one).
- The momentum update of the key encoder runs after each optimiser step (the authors' runs before each key
  forward: the same sequence of encoders).
- Under torchrun, as in the code: each process contrasts its own batch and the queue, the queue receives the global
  batch's keys (see :mod:`ltcl.losses.dscl`).

Statistics: ``loss_view`` and ``loss_class`` (DSCL's two positive terms, weights ``1 / (1 + beta)`` and
``beta / (1 + beta)``), ``loss_pbsd`` (the distillation loss, before its weight), ``loss_cls`` (the classifier's
cross-entropy) and ``queue_fill`` (the fraction of the queue holding real keys).
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from ltcl.config import ConfigError, from_dict
from ltcl.config.checks import AT_LEAST_0, AT_LEAST_1, MOMENTUM, NON_NEGATIVE, check
from ltcl.dist import distributed_world
from ltcl.losses.dscl import DSCLLoss
from ltcl.methods.base import LossOutput, Objective, ObjectiveSetup, StepRecord
from ltcl.methods.dscl_patches import (
    _at_least_float32,
    box_rois,
    cut_patches,
    global_pool,
    running_statistics_kept,
    sample_patch_boxes,
)
from ltcl.methods.registry import register_objective

_RANGE = check(lambda v: len(v) == 2 and 0 < v[0] <= v[1], "two numbers 0 < low <= high")
_AREA = check(lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1, "two numbers 0 < low <= high <= 1")


@dataclass
class DSCLSection:
    """``loss.dscl``. Defaults: the authors' ImageNet-LT run (SY-Xuan/DSCL, ``main.py`` argument defaults, which
    ``train.sh`` keeps; the temperature 0.07 is ``loss.temperature``, ``--dscl-t`` at main.py line 96)."""

    beta: float = field(default=8.0, metadata=NON_NEGATIVE)  # main.py:99 --contrastive_beta (passed at line 192;
    # DSCL.py's own default of 6.0 is not used): the view weighs 1 / (1 + beta), the class positives beta / (1 + beta)
    queue_size: int = field(default=65536, metadata=AT_LEAST_1)  # main.py:92 --dscl-k
    key_momentum: float = field(default=0.999, metadata=MOMENTUM)  # main.py:94 --dscl-m
    distill_weight: float = field(default=1.5, metadata=NON_NEGATIVE)  # main.py:101 --pbsd_weight, used at line 384
    num_patches: int = field(default=5, metadata=AT_LEAST_0)  # main.py:100 --num_crops (0: no PBSD)
    patch_size: int = field(default=64, metadata=AT_LEAST_1)  # main.py:309 small_size (pixels, for 224 px views)
    patch_scale: list[float] = field(default_factory=lambda: [0.05, 0.6], metadata=_AREA)  # main.py:310 small_scale
    patch_ratio: list[float] = field(default_factory=lambda: [0.75, 4 / 3], metadata=_RANGE)  # loader_roi.py:45
    patch_flip: bool = True  # main.py:299, the patches' RandomHorizontalFlip
    roi_size: int = field(default=2, metadata=AT_LEAST_1)  # DSCL.py:152 roi_align output (2, 2), then averaged


@register_objective
class DecoupledSupCon(Objective):
    """DSCL + ``distill_weight`` PBSD + ``loss.cls_weight`` classifier cross-entropy (module docstring).

    Views: the first view is the query, the second the key (further views are not used); ``loss.temperature`` is
    tau of both losses, ``loss.alpha`` is not used. Needs :meth:`bind` (the key encoder and the feature-map hook).
    """

    name = "dscl"
    role = "objective"
    paper = "Xuan and Zhang, Decoupled Contrastive Learning for Long-Tailed Recognition, AAAI 2024"
    balanced_logits = True  # see docs/conventions.md, "Evaluation report"
    Section = DSCLSection
    needs_projections = True
    needs_features = True

    @classmethod
    def check_config(cls, cfg) -> None:
        section = from_dict(cfg.loss.sections.get(cls.config_section(), {}), DSCLSection, "loss.dscl.")
        if cfg.views.num_views < 2:
            raise ConfigError(
                f"loss.objective dscl needs two views (the query, then the key): set views.num_views >= 2, got "
                f"{cfg.views.num_views}."
            )
        if section.queue_size % cfg.data.batch_size != 0:
            raise ConfigError(
                f"loss.dscl.queue_size ({section.queue_size}) must be a multiple of data.batch_size "
                f"({cfg.data.batch_size}), as in the authors' queue (each step replaces one batch of keys)."
            )

    def __init__(self, setup: ObjectiveSetup) -> None:
        super().__init__(setup)
        s = self.section
        self.loss = DSCLLoss(
            setup.num_classes,
            setup.projection_dim,
            s.queue_size,
            beta=s.beta,
            temperature=setup.loss.temperature,
            gather_distributed=setup.gather_distributed,
        )
        counts = torch.tensor(setup.class_counts, dtype=torch.float64)
        # N / (C N_y): cross-entropy weighted so that its expectation under instance sampling is the class-balanced
        # sampling's of the authors' classifier stage.
        weights = (counts.sum() / (counts.numel() * counts)).float()
        self.register_buffer("class_weights", weights, persistent=False)
        self.register_module("key_encoder", None)
        self.distill = s.num_patches > 0 and s.distill_weight > 0
        self.stat_names = ("loss_view", "loss_class", "loss_pbsd", "loss_cls", "queue_fill")
        # The patches' random numbers come from a generator of their own, seeded per step from (seed, step, rank):
        # the global generators are drawn from elsewhere too (a DataLoader draws from torch's when an epoch's
        # iterator starts), so a run resumed mid-epoch would cut other patches. Both numbers are checkpointed.
        self._seed, self._draws = int(torch.randint(0, 2**31, ()).item()), 0
        self.register_buffer("patch_seed", torch.tensor(self._seed, dtype=torch.int64))
        self.register_buffer("patch_draws", torch.zeros((), dtype=torch.int64))
        self.register_load_state_dict_post_hook(lambda module, keys: module._read_counters())
        self._maps: deque[Tensor] = deque(maxlen=8)
        self._capturing = True
        self._pending: tuple[Tensor, Tensor] | None = None

    def _read_counters(self) -> None:
        self._seed, self._draws = int(self.patch_seed), int(self.patch_draws)  # once, when a checkpoint is loaded

    def _patch_generator(self, device: torch.device) -> torch.Generator:
        rank, _ = distributed_world()
        generator = torch.Generator(device=device)
        generator.manual_seed((self._seed * 1_000_003 + self._draws) * 1024 + rank)
        self._draws += 1
        self.patch_draws.fill_(self._draws)
        return generator

    # -- the key encoder and the feature-map hook ---------------------------------------------------------------

    def bind(self, model: nn.Module) -> None:
        pool = global_pool(model.backbone)
        key_encoder = copy.deepcopy(model)  # before the hook: the copy must not capture
        key_encoder.requires_grad_(False)
        self.key_encoder = key_encoder
        self.train(self.training)
        pool.register_forward_pre_hook(self._keep_map)

    def _keep_map(self, module: nn.Module, args: tuple) -> None:
        # Training forwards only (evaluation never fills the deque); not the patches' own forward.
        if module.training and self._capturing:
            self._maps.append(args[0].detach())

    def train(self, mode: bool = True) -> DecoupledSupCon:
        super().train(mode)
        if self.key_encoder is not None:
            # The key encoder's parameters are frozen, and LongTailNetwork.train keeps the BatchNorm layers of frozen
            # parameters in eval mode; MoCo's key encoder normalises with its batch's statistics: plain Module.train.
            nn.Module.train(self.key_encoder, mode)
        return self

    # -- the step -----------------------------------------------------------------------------------------------

    @staticmethod
    def _view(step: StepRecord, view: int, tensors: list[Tensor]) -> Tensor:
        """View ``view``'s rows of the per-group ``tensors`` (images or maps, in ``step.group_views`` order)."""
        b = step.batch_size
        for group, views in enumerate(step.group_views):
            if view in views:
                j = views.index(view)
                return tensors[group][j * b : (j + 1) * b]
        raise ValueError(f"View {view + 1} is in no group of the step ({step.group_views}).")

    def forward(self, step: StepRecord) -> LossOutput:
        if self.key_encoder is None:
            raise RuntimeError("dscl needs bind(model) before its first step (the key encoder and the map hook).")
        maps = list(self._maps)[-len(step.images) :]
        self._maps.clear()
        rows = step.view_rows(0, 1)
        queries, labels = step.projections[rows], step.labels[rows]
        with torch.no_grad():
            keys = self.key_encoder(self._view(step, 1, step.images), with_projection=True).projections
        fill = self.loss.fill()
        view, klass = self.loss(queries, keys, labels)
        pbsd = view.new_zeros(())
        if self.distill:
            if len(maps) != len(step.images):
                raise RuntimeError(
                    "dscl did not see the query view's feature map: the network must run in train mode on the step's "
                    "view groups before the objective."
                )
            pbsd = self._distillation(step.model, self._view(step, 0, step.images), self._view(step, 0, maps), keys)
        logits = step.model.classifier(step.features[rows].detach())
        ce = F.cross_entropy(logits.float(), labels, reduction="none")
        cls = (self.class_weights[labels] * ce).mean()
        self._pending = (keys.detach(), labels)
        total = view + klass + self.section.distill_weight * pbsd + self.setup.loss.cls_weight * cls
        parts = {"loss_view": view, "loss_class": klass, "loss_pbsd": pbsd, "loss_cls": cls, "queue_fill": fill}
        return LossOutput(total, {name: value.detach() for name, value in parts.items()})

    def _distillation(self, model: nn.Module, images: Tensor, feature_map: Tensor, keys: Tensor) -> Tensor:
        """PBSD: patches of the query images through ``model`` (students) against their boxes' RoI features on the
        query's ``feature_map`` (teachers)."""
        s = self.section
        batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
        generator = self._patch_generator(images.device)
        boxes = sample_patch_boxes(s.num_patches, batch, height, width, s.patch_scale, s.patch_ratio, generator)
        rois = box_rois(boxes)
        patches = cut_patches(images, rois, s.patch_size)
        if s.patch_flip:
            flip = torch.rand(patches.shape[0], device=patches.device, generator=generator) < 0.5
            patches = torch.where(flip[:, None, None, None], patches.flip(-1), patches)
        patches = patches.to(images.dtype)
        # The teachers' RoI rows (through a projection head that may hold BatchNorm) and the patches are not
        # images: their statistics stay out of the running averages (running_statistics_kept says why).
        with running_statistics_kept(model):
            with torch.no_grad():
                scale = feature_map.shape[-1] / width  # the map's stride: 1/32 for ResNet-50, the code's spatial_scale
                feature_map = _at_least_float32(feature_map)
                rois = rois.to(feature_map.dtype)
                pooled = roi_align(feature_map, rois, s.roi_size, spatial_scale=scale, sampling_ratio=-1, aligned=False)
                teachers = F.normalize(model.projection(pooled.mean(dim=(2, 3))), dim=1)
            self._capturing = False
            try:
                students = [model(part, with_projection=True).projections for part in patches.split(batch)]
            finally:
                self._capturing = True
        return self.loss.distillation(students, teachers.split(batch), keys)

    @torch.no_grad()
    def after_step(self, step: StepRecord) -> None:
        if self._pending is not None:
            self.loss.enqueue(*self._pending)
            self._pending = None
        m = self.section.key_momentum
        for key, query in zip(self.key_encoder.parameters(), step.model.parameters()):
            key.mul_(m).add_(query.detach(), alpha=1.0 - m)

    def describe(self) -> str:
        s, loss = self.section, self.setup.loss
        pbsd = (
            f"PBSD {s.num_patches} patches of {s.patch_size} px, area {s.patch_scale[0]:g}-{s.patch_scale[1]:g}, "
            f"weight {s.distill_weight:g}"
            if self.distill
            else "no PBSD"
        )
        return (
            f"dscl (tau {loss.temperature:g}, beta {s.beta:g}: view weight {1 / (1 + s.beta):.3g}, class weight "
            f"{s.beta / (1 + s.beta):.3g}; queue {s.queue_size}, key momentum {s.key_momentum:g}; {pbsd}; "
            f"classifier on detached view-1 features, class-balanced weights, weight {loss.cls_weight:g})"
        )
