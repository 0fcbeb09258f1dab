"""What a re-fit writes: the metrics rows, the checkpoints (:class:`_Writer`), ``config.yaml``, the header it
prints, the final table with ``results.json`` and ``report.md`` (:class:`DecoupleResult` is what it returns), and
tau-normalisation's ``tau_grid.csv``."""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from ltcl import __version__
from ltcl.config import Config, to_dict
from ltcl.data.longtail import SHOT_GROUPS, shot_groups
from ltcl.decouple.base import Refitter
from ltcl.engine.checkpoint import FORMAT_VERSION, load_checkpoint, save_atomic
from ltcl.engine.evaluate import EvalResult, format_table
from ltcl.engine.report import code_revision, report_text, results_document, timing_line
from ltcl.engine.rundir import RunDir


@dataclass
class DecoupleResult:
    run_dir: Path
    test: EvalResult | None
    val: EvalResult | None
    best_epoch: int | None
    info: dict[str, Any] = field(default_factory=dict)


TAU_GRID = "tau_grid.csv"


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
    results = results_document(
        cfg, rows, test, best_test, best_val, best_epoch, context.class_counts, timing, revision
    ) | {
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
