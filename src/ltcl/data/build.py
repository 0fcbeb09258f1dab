"""From a config to ready datasets: the long-tailed training set with its views, and the evaluation splits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ltcl.config import Config, ViewsConfig
from ltcl.data.augment import build_test_transform
from ltcl.data.datasets import LabelledDataset, build_split
from ltcl.data.longtail import SHOT_GROUPS, shot_groups
from ltcl.data.views import build_multiview_transform, contrastive_view_counts
from ltcl.errors import UserError


@dataclass
class DataBundle:
    """The datasets of one run.

    Attributes:
        train: long-tailed training set whose items are ``(list of V view tensors, label)``.
        val: validation set (``(image tensor, label)`` items) or None when the dataset has none.
        test: test set.
        train_counts: (C,) training images per class, in class-index order.
        class_names: C names.
        view_counts: (C,) how many views of an image of each class feed the contrastive loss.
    """

    train: LabelledDataset
    val: LabelledDataset | None
    test: LabelledDataset
    train_counts: list[int]
    class_names: list[str]
    view_counts: torch.Tensor

    @property
    def num_classes(self) -> int:
        return len(self.train_counts)


def build_data(
    cfg: Config, *, splits: tuple[str, ...] = ("train", "val", "test"), views: ViewsConfig | None = None
) -> DataBundle:
    """Builds the configured datasets (only ``splits``; the training split is always read for its counts).

    Args:
        views: the view settings with the backbone's sizes and normalisation filled in (``cfg.views`` when None;
            the engine resolves them, since data never imports the models).
    """
    views = views or cfg.views
    train = build_split(cfg.data, "train", build_multiview_transform(views))
    test_transform = build_test_transform(views)
    val = build_split(cfg.data, "val", test_transform) if "val" in splits else None
    test = build_split(cfg.data, "test", test_transform) if "test" in splits else None
    counts = train.class_counts()
    if min(counts) <= 0:
        empty = [train.classes[j] for j, n in enumerate(counts) if n <= 0][:5]
        raise UserError(
            f"The training set has classes without images ({', '.join(empty)}...): every class needs at least one."
        )
    view_counts = contrastive_view_counts(counts, views, many=cfg.data.many_threshold, few=cfg.data.few_threshold)
    return DataBundle(train, val, test, counts, list(train.classes), view_counts)


def describe(cfg: Config, bundle: DataBundle) -> dict[str, Any]:
    """What a user must know before training, as plain values (``ltcl data --json``)."""
    counts = bundle.train_counts
    groups = shot_groups(counts, many=cfg.data.many_threshold, few=cfg.data.few_threshold)
    views_per_group = {}
    for g, name in enumerate(SHOT_GROUPS):
        members = (groups == g).nonzero().flatten()
        views_per_group[name] = int(bundle.view_counts[members[0]]) if members.numel() else None
    order = sorted(range(len(counts)), key=lambda j: -counts[j])
    return {
        "dataset": cfg.data.dataset,
        "num_classes": bundle.num_classes,
        "train_size": sum(counts),
        "val_size": None if bundle.val is None else len(bundle.val),
        "test_size": None if bundle.test is None else len(bundle.test),
        "class_counts": counts,
        "class_names": bundle.class_names,
        "head_class": {"name": bundle.class_names[order[0]], "count": counts[order[0]]},
        "tail_class": {"name": bundle.class_names[order[-1]], "count": counts[order[-1]]},
        "imbalance_factor": counts[order[0]] / counts[order[-1]],
        "groups": {name: int((groups == g).sum()) for g, name in enumerate(SHOT_GROUPS)},
        "num_views": cfg.views.num_views,
        "contrastive_mode": cfg.views.contrastive_mode,
        "contrastive_views_per_group": views_per_group,
        "view_sizes": [int(s) for s in _view_sizes(cfg)],
    }


def _view_sizes(cfg: Config) -> list[int]:
    sizes = list(cfg.views.sizes)
    return (sizes + [sizes[-1]] * cfg.views.num_views)[: cfg.views.num_views]


def format_description(info: dict[str, Any]) -> str:
    """The human-readable form of :func:`describe`."""

    def size(n):
        return "none" if n is None else f"{n:,}"

    groups = info["groups"]
    views = info["contrastive_views_per_group"]
    lines = [
        f"dataset           {info['dataset']}",
        f"classes           {info['num_classes']}",
        f"train / val / test {size(info['train_size'])} / {size(info['val_size'])} / {size(info['test_size'])}",
        f"head class        {info['head_class']['name']} ({info['head_class']['count']:,} images)",
        f"tail class        {info['tail_class']['name']} ({info['tail_class']['count']:,} images)",
        f"imbalance factor  {info['imbalance_factor']:.1f}",
        f"shot groups       many {groups['many']} / medium {groups['medium']} / few {groups['few']} classes",
        f"views per image   {info['num_views']} of sizes {info['view_sizes']}",
        "contrastive views "
        + " / ".join(f"{name} {'n/a' if views[name] is None else views[name]}" for name in SHOT_GROUPS)
        + f" ({info['contrastive_mode']})",
    ]
    return "\n".join(lines)


def data_notes(data: DataBundle) -> list[str]:
    """What a reader of the run must know about its data: images left out as unreadable (one line each, then the
    count, ``data.skip_corrupt``) and classes absent from an evaluation split (their accuracy is n/a there)."""
    notes = []
    for split, dataset in (("train", data.train), ("val", data.val), ("test", data.test)):
        problems = getattr(dataset, "problems", None) or []
        notes += [f"left out of {split}: {where}: {reason}" for where, reason in problems]
        if problems:
            notes.append(f"{len(problems)} unreadable image(s) left out of {split} (data.skip_corrupt)")
    for split, dataset in (("val", data.val), ("test", data.test)):
        if dataset is None:
            continue
        missing = [data.class_names[j] for j, n in enumerate(dataset.class_counts()) if n == 0]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            notes.append(f"{len(missing)} class(es) have no {split} images ({shown}): their {split} accuracy is n/a")
    return notes
