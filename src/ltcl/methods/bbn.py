"""``bbn``: the Bilateral-Branch Network with cumulative learning (Zhou et al., CVPR 2020).

Each step draws two batches: the main one with the run's sampler (the authors' uniform ``default`` sampler:
``data.sampler: instance``) and a second one with the reversed sampler (class j drawn with probability
proportional to ``N_max / N_j``, then one of its images). The network is ``model.backbone: bbn_resnet32`` (or
another ``bbn_*`` backbone, :mod:`ltcl.models.bbn`): its trunk runs on each batch, its conventional-learning block
on the first, its re-balancing block on the second; the classifier sees ``2 [alpha f_c ; (1 - alpha) f_r]`` and the
loss is ``alpha CE(z, y_c) + (1 - alpha) CE(z, y_r)`` with ``alpha = 1 - (T / T_max)^2`` for the 0-based epoch T
(:mod:`ltcl.losses.bbn`). At test the network gives ``[f_c ; f_r]`` (both branches on the image, equal weights), so
``ltcl eval`` and ``ltcl predict`` need nothing of the method.

Statistics: ``alpha`` (the epoch's weight of the conventional branch), ``loss_conventional`` and
``loss_rebalancing`` (the two cross-entropies of the mixed logits, before weighting). The train accuracy is the
authors' (lib/core/combiner.py ``bbn_mix``): row i of the mixed logits stands for two images, the main batch's
i-th and the reversed batch's i-th, so its prediction counts ``alpha`` against the first label and ``1 - alpha``
against the second. Against the main labels alone it falls towards 0 as alpha does, whatever the network learns
(1.0% in the last epoch of the CIFAR-10-LT run whose test accuracy is 42.24%).

Where ltcl differs from the authors' code (Megvii-Nanjing/BBN, lib/core/combiner.py ``bbn_mix``,
lib/dataset/imbalance_cifar.py ``__getitem__``):

- The reversed batch is drawn per epoch by ltcl's reversed sampler as its own stream (its own seed and
  augmentations), where the authors draw one reversed image beside each uniform image inside ``__getitem__``: the
  same distribution, independent of the main batch in both.
- The network runs on view 1 of each batch (``network_views = 0``: the method runs it itself); a config with more
  views augments the others for nothing (the rival configs give one view, as the authors).
- One process only: the method runs the network outside the engine's DistributedDataParallel wrapper, whose
  gradient averaging then never happens, so a ``torchrun`` job with more than one process is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ltcl.config import ConfigError
from ltcl.config.checks import AT_LEAST_0
from ltcl.losses.bbn import bilateral_loss, bilateral_mix, cumulative_alpha, schedule_length
from ltcl.methods.base import LossOutput, Objective, ObjectiveSetup, StepRecord
from ltcl.methods.registry import register_objective
from ltcl.models import BACKBONES, backbone_family


@dataclass
class BBNSection:
    """``loss.bbn``."""

    # T_max of alpha = 1 - (T / T_max)^2; 0: the authors' rule, optim.epochs except 90 -> 100 and 180 -> 200
    # (lib/core/combiner.py lines 16-19).
    schedule_epochs: int = field(default=0, metadata=AT_LEAST_0)


def first_view(images: list[torch.Tensor], group_views: list[list[int]], batch_size: int) -> torch.Tensor:
    """The (B, 3, H, W) images of view 1 from a batch's view groups."""
    for group, views in zip(images, group_views):
        if 0 in views:
            j = views.index(0)
            return group[j * batch_size : (j + 1) * batch_size]
    raise ValueError("The batch holds no view 1.")


@register_objective
class BilateralBranchNetwork(Objective):
    """BBN: two branches, a uniform and a reversed batch, and the cumulative learning schedule (module
    docstring)."""

    name = "bbn"
    role = "objective"
    paper = "Zhou et al., BBN, CVPR 2020"
    Section = BBNSection
    network_views = 0  # the method runs the bilateral network itself on view 1 of both batches
    second_sampler = "reversed"

    @classmethod
    def adapt_config(cls, cfg):
        """A plain backbone with a bilateral-branch twin (resnet32 -> bbn_resnet32) becomes the twin."""
        twin = f"bbn_{cfg.model.backbone}"
        if backbone_family(cfg.model.backbone).name != "bbn" and twin in BACKBONES.get("bbn").names:
            return replace(cfg, model=replace(cfg.model, backbone=twin))
        return cfg

    @classmethod
    def check_config(cls, cfg) -> None:
        if backbone_family(cfg.model.backbone).name != "bbn":
            raise ConfigError(
                "loss.objective bbn trains a bilateral-branch network: set model.backbone=bbn_resnet32 (or another "
                f"bbn_* backbone: bbn_resnet50, bbn_resnext50_32x4d), got {cfg.model.backbone}."
            )

    def __init__(self, setup: ObjectiveSetup) -> None:
        super().__init__(setup)
        if setup.gather_distributed:
            raise ConfigError(
                "loss.objective bbn runs on one process: it runs the network itself, outside the engine's "
                "DistributedDataParallel wrapper, so the processes' gradients would never be averaged."
            )
        self.length = self.section.schedule_epochs or schedule_length(setup.epochs)
        self.alpha = 1.0
        self._alpha_tensor: torch.Tensor | None = None  # alpha on the device, made once per epoch
        self.stat_names = ("alpha", "loss_conventional", "loss_rebalancing")

    def set_epoch(self, epoch: int) -> None:
        self.alpha = cumulative_alpha(epoch, self.length)
        self._alpha_tensor = None

    def forward(self, step: StepRecord) -> LossOutput:
        if step.second is None:
            raise ValueError("bbn needs the reversed batch (step.second); it is drawn by the engine's second stream.")
        b = step.batch_size
        x_c = first_view(step.images, step.group_views, b)
        x_r = first_view(step.second.groups, step.second.group_views, step.second.batch_size)
        model = step.model
        f_c, f_r = model.backbone.forward_branches(x_c, x_r)
        logits = model.classifier(bilateral_mix(f_c, f_r, self.alpha))
        loss, conventional, rebalancing = bilateral_loss(logits, step.labels, step.second.labels, self.alpha)
        if self._alpha_tensor is None or self._alpha_tensor.device != logits.device:
            self._alpha_tensor = torch.full((), self.alpha, dtype=torch.float64, device=logits.device)
        parts = {
            "alpha": self._alpha_tensor,
            "loss_conventional": conventional.detach(),
            "loss_rebalancing": rebalancing.detach(),
        }
        predicted = logits.detach().argmax(1)
        hits_main = (predicted == step.labels).sum()
        hits_reversed = (predicted == step.second.labels).sum()
        correct = self.alpha * hits_main + (1.0 - self.alpha) * hits_reversed
        return LossOutput(loss, parts, logits=logits.detach(), correct=correct)

    def describe(self) -> str:
        last = cumulative_alpha(self.setup.epochs - 1, self.length)
        return (
            f"bbn (alpha = 1 - (epoch / {self.length})^2, from 1 to {last:.3g}; conventional branch on the main "
            "batch, re-balancing branch on a reversed-sampler batch, view 1 of each)"
        )
