"""Mixing strategies of the classification term (``loss.mixing``): what they are and how the term is computed.

A strategy is a :class:`Mixing` subclass registered with :func:`ltcl.methods.registry.register_mixing` (one file
each: ``mixup.py``, ``cutmix.py``, ``remix.py``); its hyperparameters are its own config section
(``loss.mixup.alpha``), typed and filled in like a method's. It mixes the images of one step and says which labels
the mixed images carry (:meth:`Mixing.mix`); :func:`classify_mixed` runs the network on the mixed images and
interpolates the classification loss, ``lam * L(y_a) + (1 - lam) * L(y_b)``, with the classification part as it
is (``ce``, ``bs``, ``la``, ``ldam`` or a plugin's), as ``mixup_criterion`` in Zhang et al.'s and MiSLAS's code.

Where it runs (:class:`ltcl.methods.composite.ClassifyAndContrast`):

- Without a contrastive term the engine runs no forward (``network_views`` 0): the network sees the mixed views
  only, as in the authors' code. (Under torch.distributed the engine still runs its forward on view 1 and its
  output is not used: a forward outside DDP's wrapper would leave the gradients un-averaged, see the composite.)
- With a contrastive term, the contrastive part sees the engine's forward of the unmixed views and the
  classification term a second forward of the mixed views (its views only: ``classification_views``). Both
  forwards update the BatchNorm running statistics.

The partners are a random permutation of the same batch; the permutation and every other draw of a step come from
generators seeded by (``train.seed``, the step's number, the process's rank), so a resumed run draws what the
uninterrupted one drew. The step counter is the strategy's state (saved in the checkpoint). Views of one size share
one draw; views of another size (the digits' 24 px views) share its partners and ``lam`` but get their own CutMix
box, so their share of the pasted box, and with it their label weight, may differ.

The train accuracy of a mixing run counts the mixed first view's prediction against the image's own label (as
MiSLAS's ``train_stage1.py`` does).
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ltcl.dist import distributed_world
from ltcl.methods.base import LossOutput, Objective, StepRecord, describe_section

NO_MIXING = "none"


class Mixed(NamedTuple):
    """One step's mixed views.

    Attributes:
        groups: the mixed view groups, in the order and shapes of the groups given.
        lams: per group, the weight of the targets ``a`` (the rest goes to ``b``).
        targets_a: (B,) int64 labels of the first term; targets_b: (B,) of the second.
        stats: the strategy's statistics of this step (0-d float64 tensors on the device), by ``stat_names``.
    """

    groups: list[Tensor]
    lams: list[float]
    targets_a: Tensor
    targets_b: Tensor
    stats: dict[str, Tensor]


class Mixing(nn.Module):
    """Base class of a mixing strategy.

    Class attributes a strategy sets: ``name`` (the ``loss.mixing`` value), ``paper``, ``Section`` (a dataclass of
    its hyperparameters, ``loss.<section_name>``, default ``loss.<name>``) and ``stat_names`` (the statistics its
    :meth:`mix` returns, in metrics.csv and the epoch line).

    Args:
        section: the typed section (an instance of ``Section``).
        class_counts: (C,) training images per class.
        seed: ``train.seed``; a step's draws are seeded by it, the step's number and the process's rank.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Section: ClassVar[type | None] = None
    section_name: ClassVar[str] = ""
    stat_names: ClassVar[tuple[str, ...]] = ("mix_lambda",)

    def __init__(self, section: Any, class_counts: tuple[int, ...], seed: int = 0) -> None:
        super().__init__()
        self.section = section
        self.seed = int(seed)
        self.steps = 0  # optimisation steps taken: part of the checkpoint (get_extra_state)
        counts = torch.as_tensor(class_counts, dtype=torch.float64)
        self.register_buffer("class_counts", counts, persistent=False)

    @classmethod
    def config_section(cls) -> str:
        return cls.section_name or cls.name

    @classmethod
    def check_config(cls, cfg) -> None:
        """Refuses settings the strategy cannot train with (ConfigError naming the key)."""

    def mix(self, groups: list[Tensor], labels: Tensor, partner: Tensor, rng: np.random.Generator) -> Mixed:
        """Mixes every view group of one step.

        Args:
            groups: view groups, group g (V_g * B, channels, H_g, W_g), rows view-major.
            labels: (B,) int64, the images' classes.
            partner: (B,) int64, the image each image is mixed with (the same for every view).
            rng: this step's host generator, for ``lam`` and the strategy's other draws.
        """
        raise NotImplementedError(f"{type(self).__name__} must define mix().")  # pragma: no cover

    def describe(self) -> str:
        values = f" ({describe_section(self.section)})" if self.section is not None else ""
        return f"{self.name}{values}"

    # The step's generators --------------------------------------------------------------------------------------

    def generators(self, device: torch.device) -> tuple[np.random.Generator, torch.Generator]:
        """This step's host generator (``lam``, boxes) and device generator (the partners), seeded by
        (``train.seed``, step, rank)."""
        rank, _ = distributed_world()
        sequence = np.random.SeedSequence([self.seed & (2**64 - 1), self.steps, rank])
        device_gen = torch.Generator(device=device)
        device_gen.manual_seed(int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
        return np.random.Generator(np.random.PCG64(sequence)), device_gen

    def partners(self, batch_size: int, device: torch.device) -> tuple[Tensor, np.random.Generator]:
        """This step's partner permutation (B,) on ``device``, and the host generator for the rest of its draws."""
        rng, device_gen = self.generators(device)
        return torch.randperm(batch_size, generator=device_gen, device=device), rng

    def after_step(self) -> None:
        self.steps += 1

    def get_extra_state(self) -> Tensor:
        return torch.tensor(self.steps, dtype=torch.int64)

    def set_extra_state(self, state: Tensor) -> None:
        self.steps = int(state)


def group_rows(images: Tensor, partner: Tensor, batch_size: int) -> Tensor:
    """The partner of every row of a view group (V_g * B rows, view-major): view j of image b is mixed with view j
    of image ``partner[b]``."""
    views = images.shape[0] // batch_size
    offsets = torch.arange(views, device=partner.device).repeat_interleave(batch_size) * batch_size
    return partner.repeat(views) + offsets


def classification_views(step: StepRecord, views: int | None) -> tuple[list[Tensor], list[list[int]]]:
    """The view groups of ``step.images`` restricted to views ``0 .. views - 1`` (all for None)."""
    b = step.batch_size
    groups, group_views = [], []
    for images, members in zip(step.images, step.group_views):
        keep = [j for j, v in enumerate(members) if views is None or v < views]
        if not keep:
            continue
        if len(keep) < len(members):
            images = torch.cat([images[j * b : (j + 1) * b] for j in keep])
        groups.append(images)
        group_views.append([members[j] for j in keep])
    return groups, group_views


def _view_major(outputs: list[Tensor], group_views: list[list[int]], b: int) -> Tensor:
    """Per-group outputs (V_g * B, ...) as one (V * B, ...) tensor in view order (slices only: no index tensor to
    copy to the device)."""
    where = {v: (g, j) for g, views in enumerate(group_views) for j, v in enumerate(views)}
    if len(outputs) == 1:
        return outputs[0]
    rows = [outputs[g][j * b : (j + 1) * b] for g, j in (where[v] for v in sorted(where))]
    return torch.cat(rows)


def classify_mixed(mixing: Mixing, classification: Objective, step: StepRecord, views: int | None) -> LossOutput:
    """The classification term on mixed views, ``lam * L(targets_a) + (1 - lam) * L(targets_b)``, with the mixed
    first view's logits (B, C) for the train accuracy.

    Args:
        mixing: the strategy.
        classification: the classification part, applied as it is to the mixed logits.
        step: the step (its ``images``; its logits, if any, are the unmixed ones and are not used here).
        views: the classification term's views (the first ``views``; None: all).

    The returned parts hold the classification part's statistics interpolated like the loss, then the strategy's.
    """
    b = step.batch_size
    labels = step.labels[:b]  # view-major: the first B rows are the images' labels
    groups, group_views = classification_views(step, views)
    partner, rng = mixing.partners(b, labels.device)
    mixed = mixing.mix(groups, labels, partner, rng)
    # Through the engine's forward when it hands one over (DDP-wrapped under torchrun: gradients averaged).
    run = step.run_network or (lambda groups, projection: [step.model(g, with_projection=projection) for g in groups])
    outputs = run(mixed.groups, False)
    needs_features = classification.needs_features

    def record(logits, features, view_count, targets, images, members) -> StepRecord:
        return StepRecord(
            logits=logits,
            labels=targets.repeat(view_count),
            projections=None,
            contrastive_mask=torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device),
            num_views=view_count,
            batch_size=b,
            model=step.model,
            features=features,
            images=images,
            group_views=members,
            second=step.second,
        )

    if len(set(mixed.lams)) == 1:  # one weight: the loss of every view at once, as the authors compute it
        logits = _view_major([o.logits for o in outputs], group_views, b)
        features = _view_major([o.features for o in outputs], group_views, b) if needs_features else None
        count = sum(len(v) for v in group_views)
        segments = [(1.0, mixed.lams[0], logits, features, count, mixed.groups, group_views)]
    else:  # CutMix boxes of views of different sizes leave different shares: one loss per view size
        rows = sum(len(v) for v in group_views)
        segments = [
            (len(v) / rows, lam, o.logits, o.features if needs_features else None, len(v), [g], [v])
            for o, v, g, lam in zip(outputs, group_views, mixed.groups, mixed.lams)
        ]
    loss: Tensor | float = 0.0
    parts: dict[str, Any] = {}
    for share, lam, logits, features, count, images, members in segments:
        for weight, targets in ((lam, mixed.targets_a), (1.0 - lam, mixed.targets_b)):
            if weight == 0.0:
                continue
            out = classification(record(logits, features, count, targets, images, members))
            loss = loss + share * weight * out.loss
            for name, value in out.parts.items():
                parts[name] = parts.get(name, 0.0) + share * weight * value
    first = _view_major([o.logits for o in outputs], group_views, b)[:b]
    return LossOutput(loss, {**parts, **mixed.stats}, logits=first.detach())


def scalar(value: float, device: torch.device) -> Tensor:
    """A 0-d float64 statistic on ``device``, written without a host-to-device copy (a fill)."""
    return torch.full((), value, dtype=torch.float64, device=device)
