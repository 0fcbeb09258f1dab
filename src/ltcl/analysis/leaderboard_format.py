"""How the leaderboard of ``ltcl compare`` is written: the markdown settings and differences tables (the README's),
the notes printed under them, and both tables as CSV (the printed cells and the numbers behind them)."""

from __future__ import annotations

import csv
from pathlib import Path

from ltcl.analysis.leaderboard import COLUMNS, CONFIDENCE, ECE_COLUMNS, Difference, PairedStat, Setting, Stat
from ltcl.data.longtail import ACCURACY_COLUMNS

HEADERS = {c: c.capitalize() for c in ACCURACY_COLUMNS} | {"val_best_all": "All, best-on-val checkpoint"}
HEADERS |= {f"ece_{group}": f"ECE {group.capitalize()}" for group in ACCURACY_COLUMNS}


def ece_columns(settings: list[Setting]) -> list[str]:
    """The ECE columns that some run has a number for (none when no run has an eval report)."""
    return [c for c in ECE_COLUMNS if any(s.stats[c] is not None for s in settings)]


def format_stat(stat: Stat | None) -> str:
    """``52.60 ± 0.31``; a plain mean for one seed; ``n/a`` for none."""
    if stat is None:
        return "n/a"
    return f"{stat.mean:.2f}" if stat.std is None else f"{stat.mean:.2f} ± {stat.std:.2f}"


def format_paired(stat: PairedStat | None) -> str:
    """``+0.52 ± 0.33 [-0.30, +1.34]`` (mean ± std [95% interval]); ``+0.91 [n/a]`` for one seed; ``n/a``."""
    if stat is None:
        return "n/a"
    if stat.ci is None:
        return f"{stat.mean:+.2f} [n/a]"
    return f"{stat.mean:+.2f} ± {stat.std:.2f} [{stat.ci[0]:+.2f}, {stat.ci[1]:+.2f}]"


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = [f"| {' | '.join(header)} |", "| --- |" + " ---: |" * (len(header) - 1)]
    return "\n".join([*lines, *(f"| {' | '.join(r)} |" for r in rows)])


def settings_table(settings: list[Setting]) -> str:
    """Markdown: setting, seeds, Many / Medium / Few / All, All of the best-on-val checkpoint, the ECE columns runs
    have, s/epoch (median over the runs)."""
    columns = [*COLUMNS, *ece_columns(settings)]
    rows = []
    for s in settings:
        seconds = "n/a" if s.seconds_per_epoch is None else f"{s.seconds_per_epoch:.0f}"
        rows.append([s.label, s.seeds_cell(), *(format_stat(s.stats[c]) for c in columns), seconds])
    return _markdown(["setting", "seeds", *(HEADERS[c] for c in columns), "s/epoch"], rows)


def differences_table(diffs: list[Difference], settings: list[Setting]) -> str:
    """Markdown: difference, the shared seeds, then each column's paired difference (the ECE columns as in
    :func:`settings_table`)."""
    columns = [*COLUMNS, *ece_columns(settings)]
    rows = [[d.label, ", ".join(map(str, d.seeds)), *(format_paired(d.cells[c]) for c in columns)] for d in diffs]
    return _markdown(["difference", "shared seeds", *(HEADERS[c] for c in columns)], rows)


SETTINGS_NOTE = (
    "mean ± sample std over distinct seeds (a seed run twice counts once, with the mean of its runs); n/a: the "
    "shot group has no class, or no run has the number"
)


DIFFERENCES_NOTE = (
    "in points, paired by seed over the seeds both ran: mean ± sample std of the per-seed "
    f"differences [{CONFIDENCE:.0%} confidence interval of the mean, paired t with n - 1 degrees of freedom; n/a "
    "for one shared seed]"
)


def write_settings_csv(settings: list[Setting], path: Path) -> None:
    """The settings table as CSV: the printed cells and the numbers behind them (mean, std, seeds of each column)."""
    keys = list(dict.fromkeys(k for s in settings for k in s.params))
    columns = [*COLUMNS, *ECE_COLUMNS]
    header = ["setting", "name", *keys, "epochs", "seeds", "runs", "seed_list", *(HEADERS[c] for c in columns)]
    header += [f"{c}_{part}" for c in columns for part in ("mean", "std", "n")] + ["seconds_per_epoch", "runs_from"]
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for s in settings:
            numbers = []
            for c in columns:
                stat = s.stats[c]
                numbers += ["", "", 0] if stat is None else [_number(stat.mean), _number(stat.std), stat.n]
            writer.writerow([
                s.label, s.setting, *(s.params.get(k, "") for k in keys), "" if s.epochs is None else s.epochs,
                len(s.seeds), len(s.measurements), " ".join(map(str, s.seeds)),
                *(format_stat(s.stats[c]) for c in columns), *numbers, _number(s.seconds_per_epoch),
                " ".join(s.sources),
            ])  # fmt: skip


def write_differences_csv(diffs: list[Difference], path: Path) -> None:
    """The paired differences as CSV: the printed cells and, per column, mean, std, n and the interval."""
    columns = [*COLUMNS, *ECE_COLUMNS]
    header = ["difference", "first", "second", "shared_seeds", *(HEADERS[c] for c in columns)]
    header += [f"{c}_{part}" for c in columns for part in ("mean", "std", "n", "ci_low", "ci_high")]
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for d in diffs:
            numbers = []
            for c in columns:
                stat = d.cells[c]
                if stat is None:
                    numbers += ["", "", 0, "", ""]
                else:
                    low, high = stat.ci or (None, None)
                    numbers += [_number(stat.mean), _number(stat.std), stat.n, _number(low), _number(high)]
            writer.writerow([
                d.label, d.first.label, d.second.label, " ".join(map(str, d.seeds)),
                *(format_paired(d.cells[c]) for c in columns), *numbers,
            ])  # fmt: skip


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"
