"""Settings times seeds: run a grid of configs (``ltcl sweep``), or group finished runs (``ltcl compare``),
and tabulate Many / Medium / Few / All as mean ± std over seeds.

A sweep is restartable: a run whose directory holds results.json is skipped, one with only checkpoint_last.pt
is resumed from it, so running the same command again after a crash finishes the sweep.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ltcl.config import apply_override, load_config
from ltcl.engine.evaluate import format_cell

COLUMNS = ("many", "medium", "few", "all")
# Keys that change how a run executes, not what it computes: a sweep may be continued with other values.
EXECUTION_ONLY = {
    "train.output_dir", "train.run_name", "train.progress", "train.tensorboard", "data.num_workers",
    "data.pin_memory", "data.persistent_workers", "data.prefetch_factor", "data.eval_batch_size",
}
RESERVED = {"train.seed": "--seeds", "train.run_name": "the sweep's naming", "train.output_dir": "--out"}


@dataclass
class GridAxis:
    key: str
    values: list[str]  # as typed on the command line, already type-checked
    numeric: bool


@dataclass
class PlannedRun:
    name: str  # run directory name, filesystem-safe
    seed: int
    setting: tuple[tuple[str, str], ...]  # (key, value) of every grid axis
    overrides: list[str]  # every --set of the run, the sweep's own included


@dataclass
class SettingRow:
    """One row of a results table: a setting and its runs over seeds."""

    label: str
    params: dict[str, str]
    run_dirs: list[Path]
    stats: dict[str, tuple[float, float | None] | None] = field(default_factory=dict)  # group -> (mean, std)


# ----------------------------------------------------------------------------------------------------------
# Planning


def split_values(text: str) -> list[str]:
    """Splits ``V1,V2`` on commas outside brackets, so ``[32,24],[32,32]`` gives two list values."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    values.append(current.strip())
    return values


def parse_grid(specs: list[str]) -> list[GridAxis]:
    """Reads ``--grid KEY=V1,V2`` options; every value is type-checked like ``--set`` before anything runs."""
    axes: list[GridAxis] = []
    for spec in specs:
        key, sep, raw = spec.partition("=")
        key = key.strip()
        values = split_values(raw) if sep else []
        if not key or not raw.strip() or "" in values:
            raise ValueError(f"--grid '{spec}' must have the form KEY=V1,V2 (for example "
                             "loss.alpha=0.1,0.5).")
        if key in RESERVED:
            raise ValueError(f"--grid cannot vary {key}: the sweep sets it (use {RESERVED[key]}).")
        if any(a.key == key for a in axes):
            raise ValueError(f"--grid names {key} twice; give all its values in one --grid {key}=V1,V2.")
        if len(set(values)) != len(values):
            raise ValueError(f"--grid {key} repeats a value: {raw}.")
        typed = []
        for value in values:
            node = apply_override({}, f"{key}={value}")  # raises for unknown keys and wrong types
            for part in key.split("."):
                node = node[part]
            typed.append(node)
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in typed)
        axes.append(GridAxis(key, values, numeric))
    return axes


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+=-]+", "-", text).strip("-") or "x"


def plan_sweep(axes: list[GridAxis], seeds: int, overrides: list[str], out: Path) -> list[PlannedRun]:
    """Every combination of grid values (cartesian product) times seeds 0..seeds-1, with readable names."""
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}.")
    fixed = {o.partition("=")[0].strip() for o in overrides}
    clash = sorted(fixed & ({a.key for a in axes} | set(RESERVED)))
    if clash:
        raise ValueError(f"--set {clash[0]} conflicts with the sweep, which sets {clash[0]} itself; drop "
                         "that --set.")
    last = [a.key.rsplit(".", 1)[-1] for a in axes]
    short = [s if last.count(s) == 1 else a.key for s, a in zip(last, axes)]
    runs, names = [], set()
    for combo in itertools.product(*(a.values for a in axes)):
        setting = tuple((a.key, v) for a, v in zip(axes, combo))
        for seed in range(seeds):
            name = "_".join([f"{s}={_safe(v)}" for s, v in zip(short, combo)] + [f"seed{seed}"])
            if name in names:
                raise ValueError(f"Two grid settings give the same run name {name}; make the values differ "
                                 "in letters or digits.")
            names.add(name)
            sets = list(overrides) + [f"{k}={v}" for k, v in setting]
            sets += [f"train.seed={seed}", f"train.output_dir={out}", f"train.run_name={name}"]
            runs.append(PlannedRun(name, seed, setting, sets))
    return runs


def sweep_commands(config: str, runs: list[PlannedRun], out: Path, nproc: int) -> list[str]:
    """One ``torchrun ... ltcl.cli train`` line per run: finished runs as comments, killed ones with
    ``--resume``."""
    lines = []
    for run in runs:
        run_dir = out / run.name
        if (run_dir / "results.json").is_file():
            lines.append(f"# done (results.json exists): {run_dir}")
            continue
        words = ["torchrun", "--nproc-per-node", str(nproc), "-m", "ltcl.cli", "train", "-c", config]
        for text in run.overrides:
            words += ["--set", text]
        if (run_dir / "checkpoint_last.pt").is_file():
            words += ["--resume", str(run_dir / "checkpoint_last.pt")]
        lines.append(shlex.join(words))
    return lines


def check_runs(config: str, runs: list[PlannedRun]) -> list:
    """The resolved config of every planned run; a bad value fails here, before anything trains."""
    from ltcl.engine.trainer import check_config

    configs = [load_config(config, run.overrides) for run in runs]
    for cfg in configs:
        check_config(cfg)
    return configs


def run_sweep(config: str, axes: list[GridAxis], runs: list[PlannedRun], out: Path) -> list[SettingRow]:
    """Trains every planned run in turn (skipping finished ones, resuming killed ones), then writes
    ``out/sweep.md``, ``out/sweep.csv`` and the sweep plots. Every config is checked before the first run."""
    from ltcl.engine.trainer import train

    configs = check_runs(config, runs)
    for i, (run, cfg) in enumerate(zip(runs, configs), 1):
        run_dir = out / run.name
        checkpoint = run_dir / "checkpoint_last.pt"
        if (run_dir / "config.yaml").is_file():
            _check_same_config(run_dir, cfg)
        if (run_dir / "results.json").is_file():
            print(f"[{i}/{len(runs)}] {run.name}: done already (results.json exists), skipped")
            continue
        if checkpoint.is_file():
            print(f"[{i}/{len(runs)}] {run.name}: resuming from {checkpoint}")
            train(cfg, resume=str(checkpoint))
        else:
            for stale in ("metrics.csv", "conflicts.csv"):  # rows of an attempt killed before any checkpoint
                (run_dir / stale).unlink(missing_ok=True)
            print(f"[{i}/{len(runs)}] {run.name}: training")
            train(cfg)
    rows = []
    for combo in itertools.product(*(a.values for a in axes)):
        setting = tuple((a.key, v) for a, v in zip(axes, combo))
        dirs = [out / r.name for r in runs if r.setting == setting]
        label = ", ".join(f"{k}={v}" for k, v in setting) or Path(config).stem
        rows.append(summarize(label, dict(setting), dirs))
    write_sweep_outputs(config, axes, rows, out)
    return rows


def _check_same_config(run_dir: Path, cfg) -> None:
    """A run directory is only reused (skipped or resumed) when it was made with the very same settings."""
    from ltcl.analysis.plots import run_config
    from ltcl.config import to_dict

    saved = run_config(run_dir)
    saved.pop("run", None)
    old, new = _flatten(saved), _flatten(to_dict(cfg))
    differing = sorted(k for k in (old.keys() | new.keys()) - EXECUTION_ONLY if old.get(k) != new.get(k))
    if differing:
        raise ValueError(f"Run directory {run_dir} was made with other settings ({', '.join(differing[:3])} "
                         "differ); choose another --out or delete that directory.")


# ----------------------------------------------------------------------------------------------------------
# Tables


def read_results(run_dir: Path) -> dict:
    path = Path(run_dir) / "results.json"
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"Run directory {run_dir} does not exist.")
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no results.json: the run has not finished (or is not an "
                                "ltcl run).")
    return json.loads(path.read_text())


def summarize(label: str, params: dict[str, str], run_dirs: list[Path]) -> SettingRow:
    """Mean and sample std (n - 1) over the runs of each test accuracy; None for a group without classes."""
    tests = [read_results(d)["test"] for d in run_dirs]
    row = SettingRow(label, params, list(run_dirs))
    for name in COLUMNS:
        values = np.array([t[name] for t in tests if t.get(name) is not None], dtype=np.float64)
        if values.size == 0:
            row.stats[name] = None
        else:
            row.stats[name] = (float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else None)
    return row


def format_stat(stat: tuple[float, float | None] | None) -> str:
    """``52.60 ± 0.31``; a plain mean for a single seed; ``n/a`` for an empty group."""
    if stat is None:
        return "n/a"
    mean, std = stat
    return format_cell(mean) if std is None else f"{mean:.2f} ± {std:.2f}"


def results_table(rows: list[SettingRow]) -> str:
    """Markdown table: setting, Many / Medium / Few / All (mean ± std, %), number of seeds."""
    lines = ["| setting | Many | Medium | Few | All | seeds |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        cells = " | ".join(format_stat(r.stats[c]) for c in COLUMNS)
        lines.append(f"| {r.label} | {cells} | {len(r.run_dirs)} |")
    return "\n".join(lines)


def write_csv(rows: list[SettingRow], path: Path) -> None:
    """The table as CSV: formatted cells plus the numbers behind them (mean and std per group)."""
    keys = list(dict.fromkeys(k for r in rows for k in r.params))
    header = ["setting", *keys, "Many", "Medium", "Few", "All", "seeds"]
    header += [f"{c}_{s}" for c in COLUMNS for s in ("mean", "std")]
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for r in rows:
            numbers = []
            for c in COLUMNS:
                mean, std = r.stats[c] or (None, None)
                numbers += ["" if mean is None else f"{mean:.4f}", "" if std is None else f"{std:.4f}"]
            writer.writerow([r.label, *(r.params.get(k, "") for k in keys),
                             *(format_stat(r.stats[c]) for c in COLUMNS), len(r.run_dirs), *numbers])


def write_sweep_outputs(config: str, axes: list[GridAxis], rows: list[SettingRow], out: Path) -> None:
    from ltcl.analysis.plots import plot_setting_bars, plot_setting_lines

    title = f"Sweep of {Path(config).name}: top-1 accuracy (mean ± std over seeds)"
    means = [(r.stats["all"] or (None, None))[0] for r in rows]
    stds = [(r.stats["all"] or (None, None))[1] for r in rows]
    plots = [plot_setting_bars([r.label for r in rows], means, stds, out / "sweep_all.png", title)]
    numeric = [a for a in axes if a.numeric]
    if len(numeric) == 1:
        axis = numeric[0]
        series: dict[str, tuple[list, list, list]] = {}
        for r in sorted(rows, key=lambda r: float(r.params[axis.key])):
            if r.stats["all"] is None:
                continue
            line = ", ".join(f"{k}={v}" for k, v in r.params.items() if k != axis.key)
            xs, means, stds = series.setdefault(line, ([], [], []))
            xs.append(float(r.params[axis.key]))
            means.append(r.stats["all"][0])
            stds.append(r.stats["all"][1])
        plots.append(plot_setting_lines(series, axis.key, out / f"sweep_{_safe(axis.key)}.png",
                                        f"Top-1 accuracy (All) against {axis.key} (mean ± std over seeds)"))
    seeds = max(len(r.run_dirs) for r in rows)
    lines = [f"# Sweep of {config}", "",
             "- grid: " + ("; ".join(f"{a.key} = {', '.join(a.values)}" for a in axes) or "none"),
             f"- seeds: 0..{seeds - 1} (train.seed); run directories under {out}", "",
             "Test accuracy in %: mean ± sample std over seeds (a plain mean for one seed); n/a: the shot "
             "group has no class.", "", results_table(rows), ""]
    lines += [f"![{p.name}]({p.name})" for p in plots] + [""]
    (out / "sweep.md").write_text("\n".join(lines))
    write_csv(rows, out / "sweep.csv")


# ----------------------------------------------------------------------------------------------------------
# ltcl compare: group hand-made runs by their resolved configs

IGNORED = {"train.seed", "train.run_name", "train.output_dir"}


def _flatten(values: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if not isinstance(value, str) else value
    return flat


def compare_runs(run_dirs: list[str | Path]) -> list[SettingRow]:
    """Groups runs whose configs are identical except seed, run name and output dir; labels each group by the
    config values that differ between groups (the first run directory's name when none differ)."""
    from ltcl.analysis.plots import run_config

    groups: dict[tuple, list[Path]] = {}
    flats: dict[tuple, dict[str, str]] = {}
    for d in map(Path, run_dirs):
        read_results(d)  # fail early, naming the directory
        values = run_config(d)
        values.pop("run", None)
        flat = {k: v for k, v in _flatten(values).items() if k not in IGNORED}
        key = tuple(sorted(flat.items()))
        groups.setdefault(key, []).append(d)
        flats[key] = flat
    all_keys = sorted({k for f in flats.values() for k in f})
    differing = [k for k in all_keys if len({f.get(k) for f in flats.values()}) > 1]
    rows = []
    for key, dirs in groups.items():
        label = ", ".join(f"{k}={flats[key].get(k, '(unset)')}" for k in differing) or dirs[0].name
        rows.append(summarize(label, {k: flats[key].get(k, "") for k in differing}, dirs))
    return rows
