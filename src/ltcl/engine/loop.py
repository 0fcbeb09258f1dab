"""One epoch of training, step by step: forward every view group, the objective, backward, SGD.

Nothing in a step reads a value back from the device: the loss statistics and the non-finite flag accumulate in
device tensors that :class:`~ltcl.engine.monitor.StepMonitor` reads every ``train.sync_every`` steps. The one
remaining wait is the selection of the contrastive views (their number varies from batch to batch).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ltcl.data.views import MultiViewBatch
from ltcl.engine.evaluate import autocast_context
from ltcl.engine.schedule import learning_rate
from ltcl.engine.state import TrainState
from ltcl.losses.functional import gradient_conflict_counts
from ltcl.methods import LossOutput, Objective, StepRecord


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


def training_step(state: TrainState, batch: MultiViewBatch, second: MultiViewBatch | None = None) -> None:
    """One optimisation step on ``batch`` (and the method's ``second`` batch); adds its statistics to
    ``state.progress`` and ``state.nonfinite``."""
    cfg, device = state.cfg, state.ctx.device
    batches = [b.to(device, non_blocking=True) for b in (batch, second) if b is not None]
    if cfg.train.channels_last:
        for b in batches:
            b.groups = [g.contiguous(memory_format=torch.channels_last) for g in b.groups]
    batch, second = batches[0], (batches[1] if second is not None else None)
    lr = learning_rate(cfg.optim, state.global_step, state.steps_per_epoch)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    with autocast_context(device, state.amp):
        step = step_record(state.forward, state.model, state.objective, batch, second)
        out: LossOutput = state.objective(step)
    state.optimizer.zero_grad(set_to_none=True)
    if state.scaler is not None:
        state.scaler.scale(out.loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        out.loss.backward()
        state.optimizer.step()

    with torch.no_grad():
        state.objective.after_step(step)
        b = batch.batch_size
        predicted = out.logits if out.logits is not None else step.logits
        correct = (predicted[:b].argmax(1) == batch.labels).sum()
        values = torch.stack([out.loss.detach().double(), *(out.parts[n].double() for n in state.objective.stat_names)])
        state.progress.add_step(values, correct, b)
        state.nonfinite.record(values)
        if cfg.train.monitor_conflicts and step.projections is not None:  # opt-in analysis of SCL's gradient
            features, labels = step.contrastive_rows
            c, p = gradient_conflict_counts(
                features.detach().float(),
                labels,
                temperature=cfg.loss.temperature,
                num_classes=state.progress.conflicts.shape[1],
            )
            state.progress.conflicts += torch.stack([c, p])


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
