"""The recipes a run is built from: the model, the optimiser and the loaders, each from the config alone.

Training, evaluation, prediction and the analyses all build their model here, so that the checkpoint keys of
one always match the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils.data import DataLoader

from ltcl.config import Config
from ltcl.data.build import DataBundle
from ltcl.data.device_loader import DeviceEvalBatches, DeviceViewLoader, device_eval_supported
from ltcl.data.sampling import EpochBatchSampler, SeededDataset, ShardSampler
from ltcl.data.views import MultiViewCollate
from ltcl.engine.distributed import DistributedContext
from ltcl.engine.objective import uses_projections
from ltcl.models import apply_trainable, build_network


@dataclass(frozen=True)
class ParameterCounts:
    trainable: int
    total: int


def build_model(
    cfg: Config, num_classes: int, device: torch.device, *, load_weights: bool = True, sync_bn: bool = False
) -> tuple[nn.Module, ParameterCounts]:
    """The network of ``cfg`` on ``device``, with its trainable parameters chosen.

    Args:
        load_weights: read ``model.weights`` (False when a checkpoint supplies every weight: resume, eval).
        sync_bn: convert BatchNorm layers for multi-process training.

    Returns:
        The model and its trainable / total parameter counts (elements).
    """
    model_cfg = cfg.model
    if not uses_projections(cfg.loss.objective):
        model_cfg = replace(model_cfg, projection_dim=0)  # no contrastive term: no head (DDP needs every param used)
    if not load_weights:
        model_cfg = replace(model_cfg, weights="")
    model = build_network(model_cfg, num_classes)
    trainable = apply_trainable(model, cfg.model.trainable)
    counts = ParameterCounts(trainable, sum(p.numel() for p in model.parameters()))
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    return model, counts


def build_optimizer(cfg: Config, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD over the trainable parameters; the learning rate is set every step from the schedule."""
    optim = cfg.optim
    return torch.optim.SGD(
        parameters, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay, nesterov=optim.nesterov
    )


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


def eval_loader(cfg: Config, dataset, ctx: DistributedContext):
    """Batches of ``(images, labels)`` of one evaluation split, this process's shard only (None for no split)."""
    if dataset is None:
        return None
    if cfg.data.augment_on == "device" and device_eval_supported(cfg, dataset):
        return DeviceEvalBatches(cfg, dataset, ctx.device, cfg.data.eval_batch_size, ctx.rank, ctx.world_size)
    shard = ShardSampler(len(dataset), ctx.rank, ctx.world_size)
    return DataLoader(dataset, batch_size=cfg.data.eval_batch_size, sampler=shard, **loader_options(cfg, ctx.device))


def train_loader(cfg: Config, data: DataBundle, ctx: DistributedContext):
    """The batch sampler (its ``set_epoch`` picks the epoch and first batch) and the training loader."""
    sampler = EpochBatchSampler(
        len(data.train), cfg.data.batch_size, seed=cfg.train.seed, rank=ctx.rank, world_size=ctx.world_size
    )
    if cfg.data.augment_on == "device":
        return sampler, DeviceViewLoader(cfg, data.train, sampler, data.view_counts, ctx.device)
    loader = DataLoader(
        SeededDataset(data.train),
        batch_sampler=sampler,
        collate_fn=MultiViewCollate(data.view_counts),
        **loader_options(cfg, ctx.device),
    )
    return sampler, loader
