"""Evaluation: predictions, per-class accuracy, and Many / Medium / Few / All in percent.

Under torch.distributed every process evaluates a disjoint shard (no padded duplicates: docs/conventions.md,
"Engineering rules") and the per-class counts of correct and seen images are summed over processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from ltcl.config import Config
from ltcl.data.longtail import SHOT_GROUPS, shot_groups
from ltcl.dist import all_reduce_sum


class NonFiniteOutput(ValueError):
    """The model produced NaN or inf logits: its accuracy would mean nothing, so none is reported."""


@dataclass
class EvalResult:
    """Accuracies in percent; a group without classes is None (printed n/a, never 0)."""

    many: float | None
    medium: float | None
    few: float | None
    all: float
    per_class: list[float | None] = field(default_factory=list)  # None for a class absent from the split
    images: int = 0

    def as_dict(self) -> dict[str, float | None]:
        return {"many": self.many, "medium": self.medium, "few": self.few, "all": self.all}


def accuracy_from_counts(
    correct: torch.Tensor, seen: torch.Tensor, train_counts: Sequence[int], *, many: int = 100, few: int = 20
) -> EvalResult:
    """Shot-group accuracy: the mean of the per-class accuracies in each group; All: top-1 over all images.

    Args:
        correct: (C,) correctly classified images per class; seen: (C,) images per class.
        train_counts: (C,) training images per class, which define the groups.
    """
    correct, seen = correct.double().cpu(), seen.double().cpu()
    per_class = torch.where(seen > 0, correct / seen.clamp(min=1), torch.full_like(seen, math.nan))
    groups = shot_groups(train_counts, many=many, few=few)
    values = {}
    for g, name in enumerate(SHOT_GROUPS):
        accs = per_class[(groups == g) & (seen > 0)]
        values[name] = 100.0 * float(accs.mean()) if accs.numel() else None
    total = float(seen.sum())
    overall = 100.0 * float(correct.sum()) / total if total else math.nan
    per_class_list = [None if math.isnan(v) else 100.0 * v for v in per_class.tolist()]
    return EvalResult(values["many"], values["medium"], values["few"], overall, per_class_list, int(total))


def autocast_context(device: torch.device, amp: str):
    """Autocast for ``train.amp`` (bf16 or fp16), or a no-op context."""
    if amp == "none":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def predict(
    model,
    loader,
    device: torch.device,
    *,
    amp: str = "none",
    channels_last: bool = False,
    with_projection: bool = False,
):
    """Runs the model over a loader of ``(images, labels)``.

    Returns:
        logits (n, C) float32 on the CPU, labels (n,), and projections (n, D) or None.
    """
    was_training = model.training
    model.eval()
    all_logits, all_labels, all_projections = [], [], []
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, amp):
            out = model(images, with_projection=with_projection)
        all_logits.append(out.logits.float().cpu())
        all_labels.append(torch.as_tensor(labels).cpu())
        if with_projection and out.projections is not None:
            all_projections.append(out.projections.float().cpu())
    model.train(was_training)
    logits = torch.cat(all_logits) if all_logits else torch.zeros(0, model.num_classes)
    labels = torch.cat(all_labels) if all_labels else torch.zeros(0, dtype=torch.int64)
    projections = torch.cat(all_projections) if all_projections else None
    return logits, labels, projections


def evaluate(
    model,
    loader,
    train_counts: Sequence[int],
    device: torch.device,
    *,
    amp: str = "none",
    channels_last: bool = False,
    many: int = 100,
    few: int = 20,
) -> EvalResult:
    """Top-1 accuracy per class and per shot group (``many`` / ``few`` thresholds), summed over processes.

    Raises:
        NonFiniteOutput: the logits hold NaN or inf (no accuracy of a broken model is reported).
    """
    logits, labels, _ = predict(model, loader, device, amp=amp, channels_last=channels_last)
    if not bool(torch.isfinite(logits).all()):
        raise NonFiniteOutput(
            "The model's logits contain NaN or inf values, so no accuracy is reported: its weights "
            "are broken (a diverged run)."
        )
    num_classes = len(train_counts)
    hits = (logits.argmax(1) == labels).to(torch.float64)
    correct = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels, hits)
    seen = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    counts = torch.stack([correct, seen]).to(device)
    correct, seen = all_reduce_sum(counts).cpu()
    return accuracy_from_counts(correct, seen, train_counts, many=many, few=few)


def format_cell(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def format_table(rows: dict[str, EvalResult]) -> str:
    """A Markdown table, one row per evaluated split or setting: Many / Medium / Few / All in percent."""
    lines = ["| | Many | Medium | Few | All |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {format_cell(r.many)} | {format_cell(r.medium)} | {format_cell(r.few)} | "
            f"{format_cell(r.all)} |"
        )
    return "\n".join(lines)


def evaluated_weights(state):
    """A context in which ``state.model`` holds the weights a run evaluates and selects its best checkpoint on:
    the moving average (``train.ema_decay``) when there is one, else the trained weights as they are."""
    return state.ema.applied(state.model) if state.ema is not None else nullcontext()


def evaluate_run(cfg: Config, model, loader, train_counts: Sequence[int], device: torch.device, amp: str) -> EvalResult:
    """:func:`evaluate` with the run's memory format and shot-group thresholds (``cfg``) and its precision."""
    return evaluate(
        model,
        loader,
        train_counts,
        device,
        amp=amp,
        channels_last=cfg.train.channels_last,
        many=cfg.data.many_threshold,
        few=cfg.data.few_threshold,
    )
