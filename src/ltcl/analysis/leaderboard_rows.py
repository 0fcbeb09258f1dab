"""The rows of a results csv (``benchmarks/results/cifar10_lt_ablation.csv``) read as leaderboard measurements
(:func:`read_results_csv`), with the columns such a csv must hold."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ltcl.analysis.leaderboard import COLUMNS, ECE_COLUMNS, Measurement
from ltcl.data.longtail import ACCURACY_COLUMNS
from ltcl.errors import UserError

# What a results csv must hold: one row per (setting, seed, epochs); label, val_best_all and seconds_per_epoch are
# optional (ECE columns too: ece_many ... ece_all)
REQUIRED_CSV_COLUMNS = ("setting", "seed", "epochs", *ACCURACY_COLUMNS)


def read_results_csv(path: str | Path, labels: dict[str, str] | None = None) -> list[Measurement]:
    """The rows of a results csv (one per setting, seed and schedule) as measurements. A row's label is its
    ``label`` cell, else ``labels[setting]``, else the setting name; empty cells are no number.

    Raises:
        UserError: the file is missing, lacks a required column or holds a cell that is not a number.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Results csv {path} does not exist.")
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        missing = [c for c in REQUIRED_CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path} is not a results csv: it has no column {', '.join(missing)}.")
        rows = list(reader)
    measurements = []
    for line, row in enumerate(rows, 2):
        where = f"{path}:{line}"
        label = row.get("label") or (labels or {}).get(row["setting"]) or row["setting"]
        values = {c: _cell(row.get(c), where, c) for c in (*COLUMNS, *ECE_COLUMNS)}
        measurements.append(
            Measurement(
                setting=row["setting"],
                label=label,
                seed=_seed(row["seed"]),
                values=values,
                epochs=int(_cell(row["epochs"], where, "epochs")),
                seconds_per_epoch=_cell(row.get("seconds_per_epoch"), where, "seconds_per_epoch"),
                source=where,
                tested=any(values[c] is not None for c in ACCURACY_COLUMNS),
            )
        )
    return measurements


def _cell(text: str | None, where: str, column: str) -> float | None:
    if text is None or text.strip() == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{where}: column {column} holds {text!r}, not a number.") from None


def _seed(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        return text
