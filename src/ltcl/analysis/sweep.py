"""Settings times seeds (``ltcl sweep``): plan a grid of configs, train each run in turn, tabulate and plot them.

A sweep is restartable: a run whose directory holds results.json is skipped, one with only checkpoint_last.pt
is resumed from it, so running the same command again after a crash finishes the sweep. A directory is reused
only when it was made with the very same settings (keys that change how a run executes aside).
"""

from __future__ import annotations

import itertools
import re
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

from ltcl.analysis.tables import LAST_EPOCH_NOTE, SettingRow, results_table, summarize, write_csv
from ltcl.config import Config, apply_override, changed_keys, load_config, to_dict
from ltcl.engine.loggers import check_logger_names
from ltcl.engine.resume import EXECUTION_KEYS
from ltcl.engine.rundir import RunDir
from ltcl.errors import UserError

RESERVED = {"train.seed": "--seeds", "train.run_name": "the sweep's naming", "train.output_dir": "--out"}
# What may differ between a run directory and the sweep that reuses it: how the run executes, and where the
# sweep put it (a copied or moved sweep keeps its runs).
SWEEP_MAY_CHANGE = EXECUTION_KEYS | {"train.output_dir", "train.run_name"}


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
            raise UserError(f"--grid '{spec}' must have the form KEY=V1,V2 (for example loss.alpha=0.1,0.5).")
        if key in RESERVED:
            raise UserError(f"--grid cannot vary {key}: the sweep sets it (use {RESERVED[key]}).")
        if any(a.key == key for a in axes):
            raise UserError(f"--grid names {key} twice; give all its values in one --grid {key}=V1,V2.")
        if len(set(values)) != len(values):
            raise UserError(f"--grid {key} repeats a value: {raw}.")
        typed = []
        for value in values:
            node = apply_override({}, f"{key}={value}")  # raises for unknown keys and wrong types
            for part in key.split("."):
                node = node[part]
            typed.append(node)
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in typed)
        axes.append(GridAxis(key, values, numeric))
    return axes


def safe_name(text: str) -> str:
    """``text`` as a piece of a file name: runs of other characters than letters, digits and ``.+=-`` become -."""
    return re.sub(r"[^A-Za-z0-9.+=-]+", "-", text).strip("-") or "x"


def plan_sweep(axes: list[GridAxis], seeds: int, overrides: list[str], out: Path) -> list[PlannedRun]:
    """Every combination of grid values (cartesian product) times seeds 0..seeds-1, with readable names."""
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}.")
    fixed = {o.partition("=")[0].strip() for o in overrides}
    clash = sorted(fixed & ({a.key for a in axes} | set(RESERVED)))
    if clash:
        raise UserError(f"--set {clash[0]} conflicts with the sweep, which sets {clash[0]} itself; drop that --set.")
    last = [a.key.rsplit(".", 1)[-1] for a in axes]
    short = [s if last.count(s) == 1 else a.key for s, a in zip(last, axes)]
    runs, names = [], set()
    for combo in itertools.product(*(a.values for a in axes)):
        setting = tuple((a.key, v) for a, v in zip(axes, combo))
        for seed in range(seeds):
            name = "_".join([f"{s}={safe_name(v)}" for s, v in zip(short, combo)] + [f"seed{seed}"])
            if name in names:
                raise UserError(
                    f"Two grid settings give the same run name {name}; make the values differ in letters or digits."
                )
            names.add(name)
            sets = list(overrides) + [f"{k}={v}" for k, v in setting]
            sets += [f"train.seed={seed}", f"train.output_dir={out}", f"train.run_name={name}"]
            runs.append(PlannedRun(name, seed, setting, sets))
    return runs


def sweep_commands(config: str, runs: list[PlannedRun], out: Path, nproc: int) -> list[str]:
    """One ``torchrun ... ltcl.cli train`` line per run: finished runs as comments, killed ones with ``--resume``."""
    lines = []
    for run in runs:
        run_dir = RunDir(out / run.name)
        if run_dir.is_finished():
            lines.append(f"# done ({RunDir.RESULTS} exists): {run_dir}")
            continue
        words = ["torchrun", "--nproc-per-node", str(nproc), "-m", "ltcl.cli", "train", "-c", config]
        for text in run.overrides:
            words += ["--set", text]
        if run_dir.holds_run():
            words += ["--resume", str(run_dir.last_checkpoint)]
        lines.append(shlex.join(words))
    return lines


def check_runs(config: str, runs: list[PlannedRun]) -> list[Config]:
    """The resolved config of every planned run; a bad value fails here, before anything trains."""
    from ltcl.data.datasets import resolve_data_paths
    from ltcl.methods import resolve_config

    configs = []
    for run in runs:
        cfg = resolve_config(load_config(config, run.overrides))
        check_logger_names(cfg.train.loggers)
        # absolute data paths, as a checkpoint keeps them: a sweep continued from another directory still matches
        configs.append(replace(cfg, data=resolve_data_paths(cfg.data)))
    return configs


def check_same_config(run_dir: RunDir, saved: dict, cfg: Config) -> None:
    """A run directory is only reused (skipped or resumed) when ``saved``, the config it was made with, equals
    the planned ``cfg`` in every key outside SWEEP_MAY_CHANGE."""
    saved = {k: v for k, v in saved.items() if k != "run"}  # config.yaml's facts of the run
    differing = [k for k in changed_keys(saved, to_dict(cfg)) if k not in SWEEP_MAY_CHANGE]
    if differing:
        raise UserError(
            f"Run directory {run_dir} was made with other settings ({', '.join(differing[:3])} differ); "
            "choose another --out or delete that directory."
        )


# ----------------------------------------------------------------------------------------------------------
# Running


def run_sweep(
    config: str, axes: list[GridAxis], runs: list[PlannedRun], out: Path, overrides: list[str] | None = None
) -> list[SettingRow]:
    """Trains every planned run in turn (skipping finished ones, resuming killed ones), draws each run's plots
    into its report.md, then writes ``out/sweep.md``, ``out/sweep.csv`` and the sweep plots. Every config is
    checked before the first run. ``overrides``: the sweep's own ``--set`` values, recorded in sweep.md."""
    from ltcl.analysis.run_plots import make_run_plots
    from ltcl.engine.resume import plan_resume
    from ltcl.engine.trainer import train

    configs = check_runs(config, runs)
    for i, (run, cfg) in enumerate(zip(runs, configs), 1):
        run_dir, step = RunDir(out / run.name), f"[{i}/{len(runs)}] {run.name}"
        if (run_dir / RunDir.CONFIG).is_file():
            check_same_config(run_dir, run_dir.read_config(), cfg)
        if run_dir.is_finished():
            print(f"{step}: done already ({RunDir.RESULTS} exists), skipped")
            continue
        if run_dir.holds_run():
            print(f"{step}: resuming from {run_dir.last_checkpoint}")
            plan = plan_resume(run_dir.last_checkpoint)  # the checkpoint's config is the run's config
            check_same_config(run_dir, to_dict(plan.cfg), cfg)
            result = train(plan.cfg, resume=plan)
        else:  # new, or killed before its first checkpoint: train() starts it again from nothing
            print(f"{step}: training")
            result = train(cfg)
        if not result.already_finished:
            run_dir.link_plots(make_run_plots(run_dir.path))
    rows = []
    for combo in itertools.product(*(a.values for a in axes)):
        setting = tuple((a.key, v) for a, v in zip(axes, combo))
        dirs = [out / r.name for r in runs if r.setting == setting]
        label = ", ".join(f"{k}={v}" for k, v in setting) or Path(config).stem
        rows.append(summarize(label, dict(setting), dirs))
    write_sweep_outputs(config, axes, rows, out, overrides)
    return rows


def write_sweep_outputs(
    config: str, axes: list[GridAxis], rows: list[SettingRow], out: Path, overrides: list[str] | None = None
) -> None:
    """sweep.md (grid, the sweep's --set values, table, plots), sweep.csv, and the plots of All per setting
    (Fig. 4b) and, for a single numeric axis, against it (Fig. 4c)."""
    from ltcl.analysis.paper_plots import plot_setting_bars, plot_setting_lines

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
            xs, line_means, line_stds = series.setdefault(line, ([], [], []))
            xs.append(float(r.params[axis.key]))
            line_means.append(r.stats["all"][0])
            line_stds.append(r.stats["all"][1])
        title = f"Top-1 accuracy (All) against {axis.key} (mean ± std over seeds)"
        plots.append(plot_setting_lines(series, axis.key, out / f"sweep_{safe_name(axis.key)}.png", title))
    seeds = max(len(r.run_dirs) for r in rows)
    lines = [
        f"# Sweep of {config}",
        "",
        "- grid: " + ("; ".join(f"{a.key} = {', '.join(a.values)}" for a in axes) or "none"),
        "- --set (every run): " + (", ".join(f"`{o}`" for o in overrides or []) or "none"),
        f"- seeds: 0..{seeds - 1} (train.seed); run directories under {out}",
        "",
        f"{LAST_EPOCH_NOTE}: mean ± sample std over seeds (a plain mean for one seed); n/a: the shot group has no "
        "class.",
        "",
        results_table(rows),
        "",
    ]
    lines += [f"![{p.name}]({p.name})" for p in plots] + [""]
    (out / "sweep.md").write_text("\n".join(lines))
    write_csv(rows, out / "sweep.csv")
