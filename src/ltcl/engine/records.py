"""The run directory: resolved config, class counts, metrics.csv, TensorBoard events, report.md.

Only the main process (rank 0) writes. Layout (design.md):

    <train.output_dir>/<train.run_name>/
        config.yaml          resolved config with the run facts (seed, code revision, world size, command)
        class_counts.json    the exact training counts and class names
        metrics.csv          one row per epoch
        conflicts.csv        per-class SCL conflict ratios per epoch (train.monitor_conflicts)
        events.out.tfevents.*
        checkpoint_last.pt, checkpoint_best.pt
        report.md            the final table, linked plots
"""

from __future__ import annotations

import csv
import json
import math
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from ltcl import __version__
from ltcl.config import Config, save_config

METRIC_COLUMNS = [
    "epoch", "step", "lr", "loss", "loss_cls", "loss_con", "train_acc", "images_per_s", "epoch_seconds",
    "eval_split", "many", "medium", "few", "all",
]


def code_revision() -> str:
    """The git commit of the ltcl source (with ``-dirty`` for uncommitted changes), or ``unknown``."""
    source = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return f"unknown (ltcl {__version__})"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return f"unknown (ltcl {__version__})"


def run_directory(cfg: Config) -> Path:
    return Path(cfg.train.output_dir) / (cfg.train.run_name or cfg.name)


class RunRecorder:
    """Writes the run's files (a no-op on processes other than rank 0)."""

    def __init__(self, cfg: Config, run_dir: Path, *, is_main: bool, resumed: bool, world_size: int) -> None:
        self.cfg, self.run_dir, self.is_main = cfg, run_dir, is_main
        self.writer = None
        if not is_main:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        facts = {
            "seed": cfg.train.seed,
            "code_revision": code_revision(),
            "ltcl_version": __version__,
            "torch_version": str(torch.__version__),
            "python": platform.python_version(),
            "world_size": world_size,
            "command": " ".join(sys.argv),
            "resumed": resumed,
        }
        save_config(cfg, run_dir / "config.yaml", extra=facts)
        if cfg.train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir))
            except ImportError:  # tensorboard is a declared dependency; a broken install should not stop training
                print("TensorBoard is not importable; continuing without event files.", file=sys.stderr)

    def save_class_counts(self, counts: list[int], names: list[str], view_counts: list[int]) -> None:
        if self.is_main:
            document = {"class_counts": counts, "class_names": names, "contrastive_views": view_counts}
            (self.run_dir / "class_counts.json").write_text(json.dumps(document, indent=1))

    def truncate_after(self, epoch: int) -> None:
        """On resume, drop rows of epochs that will be run again, so metrics.csv has one row per epoch."""
        for name in ("metrics.csv", "conflicts.csv"):
            path = self.run_dir / name
            if not self.is_main or not path.exists():
                continue
            with path.open(newline="") as file:
                rows = list(csv.DictReader(file))
            with path.open("w", newline="") as file:
                if rows:
                    writer = csv.DictWriter(file, fieldnames=list(rows[0]))
                    writer.writeheader()
                    writer.writerows(r for r in rows if int(r["epoch"]) <= epoch)

    def log_epoch(self, row: dict[str, Any]) -> None:
        if not self.is_main:
            return
        path = self.run_dir / "metrics.csv"
        new = not path.exists()
        with path.open("a", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=METRIC_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow({k: _cell(row.get(k)) for k in METRIC_COLUMNS})
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step") and value is not None:
                    tag = f"{row['eval_split']}/{key}" if key in ("many", "medium", "few", "all") else f"train/{key}"
                    self.writer.add_scalar(tag, value, row["epoch"])
            self.writer.flush()

    def log_conflicts(self, epoch: int, conflicts: torch.Tensor, pairs: torch.Tensor, counts: list[int]) -> None:
        """Per-class SCL conflict ratio of one epoch (Fig. 4a)."""
        if not self.is_main:
            return
        path = self.run_dir / "conflicts.csv"
        new = not path.exists()
        with path.open("a", newline="") as file:
            writer = csv.writer(file)
            if new:
                writer.writerow(["epoch", "class", "train_count", "conflicting_pairs", "positive_pairs", "ratio"])
            for j, (c, p) in enumerate(zip(conflicts.tolist(), pairs.tolist())):
                writer.writerow([epoch, j, counts[j], c, p, f"{c / p:.6f}" if p else ""])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
