"""The second stage of a trained re-fit (``crt``, ``lws``, ``disalign``, ``mislas``): the batches of features or
images an epoch draws, the head's optimizer, one epoch of SGD, and the epoch loop with its validation and
checkpoints. The backbone stays frozen; ``bn: shift`` lets its BatchNorm layers re-estimate their statistics."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader

from ltcl.data.sampling import EpochBatchSampler, SeededDataset
from ltcl.decouple.base import Refitter, epoch_cosine
from ltcl.decouple.context import RefitContext
from ltcl.decouple.records import _row, _Writer
from ltcl.engine.console import epoch_summary
from ltcl.engine.monitor import NonFiniteLoss
from ltcl.engine.recipe import loader_options, train_loader
from ltcl.errors import UserError

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
DECOUPLE_SEED = 104_729  # added to train.seed for the second stage's batches: a stream of its own


def set_stage_mode(model: nn.Module, bn: str) -> None:
    """The backbone in evaluation mode; with ``bn == "shift"`` its BatchNorm layers normalise with the batch's
    statistics and update their running statistics (their affine parameters stay frozen)."""
    model.eval()
    if bn == "shift":
        for module in model.backbone.modules():
            if isinstance(module, BATCH_NORMS):
                module.train()


def _feature_batches(refitter: Refitter, context: RefitContext, stage_views, steps: int):
    """A function of the epoch yielding ``(features (B, F) or None, images or None, labels)`` per step."""
    s, cfg = refitter.section, context.cfg
    stage_cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, batch_size=s.batch_size, sampler=s.sampler),
        optim=dataclasses.replace(cfg.optim, epochs=s.epochs),
    )
    seed = cfg.train.seed + DECOUPLE_SEED
    labels = torch.as_tensor(context.data.train.targets, dtype=torch.int64)
    if s.view == "test":
        plain = context.train_plain()
        sampler = EpochBatchSampler(
            len(plain), s.batch_size, seed=seed, labels=labels, policy=s.sampler, epochs=s.epochs
        )
        if s.bn == "frozen":  # deterministic features of a frozen network: computed once
            bank, bank_labels = context.features(context.loader(plain))

            def cached(epoch: int) -> Iterator:
                sampler.set_epoch(epoch)
                rows = sampler.rank_batches()[0][:steps].to(context.device)
                for index in rows:
                    yield bank.index_select(0, index), None, bank_labels.index_select(0, index)

            return cached, "features of the evaluation transform, computed once (frozen BatchNorm)"
        loader = DataLoader(SeededDataset(plain), batch_sampler=sampler, **loader_options(cfg, context.device))

        def plain_batches(epoch: int) -> Iterator:
            sampler.set_epoch(epoch)
            for step, (images, y) in enumerate(loader):
                if step >= steps:
                    break
                yield None, images, torch.as_tensor(y)

        return plain_batches, "the evaluation transform (no augmentation), forwarded every step"
    sampler, loader = train_loader(stage_cfg, stage_views, context.data, context.ctx, policy=s.sampler, seed=seed)

    def view_batches(epoch: int) -> Iterator:
        sampler.set_epoch(epoch)
        for step, batch in enumerate(loader):
            if step >= steps:
                break
            yield None, batch.groups[0], batch.labels

    preset, size = stage_views.presets[0], stage_views.sizes[0]
    return view_batches, f"one {preset} view of {size} px, forwarded every step"


def _steps_per_epoch(refitter: Refitter, context: RefitContext) -> int:
    steps = len(context.data.train) // refitter.section.batch_size
    if steps < 1:
        raise UserError(
            f"decouple.batch_size {refitter.section.batch_size} exceeds the {len(context.data.train)} training "
            "images: lower it with --set decouple.batch_size=N."
        )
    cap = context.cfg.train.max_steps_per_epoch
    return min(steps, cap) if cap > 0 else steps


def build_optimizer(refitter: Refitter) -> torch.optim.SGD:
    """SGD over the head's parameter groups, each at its factor of the learning rate (set per epoch)."""
    s = refitter.section
    return torch.optim.SGD(
        [{"params": params, "lr": s.lr * factor} for params, factor in refitter.param_groups()],
        lr=s.lr,
        momentum=s.momentum,
        weight_decay=s.weight_decay,
    )


def train_epoch(refitter: Refitter, optimizer: torch.optim.SGD, batches, epoch: int, backbone=None) -> list[float]:
    """One epoch of the head: sets the epoch's learning rate (:func:`epoch_cosine`), then one SGD step per batch.

    Args:
        batches: ``(features (B, F) or None, images or None, labels (B,))`` per step, on the head's device.
        backbone: maps images to features when a batch brings images (called without gradient).

    Returns:
        [sum of loss * B, correct predictions, images] over the epoch.
    """
    s = refitter.section
    lr = epoch_cosine(s.lr, epoch, s.epochs)
    for group, (_, factor) in zip(optimizer.param_groups, refitter.param_groups()):
        group["lr"] = lr * factor
    head = refitter.head
    head.train()
    sums = None
    for features, images, labels in batches:
        if features is None:
            with torch.no_grad():
                features = backbone(images)
        logits = head(features)
        loss = refitter.loss(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            b = torch.tensor(float(labels.numel()), dtype=torch.float64, device=loss.device)
            step = torch.stack([loss.detach().double() * b, (logits.argmax(1) == labels).sum().double(), b])
            sums = step if sums is None else sums + step  # on the device: no wait per step
    return [0.0, 0.0, 0.0] if sums is None else sums.tolist()


def _train(refitter: Refitter, context: RefitContext, writer: _Writer, stage_views) -> tuple[list[dict], dict | None]:
    s, model, device = refitter.section, context.model, context.device
    refitter.head.to(device)
    optimizer = build_optimizer(refitter)
    steps = _steps_per_epoch(refitter, context)
    batches, how = _feature_batches(refitter, context, stage_views, steps)
    print(f"  batches {steps} per epoch of {s.batch_size} ({s.sampler} sampler); features: {how}")

    def on_device(epoch: int) -> Iterator:
        for features, images, labels in batches(epoch):
            images = None if images is None else images.to(device, non_blocking=True)
            yield features, images, labels.to(device, non_blocking=True)

    history, best, global_step = [], None, 0
    for epoch in range(s.epochs):
        set_stage_mode(model, s.bn)
        began = time.perf_counter()
        total_loss, correct, images = train_epoch(refitter, optimizer, on_device(epoch), epoch, context.backbone)
        seconds = time.perf_counter() - began
        global_step += round(images) // s.batch_size
        lr = epoch_cosine(s.lr, epoch, s.epochs)
        if not math.isfinite(total_loss):
            raise NonFiniteLoss(
                f"The {refitter.name} loss became NaN or inf in epoch {epoch + 1} (lr {lr:.4g}); nothing was saved "
                "for this epoch."
            )
        model.classifier = refitter.export().to(device)
        stats = refitter.statistics()
        row = _row(epoch + 1, global_step, lr, total_loss / max(images, 1), stats, correct, images, seconds, refitter)
        val = context.evaluate("val")
        if val is not None:
            row |= {"eval_split": "val", **val.as_dict()}
            if best is None or val.all > best["all"]:
                best = {"all": val.all, "epoch": epoch + 1}
                writer.save(model, epoch + 1, global_step, best, best_file=True)
        writer.save(model, epoch + 1, global_step, best)
        writer.run_dir.append_metrics(row)
        print(epoch_summary(row, s.epochs, refitter.stat_names), flush=True)
        history.append(row)
    return history, best
