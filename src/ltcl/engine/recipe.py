"""The recipes a run is built from: the model, the optimiser and the loaders, each from the config alone.

Training, evaluation, prediction and the analyses all build their model here, so that the checkpoint keys of
one always match the others.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn
from torch.utils.data import DataLoader

from ltcl.config import Config, ViewsConfig
from ltcl.data.augment import resolve_views
from ltcl.data.build import DataBundle
from ltcl.data.device_loader import DeviceEvalBatches, DeviceViewLoader, device_eval_supported
from ltcl.data.inputs import check_view_sizes
from ltcl.data.sampling import EpochBatchSampler, SeededDataset, ShardSampler
from ltcl.data.views import MultiViewCollate
from ltcl.engine.batches import SECOND_SEED, TrainBatches
from ltcl.engine.distributed import DistributedContext
from ltcl.engine.ema import ModelEma
from ltcl.engine.loop import MultiViewForward
from ltcl.engine.optim import build_optimizer
from ltcl.engine.runtime import resolve_amp
from ltcl.engine.state import EpochProgress, NonFiniteFlag, TrainState
from ltcl.errors import UserError
from ltcl.methods import build_objective, second_sampler, uses_projections
from ltcl.models import ParameterCounts, apply_finetune, build_network, input_spec


def build_model(
    cfg: Config,
    num_classes: int,
    device: torch.device,
    *,
    class_names: Sequence[str] | None = None,
    load_weights: bool = True,
    sync_bn: bool = False,
) -> tuple[nn.Module, ParameterCounts]:
    """The network of ``cfg`` on ``device``, with its trainable parameters chosen (``model.finetune``).

    Args:
        class_names: the C class names (the zero-shot head of an OpenCLIP backbone reads them).
        load_weights: read pretrained or local weights (False when a checkpoint supplies every weight: resume,
            eval; nothing is then downloaded or read).
        sync_bn: convert BatchNorm layers for multi-process training.

    Returns:
        The model and its trainable / total parameter counts (elements).
    """
    model_cfg = cfg.model
    if not uses_projections(cfg):
        model_cfg = replace(model_cfg, projection_dim=0)  # no contrastive term: no head (DDP needs every param used)
    if not load_weights:
        model_cfg = replace(model_cfg, weights="", pretrained=False, zero_shot_head=False)
    model = build_network(model_cfg, num_classes, class_names)
    counts = apply_finetune(model, model_cfg)
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    return model, counts


def model_views(cfg: Config) -> ViewsConfig:
    """``views`` with the sizes and normalisation that the backbone defines (0 sizes, ``normalization: model``).

    Called once per run before any data is read: view sizes that a fixed-size backbone cannot take are refused
    here, in one sentence naming the settings to change.
    """
    spec = input_spec(cfg.model)
    v = cfg.views
    check_view_sizes(spec, cfg.model.backbone, v.sizes, v.num_views, v.test_size)
    return resolve_views(v, spec)


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def loader_workers(requested: int) -> tuple[int, str | None]:
    """``data.num_workers`` capped at the available cores, and a note when it was lowered."""
    cores = available_cores()
    if requested <= cores:
        return requested, None
    return cores, f"data.num_workers {requested} lowered to {cores}, the cores available to this process"


def yield_to_training(worker_id: int) -> None:
    """Loader workers of a CPU run give way to the training threads.

    Both compete for the same cores; at equal priority the workers preempt the training threads in the middle of
    their parallel regions, and every other thread then waits for the preempted one. At lower priority the
    workers fill the gaps instead (see benchmarks/pipeline_overhead.py).
    """
    try:
        os.nice(10)
    except OSError:  # not permitted: keep the default priority
        pass


def loader_options(cfg: Config, device: torch.device) -> dict:
    """DataLoader keyword arguments shared by the training and evaluation loaders."""
    workers, _ = loader_workers(cfg.data.num_workers)
    options: dict = {"num_workers": workers, "pin_memory": cfg.data.pin_memory and device.type == "cuda"}
    if workers > 0:
        options |= {"persistent_workers": cfg.data.persistent_workers, "prefetch_factor": cfg.data.prefetch_factor}
        if device.type == "cpu":
            options["worker_init_fn"] = yield_to_training
    return options


def eval_loader(cfg: Config, views: ViewsConfig, dataset, ctx: DistributedContext):
    """Batches of ``(images, labels)`` of one evaluation split, this process's shard only (None for no split).

    Args:
        views: the run's views with the model's sizes filled in (:func:`model_views`, resolved once per run).
    """
    if dataset is None:
        return None
    if cfg.data.augment_on == "device" and device_eval_supported(views, dataset):
        return DeviceEvalBatches(views, dataset, ctx.device, cfg.data.eval_batch_size, ctx.rank, ctx.world_size)
    shard = ShardSampler(len(dataset), ctx.rank, ctx.world_size)
    return DataLoader(dataset, batch_size=cfg.data.eval_batch_size, sampler=shard, **loader_options(cfg, ctx.device))


def train_loader(
    cfg: Config,
    views: ViewsConfig,
    data: DataBundle,
    ctx: DistributedContext,
    policy: str = "",
    seed: int | None = None,
):
    """A batch sampler (its ``set_epoch`` picks the epoch and first batch) and its training loader.

    Args:
        policy: the sampler ("" for ``data.sampler``); seed: its seed (None for ``train.seed``).
    """
    seed = cfg.train.seed if seed is None else seed
    sampler = EpochBatchSampler(
        len(data.train),
        cfg.data.batch_size,
        seed=seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
        labels=torch.as_tensor(data.train.targets, dtype=torch.int64),
        policy=policy or cfg.data.sampler,
        epochs=cfg.optim.epochs,
    )
    if cfg.data.augment_on == "device":
        return sampler, DeviceViewLoader(views, seed, data.train, sampler, data.view_counts, ctx.device)
    loader = DataLoader(
        SeededDataset(data.train),
        batch_sampler=sampler,
        collate_fn=MultiViewCollate(data.view_counts),
        **loader_options(cfg, ctx.device),
    )
    return sampler, loader


def train_batches(cfg: Config, views: ViewsConfig, data: DataBundle, ctx: DistributedContext) -> TrainBatches:
    """The run's training batches: the main stream, and the second one its method asks for (BBN)."""
    main = train_loader(cfg, views, data, ctx)
    policy = second_sampler(cfg)
    if policy is None:
        return TrainBatches(*main)
    # Its own seed: the second stream's order and augmentations are independent of the main stream's.
    return TrainBatches(*main, *train_loader(cfg, views, data, ctx, policy, seed=cfg.train.seed + SECOND_SEED))


def build_train_state(
    cfg: Config, data: DataBundle, ctx: DistributedContext, *, load_weights: bool = True, load_network=None
) -> tuple[TrainState, ParameterCounts, tuple[str, str]]:
    """Model, objective, optimiser and their :class:`TrainState`, ready for the first step.

    ``load_network`` reads a trained run's network for a method that learns from one (ObjectiveSetup).

    Returns:
        The state, the model's parameter counts, and the resolved precision with its reason.
    """
    steps_per_epoch = len(data.train) // cfg.data.batch_size
    if cfg.train.max_steps_per_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
    amp = resolve_amp(cfg.train.amp, ctx.device)
    model, params = build_model(
        cfg, data.num_classes, ctx.device, load_weights=load_weights, sync_bn=cfg.model.sync_bn and ctx.enabled
    )
    objective = build_objective(
        cfg, data.train_counts, feature_dim=model.feature_dim, gather_distributed=ctx.enabled, load_network=load_network
    ).to(ctx.device)
    objective.bind(model)
    own = [(n, p) for n, p in objective.named_parameters() if p.requires_grad]  # the method's (BCL's head)
    optimizer, groups = build_optimizer(cfg.optim, model, own)
    run = torch.compile(model) if cfg.train.compile else model
    forward: nn.Module = MultiViewForward(model, run, objective if own else None)
    per_process = cfg.data.batch_size // ctx.world_size
    if per_process % cfg.optim.accumulate_steps:
        raise UserError(
            f"optim.accumulate_steps {cfg.optim.accumulate_steps} must divide the batch of each process "
            f"({per_process} = data.batch_size {cfg.data.batch_size} / {ctx.world_size} processes)."
        )
    if ctx.enabled:
        forward = nn.parallel.DistributedDataParallel(
            forward, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    scaler = torch.amp.GradScaler("cuda") if amp[0] == "fp16" else None
    progress = EpochProgress.empty(objective.stat_names, data.num_classes, ctx.device)
    state = TrainState(cfg, ctx, model, forward, objective, optimizer, scaler, progress, amp[0], steps_per_epoch)
    state.nonfinite = NonFiniteFlag.create(1 + len(objective.stat_names), ctx.device)
    state.trainable = [p for group in optimizer.param_groups for p in group["params"]]
    state.optimizer_groups = groups
    if cfg.train.ema_decay > 0:
        state.ema = ModelEma(model, cfg.train.ema_decay)  # of the unwrapped model, from the starting weights
    return state, params, amp
