"""What a run prints: a compact header of everything that defines it, one line per epoch, the final table.

The full resolved config goes to ``config.yaml``; the header names the few values a reader checks first.
"""

from __future__ import annotations

from ltcl.config import Config, ModelConfig
from ltcl.data.build import DataBundle
from ltcl.data.longtail import ACCURACY_COLUMNS, SHOT_GROUPS, shot_groups
from ltcl.engine.evaluate import format_cell
from ltcl.engine.recipe import ParameterCounts
from ltcl.methods import Objective
from ltcl.models import weights_origin


def _size(dataset) -> str:
    return "no" if dataset is None else f"{len(dataset):,}"


def header(
    cfg: Config,
    data: DataBundle,
    params: ParameterCounts,
    objective: Objective,
    *,
    run_dir: str,
    processes: str,
    amp: tuple[str, str],
    steps_per_epoch: int,
    optimizer: str = "",
) -> str:
    """A few lines: run directory, data, model (with its fine-tuning mode and where its weights come from),
    objective and the key hyperparameters (``optimizer``: the optimiser's own line, its groups, accumulation,
    clipping and moving average); then a ``note:`` line per questionable model setting."""
    counts = data.train_counts
    groups = shot_groups(counts, many=cfg.data.many_threshold, few=cfg.data.few_threshold)
    group_sizes = " / ".join(f"{name} {int((groups == g).sum())}" for g, name in enumerate(SHOT_GROUPS))
    m, o, v = cfg.model, cfg.optim, cfg.views
    contrasts = objective.needs_projections
    head = f"projection {m.projection_hidden}-{m.projection_dim}" if contrasts else "no projection head"
    views = f"{v.num_views} view(s) {list(v.sizes)[: v.num_views]} px"
    if contrasts:
        views += f", contrastive views {v.contrastive_mode}"
    schedule = f"{o.schedule}, {o.warmup_epochs} warm-up epoch(s)"
    lines = [
        f"ltcl train: {cfg.name} -> {run_dir} (full config in config.yaml)",
        f"  data   {cfg.data.dataset}: {sum(counts):,} train / {_size(data.val)} val / {_size(data.test)} test "
        f"images, {data.num_classes} classes ({max(counts)} ... {min(counts)} per class; {group_sizes}), "
        f"sampler {cfg.data.sampler}",
        f"  model  {m.backbone}, finetune {m.finetune}, weights: {weights_origin(m)}; {m.classifier} classifier, "
        f"{head}; {params.trainable:,} of {params.total:,} parameters train",
        f"  loss   {objective.describe()}; {views}",
        f"  optim  {'AdamW' if o.name == 'adamw' else 'SGD'} lr {o.lr} ({schedule}), {o.epochs} epochs x "
        f"{steps_per_epoch} steps, batch "
        f"{cfg.data.batch_size}, weight decay {o.weight_decay}",
        *([f"         {optimizer}"] if optimizer else []),
        f"  run    seed {cfg.train.seed}, amp {amp[0]} ({amp[1]}), {processes}",
        f"  eval   {evaluation_plan(cfg, data)}",
    ]
    lines += [f"note: {note}" for note in model_notes(m)]
    return "\n".join(lines)


def evaluation_plan(cfg: Config, data: DataBundle) -> str:
    """When each split is scored: the validation split during training (it picks the best checkpoint), the test
    set once, at the end; and on which weights (the moving average with ``train.ema_decay``)."""
    test = "test set scored once, at the end" if data.test is not None else "no test split"
    ema = f"; every score is of the moving average of the weights (train.ema_decay {cfg.train.ema_decay})"
    ema = ema if cfg.train.ema_decay > 0 else ""
    if data.val is None:
        return f"no validation split: no checkpoint selection, nothing scored while training; {test}{ema}"
    return f"val every {cfg.train.eval_every} epoch(s), best-on-val checkpoint kept; {test}{ema}"


def model_notes(m: ModelConfig) -> list[str]:
    """Warnings about the model settings, one line each: a partial fine-tuning mode on a random backbone."""
    if m.finetune.partition(":")[0] != "full" and not m.pretrained and not m.weights:
        return [
            f"model.finetune {m.finetune} trains only part of a randomly initialised backbone (no model.pretrained, "
            "no model.weights), so most of its weights stay random: set model.pretrained or model.weights, or use "
            "model.finetune full"
        ]
    return []


def epoch_summary(row: dict, epochs: int, stat_names: tuple[str, ...] = ()) -> str:
    """One line per epoch: the loss and the objective's statistics (``stat_names``), speed, evaluation."""
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['loss']:.4f}"]
    parts += [f"{name.removeprefix('loss_')} {row[name]:.4f}" for name in stat_names]
    parts += [
        f"train acc {row['train_acc']:.1f}%",
        f"lr {row['lr']:.4g}",
        f"{row['images_per_s']:.0f} img/s",
        f"{row['epoch_seconds']:.1f} s",
    ]
    if row.get("eval_split"):
        groups = " / ".join(format_cell(row[k]) for k in ACCURACY_COLUMNS)
        parts.append(f"{row['eval_split']} many/medium/few/all {groups} %")
    return " | ".join(parts)
