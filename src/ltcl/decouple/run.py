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

This module is the driver (checks the request, builds the frozen network and the data, runs the re-fitter); the
re-fitter's context is in :mod:`ltcl.decouple.context`, a trained re-fit's epochs in :mod:`ltcl.decouple.stage`,
and what a re-fit writes in :mod:`ltcl.decouple.records`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ltcl.config import Config, from_dict
from ltcl.data.build import build_data
from ltcl.decouple.base import REFITTERS, RefitSetup, Refitter
from ltcl.decouple.context import RefitContext
from ltcl.decouple.records import TAU_GRID, DecoupleResult, _final, _header, _row, _write_config, _Writer
from ltcl.decouple.stage import _train
from ltcl.engine.checkpoint import load_checkpoint, non_finite_tensors
from ltcl.engine.distributed import pick_device
from ltcl.engine.ema import with_averages
from ltcl.engine.inference import BrokenModel
from ltcl.engine.recipe import build_model, model_views
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
