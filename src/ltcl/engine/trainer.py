"""The training run, top to bottom: data, model, objective, optimiser, resume, epochs, final evaluation.

``train(cfg)`` runs one configured experiment in a single process or, under ``torchrun``, in every process of
the job; ``train(plan.cfg, resume=plan)`` continues a checked :class:`~ltcl.engine.resume.ResumePlan`. All
randomness of an epoch is a function of (seed, epoch, image index) (see ``ltcl.data.sampling``), so a run
stopped at any point and resumed from ``checkpoint_last.pt`` ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ltcl.config import Config, to_dict, validate
from ltcl.data.build import DataBundle, build_data, data_notes
from ltcl.dist import all_reduce_sum, barrier
from ltcl.engine import checkpoint as ckpt
from ltcl.engine.console import epoch_summary, header
from ltcl.engine.distributed import DistributedContext, init_distributed, shutdown
from ltcl.engine.evaluate import EvalResult, evaluate_run, evaluated_weights
from ltcl.engine.inference import trained_network
from ltcl.engine.interrupts import InterruptGuard
from ltcl.engine.loggers import LoggerContext, check_logger_names, open_loggers
from ltcl.engine.loop import train_one_epoch
from ltcl.engine.monitor import StepMonitor, show_progress_bar
from ltcl.engine.optim import describe_optimizer
from ltcl.engine.recipe import build_train_state, eval_loader, loader_workers, model_views, train_batches
from ltcl.engine.report import final_report
from ltcl.engine.resume import ResumePlan
from ltcl.engine.rundir import RunDir
from ltcl.engine.runtime import keep_freed_memory
from ltcl.engine.startup import open_run_directory, run_directory, with_absolute_paths, with_recorded_plugins
from ltcl.engine.state import EpochProgress, TrainState
from ltcl.errors import UserError
from ltcl.methods import resolve_config
from ltcl.schedule import learning_rate


@dataclass
class TrainResult:
    run_dir: Path
    test: EvalResult | None
    val: EvalResult | None = None
    best_epoch: int | None = None
    history: list[dict] = field(default_factory=list)
    already_finished: bool = False


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


def train(cfg: Config, *, resume: ResumePlan | None = None) -> TrainResult:
    """Trains, evaluates and records one run; see the module docstring. The wall time it reports counts from here.

    Raises:
        ltcl.engine.interrupts.Interrupted: SIGINT or SIGTERM, after saving checkpoint_last.pt.
        ltcl.engine.monitor.NonFiniteLoss: a loss became NaN or inf (nothing was saved after it).
    """
    started = time.perf_counter()
    validate(cfg)  # a config built in Python gets the loader's checks too
    cfg = resolve_config(cfg)  # the method's section typed and completed: the saved config holds every value
    check_logger_names(cfg.train.loggers)  # before any data is read, like the checks of resolve_config
    ctx = init_distributed(cfg.train.device)
    if ctx.device.type == "cpu":
        keep_freed_memory()
    try:
        result = _train(cfg, ctx, resume, started)
        barrier()  # ranks leave together: none closes its connections while another is still using them
        return result
    finally:
        shutdown()


def _train(cfg: Config, ctx: DistributedContext, resume: ResumePlan | None, started: float) -> TrainResult:
    cfg = with_absolute_paths(cfg)
    cfg, plugin_notes = with_recorded_plugins(cfg)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    run_dir = run_directory(cfg, resume)
    if resume is not None and resume.finished and run_dir.is_finished():
        if ctx.is_main:
            print(
                f"{run_dir} finished all {cfg.optim.epochs} epochs already; its results are in "
                f"{run_dir / RunDir.RESULTS}. Nothing to do (use --extend-epochs N to train longer)."
            )
        return TrainResult(run_dir.path, None, already_finished=True)

    # Data
    views = model_views(cfg)
    data = build_data(cfg, views=views)
    if resume is not None and list(resume.checkpoint["class_counts"]) != list(data.train_counts):
        raise UserError(
            f"The data of this resume has other class counts than the checkpoint {resume.checkpoint_path} "
            "was trained on: check data.root and the split lists."
        )
    batches = train_batches(cfg, views, data, ctx)
    val_loader, test_loader = eval_loader(cfg, views, data.val, ctx), eval_loader(cfg, views, data.test, ctx)
    state, params, amp = build_train_state(cfg, data, ctx, load_weights=resume is None, load_network=trained_network)
    if resume is not None:
        ckpt.restore(state, resume.checkpoint)
        state.nonfinite.start_at(state.global_step)
    facts = {"config": to_dict(cfg), "class_counts": list(data.train_counts), "class_names": list(data.class_names)}
    checkpointer = ckpt.Checkpointer(run_dir, facts, is_main=ctx.is_main)

    # The run directory
    if ctx.is_main:
        parameters = {"parameters": {"trainable": params.trainable, "total": params.total}}
        plugin_notes += open_run_directory(run_dir, cfg, ctx, resume, parameters, state.epoch)
        run_dir.write_class_counts(data.train_counts, data.class_names, data.view_counts.tolist())
        workers, note = loader_workers(cfg.data.num_workers)
        feeding = "views augmented on the device" if cfg.data.augment_on == "device" else f"{workers} loader worker(s)"
        processes = f"{ctx.world_size} process(es) on {ctx.device}, {feeding}"
        steps = state.steps_per_epoch
        print(
            header(
                cfg,
                data,
                params,
                state.objective,
                run_dir=str(run_dir),
                processes=processes,
                amp=amp,
                steps_per_epoch=steps,
                optimizer=describe_optimizer(
                    cfg.optim, state.optimizer_groups, cfg.data.batch_size, cfg.train.ema_decay
                ),
            )
        )
        for line in ([note] if note else []) + plugin_notes + data_notes(data):
            print(f"note: {line}")
        if resume is not None:
            print(
                f"resumed from {resume.checkpoint_path}: epoch {state.epoch + 1}, batch {state.batch}"
                + (f", extended to {cfg.optim.epochs} epochs" if resume.record["extended_epochs"] else "")
            )

    seconds_before = state.progress.seconds  # training time of a resumed epoch spent before the interrupt
    history, last_eval = _epochs(state, data, batches, val_loader, test_loader, checkpointer, run_dir)
    timing = {"epochs_run": len(history), "train_seconds": sum(r["epoch_seconds"] for r in history) - seconds_before}
    test, val, best_epoch = final_report(state, data, run_dir, val_loader, test_loader, last_eval, timing, started)
    return TrainResult(run_dir.path, test, val, best_epoch, history)


def _epochs(
    state: TrainState, data: DataBundle, batches, val_loader, test_loader, checkpointer, run_dir: RunDir
) -> tuple[list[dict], tuple[str, EvalResult] | None]:
    """Trains the remaining epochs; returns their metrics rows and the last epoch's evaluation."""
    cfg, ctx = state.cfg, state.ctx
    history: list[dict] = []
    last_eval = None
    loggers = open_loggers(LoggerContext(run_dir.path, cfg, first_epoch=state.epoch + 1), enabled=ctx.is_main)
    with InterruptGuard() as guard, loggers:
        monitor = StepMonitor(state, checkpointer, guard, show_progress_bar(cfg.train.progress, ctx.is_main))
        while state.epoch < cfg.optim.epochs:
            policy = state.objective.sampler_for_epoch(state.epoch) or cfg.data.sampler
            batches.set_epoch(state.epoch, state.batch, policy=policy)
            state.objective.set_epoch(state.epoch)
            monitor.start_epoch()
            finished = train_one_epoch(state, batches, monitor)
            monitor.end_epoch()
            if not finished:
                raise monitor.interrupted()
            monitor.sync(weights=True)  # a non-finite loss or weight stops the run here, before any evaluation or save
            row, conflicts = _epoch_row(state)
            state.epoch, state.batch = state.epoch + 1, 0
            state.progress = EpochProgress.empty(state.objective.stat_names, data.num_classes, ctx.device)
            # Only the validation split is scored while training: the test set is scored once, at the end.
            due = state.epoch % cfg.train.eval_every == 0 or state.epoch == cfg.optim.epochs
            if val_loader is not None and due:
                with evaluated_weights(state):  # the moving average when train.ema_decay is on
                    result = evaluate_run(cfg, state.model, val_loader, data.train_counts, ctx.device, state.amp)
                row |= {"eval_split": "val", **result.as_dict()}
                last_eval = ("val", result)
                if state.best is None or result.all > state.best["all"]:
                    state.best = {"all": result.all, "epoch": state.epoch}
                    checkpointer.save_best(state)
            checkpointer.save_last(state)
            if ctx.is_main:
                loggers.log_epoch(row)  # metrics.csv, TensorBoard, ... (train.loggers)
                if conflicts is not None:
                    run_dir.append_conflicts(row["epoch"], *conflicts.tolist(), data.train_counts)
                print(epoch_summary(row, cfg.optim.epochs, state.objective.stat_names))
            history.append(row)
            if guard.requested:  # a signal during evaluation: the epoch is saved, stop before the next one
                raise monitor.interrupted()
    return history, last_eval


def _epoch_row(state: TrainState) -> tuple[dict, torch.Tensor | None]:
    """The metrics row of the epoch just trained and its (2, C) conflict counts (or None), over all processes."""
    progress = state.progress
    means = progress.means(all_reduce_sum(progress.sums.clone()).tolist())
    row = {
        "epoch": state.epoch + 1,
        "step": state.global_step,
        "lr": learning_rate(state.cfg.optim, state.global_step - 1, state.steps_per_epoch),
        **{name: means[name] for name in ("loss", *state.objective.stat_names)},
        "train_acc": 100.0 * means["correct"],
        "images_per_s": means["images"] / max(progress.seconds, 1e-9),
        "epoch_seconds": progress.seconds,
    }
    conflicts = None
    if state.cfg.train.monitor_conflicts and state.objective.needs_projections:
        conflicts = all_reduce_sum(progress.conflicts.clone()).cpu()
    return row, conflicts
