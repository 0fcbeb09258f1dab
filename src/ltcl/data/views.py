"""The distribution-aware multi-view pipeline (the paper's Sec. 5 and Fig. 3; docs/conventions.md).

Every training image gets ``V`` augmented views; all of them feed the classification loss, and only the
first ``k[y]`` views of an image of class ``y`` feed the contrastive loss (k = 2 / 3 / 4 for many / medium /
few-shot classes by default). Views may have different sizes (SwAV-style multi-crop): the collate function
stacks the views of each size into one tensor so that the model runs one forward pass per size.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import get_args

import torch
from torch import Tensor

from ltcl.config import ViewsConfig
from ltcl.config.schema import ContrastiveMode
from ltcl.data.augment import build_train_transform, check_num_views, view_plan
from ltcl.data.longtail import shot_groups
from ltcl.errors import UserError


class MultiViewTransform:
    """Applies ``transforms[v]`` to the same image for every view ``v``.

    Args:
        transforms: one callable per view, each mapping a PIL image to a tensor (3, S_v, S_v).
    """

    def __init__(self, transforms: Sequence[Callable[..., Tensor]]) -> None:
        if not transforms:
            raise UserError("MultiViewTransform needs at least one view transform.")
        self.transforms = list(transforms)

    def __call__(self, image) -> list[Tensor]:
        """Returns: a list of V tensors, view v of shape (3, S_v, S_v)."""
        return [transform(image) for transform in self.transforms]

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        lines = [f"  view {v}: {t!r}".replace("\n", "\n  ") for v, t in enumerate(self.transforms)]
        return "MultiViewTransform(\n" + "\n".join(lines) + "\n)"


def build_multiview_transform(views_cfg: ViewsConfig) -> MultiViewTransform:
    """Builds the V = ``num_views`` view transforms from the per-view ``presets`` and ``sizes`` (``view_plan``)."""
    return MultiViewTransform([build_train_transform(p, s, views_cfg) for p, s in view_plan(views_cfg)])


def contrastive_view_counts(
    train_counts: Sequence[int] | Tensor, views_cfg: ViewsConfig, many: int = 100, few: int = 20
) -> Tensor:
    """How many of an image's views feed the contrastive loss, per class.

    Args:
        train_counts: (C,) training images per class.
        views_cfg: ``contrastive_mode`` "distribution_aware" uses ``contrastive_views`` = [k_many, k_medium,
            k_few] by shot group, each capped at ``num_views``; "uniform" uses every view for every class.
        many: classes with more training images than this are many-shot.
        few: classes with fewer training images than this are few-shot.

    Returns:
        LongTensor (C,) with entries in 1..num_views.
    """
    num_views = check_num_views(views_cfg)
    counts = torch.as_tensor(train_counts, dtype=torch.long)
    if counts.ndim != 1 or counts.numel() == 0:
        shape = tuple(counts.shape)
        raise UserError(f"train_counts must be a non-empty 1-D list of per-class counts, got shape {shape}.")
    mode = views_cfg.contrastive_mode
    if mode == "uniform":
        return torch.full_like(counts, num_views)
    if mode != "distribution_aware":
        known = ", ".join(get_args(ContrastiveMode))
        raise UserError(f"views.contrastive_mode must be one of {known}; got {mode!r}.")
    per_group = list(views_cfg.contrastive_views)
    if len(per_group) != 3 or not all(k >= 1 for k in per_group):
        raise UserError(
            f"views.contrastive_views must hold 3 view counts (many, medium, few), each at least 1; got {per_group}."
        )
    # "k of the V views": with fewer views (a 1-view baseline, say) every image offers what it has.
    per_group = [min(k, num_views) for k in per_group]
    return torch.tensor(per_group, dtype=torch.long)[shot_groups(counts, many, few)]


@dataclass
class MultiViewBatch:
    """A batch of B images with V views each, the views grouped by size.

    Attributes:
        groups: one tensor per distinct view size, largest first; group g is (V_g * B, 3, S_g, S_g), stacked
            view-major: rows [j * B, (j + 1) * B) hold view ``group_views[g][j]`` of images 0..B-1.
        group_views: the view indices in each group, increasing.
        labels: (B,) int64.
        contrastive_mask: (V, B) bool; view v of image b feeds the contrastive loss iff v < k[labels[b]].

    The engine runs the model once per group and puts the outputs back in view order: group output
    (V_g * B, ...) -> ``.view(V_g, B, ...)`` -> rows ``group_views[g]`` of a (V, B, ...) tensor. That is what
    :meth:`reassemble` does; ``.flatten(0, 1)`` of its result gives view-major rows whose labels are
    ``labels.repeat(V)`` and whose contrastive rows are ``contrastive_mask.flatten()``.
    """

    groups: list[Tensor]
    group_views: list[list[int]]
    labels: Tensor
    contrastive_mask: Tensor

    @property
    def batch_size(self) -> int:
        return self.labels.numel()

    @property
    def num_views(self) -> int:
        return self.contrastive_mask.shape[0]

    def _map(self, fn: Callable[[Tensor], Tensor]) -> MultiViewBatch:
        return MultiViewBatch(
            groups=[fn(g) for g in self.groups],
            group_views=[list(v) for v in self.group_views],
            labels=fn(self.labels),
            contrastive_mask=fn(self.contrastive_mask),
        )

    def first_views(self, k: int) -> MultiViewBatch:
        """The batch with views ``0 .. k - 1`` only (groups left empty are dropped); the same batch when k >= V."""
        if k >= self.num_views:
            return self
        b = self.batch_size
        groups, views = [], []
        for group, members in zip(self.groups, self.group_views):
            keep = [j for j, v in enumerate(members) if v < k]
            if keep:
                rows = torch.cat([torch.arange(j * b, (j + 1) * b) for j in keep]).to(group.device)
                groups.append(group if len(keep) == len(members) else group.index_select(0, rows))
                views.append([members[j] for j in keep])
        return MultiViewBatch(groups, views, self.labels, self.contrastive_mask[:k])

    def pin_memory(self) -> MultiViewBatch:
        """A copy in page-locked memory (the DataLoader calls this when ``pin_memory=True``)."""
        return self._map(lambda t: t.pin_memory())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MultiViewBatch:
        """A copy with every tensor on ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def reassemble(self, outputs: Sequence[Tensor]) -> Tensor:
        """Puts per-group model outputs back in view order.

        Args:
            outputs: one tensor per group, group g of shape (V_g * B, ...) in the same row order as
                ``groups[g]``; trailing dimensions must agree across groups.

        Returns:
            (V, B, ...) tensor whose entry [v, b] is the output for view v of image b (differentiable).
        """
        if len(outputs) != len(self.groups):
            raise ValueError(f"reassemble expects {len(self.groups)} group outputs, got {len(outputs)}.")
        b = self.batch_size
        stacked = torch.cat([o.reshape(len(v), b, *o.shape[1:]) for o, v in zip(outputs, self.group_views)])
        order = [v for views in self.group_views for v in views]
        if order == list(range(len(order))):  # views already in order (e.g. a single size): no gather needed
            return stacked
        return stacked.index_select(0, _inverse_order(tuple(order), stacked.device))


@functools.lru_cache(maxsize=32)
def _inverse_order(order: tuple[int, ...], device: torch.device) -> Tensor:
    """The permutation that undoes ``order``, made once per device (a copy to the GPU per step makes the host wait)."""
    return torch.argsort(torch.tensor(order)).to(device)


def group_by_size(sizes: Sequence[tuple[int, ...]]) -> list[list[int]]:
    """View indices grouped by spatial size, largest size first (ties keep the order of first appearance)."""
    by_size: dict[tuple[int, ...], list[int]] = {}
    for v, size in enumerate(sizes):
        by_size.setdefault(tuple(size), []).append(v)
    order = sorted(by_size, key=lambda hw: -math.prod(hw))
    return [by_size[hw] for hw in order]


def contrastive_mask(view_counts: Tensor, labels: Tensor, num_views: int) -> Tensor:
    """(V, B) bool: view v of image b feeds the contrastive loss iff v < view_counts[labels[b]]."""
    k = view_counts[labels]
    return torch.arange(num_views, device=labels.device).unsqueeze(1) < k.unsqueeze(0)


def assemble_views(views: Sequence[Tensor], labels: Tensor, view_counts: Tensor) -> MultiViewBatch:
    """A :class:`MultiViewBatch` from V whole-batch views of the same B images (the batched pipeline's output).

    Args:
        views: V tensors, view v of shape (B, 3, S_v, S_v).
        labels: (B,) int64.
        view_counts: (C,) int64 views per image of each class that feed the contrastive loss.

    Returns:
        The batch grouped by size as :class:`MultiViewCollate` groups it; a group of one view reuses its tensor.
    """
    group_views = group_by_size([tuple(view.shape[-2:]) for view in views])
    groups = [views[vs[0]] if len(vs) == 1 else torch.cat([views[v] for v in vs]) for vs in group_views]
    return MultiViewBatch(groups, group_views, labels, contrastive_mask(view_counts, labels, len(views)))


class MultiViewCollate:
    """DataLoader ``collate_fn`` turning ``[(views, label), ...]`` into a :class:`MultiViewBatch`.

    A plain class (no closures), so DataLoader worker processes can pickle it.

    Args:
        view_counts: (C,) int64, views per image of each class that feed the contrastive loss
            (from :func:`contrastive_view_counts`).
    """

    def __init__(self, view_counts: Sequence[int] | Tensor) -> None:
        self.view_counts = torch.as_tensor(view_counts, dtype=torch.long)
        if self.view_counts.ndim != 1 or self.view_counts.numel() == 0:
            raise ValueError("view_counts must be a non-empty 1-D tensor with one count per class.")

    def __call__(self, items: Sequence[tuple[Sequence[Tensor], int]]) -> MultiViewBatch:
        if len(items) == 0:
            raise ValueError("MultiViewCollate received an empty batch.")
        num_views = len(items[0][0])
        if any(len(views) != num_views for views, _ in items):
            raise ValueError(f"Every image in a batch must have the same number of views ({num_views}).")
        # Label values were checked when the dataset was built; a training step never re-checks them.
        labels = torch.as_tensor([int(label) for _, label in items], dtype=torch.long)

        group_views = group_by_size([tuple(view.shape[-2:]) for view in items[0][0]])
        groups = [torch.stack([views[v] for v in vs for views, _ in items]) for vs in group_views]
        return MultiViewBatch(groups, group_views, labels, contrastive_mask(self.view_counts, labels, num_views))

    def __repr__(self) -> str:
        return f"MultiViewCollate(view_counts={self.view_counts.tolist()})"
