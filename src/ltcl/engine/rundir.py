"""The run directory: the one place that knows its file names, writes them and reads them back.

Layout::

    <train.output_dir>/<train.run_name>/
        config.yaml          resolved config with the run facts (seed, code revision, world size, command); written
                             once, when the run starts, and never rewritten
        class_counts.json    the exact training counts, class names and contrastive views per class
        metrics.csv          one row per epoch
        conflicts.csv        per-class SCL conflict ratios per epoch (train.monitor_conflicts)
        resumes.jsonl        one record per resume: when, from which step, which allowed keys changed
        plugins/             a copy of each plugin file the run loaded (its config names the originals)
        events.out.tfevents.*
        checkpoint_last.pt, checkpoint_best.pt
        results.json, report.md, *.png

Only the main process (rank 0) writes; readers work on any finished or unfinished run.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from typing import Any

import yaml

from ltcl.config import Config, save_config
from ltcl.data.longtail import ACCURACY_COLUMNS
from ltcl.errors import UserError

# metrics.csv: these columns, with the objective's own statistics (loss_cls, loss_con, ...) between the two groups
METRIC_HEAD = ["epoch", "step", "lr", "loss"]
METRIC_TAIL = ["train_acc", "images_per_s", "epoch_seconds", "eval_split", *ACCURACY_COLUMNS]


def metric_columns(row: dict[str, Any]) -> list[str]:
    """The metrics.csv columns of a run whose rows look like ``row``."""
    fixed = set(METRIC_HEAD) | set(METRIC_TAIL)
    return METRIC_HEAD + [k for k in row if k not in fixed] + METRIC_TAIL


CONFLICT_COLUMNS = ["epoch", "class", "train_count", "conflicting_pairs", "positive_pairs", "ratio"]


class RunDir:
    """Paths, writers and readers of one run directory.

    Args:
        path: the directory (need not exist yet).
    """

    CONFIG = "config.yaml"
    CLASS_COUNTS = "class_counts.json"
    METRICS = "metrics.csv"
    CONFLICTS = "conflicts.csv"
    RESUMES = "resumes.jsonl"
    RESULTS = "results.json"
    REPORT = "report.md"
    PLUGINS = "plugins"
    LAST = "checkpoint_last.pt"
    BEST = "checkpoint_best.pt"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def of(cls, cfg: Config) -> RunDir:
        """``train.output_dir / train.run_name`` (the config's name when run_name is empty)."""
        return cls(Path(cfg.train.output_dir) / (cfg.train.run_name or cfg.name))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    @property
    def last_checkpoint(self) -> Path:
        return self.path / self.LAST

    @property
    def best_checkpoint(self) -> Path:
        return self.path / self.BEST

    def holds_run(self) -> bool:
        return self.last_checkpoint.is_file()

    def is_finished(self) -> bool:
        return (self.path / self.RESULTS).is_file()

    def exists(self) -> None:
        """Raises FileNotFoundError naming the directory when it is not a directory."""
        if not self.path.is_dir():
            raise FileNotFoundError(f"Run directory {self.path} does not exist.")

    # ------------------------------------------------------------------------------------------------------
    # Writers (rank 0)

    def write_config(self, cfg: Config, facts: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.path / self.CONFIG, extra=facts)

    def record_plugins(self, paths: list[str]) -> None:
        """A copy of each plugin file in ``plugins/``: what the run's own methods were, even if the file changes."""
        for path in paths:
            (self.path / self.PLUGINS).mkdir(exist_ok=True)
            shutil.copyfile(path, self.path / self.PLUGINS / Path(path).name)

    def write_class_counts(self, counts: list[int], names: list[str], view_counts: list[int]) -> None:
        document = {"class_counts": counts, "class_names": names, "contrastive_views": view_counts}
        (self.path / self.CLASS_COUNTS).write_text(json.dumps(document, indent=1))

    def truncate_after(self, epoch: int) -> None:
        """On resume, drop rows of epochs that will be run again, so the CSV files keep one row per epoch."""
        for name in (self.METRICS, self.CONFLICTS):
            rows = self._read_csv(name)
            if rows is None:
                continue
            with (self.path / name).open("w", newline="") as file:
                if rows:
                    writer = csv.DictWriter(file, fieldnames=list(rows[0]))
                    writer.writeheader()
                    writer.writerows(r for r in rows if int(r["epoch"]) <= epoch)

    def clear_failed_attempt(self) -> list[str]:
        """Removes the files of an attempt that stopped before its first checkpoint (a crash, a refused setting),
        so that a new run in this directory starts from nothing; returns the names removed. Files ltcl does not
        write are left alone."""
        removed = []
        for path in sorted(self.path.glob("events.out.tfevents.*")) + [
            self.path / n for n in (self.CONFIG, self.CLASS_COUNTS, self.METRICS, self.CONFLICTS, self.RESUMES)
        ]:
            if path.is_file():
                path.unlink()
                removed.append(path.name)
        if (self.path / self.PLUGINS).is_dir():
            shutil.rmtree(self.path / self.PLUGINS)
            removed.append(self.PLUGINS + "/")
        return removed

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Adds an epoch's row; the columns are those of the file's header once it exists."""
        existing = self._read_csv(self.METRICS)
        columns = list(existing[0]) if existing else metric_columns(row)
        self._append_csv(self.METRICS, columns, [[_cell(row.get(k)) for k in columns]])

    def append_conflicts(self, epoch: int, conflicts: list[int], pairs: list[int], counts: list[int]) -> None:
        """Per-class SCL conflict counts of one epoch (Fig. 4a)."""
        rows = [
            [epoch, j, counts[j], c, p, f"{c / p:.6f}" if p else ""] for j, (c, p) in enumerate(zip(conflicts, pairs))
        ]
        self._append_csv(self.CONFLICTS, CONFLICT_COLUMNS, rows)

    def append_resume(self, record: dict[str, Any]) -> None:
        with (self.path / self.RESUMES).open("a") as file:
            file.write(json.dumps(record) + "\n")

    def write_results(self, results: dict[str, Any]) -> None:
        (self.path / self.RESULTS).write_text(json.dumps(results, indent=1))

    def write_report(self, text: str) -> None:
        (self.path / self.REPORT).write_text(text)

    def link_plots(self, plots: list[Path]) -> None:
        """Appends a Plots section linking ``plots`` (files in this directory) to report.md."""
        report = self.path / self.REPORT
        if not plots or not report.is_file():
            return
        links = "\n".join(f"![{p.name}]({p.name})" for p in plots)
        report.write_text(report.read_text().rstrip("\n") + f"\n\n## Plots\n\n{links}\n")

    # ------------------------------------------------------------------------------------------------------
    # Readers

    def read_config(self) -> dict[str, Any]:
        """config.yaml as plain dicts, its ``run`` block of facts included."""
        path = self.path / self.CONFIG
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: {self.path} is not an ltcl run directory.")
        return yaml.safe_load(path.read_text()) or {}

    def read_results(self) -> dict[str, Any]:
        self.exists()
        path = self.path / self.RESULTS
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.path} holds no {self.RESULTS}: the run has not finished (or is not an ltcl run)."
            )
        return json.loads(path.read_text())

    def read_metrics(self) -> list[dict[str, str]]:
        rows = self._read_csv(self.METRICS)
        if not rows:
            raise UserError(f"{self.path / self.METRICS} holds no epoch rows.")
        return rows

    def read_conflicts(self) -> list[dict[str, str]]:
        rows = self._read_csv(self.CONFLICTS)
        if rows is None:
            raise FileNotFoundError(
                f"{self.path / self.CONFLICTS} does not exist: train the run with --set "
                "train.monitor_conflicts=true (and an objective with a contrastive term) to "
                "record conflict ratios."
            )
        if not rows:
            raise UserError(f"{self.path / self.CONFLICTS} holds no rows; the run recorded no epoch.")
        return rows

    def read_resumes(self) -> list[dict[str, Any]]:
        path = self.path / self.RESUMES
        return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []

    def thresholds(self) -> tuple[int, int]:
        """(many, few) shot-group thresholds of the run's config."""
        data = self.read_config().get("data", {})
        return int(data.get("many_threshold", 100)), int(data.get("few_threshold", 20))

    def label(self) -> str:
        """``run name (objective)``, the legend entry of a run."""
        return f"{self.path.name} ({self.read_config().get('loss', {}).get('objective', '?')})"

    # ------------------------------------------------------------------------------------------------------

    def _read_csv(self, name: str) -> list[dict[str, str]] | None:
        path = self.path / name
        if not path.is_file():
            return None
        with path.open(newline="") as file:
            return list(csv.DictReader(file))

    def _append_csv(self, name: str, header: list[str], rows: list[list[Any]]) -> None:
        path = self.path / name
        new = not path.exists()
        with path.open("a", newline="") as file:
            writer = csv.writer(file)
            if new:
                writer.writerow(header)
            writer.writerows(rows)


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
