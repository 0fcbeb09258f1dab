"""Tables of finished runs: Many / Medium / Few / All test accuracy as mean ± std over the seeds of each setting.

``ltcl sweep`` tabulates its grid with :func:`summarize` and prints :func:`results_table` (and writes
:func:`write_csv`). ``ltcl compare`` groups hand-made runs by their resolved configs with :func:`group_runs` and
reads each run as a measurement of ``ltcl.analysis.leaderboard`` (:func:`run_measurements`), whose statistics both
use: mean ± sample std over distinct seeds. A run's ECE columns are read by :mod:`ltcl.analysis.eval_ece`.
"""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltcl.analysis.eval_ece import read_eval_ece
from ltcl.analysis.leaderboard import Measurement
from ltcl.config import flatten
from ltcl.data.longtail import ACCURACY_COLUMNS
from ltcl.engine.evaluate import format_cell
from ltcl.engine.rundir import RunDir
from ltcl.errors import UserError

# What ltcl compare ignores when grouping runs into settings: the seeds of a setting and where each run lives.
COMPARE_IGNORES = frozenset({"train.seed", "train.run_name", "train.output_dir"})
HEADERS = [c.capitalize() for c in ACCURACY_COLUMNS]  # Many, Medium, Few, All
# What every number of these tables is: the test accuracy of each run's model after its last epoch.
LAST_EPOCH_NOTE = (
    f"Test accuracy in % of the last-epoch model ({RunDir.RESULTS} test; the best-on-validation model's is "
    "test_best_val)"
)


@dataclass
class SettingRow:
    """One row of a results table: a setting and its runs over seeds.

    Attributes:
        label: the row's name, e.g. ``loss.alpha=0.1``.
        params: the config values that define the setting, as text.
        run_dirs: the runs of the setting (one per seed).
        stats: accuracy column -> (mean, sample std or None for one value), or None for a group without classes
            (or a setting whose runs have no test split).
        seeds: the distinct train.seed values of the runs (two runs of one seed are one seed).
        untested: the runs without a test split (results.json ``test`` is None): they add no number to ``stats``.
    """

    label: str
    params: dict[str, str]
    run_dirs: list[Path]
    stats: dict[str, tuple[float, float | None] | None] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    untested: list[Path] = field(default_factory=list)

    def seeds_cell(self) -> str:
        """``2``, or ``2 (3 runs)`` when a seed was run more than once."""
        seeds, runs = len(self.seeds), len(self.run_dirs)
        return str(seeds) if seeds == runs else f"{seeds} ({runs} run{'s' if runs > 1 else ''})"


def summarize(label: str, params: dict[str, str], run_dirs: list[Path]) -> SettingRow:
    """Mean and sample std (n - 1) over the distinct seeds of each test accuracy (the last-epoch model's,
    results.json ``test``; a seed run twice counts once, with the mean of its runs); None for a group without classes.
    A run without a test split adds no number (``untested``).

    Raises:
        FileNotFoundError: a run directory that does not exist or holds no results (named in the message).
    """
    from ltcl.analysis.leaderboard import build_settings

    (setting,) = build_settings(run_measurements([(label, params, list(run_dirs))]))
    row = SettingRow(label, params, list(run_dirs), seeds=setting.seeds)
    row.untested = [Path(d) for d in setting.untested]
    for column in ACCURACY_COLUMNS:
        stat = setting.stats[column]
        row.stats[column] = None if stat is None else (stat.mean, stat.std)
    return row


def _seed(run_dir: Path, results: dict[str, Any]) -> Any:
    """The run's seed: results.json's, else its config's train.seed (older runs)."""
    if results.get("seed") is not None:
        return results["seed"]
    return RunDir(run_dir).read_config().get("train", {}).get("seed")


def format_stat(stat: tuple[float, float | None] | None) -> str:
    """``52.60 ± 0.31``; a plain mean for a single seed; ``n/a`` for an empty group."""
    if stat is None:
        return "n/a"
    mean, std = stat
    return format_cell(mean) if std is None else f"{mean:.2f} ± {std:.2f}"


def results_table(rows: list[SettingRow]) -> str:
    """Markdown table: setting, Many / Medium / Few / All (mean ± std, %), number of distinct seeds (and of runs
    when a seed ran twice)."""
    lines = [f"| setting | {' | '.join(HEADERS)} | seeds |", "| --- |" + " ---: |" * (len(HEADERS) + 1)]
    for r in rows:
        cells = " | ".join(format_stat(r.stats[c]) for c in ACCURACY_COLUMNS)
        lines.append(f"| {r.label} | {cells} | {r.seeds_cell()} |")
    return "\n".join(lines)


def write_csv(rows: list[SettingRow], path: Path) -> None:
    """The table as CSV: formatted cells plus the numbers behind them (mean and std per group)."""
    keys = list(dict.fromkeys(k for r in rows for k in r.params))
    header = ["setting", *keys, *HEADERS, "seeds", "runs"]
    header += [f"{c}_{s}" for c in ACCURACY_COLUMNS for s in ("mean", "std")]
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for r in rows:
            numbers = []
            for c in ACCURACY_COLUMNS:
                mean, std = r.stats[c] or (None, None)
                numbers += ["" if mean is None else f"{mean:.4f}", "" if std is None else f"{std:.4f}"]
            cells = [format_stat(r.stats[c]) for c in ACCURACY_COLUMNS]
            row = [r.label, *(r.params.get(k, "") for k in keys), *cells, len(r.seeds), len(r.run_dirs), *numbers]
            writer.writerow(row)


def _text(value: Any) -> str:
    """A config value as a row label shows it: strings as they are, everything else as JSON (0.1, [32, 24])."""
    return value if isinstance(value, str) else json.dumps(value)


@dataclass
class RunPaths:
    """What ``ltcl compare`` was given, sorted: finished runs, unfinished ones (config.yaml but no results.json),
    and paths that are no run at all (files, directories without config.yaml)."""

    finished: list[Path] = field(default_factory=list)
    unfinished: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)


def sort_run_paths(paths: list[str | Path]) -> RunPaths:
    """Sorts the paths of a shell glob such as ``runs/*``; a path that does not exist counts as finished, so that
    :func:`compare_runs` names it in its error."""
    sorted_paths = RunPaths()
    for path in map(Path, paths):
        run = RunDir(path)
        if not path.exists() or run.is_finished():
            sorted_paths.finished.append(path)
        elif path.is_dir() and (run / RunDir.CONFIG).is_file():
            sorted_paths.unfinished.append(path)
        else:
            sorted_paths.skipped.append(path)
    return sorted_paths


def trained_epochs(run: RunDir, configured: int) -> int:
    """The epochs a run trained to: the last ``--extend-epochs`` recorded in resumes.jsonl, else its config's."""
    extensions = [r["extended_epochs"][1] for r in run.read_resumes() if r.get("extended_epochs")]
    return int(extensions[-1]) if extensions else configured


def group_runs(run_dirs: list[str | Path]) -> list[tuple[str, dict[str, str], list[Path]]]:
    """Groups runs whose configs are identical except seed, run name and output dir; labels each group by the
    config values that differ between groups (those every group has, when they suffice to tell the groups apart;
    the first run directory's name when none differ). An extended run
    counts with the epochs it trained (``optim.epochs`` as extended), not those its config.yaml was written with.

    Returns:
        (label, the differing values as text, run directories) per group, in order of first appearance.

    Raises:
        FileNotFoundError: a run directory that does not exist or holds no results.json (named in the message).
    """
    groups: dict[tuple, list[Path]] = {}
    flats: dict[tuple, dict[str, str]] = {}
    for d in map(Path, run_dirs):
        run = RunDir(d)
        run.read_results()  # fail early, naming the directory
        values = run.read_config()
        values.pop("run", None)
        if "epochs" in values.get("optim", {}):
            values["optim"]["epochs"] = trained_epochs(run, values["optim"]["epochs"])
        flat = {k: _text(v) for k, v in flatten(values).items() if k not in COMPARE_IGNORES}
        key = tuple(sorted(flat.items()))
        groups.setdefault(key, []).append(d)
        flats[key] = flat
    all_keys = sorted({k for f in flats.values() for k in f})
    differing = [k for k in all_keys if len({f.get(k) for f in flats.values()}) > 1]
    differing = _telling_keys(differing, list(flats.values()))
    result = []
    for key, dirs in groups.items():
        label = ", ".join(f"{k}={flats[key].get(k, '(unset)')}" for k in differing) or dirs[0].name
        result.append((label, {k: flats[key].get(k, "") for k in differing}, dirs))
    return result


def _telling_keys(differing: list[str], flats: list[dict[str, str]]) -> list[str]:
    """The differing keys a label needs: those every group has, then each key that only some groups have (a method's
    section: loss.acl.* of bs+acl against bs) only if it tells more groups apart; in sorted order."""

    def distinct(keys: list[str]) -> int:
        return len({tuple(f.get(k) for k in keys) for f in flats})

    keys = [k for k in differing if all(k in f for f in flats)]
    for key in differing:
        if key not in keys and distinct(keys) < len(flats) and distinct([*keys, key]) > distinct(keys):
            keys.append(key)
    return sorted(keys)


def run_epochs(run_dir: str | Path) -> int | None:
    """The epochs a run trained (its config's optim.epochs, as extended); None when its config has none."""
    run = RunDir(run_dir)
    epochs = run.read_config().get("optim", {}).get("epochs")
    return None if epochs is None else trained_epochs(run, epochs)


def compare_runs(run_dirs: list[str | Path]) -> list[SettingRow]:
    """The groups of :func:`group_runs`, each summarized over its seeds."""
    return [summarize(label, params, dirs) for label, params, dirs in group_runs(run_dirs)]


def run_measurements(groups: list[tuple[str, dict[str, str], list[Path]]]) -> list[Measurement]:
    """One measurement per run directory of each group of :func:`group_runs`: its last-epoch test accuracies and
    the best-on-val model's All (results.json), the ECE of its eval report, its trained epochs and the median
    epoch's seconds (metrics.csv)."""
    measurements = []
    for label, params, dirs in groups:
        for d in map(Path, dirs):
            run = RunDir(d)
            results = run.read_results()
            test, best = results.get("test"), results.get("test_best_val") or {}
            values = {c: (test or {}).get(c) for c in ACCURACY_COLUMNS} | {"val_best_all": best.get("all")}
            calibration = read_eval_ece(d)
            seconds = [float(r["epoch_seconds"]) for r in _metrics(run) if r.get("epoch_seconds")]
            measurements.append(
                Measurement(
                    setting=label,
                    label=label,
                    seed=_seed(d, results),
                    values=values | calibration.values,
                    epochs=run_epochs(d),
                    epochs_in_setting=True,
                    seconds_per_epoch=statistics.median(seconds) if seconds else None,
                    source=str(d),
                    params=params,
                    tested=test is not None,
                    eval_report=calibration.report,
                    logit_adjust_tau=calibration.logit_adjust_tau,
                )
            )
    return measurements


def _metrics(run: RunDir) -> list[dict[str, str]]:
    """metrics.csv's rows; none for a run without the file or without an epoch row."""
    if not (run / RunDir.METRICS).is_file():
        return []
    try:
        return run.read_metrics()
    except UserError:
        return []
