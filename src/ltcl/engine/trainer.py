"""The training loop, top to bottom: data, model, objective, optimiser, resume, epochs, final evaluation.

``train(cfg)`` runs one configured experiment in a single process or, under ``torchrun``, in every process of
the job. All randomness of an epoch is a function of (seed, epoch, image index) (see ``ltcl.data.sampling``), so
a killed run resumed from ``checkpoint_last.pt`` ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ltcl.config import Config, to_dict
from ltcl.data.build import DataBundle, build_data
from ltcl.data.device_loader import DeviceEvalBatches, DeviceViewLoader, device_eval_supported
from ltcl.data.sampling import EpochBatchSampler, SeededDataset
from ltcl.data.views import MultiViewBatch, MultiViewCollate
from ltcl.dist import all_reduce_sum, barrier
from ltcl.engine import checkpoint as ckpt
from ltcl.engine.distributed import DistributedContext, init_distributed, shutdown
from ltcl.engine.evaluate import EvalResult, ShardSampler, autocast_context, evaluate, format_cell, format_table
from ltcl.engine.objective import Objective, parse_objective
from ltcl.engine.records import RunRecorder, run_directory
from ltcl.engine.runtime import keep_freed_memory
from ltcl.engine.schedule import check_schedule, learning_rate
from ltcl.losses.functional import gradient_conflict_counts
from ltcl.models import apply_trainable, build_network

AMP_MODES = ("none", "bf16", "fp16")
AUGMENT_ON = ("loader", "device")
KILL_AT_STEP = "LTCL_TEST_KILL_AT_STEP"  # tests only: SIGKILL this process after that optimisation step


@dataclass
class TrainResult:
    run_dir: Path
    test: EvalResult
    val: EvalResult | None = None
    best_epoch: int | None = None
    history: list[dict] = field(default_factory=list)


def check_config(cfg: Config) -> None:
    """Rejects settings that cannot run, before any data is read."""
    parse_objective(cfg.loss.objective)
    check_schedule(cfg.optim)
    if cfg.train.amp not in AMP_MODES:
        raise ValueError(f"train.amp must be one of {', '.join(AMP_MODES)}, got '{cfg.train.amp}'.")
    if cfg.data.augment_on not in AUGMENT_ON:
        raise ValueError(f"data.augment_on must be one of {', '.join(AUGMENT_ON)}, got '{cfg.data.augment_on}'.")
    if cfg.data.batch_size < 1 or cfg.data.eval_batch_size < 1:
        raise ValueError("data.batch_size and data.eval_batch_size must be at least 1.")
    if cfg.train.eval_every < 1:
        raise ValueError(f"train.eval_every must be at least 1, got {cfg.train.eval_every}.")


def seed_everything(seed: int, deterministic: bool) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


class MultiViewForward(nn.Module):
    """Runs the network once per view-size group, so that DDP sees a single forward per step."""

    def __init__(self, network: nn.Module, run: nn.Module | None = None) -> None:
        super().__init__()
        self.network = network
        self.run = run if run is not None else network  # compiled when train.compile is on (same parameters)

    def forward(self, groups: list[torch.Tensor], with_projection: bool):
        return [self.run(images, with_projection=with_projection) for images in groups]


def multiview_objective(forward: MultiViewForward, objective: Objective, batch: MultiViewBatch,
                        need_projections: bool):
    """Forward of every view group and the training objective on the views stacked view-major.

    Returns:
        loss (scalar), its parts (dict), logits (V*B, C), labels (V*B,), projections (V*B, D) or None, and the
        (V*B,) contrastive mask.
    """
    outputs = forward(batch.groups, need_projections)
    logits = batch.reassemble([o.logits for o in outputs]).flatten(0, 1)
    projections = None
    if need_projections:
        projections = batch.reassemble([o.projections for o in outputs]).flatten(0, 1)
    labels = batch.labels.repeat(batch.num_views)
    mask = batch.contrastive_mask.flatten()
    loss, parts = objective(logits, labels, projections, mask)
    return loss, parts, logits, labels, projections, mask


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


def make_loaders(cfg: Config, data: DataBundle, ctx: DistributedContext):
    """The training batch sampler and loader, and the val/test loaders (None for a missing split)."""
    on_device = cfg.data.augment_on == "device"
    workers = cfg.data.num_workers
    pin = cfg.data.pin_memory and ctx.device.type == "cuda"
    common = {"num_workers": workers, "pin_memory": pin}
    if workers > 0:
        common |= {"persistent_workers": cfg.data.persistent_workers, "prefetch_factor": cfg.data.prefetch_factor}
        if ctx.device.type == "cpu":
            common["worker_init_fn"] = yield_to_training
    sampler = EpochBatchSampler(len(data.train), cfg.data.batch_size, seed=cfg.train.seed, rank=ctx.rank,
                                world_size=ctx.world_size)
    if on_device:
        train_loader = DeviceViewLoader(cfg, data.train, sampler, data.view_counts, ctx.device)
    else:
        train_loader = DataLoader(SeededDataset(data.train), batch_sampler=sampler,
                                  collate_fn=MultiViewCollate(data.view_counts), **common)

    def eval_loader(dataset):
        if dataset is None:
            return None
        if on_device and device_eval_supported(cfg, dataset):
            return DeviceEvalBatches(cfg, dataset, ctx.device, cfg.data.eval_batch_size, ctx.rank, ctx.world_size)
        shard = ShardSampler(len(dataset), ctx.rank, ctx.world_size)
        return DataLoader(dataset, batch_size=cfg.data.eval_batch_size, sampler=shard, **common)

    return sampler, train_loader, eval_loader(data.val), eval_loader(data.test)


def build_model(cfg: Config, num_classes: int, ctx: DistributedContext) -> nn.Module:
    model_cfg = cfg.model
    if parse_objective(cfg.loss.objective)[1] is None:
        model_cfg = replace(model_cfg, projection_dim=0)  # no contrastive term: no head (DDP needs every param used)
    model = build_network(model_cfg, num_classes)
    apply_trainable(model, cfg.model.trainable)
    if cfg.model.sync_bn and ctx.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(ctx.device)
    if ctx.device.type == "cuda" and cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def train(cfg: Config, *, resume: str | None = None) -> TrainResult:
    """Trains, evaluates and records one run; see the module docstring."""
    check_config(cfg)
    ctx = init_distributed(cfg.train.device)
    if ctx.device.type == "cpu":
        keep_freed_memory()
    try:
        result = _train(cfg, ctx, resume)
        barrier()  # ranks leave together: none closes its connections while another is still using them
        return result
    finally:
        shutdown()


def _train(cfg: Config, ctx: DistributedContext, resume: str | None) -> TrainResult:
    started = time.perf_counter()
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    run_dir = run_directory(cfg)
    if resume is None and (run_dir / "checkpoint_last.pt").exists():
        raise ValueError(
            f"Run directory {run_dir} already holds a run; continue it with --resume {run_dir / 'checkpoint_last.pt'} "
            "or pick another train.run_name."
        )
    state = ckpt.load_checkpoint(resume) if resume else None

    # Data
    data = build_data(cfg)
    sampler, train_loader, val_loader, test_loader = make_loaders(cfg, data, ctx)
    steps_per_epoch = len(data.train) // cfg.data.batch_size
    if cfg.train.max_steps_per_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)

    # Model, objective, optimiser
    model = build_model(cfg, data.num_classes, ctx)
    objective = Objective(cfg.loss, data.train_counts, cfg.model.projection_dim, gather_distributed=ctx.enabled)
    objective.to(ctx.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                weight_decay=cfg.optim.weight_decay, nesterov=cfg.optim.nesterov)
    scaler = torch.amp.GradScaler("cuda") if cfg.train.amp == "fp16" else None
    if cfg.train.amp == "fp16" and ctx.device.type != "cuda":
        raise ValueError("train.amp 'fp16' needs a CUDA device; use 'bf16' or 'none' on the CPU.")

    # Resume
    start_epoch, start_batch, global_step, best = 0, 0, 0, None
    if state is not None:
        start_epoch, start_batch, global_step, best = restore(state, data, model, objective, optimizer, scaler)

    recorder = RunRecorder(cfg, run_dir, is_main=ctx.is_main, resumed=state is not None, world_size=ctx.world_size)
    recorder.save_class_counts(data.train_counts, data.class_names, data.view_counts.tolist())
    if state is not None:
        recorder.truncate_after(start_epoch)
    if ctx.is_main:
        print(f"ltcl train: {cfg.name} -> {run_dir}\n{to_yaml(cfg)}")
        print(f"train {len(data.train):,} images ({data.num_classes} classes), {steps_per_epoch} steps/epoch, "
              f"{ctx.world_size} process(es) on {ctx.device}")
        if state is not None:
            print(f"resumed from {resume}: epoch {start_epoch + 1}, batch {start_batch}")

    run = torch.compile(model) if cfg.train.compile else model
    forward = MultiViewForward(model, run)
    if ctx.enabled:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        forward = nn.parallel.DistributedDataParallel(forward, device_ids=ids)

    eval_kwargs = {"amp": cfg.train.amp, "channels_last": ctx.device.type == "cuda" and cfg.train.channels_last,
                   "many": cfg.data.many_threshold, "few": cfg.data.few_threshold}
    history: list[dict] = []
    for epoch in range(start_epoch, cfg.optim.epochs):
        sampler.set_epoch(epoch, start_batch)
        row = train_one_epoch(cfg, ctx, epoch, start_batch, global_step, steps_per_epoch, train_loader, forward,
                              model, objective, optimizer, scaler, recorder, data, best)
        global_step = row["step"]
        start_batch = 0
        last_epoch = epoch + 1 == cfg.optim.epochs
        if (epoch + 1) % cfg.train.eval_every == 0 or last_epoch:
            split, loader = ("val", val_loader) if val_loader is not None else ("test", test_loader)
            result = evaluate(model, loader, data.train_counts, ctx.device, **eval_kwargs)
            row |= {"eval_split": split, **result.as_dict()}
            if split == "val" and (best is None or result.all > best["all"]):
                best = {"all": result.all, "epoch": epoch + 1}
                save(run_dir / "checkpoint_best.pt", cfg, ctx, data, model, objective, optimizer, scaler,
                     epoch + 1, 0, global_step, best)
        save(run_dir / "checkpoint_last.pt", cfg, ctx, data, model, objective, optimizer, scaler,
             epoch + 1, 0, global_step, best)
        recorder.log_epoch(row)
        history.append(row)
        if ctx.is_main:
            print(epoch_summary(row, cfg.optim.epochs))

    timing = {"epochs_run": len(history), "train_seconds": sum(r["epoch_seconds"] for r in history),
              "wall_seconds": time.perf_counter() - started}
    if ctx.is_main and history:
        print(f"\ntrained {len(history)} epoch(s) in {timing['train_seconds']:.1f} s "
              f"({timing['train_seconds'] / len(history):.1f} s per epoch; {timing['wall_seconds']:.1f} s wall "
              "including data set-up and evaluation)")
    result = final_evaluation(cfg, ctx, run_dir, model, data, val_loader, test_loader, best, eval_kwargs, timing)
    recorder.close()
    result.history = history
    return result


def train_one_epoch(cfg, ctx, epoch, start_batch, global_step, steps_per_epoch, loader, forward, model, objective,
                    optimizer, scaler, recorder, data, best) -> dict:
    """One pass over the training batches; returns the epoch's metrics row."""
    forward.train()
    objective.train()
    device = ctx.device
    channels_last = device.type == "cuda" and cfg.train.channels_last
    need_projections = objective.needs_projections
    monitor = cfg.train.monitor_conflicts and need_projections
    conflicts = torch.zeros(2, data.num_classes, dtype=torch.int64, device=device)
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # loss, cls, con, correct, images
    kill_at = int(os.environ.get(KILL_AT_STEP, "0"))
    step_checkpoints = cfg.train.checkpoint_every_steps
    total = steps_per_epoch - start_batch
    show = ctx.is_main and cfg.train.progress
    bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", disable=not show, leave=False,
               dynamic_ncols=True)
    start = time.perf_counter()
    images = 0
    lr = learning_rate(cfg.optim, global_step, steps_per_epoch)
    for i, batch in enumerate(loader):
        if start_batch + i >= steps_per_epoch:
            break
        batch: MultiViewBatch = batch.to(device, non_blocking=True)
        if channels_last:
            batch.groups = [g.contiguous(memory_format=torch.channels_last) for g in batch.groups]
        lr = learning_rate(cfg.optim, global_step, steps_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr

        with autocast_context(device, cfg.train.amp):
            loss, parts, logits, labels, projections, mask = multiview_objective(forward, objective, batch,
                                                                                 need_projections)

        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        global_step += 1

        with torch.no_grad():
            b = batch.batch_size
            correct = (logits[:b].argmax(1) == batch.labels).sum()
            sums += torch.stack([loss.detach().double() * b, parts["cls"].double() * b,
                                 parts.get("con", torch.zeros((), device=device)).double() * b,
                                 correct.double(), torch.tensor(float(b), device=device, dtype=torch.float64)])
            if monitor:
                c, p = gradient_conflict_counts(projections[mask].detach().float(), labels[mask],
                                                temperature=cfg.loss.temperature, num_classes=data.num_classes)
                conflicts += torch.stack([c, p])
        images += batch.batch_size * ctx.world_size
        bar.update(1)
        if bar.n % 10 == 0 or bar.n == total:
            bar.set_postfix(loss=f"{float(sums[0] / sums[4]):.3f}", lr=f"{lr:.4g}")
        if step_checkpoints and (start_batch + i + 1) % step_checkpoints == 0 and start_batch + i + 1 < steps_per_epoch:
            save(run_directory(cfg) / "checkpoint_last.pt", cfg, ctx, data, model, objective, optimizer, scaler,
                 epoch, start_batch + i + 1, global_step, best)
        if kill_at and global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    elapsed = time.perf_counter() - start
    all_reduce_sum(sums)
    if monitor:
        all_reduce_sum(conflicts)
        recorder.log_conflicts(epoch + 1, conflicts[0].cpu(), conflicts[1].cpu(), data.train_counts)
    seen = float(sums[4]) or 1.0
    return {
        "epoch": epoch + 1, "step": global_step, "lr": lr,
        "loss": float(sums[0]) / seen, "loss_cls": float(sums[1]) / seen,
        "loss_con": float(sums[2]) / seen if need_projections else None,
        "train_acc": 100.0 * float(sums[3]) / seen, "images_per_s": images / elapsed, "epoch_seconds": elapsed,
    }


def save(path, cfg, ctx, data, model, objective, optimizer, scaler, epoch, batch, global_step, best) -> None:
    """Writes a checkpoint (rank 0 only): ``epoch`` epochs and ``batch`` batches of the next one are done."""
    if not ctx.is_main:
        return
    state = {
        "format": ckpt.FORMAT_VERSION,
        "epoch": epoch,
        "batch": batch,
        "global_step": global_step,
        "model": model.state_dict(),
        "objective": objective.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": ckpt.rng_state(),
        "config": to_dict(cfg),
        "class_counts": list(data.train_counts),
        "class_names": list(data.class_names),
        "best": best,
    }
    ckpt.save_atomic(state, path)


def restore(state, data, model, objective, optimizer, scaler):
    """Loads a checkpoint's states; returns (epoch, batch, global step, best)."""
    if list(state["class_counts"]) != list(data.train_counts):
        raise ValueError(
            "The checkpoint was trained on other class counts than this config's training set "
            f"({len(state['class_counts'])} classes there, {data.num_classes} here): check data.* settings."
        )
    model.load_state_dict(state["model"])
    objective.load_state_dict(state["objective"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    ckpt.set_rng_state(state["rng"])
    return state["epoch"], state["batch"], state["global_step"], state.get("best")


def final_evaluation(cfg, ctx, run_dir, model, data, val_loader, test_loader, best, eval_kwargs,
                     timing) -> TrainResult:
    """Test accuracy of the best-on-validation model, or of the last model when there is no validation split."""
    val_result = None
    best_epoch = None
    if val_loader is not None and best is not None:
        barrier()  # rank 0 wrote the file; every rank reads it (multi-node runs need a shared train.output_dir)
        model.load_state_dict(ckpt.load_checkpoint(run_dir / "checkpoint_best.pt")["model"])
        best_epoch = best["epoch"]
        val_result = evaluate(model, val_loader, data.train_counts, ctx.device, **eval_kwargs)
    test_result = evaluate(model, test_loader, data.train_counts, ctx.device, **eval_kwargs)
    rows = {}
    if val_result is not None:
        rows[f"val (best, epoch {best_epoch})"] = val_result
    chosen = f"best on val, epoch {best_epoch}" if best_epoch else f"last epoch, {cfg.optim.epochs}"
    rows[f"test ({chosen})"] = test_result
    table = format_table(rows)
    if ctx.is_main:
        print("\nFinal accuracy (%), shot groups by training count: many > "
              f"{cfg.data.many_threshold}, few < {cfg.data.few_threshold}\n{table}")
        from ltcl.engine.report import write_report

        write_report(run_dir, cfg, data, rows, test_result, timing)
    return TrainResult(run_dir, test_result, val_result, best_epoch)


def epoch_summary(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['loss']:.4f}", f"cls {row['loss_cls']:.4f}"]
    if row.get("loss_con") is not None:
        parts.append(f"con {row['loss_con']:.4f}")
    parts += [f"train acc {row['train_acc']:.1f}%", f"lr {row['lr']:.4g}",
              f"{row['images_per_s']:.0f} img/s", f"{row['epoch_seconds']:.1f} s"]
    if row.get("eval_split"):
        groups = " / ".join(format_cell(row[k]) for k in ("many", "medium", "few", "all"))
        parts.append(f"{row['eval_split']} many/medium/few/all {groups} %")
    return " | ".join(parts)


def to_yaml(cfg: Config) -> str:
    import yaml

    return yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip()
