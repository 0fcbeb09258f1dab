"""The leaderboard of ``ltcl compare``: settings over distinct seeds, and paired differences with confidence intervals.

A :class:`Measurement` is one trained run: a row of a results csv (``benchmarks/results/cifar10_lt_ablation.csv``, read
by :func:`ltcl.analysis.leaderboard_rows.read_results_csv`) or a run directory
(``ltcl.analysis.tables.run_measurements``). Measurements of one setting and one schedule form a :class:`Setting`; its
numbers are the mean and sample standard deviation over its *distinct* seeds, where the value of a seed that ran more
than once is the mean of its runs (a seed is one draw of the data order, augmentation and initial weights; two runs of
it are not two samples).

A :class:`Difference` pairs two settings by seed: per shared seed, first minus second; the mean and sample std of
those differences and the 95% confidence interval of their mean from the paired t distribution (n - 1 degrees of
freedom), none with fewer than two shared seeds. ``ltcl compare --baseline`` asks every setting against the baseline;
``benchmarks/cifar10_ablation.py --table`` asks its own questions. Both print
:func:`ltcl.analysis.leaderboard_format.settings_table` and :func:`ltcl.analysis.leaderboard_format.differences_table`,
the README's tables.

This module holds the measurements, settings and differences and their statistics; a results csv is read by
:mod:`ltcl.analysis.leaderboard_rows`, the tables are written by :mod:`ltcl.analysis.leaderboard_format`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltcl.data.longtail import ACCURACY_COLUMNS
from ltcl.errors import UserError

# Test accuracy in % of the last-epoch model (Many / Medium / Few / All), then the best-on-validation model's All
COLUMNS = (*ACCURACY_COLUMNS, "val_best_all")
# Expected calibration error per shot group and overall, from the runs' eval reports (ltcl eval)
ECE_COLUMNS = tuple(f"ece_{group}" for group in ACCURACY_COLUMNS)
CONFIDENCE = 0.95
MINUS = "−"  # the sign between the two settings of a difference's label


@dataclass
class Measurement:
    """One trained run.

    Attributes:
        setting: the name that groups runs (a csv's setting, or the label of a group of run directories).
        label: how tables name the setting.
        seed: the run's train.seed.
        values: column of :data:`COLUMNS` or :data:`ECE_COLUMNS` -> the run's number, None where it has none.
        epochs: the epochs it trained (an extended run: as extended); None when unknown.
        epochs_in_setting: the setting already tells the schedule (run directories: optim.epochs is in their
            config); otherwise settings are also split by ``epochs``.
        seconds_per_epoch: the median epoch's wall time, or None.
        source: where it was read (a run directory, or csv:row).
        params: the config values that define the setting, as text (run directories).
        tested: False for a run without a test split (it adds no number).
        eval_report: the eval report its ECE columns come from (run directories), or None.
        logit_adjust_tau: the logit adjustment of the outputs that report scored (0: the model's own).
    """

    setting: str
    label: str
    seed: Any
    values: dict[str, float | None]
    epochs: int | None = None
    epochs_in_setting: bool = False
    seconds_per_epoch: float | None = None
    source: str = ""
    params: dict[str, str] = field(default_factory=dict)
    tested: bool = True
    eval_report: Path | None = None
    logit_adjust_tau: float = 0.0


@dataclass
class Stat:
    """Mean and sample std (None for one value) over ``n`` seeds."""

    mean: float
    std: float | None
    n: int


@dataclass
class PairedStat(Stat):
    """A paired difference: mean and sample std of the per-seed differences, and the confidence interval of the
    mean (None with fewer than two seeds)."""

    ci: tuple[float, float] | None = None


@dataclass
class Setting:
    """A row of the settings table: the runs of one setting (and one schedule)."""

    setting: str
    label: str
    epochs: int | None
    measurements: list[Measurement]
    seeds: list[Any] = field(default_factory=list)
    per_seed: dict[str, dict[Any, float]] = field(default_factory=dict)
    stats: dict[str, Stat | None] = field(default_factory=dict)
    seconds_per_epoch: float | None = None

    @property
    def params(self) -> dict[str, str]:
        return self.measurements[0].params

    @property
    def sources(self) -> list[str]:
        return [m.source for m in self.measurements]

    @property
    def untested(self) -> list[str]:
        return [m.source for m in self.measurements if not m.tested]

    def names(self) -> set[str]:
        """What ``--baseline`` may call it: its setting name, its label, its runs' directories."""
        names = {self.setting, self.label, self.measurements[0].label}
        for m in self.measurements:
            names |= {m.source, Path(m.source).name} if m.source else set()
        return names

    def seeds_cell(self) -> str:
        """``0, 1, 2``; ``0, 1 (3 runs)`` when a seed ran more than once."""
        runs = len(self.measurements)
        listed = ", ".join(map(str, self.seeds))
        return listed if runs == len(self.seeds) else f"{listed} ({runs} runs)"


@dataclass
class Difference:
    """``first`` minus ``second``, paired by seed."""

    label: str
    first: Setting
    second: Setting
    seeds: list[Any]
    cells: dict[str, PairedStat | None]


# ---------------------------------------------------------------------------------------------------------------
# Statistics


def seed_key(seed: Any) -> tuple:
    """Seeds sort as numbers where they are numbers."""
    try:
        return (0, int(seed), "")
    except (TypeError, ValueError):
        return (1, 0, str(seed))


def over_seeds(values: Sequence[float]) -> Stat | None:
    """Mean and sample std (n - 1); None for no value."""
    if not values:
        return None
    mean = statistics.fmean(values)
    return Stat(mean, statistics.stdev(values) if len(values) > 1 else None, len(values))


def paired(differences: Sequence[float], confidence: float = CONFIDENCE) -> PairedStat | None:
    """Mean, sample std and the paired-t confidence interval of the mean of per-seed differences: mean ± t(1 -
    (1 - confidence) / 2, n - 1) * std / sqrt(n); no interval for fewer than two."""
    stat = over_seeds(differences)
    if stat is None:
        return None
    if stat.std is None:
        return PairedStat(stat.mean, None, stat.n)
    from scipy.stats import t

    half = float(t.ppf(1 - (1 - confidence) / 2, stat.n - 1)) * stat.std / math.sqrt(stat.n)
    return PairedStat(stat.mean, stat.std, stat.n, (stat.mean - half, stat.mean + half))


def build_settings(measurements: Iterable[Measurement]) -> list[Setting]:
    """Groups measurements by setting (and schedule, where the setting does not tell it), in order of first
    appearance; labels carry the schedule (``, 20 epochs``) when the settings span more than one."""
    groups: dict[tuple, list[Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.setting, None if m.epochs_in_setting else m.epochs), []).append(m)
    schedules = {epochs for _, epochs in groups}
    settings = []
    for (name, epochs), runs in groups.items():
        label = runs[0].label
        if len(schedules) > 1 and epochs is not None:
            label = f"{label}, {epochs} epochs"
        row = Setting(name, label, epochs, runs, seeds=sorted({m.seed for m in runs}, key=seed_key))
        for column in (*COLUMNS, *ECE_COLUMNS):
            row.per_seed[column] = _seed_means(runs, column)
            row.stats[column] = over_seeds(list(row.per_seed[column].values()))
        seconds = [m.seconds_per_epoch for m in runs if m.seconds_per_epoch is not None]
        row.seconds_per_epoch = statistics.median(seconds) if seconds else None
        settings.append(row)
    return settings


def _seed_means(runs: list[Measurement], column: str) -> dict[Any, float]:
    """Seed -> the mean of its runs' values of ``column`` (seeds without a value left out), in seed order."""
    by_seed: dict[Any, list[float]] = {}
    for m in runs:
        if m.values.get(column) is not None:
            by_seed.setdefault(m.seed, []).append(float(m.values[column]))
    return {s: statistics.fmean(by_seed[s]) for s in sorted(by_seed, key=seed_key)}


def difference(first: Setting, second: Setting, label: str | None = None) -> Difference:
    """``first`` minus ``second`` over the seeds both have a value for, column by column."""
    cells = {}
    for column in (*COLUMNS, *ECE_COLUMNS):
        a, b = first.per_seed[column], second.per_seed[column]
        cells[column] = paired([a[s] - b[s] for s in a if s in b])
    seeds = sorted(set(first.seeds) & set(second.seeds), key=seed_key)
    return Difference(label or f"{first.label} {MINUS} {second.label}", first, second, seeds, cells)


def find_setting(settings: list[Setting], name: str) -> list[Setting]:
    """The settings (one per schedule) that ``name`` names: a setting name, a label or a run directory.

    Raises:
        UserError: nothing is called ``name`` (the message lists the settings).
    """
    found = [s for s in settings if name in s.names() or str(Path(name)) in s.names()]
    if not found:
        known = "; ".join(dict.fromkeys(s.setting for s in settings))
        raise UserError(f"--baseline '{name}' names no setting of this comparison; the settings are: {known}.")
    return found


def baseline_differences(settings: list[Setting], baseline: str) -> tuple[list[Difference], list[str]]:
    """Every other setting minus the baseline of its schedule, and notes on the settings left without a pair."""
    bases = find_setting(settings, baseline)
    diffs, notes = [], []
    no_base: dict[int | None, list[str]] = {}
    for s in settings:
        if any(s is b for b in bases):
            continue
        base = next((b for b in bases if b.epochs == s.epochs), None)
        if base is None:
            no_base.setdefault(s.epochs, []).append(s.label)
        elif not set(s.seeds) & set(base.seeds):
            notes.append(f"{s.label}: no seed shared with {base.label}")
        else:
            diffs.append(difference(s, base))
    for epochs, labels in no_base.items():
        notes.append(f"no run of the baseline {baseline} at {epochs} epochs to pair with: {'; '.join(labels)}")
    return diffs, notes


def question_differences(settings: list[Setting], questions: Sequence[tuple[str, str, str]]) -> list[Difference]:
    """Each question (label, first setting name, second setting name) within each schedule where both settings ran
    a shared seed; questions without one are left out. With several schedules the label names the schedule."""
    schedules = list(dict.fromkeys(s.epochs for s in settings))
    diffs = []
    for label, first, second in questions:
        for epochs in schedules:
            a = next((s for s in settings if s.setting == first and s.epochs == epochs), None)
            b = next((s for s in settings if s.setting == second and s.epochs == epochs), None)
            if a is not None and b is not None and set(a.seeds) & set(b.seeds):
                text = label if len(schedules) == 1 or epochs is None else f"{label}, {epochs} epochs"
                diffs.append(difference(a, b, text))
    return diffs


def keep_epochs(measurements: list[Measurement], epochs: int, source: str) -> list[Measurement]:
    """The measurements of runs that trained ``epochs`` epochs.

    Raises:
        UserError: none did (the message lists the schedules there are).
    """
    kept = [m for m in measurements if m.epochs == epochs]
    if not kept:
        there = ", ".join(str(e) for e in sorted({m.epochs for m in measurements if m.epochs is not None}))
        raise UserError(f"No run of {source} trained {epochs} epochs (the runs there trained {there or 'unknown'}).")
    return kept
