"""``ltcl decouple``: a re-fitter on a trained checkpoint, written as a run directory of its own.

The re-fitted run reads like any other: ``config.yaml`` (the source run's config with the new classifier kind and
the second stage's schedule, sampler and batch size; a ``decouple`` block with the method and every value of its
section; the source checkpoint among the ``run`` facts), ``metrics.csv`` (one row per second-stage epoch),
``checkpoint_last.pt`` and ``checkpoint_best.pt`` (loadable by ``ltcl eval`` / ``predict`` /
:func:`ltcl.engine.inference.load_trained_model`), ``results.json`` and ``report.md`` with the final table: the last
epoch's and the best-on-validation model's accuracy, the test split scored once, at the end.

Where features come from. The backbone never trains. A trained re-fit forwards every batch of its view through it
(no gradient); with ``bn: shift`` its BatchNorm layers normalise with the batch's statistics and re-estimate their
running statistics on the second stage's batches (MiSLAS's shifted BN; what classifier-balancing and cvpods do by
calling ``model.train()`` on their frozen backbone), so those features can never be cached. With ``bn: frozen`` and
``view: test`` (no augmentation) the features are computed once, in evaluation mode, and reused every epoch; an
augmented view is forwarded batch by batch, since an image drawn twice by the class-balanced sampler gets two
augmentations.

One process only (it is cheap): under torchrun it refuses to start. A stopped re-fit is not resumed: running the
same command again starts it afresh in the same directory.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ltcl import __version__
from ltcl.config import Config, from_dict, to_dict
from ltcl.data.augment import build_test_transform
from ltcl.data.build import DataBundle, build_data
from ltcl.data.datasets import build_split
from ltcl.data.longtail import SHOT_GROUPS, shot_groups
from ltcl.data.sampling import EpochBatchSampler, SeededDataset
from ltcl.decouple.base import REFITTERS, RefitSetup, Refitter, epoch_cosine
from ltcl.engine.checkpoint import FORMAT_VERSION, load_checkpoint, non_finite_tensors, save_atomic
from ltcl.engine.console import epoch_summary
from ltcl.engine.distributed import DistributedContext, pick_device
from ltcl.engine.ema import with_averages
from ltcl.engine.evaluate import (
    EvalResult,
    accuracy_from_counts,
    autocast_context,
    evaluate_run,
    format_table,
)
from ltcl.engine.inference import BrokenModel
from ltcl.engine.monitor import NonFiniteLoss
from ltcl.engine.recipe import build_model, eval_loader, loader_options, model_views, train_loader
from ltcl.engine.report import code_revision, report_text, timing_line
from ltcl.engine.resume import EVAL_MAY_CHANGE, checked_config, from_dict_values, resolved_values
from ltcl.engine.rundir import RunDir
from ltcl.engine.runtime import resolve_amp
from ltcl.engine.trainer import seed_everything
from ltcl.errors import UserError

# What --set may change besides the method's own section: where things are and how the re-fit runs, never the
# data the backbone was trained on or the network (the validation split may be added: the training images of
# CIFAR and the digits do not depend on it, and the class counts are checked).
DECOUPLE_MAY_CHANGE = EVAL_MAY_CHANGE | {
    "train.seed", "train.deterministic", "train.amp", "train.channels_last", "train.max_steps_per_epoch",
    "data.val_per_class", "data.augment_on",
}  # fmt: skip
SECTION_PREFIX = "decouple."
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
DECOUPLE_SEED = 104_729  # added to train.seed for the second stage's batches: a stream of its own


@dataclass
class DecoupleResult:
    run_dir: Path
    test: EvalResult | None
    val: EvalResult | None
    best_epoch: int | None
    info: dict[str, Any] = field(default_factory=dict)


def split_overrides(overrides: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """``decouple.<key>=value`` texts (the method's section, key -> raw value) and the others (config keys)."""
    section, rest = {}, []
    for text in overrides:
        key, eq, value = text.partition("=")
        key = key.strip()
        if key.startswith(SECTION_PREFIX):
            if not eq or "." in key[len(SECTION_PREFIX) :]:
                raise UserError(f"--set {text.strip()}: give one key of the method's section, decouple.<key>=value.")
            section[key[len(SECTION_PREFIX) :]] = value.strip()
        else:
            rest.append(text)
    return section, rest


def default_run_dir(checkpoint: Path, method: str) -> Path:
    """``<run>_<method>`` beside the source run for its checkpoint_last.pt, ``<run>_<stem>_<method>`` otherwise
    (``<run>_best_crt`` for checkpoint_best.pt)."""
    run = checkpoint.parent
    stem = checkpoint.stem.removeprefix("checkpoint_")
    return run.parent / (f"{run.name}_{method}" if stem == "last" else f"{run.name}_{stem}_{method}")


class RefitContext:
    """The frozen network and the data of a re-fit, with the helpers a re-fitter uses.

    Attributes:
        cfg: the source run's config (with the accepted --set values); model: its network, every parameter
            frozen, in evaluation mode; data: the training split (one view), validation and test splits;
        device, amp: where and in which precision the backbone runs; run_dir: the re-fit's directory.
    """

    def __init__(
        self, cfg: Config, model: nn.Module, data: DataBundle, device: torch.device, amp: str, run_dir: Path
    ) -> None:
        self.cfg, self.model, self.data, self.device, self.amp = cfg, model, data, device, amp
        self.run_dir = run_dir
        self.ctx = DistributedContext(0, 1, 0, device)
        self.views = model_views(cfg)

    @property
    def class_counts(self) -> list[int]:
        return self.data.train_counts

    def loader(self, dataset) -> Any:
        """Evaluation batches ``(images, labels)`` of ``dataset`` in its order (None for None)."""
        return eval_loader(self.cfg, self.views, dataset, self.ctx)

    @torch.no_grad()
    def features(self, loader) -> tuple[Tensor, Tensor]:
        """(N, F) float32 backbone features, in evaluation mode, and (N,) labels of every batch of ``loader``."""
        self.model.eval()
        feats, labels = [], []
        for images, y in loader:
            feats.append(self.backbone(images.to(self.device, non_blocking=True)))
            labels.append(torch.as_tensor(y).to(self.device))
        return torch.cat(feats), torch.cat(labels)

    def backbone(self, images: Tensor) -> Tensor:
        if self.cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_context(self.device, self.amp):
            return self.model.backbone(images).float()

    def train_plain(self):
        """The training images with the evaluation transform (no augmentation), in dataset order."""
        dataset = build_split(self.cfg.data, "train", build_test_transform(self.views))
        if list(dataset.class_counts()) != list(self.class_counts):
            raise UserError("The training split read again has other class counts; check data.root.")
        return dataset

    def split(self, name: str):
        return {"val": self.data.val, "test": self.data.test}[name]

    def score(self, classifier: nn.Module, features: Tensor, labels: Tensor) -> EvalResult:
        """Many / Medium / Few / All of ``classifier`` on precomputed features (the evaluation's precision)."""
        classifier.eval()
        with torch.no_grad(), autocast_context(self.device, self.amp):
            logits = classifier(features).float()
        num_classes = len(self.class_counts)
        hits = (logits.argmax(1) == labels).double().cpu()
        correct = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels.cpu(), hits)
        seen = torch.bincount(labels.cpu(), minlength=num_classes).double()
        d = self.cfg.data
        return accuracy_from_counts(correct, seen, self.class_counts, many=d.many_threshold, few=d.few_threshold)

    def evaluate(self, split: str) -> EvalResult | None:
        """The network as it stands (its current classifier) on ``split``, as ``ltcl eval`` scores it."""
        dataset = self.split(split)
        if dataset is None:
            return None
        return evaluate_run(self.cfg, self.model, self.loader(dataset), self.class_counts, self.device, self.amp)


def plan(
    checkpoint: str | Path, method: str, overrides: Sequence[str]
) -> tuple[dict, type[Refitter], Config, Any, str]:
    """Loads the source checkpoint and checks the request: (checkpoint contents, re-fitter class, config of the
    re-fit (the source's with the accepted --set values), the re-fitter's section, where its values come from).

    Raises:
        UserError: an unknown method, a --set value that would change the source's data or network, a bad value
            in the method's section.
    """
    cls = REFITTERS.get(method)
    source = load_checkpoint(checkpoint)
    section_overrides, config_overrides = split_overrides(overrides)
    values = from_dict_values(source["config"], config_overrides)
    saved = resolved_values(source["config"], with_plugins=False)
    checked_config(
        saved,
        values,
        DECOUPLE_MAY_CHANGE,
        f"ltcl decouple of {checkpoint} with these --set values",
        "; the method's own values are set with --set decouple.<key>=value",
    )
    cfg = from_dict(values)
    if cls.needs_linear_source and cfg.model.classifier != "linear":
        raise UserError(
            f"ltcl decouple --method {method} re-scales the first stage's linear classifier, and this run's is "
            f"{cfg.model.classifier} (model.classifier): use --method crt or ncm, which fit a new one."
        )
    section, note = cls.resolve_section(cfg, section_overrides)
    return source, cls, cfg, section, note


def run_directory(
    checkpoint: Path, method: str, cfg: Config, overrides: Sequence[str], out: str | Path | None
) -> RunDir:
    """``out``; else ``<run>_<method>`` beside the source run, or where ``--set train.output_dir`` and
    ``train.run_name`` put it."""
    if out:
        return RunDir(Path(out).resolve())
    default = default_run_dir(checkpoint, method)
    keys = {text.partition("=")[0].strip() for text in overrides}
    parent = Path(cfg.train.output_dir).resolve() if "train.output_dir" in keys else default.parent
    name = cfg.train.run_name if "train.run_name" in keys and cfg.train.run_name else default.name
    return RunDir(parent / name)


def decouple(
    checkpoint: str | Path, method: str, overrides: Sequence[str] = (), out: str | Path | None = None
) -> DecoupleResult:
    """Re-fits the classifier of ``checkpoint`` with ``method`` and writes the run directory (see the module
    docstring). ``out``: the run directory (default ``<run>_<method>`` beside the source run)."""
    started = time.perf_counter()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("ltcl decouple runs in one process: start it without torchrun.")
    path = Path(checkpoint).resolve()
    source, cls, cfg, section, note = plan(path, method, overrides)
    run_dir = run_directory(path, method, cfg, overrides, out)
    if run_dir.path == path.parent:
        raise UserError(f"--out {run_dir} is the source run's own directory; give another one.")
    if run_dir.is_finished():
        raise UserError(f"{run_dir} holds a finished run ({RunDir.RESULTS}); remove it or give another --out.")
    cleared = _clear(run_dir)

    seed_everything(cfg.train.seed, cfg.train.deterministic)
    device = pick_device(cfg.train.device)
    amp, amp_reason = resolve_amp(cfg.train.amp, device)
    views = model_views(cfg)
    stage_views = _stage_views(views, section) if cls.trains else views
    data = build_data(cfg, views=stage_views)
    counts = list(source["class_counts"])
    if list(data.train_counts) != counts:
        raise UserError(
            f"The data here has other class counts than the checkpoint {path} was trained on: check data.root."
        )
    model = _frozen_model(cfg, source, counts, device, path)
    context = RefitContext(cfg, model, data, device, amp, run_dir.path)
    setup = RefitSetup(tuple(counts), model.feature_dim, copy.deepcopy(model.classifier), device)
    torch.manual_seed(cfg.train.seed)  # the head's initialisation
    refitter = cls(section, setup)
    result_cfg = cls.result_config(cfg, section)
    result_cfg = dataclasses.replace(
        result_cfg,
        train=dataclasses.replace(result_cfg.train, output_dir=str(run_dir.path.parent), run_name=run_dir.path.name),
    )
    source_facts = {
        "source_checkpoint": str(path),
        "source_epoch": int(source["epoch"]),
        "source_objective": cfg.loss.objective,
        "source_classifier": cfg.model.classifier,
    }
    run_dir.path.mkdir(parents=True, exist_ok=True)
    _write_config(run_dir, result_cfg, refitter, source_facts)
    run_dir.write_class_counts(counts, data.class_names, [1] * len(counts))
    print(_header(cfg, refitter, data, run_dir, path, source, note, (amp, amp_reason), device))
    for name in cleared:
        print(f"note: {run_dir} held an unfinished re-fit; its {name} was removed")

    writer = _Writer(run_dir, result_cfg, source, refitter, source_facts)
    if cls.trains:
        history, best = _train(refitter, context, writer, stage_views)
        info = {}
    else:
        fit_started = time.perf_counter()
        classifier, info = refitter.fit(context)
        model.classifier = classifier.to(device)
        val = context.evaluate("val")
        row = _row(1, 0, float("nan"), float("nan"), {}, 0.0, 0, time.perf_counter() - fit_started, refitter)
        best = None
        if val is not None:  # one model: the last is the best, and its checkpoint is both
            row |= {"eval_split": "val", **val.as_dict()}
            best = {"all": val.all, "epoch": 1}
            writer.save(model, 1, 0, best, info=info, best_file=True)
        writer.save(model, 1, 0, best, info=info)
        run_dir.append_metrics(row)
        history = [row]
    # a closed-form fit trains no epoch: its time is the wall time (and metrics.csv's one row)
    epochs_run = len(history) if cls.trains else 0
    timing = {"epochs_run": epochs_run, "train_seconds": sum(r["epoch_seconds"] for r in history)}
    return _final(context, refitter, writer, result_cfg, history, best, info, timing, started)


def _clear(run_dir: RunDir) -> list[str]:
    """Removes the files of an unfinished re-fit in ``run_dir`` (a re-fit is not resumed); refuses a directory
    that holds something else."""
    if not run_dir.path.exists():
        return []
    if not run_dir.path.is_dir():
        raise UserError(f"{run_dir} is a file, not a run directory.")
    config = run_dir / RunDir.CONFIG
    if config.is_file() and "decouple" not in (yaml.safe_load(config.read_text()) or {}):
        raise UserError(f"{run_dir} holds a run trained by ltcl train; give another --out.")
    removed = []
    names = (RunDir.CONFIG, RunDir.CLASS_COUNTS, RunDir.METRICS, RunDir.LAST, RunDir.BEST, RunDir.REPORT, TAU_GRID)
    for name in names:
        if (run_dir / name).is_file():
            (run_dir / name).unlink()
            removed.append(name)
    return removed


TAU_GRID = "tau_grid.csv"


def _stage_views(views, section):
    """One view: the run's first view (its preset and size), another preset at that size, or the evaluation
    transform (``test``: the training dataset's own transform is then replaced)."""
    size = list(views.sizes)[0]
    preset = section.view or list(views.presets)[0]
    if preset == "test":
        preset = "none"  # the loader's transform is not used: the plain batches read the evaluation transform
    return dataclasses.replace(views, num_views=1, presets=[preset], sizes=[size], contrastive_mode="uniform")


def _frozen_model(cfg: Config, source: dict, counts: list[int], device: torch.device, path: Path) -> nn.Module:
    model, _ = build_model(cfg, len(counts), device, class_names=source["class_names"], load_weights=False)
    weights = with_averages(source["model"], source.get("ema"))  # the weights the run evaluated (train.ema_decay)
    broken = non_finite_tensors(weights)
    if broken:
        raise BrokenModel(f"Checkpoint {path} holds NaN or inf weights ({broken[0]} ...): nothing to re-fit.")
    model.load_state_dict(weights)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return model


def set_stage_mode(model: nn.Module, bn: str) -> None:
    """The backbone in evaluation mode; with ``bn == "shift"`` its BatchNorm layers normalise with the batch's
    statistics and update their running statistics (their affine parameters stay frozen)."""
    model.eval()
    if bn == "shift":
        for module in model.backbone.modules():
            if isinstance(module, BATCH_NORMS):
                module.train()


# ----------------------------------------------------------------------------------------------------------
# Trained re-fits


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


def _row(epoch, step, lr, loss, stats, correct, images, seconds, refitter) -> dict:
    return {
        "epoch": epoch,
        "step": step,
        "lr": lr,
        "loss": loss,
        **{name: stats.get(name, float("nan")) for name in refitter.stat_names},
        "train_acc": 100.0 * correct / images if images else float("nan"),
        "images_per_s": images / max(seconds, 1e-9),
        "epoch_seconds": seconds,
    }


# ----------------------------------------------------------------------------------------------------------
# Records


class _Writer:
    """Writes the re-fit's checkpoints (the network with the exported classifier)."""

    def __init__(self, run_dir: RunDir, cfg: Config, source: dict, refitter: Refitter, facts: dict) -> None:
        self.run_dir, self.refitter = run_dir, refitter
        self.facts = {
            "config": to_dict(cfg),
            "class_counts": list(source["class_counts"]),
            "class_names": list(source["class_names"]),
        }
        self.record = {"method": refitter.name, **facts, "section": dataclasses.asdict(refitter.section)}

    def save(self, model, epoch, step, best, info=None, best_file=False) -> None:
        contents = {
            "format": FORMAT_VERSION,
            **self.facts,
            "model": model.state_dict(),
            "epoch": epoch,
            "batch": 0,
            "global_step": step,
            "best": best,
            "decouple": {**self.record, **({"fit": _plain(info)} if info else {})},
        }
        save_atomic(contents, self.run_dir.best_checkpoint if best_file else self.run_dir.last_checkpoint)


def _plain(value: Any) -> Any:
    """``value`` with tensors as lists (checkpoints and JSON hold plain values)."""
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _write_config(run_dir: RunDir, cfg: Config, refitter: Refitter, source_facts: dict) -> None:
    facts = {
        **source_facts,
        "seed": cfg.train.seed,
        "code_revision": code_revision(),
        "ltcl_version": __version__,
        "torch_version": str(torch.__version__),
        "command": " ".join(sys.argv),
    }
    block = {"method": refitter.name, **dataclasses.asdict(refitter.section)}
    document = {"run": facts, "decouple": block, **to_dict(cfg)}
    (run_dir / RunDir.CONFIG).write_text(yaml.safe_dump(document, sort_keys=False))


def _header(cfg, refitter, data, run_dir, path, source, note, amp, device) -> str:
    counts = data.train_counts
    groups = shot_groups(counts, many=cfg.data.many_threshold, few=cfg.data.few_threshold)
    sizes = " / ".join(f"{name} {int((groups == g).sum())}" for g, name in enumerate(SHOT_GROUPS))
    val = "no" if data.val is None else f"{len(data.val):,}"
    test = "no" if data.test is None else f"{len(data.test):,}"
    return "\n".join([
        f"ltcl decouple: {refitter.name} on {path} (epoch {source['epoch']}, {cfg.loss.objective}, "
        f"{cfg.model.backbone}) -> {run_dir}",
        f"  data   {cfg.data.dataset}: {sum(counts):,} train / {val} val / {test} test images, {len(counts)} classes "
        f"({max(counts)} ... {min(counts)} per class; {sizes})",
        f"  method {refitter.describe()}",
        f"         values: {note}; result: model.classifier {refitter.classifier} on the frozen backbone",
        f"  run    {device}, precision {amp[0]} ({amp[1]}); "
        + (_validation_use(refitter) if data.val is not None else "no validation split, ")
        + ("test split scored once, at the end" if data.test is not None else "no test split"),
    ])  # fmt: skip


def _validation_use(refitter: Refitter) -> str:
    if refitter.trains:
        return "validation split scored every epoch (the best epoch's checkpoint kept), "
    if refitter.name == "tau_norm" and refitter.section.tau < 0:
        return "tau chosen on the validation split, "
    return "validation split scored, "


def _final(context, refitter, writer, cfg, history, best, info, timing, started) -> DecoupleResult:
    """The final table (last epoch; the best-on-validation model), results.json and report.md."""
    model, run_dir = context.model, writer.run_dir
    epochs = history[-1]["epoch"]
    last_label = f"last epoch, {epochs}" if refitter.trains else refitter.name
    rows: dict[str, EvalResult] = {}
    last_val = None
    if history[-1].get("eval_split") == "val":
        last_val = EvalResult(*(history[-1][k] for k in ("many", "medium", "few", "all")))
        rows[f"val ({last_label})"] = last_val
    test = context.evaluate("test")
    if test is not None:
        rows[f"test ({last_label})"] = test
    best_val = best_test = None
    best_epoch = best["epoch"] if best else None
    if best_epoch is not None:
        if best_epoch == epochs:
            best_val, best_test = last_val, test
        else:
            model.load_state_dict(load_checkpoint(run_dir.best_checkpoint)["model"])
            best_val, best_test = context.evaluate("val"), context.evaluate("test")
        if refitter.trains:
            rows[f"val (best on val, epoch {best_epoch})"] = best_val
            if best_test is not None:
                rows[f"test (best on val, epoch {best_epoch})"] = best_test
    timing = {**timing, "wall_seconds": time.perf_counter() - started}
    d = cfg.data
    print(
        f"\nFinal accuracy (%), shot groups by training count: many > {d.many_threshold}, few < {d.few_threshold}\n"
        f"{format_table(rows)}"
    )
    print(timing_line(timing))
    revision = code_revision()
    results = {
        "name": cfg.name,
        "test": None if test is None else test.as_dict(),
        "test_best_val": None if best_test is None else best_test.as_dict(),
        "val_best": None if best_val is None else best_val.as_dict(),
        "best_epoch": best_epoch,
        "rows": {name: r.as_dict() for name, r in rows.items()},
        "per_class_test": None if test is None else test.per_class,
        "class_counts": context.class_counts,
        "seed": cfg.train.seed,
        "code_revision": revision,
        "command": " ".join(sys.argv),
        "timing": timing,
        "decouple": {**writer.record, **({"fit": _plain(info)} if info else {})},
    }
    run_dir.write_results(results)
    description = (
        f"{refitter.name} ({refitter.paper}) on the frozen backbone of {writer.record['source_checkpoint']} "
        f"(trained with {writer.record['source_objective']})"
    )
    run_dir.write_report(report_text(cfg, context.data, rows, test, revision, description))
    return DecoupleResult(run_dir.path, test, best_val, best_epoch, info)


def write_tau_grid(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """tau-normalisation's grid: one row per tau with its validation accuracy."""
    columns = ["tau", *(k for k in rows[0] if k != "tau")]
    lines = [",".join(columns)] + [",".join(_cell(r.get(k)) for k in columns) for r in rows]
    (Path(run_dir) / TAU_GRID).write_text("\n".join(lines) + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)
