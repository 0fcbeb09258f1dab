"""One epoch of training, step by step: forward every view group, the objective, backward (per micro-batch),
clipping, the optimiser, the moving average.

Nothing in a step reads a value back from the device: the loss statistics and the non-finite flag accumulate in
device tensors that :class:`~ltcl.engine.monitor.StepMonitor` reads every ``train.sync_every`` steps. The one
remaining wait is the selection of the contrastive views (their number varies from batch to batch).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.nn.utils import clip_grad_norm_

from ltcl.data.views import MultiViewBatch
from ltcl.engine.evaluate import autocast_context
from ltcl.engine.optim import set_learning_rates
from ltcl.engine.state import TrainState
from ltcl.losses.functional import gradient_conflict_counts
from ltcl.methods import LossOutput, Objective, StepRecord
from ltcl.schedule import learning_rate


class MultiViewForward(nn.Module):
    """Runs the network once per view-size group, so that DDP sees a single forward per step.

    Args:
        network: the model.
        run: the same model compiled (train.compile), or None.
        heads: the objective when it has parameters that train (BCL's prototype head), held here so that DDP
            averages their gradients with the network's.
    """

    def __init__(self, network: nn.Module, run: nn.Module | None = None, heads: nn.Module | None = None) -> None:
        super().__init__()
        self.network = network
        self.run = run if run is not None else network  # compiled when train.compile is on (same parameters)
        self.heads = heads

    def forward(self, groups: list[Tensor], with_projection: bool):
        return [self.run(images, with_projection=with_projection) for images in groups]


def step_record(
    forward: nn.Module, model: nn.Module, objective: Objective, batch: MultiViewBatch, second=None
) -> StepRecord:
    """Forward of every view group the objective trains on, stacked view-major into its :class:`StepRecord`
    (``step.images`` keeps every view; ``second`` is the second batch of a method that asked for one)."""
    every_view = batch
    if objective.network_views == 0:  # the method runs the network itself
        return StepRecord(None, batch.labels, None, batch.contrastive_mask[:0].flatten(), 0, batch.batch_size,
                          model, images=batch.groups, group_views=batch.group_views, second=second,
                          run_network=forward)  # fmt: skip
    if objective.network_views is not None:
        batch = batch.first_views(objective.network_views)
    outputs = forward(batch.groups, objective.needs_projections)
    projections = features = None
    if objective.needs_projections:
        projections = batch.reassemble([o.projections for o in outputs]).flatten(0, 1)
    if objective.needs_features:
        features = batch.reassemble([o.features for o in outputs]).flatten(0, 1)
    return StepRecord(
        logits=batch.reassemble([o.logits for o in outputs]).flatten(0, 1),
        labels=batch.labels.repeat(batch.num_views),
        projections=projections,
        contrastive_mask=batch.contrastive_mask.flatten(),
        num_views=batch.num_views,
        batch_size=batch.batch_size,
        model=model,
        features=features,
        images=every_view.groups,
        group_views=every_view.group_views,
        second=second,
        run_network=forward,
    )


def micro_batches(batch: MultiViewBatch, parts: int) -> list[MultiViewBatch]:
    """``batch`` split into ``parts`` consecutive runs of images (all of their views), as equal as
    :func:`torch.tensor_split` makes them; the batch itself when ``parts`` is 1.

    Group g of the batch is (V_g * B, ...), view-major; a part of images [i, j) is (V_g * (j - i), ...), view-major
    too, so everything downstream (:meth:`MultiViewBatch.reassemble`, the contrastive mask) sees an ordinary batch.
    """
    if parts == 1:
        return [batch]
    b = batch.batch_size
    bounds = [b // parts + (1 if i < b % parts else 0) for i in range(parts)]  # tensor_split's sizes
    out, start = [], 0
    for size in bounds:
        stop = start + size
        groups = [
            g.unflatten(0, (len(v), b))[:, start:stop].flatten(0, 1) for g, v in zip(batch.groups, batch.group_views)
        ]
        out.append(
            MultiViewBatch(groups, batch.group_views, batch.labels[start:stop], batch.contrastive_mask[:, start:stop])
        )
        start = stop
    return out


def training_step(state: TrainState, batch: MultiViewBatch, second: MultiViewBatch | None = None) -> None:
    """One optimisation step on ``batch`` (and the method's ``second`` batch); adds its statistics to
    ``state.progress`` and ``state.nonfinite``.

    With ``optim.accumulate_steps`` k > 1 the batch of B images is split into k micro-batches (and ``second`` with
    it), each forwarded and backpropagated alone with its loss weighted by its share of the images (b_i / B): for a
    loss that is a mean over images the summed gradient is the whole batch's. Terms that couple the images of a
    batch are not: a contrastive term contrasts each micro-batch's rows only, BatchNorm normalises by each
    micro-batch's statistics, and the method's ``after_step`` (class centres, queues) runs once per micro-batch.
    Under DDP the gradients are averaged across processes once, at the last micro-batch. Then the gradient of the
    trainable parameters is clipped (``optim.clip_grad_norm``, after unscaling under fp16), the optimiser steps
    and the moving average of the weights follows (``train.ema_decay``).
    """
    cfg, device = state.cfg, state.ctx.device
    parts = cfg.optim.accumulate_steps
    b_total = batch.batch_size
    micro = micro_batches(batch.to(device, non_blocking=True), parts)
    seconds = micro_batches(second.to(device, non_blocking=True), parts) if second is not None else [None] * parts
    if cfg.train.channels_last:  # after the split: slicing the images of a batch makes new, contiguous tensors
        for part in [*micro, *(s for s in seconds if s is not None)]:
            part.groups = [g.contiguous(memory_format=torch.channels_last) for g in part.groups]
    set_learning_rates(state.optimizer, learning_rate(cfg.optim, state.global_step, state.steps_per_epoch))
    state.optimizer.zero_grad(set_to_none=True)
    values = correct = None
    for i, (mb, ms) in enumerate(zip(micro, seconds)):
        share = mb.batch_size / b_total  # a Python number: weighting costs no device read
        last = i == parts - 1
        # DDP averages the gradients at every backward; between micro-batches it only has to accumulate them.
        sync = nullcontext() if last or not isinstance(state.forward, DDP) else state.forward.no_sync()
        with sync:
            with autocast_context(device, state.amp):
                step = step_record(state.forward, state.model, state.objective, mb, ms)
                out: LossOutput = state.objective(step)
            loss = out.loss if parts == 1 else out.loss * share
            (state.scaler.scale(loss) if state.scaler is not None else loss).backward()
        with torch.no_grad():
            state.objective.after_step(step)
            b = mb.batch_size
            if out.correct is not None:
                hits = out.correct
            else:
                predicted = out.logits if out.logits is not None else step.logits
                hits = (predicted[:b].argmax(1) == mb.labels).sum()
            stats = (out.parts[n].double() for n in state.objective.stat_names)
            part = torch.stack([out.loss.detach().double(), *stats])
            values = part * share if values is None else values + part * share
            correct = hits if correct is None else correct + hits
            if cfg.train.monitor_conflicts and step.projections is not None:  # opt-in analysis of SCL's gradient
                features, labels = step.contrastive_rows
                c, p = gradient_conflict_counts(
                    features.detach().float(),
                    labels,
                    temperature=cfg.loss.temperature,
                    num_classes=state.progress.conflicts.shape[1],
                )
                state.progress.conflicts += torch.stack([c, p])
    if state.scaler is not None:
        if cfg.optim.clip_grad_norm > 0:
            state.scaler.unscale_(state.optimizer)  # clip the true gradient, not the scaled one
            clip_grad_norm_(state.trainable, cfg.optim.clip_grad_norm)
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        if cfg.optim.clip_grad_norm > 0:
            clip_grad_norm_(state.trainable, cfg.optim.clip_grad_norm)
        state.optimizer.step()
    if state.ema is not None:
        state.ema.update()

    with torch.no_grad():
        state.progress.add_step(values, correct, b_total)
        state.nonfinite.record(values)


def train_one_epoch(state: TrainState, loader, monitor) -> bool:
    """Trains batches ``state.batch ..`` of epoch ``state.epoch`` (0-based) and counts them in ``state``.

    Args:
        loader: yields the epoch's ``(batch, second)`` pairs of :class:`MultiViewBatch` es (second None unless the
            method asked for a second batch) from ``state.batch`` on.
        monitor: a :class:`~ltcl.engine.monitor.StepMonitor`; after every step it may read the statistics, save a
            checkpoint, or ask to stop.

    Returns:
        True when the epoch ran to its end, False when the monitor stopped it early (an interrupt).
    """
    state.forward.train()
    state.objective.train()
    state.progress.start_clock()
    finished = True
    for batch, second in loader:
        if state.batch >= state.steps_per_epoch:
            break
        training_step(state, batch, second)
        state.batch += 1
        state.global_step += 1
        if not monitor.after_step(state):
            finished = False
            break
    state.progress.stop_clock()
    return finished
